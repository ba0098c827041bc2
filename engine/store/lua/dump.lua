-- dump.lua — the state dump of one SKU, for tests. Reads only: no lazy expiry.
-- KEYS: the twelve keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (unused)
-- Reply: json {locs: {loc: {on_hand, safety, held, committed, oh_alloc, bo_alloc, short}},
--        lots: {id: lot}, lines: {rid: line}, customers: {id: units}, channels: {id: units},
--        policy (as stored; the store fills in the defaults), reliability: {supplier: rel_pm}, seq}

local out = { locs = {}, lots = lots, lines = {}, customers = {}, channels = {}, reliability = {} }
for name, b in pairs(locs) do
  out.locs[name] = {
    on_hand = b.oh, safety = pol.safety, held = b.hd, committed = b.cm, oh_alloc = b.oa,
    bo_alloc = b.ba, short = b.st,
  }
end
load_all_lines()
for rid, line in pairs(lines) do
  if line then out.lines[rid] = line end
end
for who, v in pairs(hgetall_map(K.cust)) do out.customers[who] = tonumber(v) end
for who, v in pairs(hgetall_map(K.chan)) do out.channels[who] = tonumber(v) end
for who, v in pairs(hgetall_map(K.srel)) do out.reliability[who] = tonumber(v) end
local raw = redis.call('GET', K.pol)
if raw then out.policy = cjson.decode(raw) else out.policy = {} end
out.seq = tonumber(redis.call('GET', K.seq) or '0')
return cjson.encode(out)
