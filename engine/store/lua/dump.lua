-- dump.lua — the state dump of one SKU, for tests. Reads only: no due bucket is folded; lines of
-- folded buckets show as expired (lib.lua F.got_line), as a writing call would leave them.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (unused)
-- Reply: json {locs: {loc: {on_hand, safety, held, committed, oh_alloc, bo_alloc, short}},
--        lots: {id: lot}, lines: {rid: line}, customers: {id: units}, channels: {id: units},
--        policy (as stored; the store fills in the defaults), reliability: {supplier: rel_pm}, seq}

entry('dump', function()
  F.load_state()
  local out = { locs = {}, lots = F.get_lots(), lines = {}, customers = {}, channels = {}, reliability = {} }
  for name, b in pairs(locs) do
    out.locs[name] = {
      on_hand = b.oh, safety = pol.safety, held = b.hd, committed = b.cm, oh_alloc = b.oa,
      bo_alloc = b.ba, short = b.st,
    }
  end
  F.load_all_lines()
  for rid, line in pairs(lines) do
    if line == true then line = F.get_line(rid) end
    if line then
      line.bucket = nil -- bookkeeping, not part of the line
      out.lines[rid] = line
    end
  end
  -- '~' fields are the units of purged shipped lines, not a customer or channel
  -- lines of folded buckets read above are buried in this call's tables only: their usage is
  -- subtracted here as a flush would
  local function usage_map(key, flat, into)
    for i = 1, #flat, 2 do
      if string.sub(flat[i], 1, 1) ~= '~' then into[flat[i]] = tonumber(flat[i + 1]) end
    end
    for who, d in pairs(use_chg[key]) do
      local n = (into[who] or 0) + d
      into[who] = n ~= 0 and n or nil
    end
  end
  usage_map(K.cust, redis.call('HGETALL', K.cust), out.customers)
  usage_map(K.chan, redis.call('HGETALL', K.chan), out.channels)
  local flat = redis.call('HGETALL', K.srel)
  for i = 1, #flat, 2 do out.reliability[flat[i]] = tonumber(flat[i + 1]) end
  local raw = redis.call('GET', K.pol)
  if raw then out.policy = cjson.decode(raw) else out.policy = {} end
  out.seq = S.seq
  return cjson.encode(out)
end)
