-- lib.lua — shared prelude, concatenated in front of every entry script at load time.
--
-- KEYS (every script, in this order; all carry the hash tag {sku}, so one cluster slot):
--   1 loc   hash "<loc>|<bucket>" -> int; buckets oh (on_hand, always present once the location
--           is named), hd (held), cm (committed), oa (oh_alloc), ba (bo_alloc), st (short);
--           zero buckets other than oh are not stored. Safety comes from the policy.
--   2 lots  hash lot_id -> json {loc, qty, eta_ms, supplier, alloc}
--   3 res   hash rid -> json line (docs/semantics.md "line")
--   4 exp   zset rid -> expires_ms of the held lines
--   5 pol   string json policy (absent = defaults)
--   6 cust  hash customer -> live+shipped units      7 chan  hash channel -> units
--   8 srel  hash supplier -> reliability per mille   9 evt   zset recent event ids (score = order)
--  10 off   hash source -> last applied offset      11 jrnl  list journal json, newest first
--  12 seq   string counter of created lines
-- ARGV (every script): 1 sku, 2 now_ms (0 = Redis TIME; > 0 only from tests), then the entry's own.
--
-- Rules: docs/semantics.md, mirrored step by step from engine/domain/oracle.py so that replies and
-- state are identical. Integer arithmetic only; strings are compared bytewise (Lua's "<" would use
-- the server's locale collation).
-- The prelude loads what it needs into the tables below, mutates them, and flush() writes back.

redis.replicate_commands()

local K = {
  loc = KEYS[1], lots = KEYS[2], res = KEYS[3], exp = KEYS[4], pol = KEYS[5], cust = KEYS[6],
  chan = KEYS[7], srel = KEYS[8], evt = KEYS[9], off = KEYS[10], jrnl = KEYS[11], seq = KEYS[12],
}
local SKU = ARGV[1]
local NOW = tonumber(ARGV[2]) or 0
if NOW <= 0 then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local DAY_MS = 86400000
local BUCKETS = { 'oh', 'hd', 'cm', 'oa', 'ba', 'st' }

-- bytewise "a < b" (Python's order for the ASCII ids we allow)
local function blt(a, b)
  if a == b then return false end
  local la, lb = #a, #b
  local n = la < lb and la or lb
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end

local function hgetall_map(key)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end

-- redis.call with many arguments, chunked to stay inside Lua's C stack limit
local function call_chunked(cmd, key, items, per)
  local i, n = 1, #items
  while i <= n do
    local last = math.min(n, i + per * 500 - 1)
    redis.call(cmd, key, unpack(items, i, last))
    i = last + 1
  end
end

----------------------------------------------------------------------------- policy

local POLICY_DEFAULTS = {
  mode = 'strict', cap_pm = 1000, horizon_s = 0, use_reliability = false, backorder_limit = 0,
  backorder_days = 14, safety = 0, order_cap = 0, customer_limit = 0, low_stock = 0,
}
local pol
local function load_policy()
  local raw = redis.call('GET', K.pol)
  local p = {}
  if raw then p = cjson.decode(raw) end
  for k, v in pairs(POLICY_DEFAULTS) do
    if p[k] == nil or p[k] == cjson.null then p[k] = v end
  end
  if type(p.quotas) ~= 'table' then p.quotas = {} end
  pol = p
end
load_policy()

local rel -- supplier -> rel_pm, loaded on first use
local function reliability(supplier)
  if not rel then
    rel = {}
    for s, v in pairs(hgetall_map(K.srel)) do rel[s] = tonumber(v) end
  end
  return rel[supplier] or 1000
end

----------------------------------------------------------------------------- locations

local locs = {}        -- name -> {oh, hd, cm, oa, ba, st}
local loc_dirty = {}   -- name -> true
local loc_names = nil  -- sorted names, rebuilt after a location appears
do
  local flat = redis.call('HGETALL', K.loc)
  for i = 1, #flat, 2 do
    local name, b = string.match(flat[i], '^(.*)|(%a%a)$')
    if name then
      local l = locs[name]
      if not l then
        l = { oh = 0, hd = 0, cm = 0, oa = 0, ba = 0, st = 0 }
        locs[name] = l
      end
      l[b] = tonumber(flat[i + 1])
    end
  end
end

local function sorted_loc_names()
  if not loc_names then
    loc_names = {}
    for name in pairs(locs) do loc_names[#loc_names + 1] = name end
    table.sort(loc_names, blt)
  end
  return loc_names
end

-- the buckets of a location, creating it (a named location stays for good)
local function loc_get(name)
  local l = locs[name]
  if not l then
    l = { oh = 0, hd = 0, cm = 0, oa = 0, ba = 0, st = 0 }
    locs[name] = l
    loc_dirty[name] = true
    loc_names = nil
  end
  return l
end

local function loc_touch(name)
  loc_dirty[name] = true
  return loc_get(name)
end

----------------------------------------------------------------------------- lots

local lots = {}        -- id -> {loc, qty, eta_ms, supplier, alloc}
local lot_dirty = {}   -- id -> true (written) ; lot_gone: id -> true (deleted)
local lot_gone = {}
do
  local flat = redis.call('HGETALL', K.lots)
  for i = 1, #flat, 2 do lots[flat[i]] = cjson.decode(flat[i + 1]) end
end

local function promisable(lot)
  if pol.mode == 'strict' then return 0 end
  if pol.horizon_s > 0 and lot.eta_ms > NOW + pol.horizon_s * 1000 then return 0 end
  local r = 1000
  if pol.use_reliability then r = reliability(lot.supplier) end
  -- < 2^53, so the double quotient floors exactly
  return math.floor(lot.qty * pol.cap_pm * r / 1000000)
end

-- lot ids at loc ('' = any) by (eta_ms, id)
local function lots_in_order(loc)
  local ids = {}
  for id, lot in pairs(lots) do
    if loc == '' or lot.loc == loc then ids[#ids + 1] = id end
  end
  table.sort(ids, function(a, b)
    local ea, eb = lots[a].eta_ms, lots[b].eta_ms
    if ea ~= eb then return ea < eb end
    return blt(a, b)
  end)
  return ids
end

local function lot_delete(id)
  lots[id] = nil
  lot_dirty[id] = nil
  lot_gone[id] = true
end

----------------------------------------------------------------------------- lines

local lines = {}       -- rid -> line, or false when known absent / deleted
local line_json = {}   -- rid -> json of the line as it is now (nil once it changed)
local line_dirty = {}
local line_gone = {}
local all_lines_loaded = false

local function got_line(rid, raw)
  if raw then
    lines[rid] = cjson.decode(raw)
    line_json[rid] = raw
  else
    lines[rid] = false
  end
end

local function get_line(rid)
  if lines[rid] == nil then got_line(rid, redis.call('HGET', K.res, rid)) end
  return lines[rid] or nil
end

-- load the lines of many rids with HMGET (the batch and expiry paths)
local function prefetch_lines(rids)
  local want = {}
  for _, rid in ipairs(rids) do
    if lines[rid] == nil then want[#want + 1] = rid end
  end
  local i = 1
  while i <= #want do
    local last = math.min(#want, i + 999)
    local vals = redis.call('HMGET', K.res, unpack(want, i, last))
    for j = i, last do got_line(want[j], vals[j - i + 1]) end
    i = last + 1
  end
end

-- the line changed: write it back, and its old json is stale
local function mark(rid)
  line_dirty[rid] = true
  line_json[rid] = nil
end

local function put_line(line)
  lines[line.rid] = line
  mark(line.rid)
  line_gone[line.rid] = nil
end

local function delete_line(rid)
  lines[rid] = false
  line_dirty[rid] = nil
  line_json[rid] = nil
  line_gone[rid] = true
end

local function load_all_lines()
  if all_lines_loaded then return end
  local flat = redis.call('HGETALL', K.res)
  for i = 1, #flat, 2 do
    if lines[flat[i]] == nil then got_line(flat[i], flat[i + 1]) end
  end
  all_lines_loaded = true
end

local function encode_line(line)
  local s = line_json[line.rid]
  if not s then
    s = cjson.encode(line)
    line_json[line.rid] = s
  end
  return s
end

-- expiry index changes, written by flush (rid -> score / true)
local exp_set, exp_del = {}, {}
local function exp_add(rid, ms)
  exp_set[rid] = ms
  exp_del[rid] = nil
end
local function exp_remove(rid)
  exp_del[rid] = true
  exp_set[rid] = nil
end

-- a reply {status, rid, reason?, line?} as json, the line as it is now; ids are validated by
-- the store ([A-Za-z0-9._:-]) and need no escaping
local function reply_json(r)
  if not r.line then return cjson.encode(r) end
  local head = '{"status":"' .. r.status .. '","rid":"' .. r.rid .. '"'
  if r.reason then head = head .. ',"reason":"' .. r.reason .. '"' end
  return head .. ',"line":' .. encode_line(r.line) .. '}'
end

local function is_live(line)
  return line.state == 'held' or line.state == 'committed'
end

-- live lines sorted by seq (newest first when newest_first)
local function live_lines(newest_first)
  load_all_lines()
  local out = {}
  for _, line in pairs(lines) do
    if line and is_live(line) then out[#out + 1] = line end
  end
  if newest_first then
    table.sort(out, function(a, b) return a.seq > b.seq end)
  else
    table.sort(out, function(a, b) return a.seq < b.seq end)
  end
  return out
end

-- a copy of the line for a reply (later changes in the same call must not show)
local function wire(line)
  local alloc = {}
  for i, a in ipairs(line.alloc) do alloc[i] = { a[1], a[2], a[3], a[4] } end
  return {
    rid = line.rid, sku = line.sku, qty = line.qty, loc = line.loc, state = line.state,
    expires_ms = line.expires_ms, seq = line.seq, channel = line.channel, customer = line.customer,
    alloc = alloc, promised_ms = line.promised_ms, atp_after = line.atp_after,
  }
end

local seq_value = nil
local function next_seq()
  if not seq_value then seq_value = tonumber(redis.call('GET', K.seq) or '0') end
  seq_value = seq_value + 1
  return seq_value
end

----------------------------------------------------------------------------- usage

local function used(key, who)
  return tonumber(redis.call('HGET', key, who) or '0')
end

local function bump(key, who, delta)
  if redis.call('HINCRBY', key, who, delta) == 0 then redis.call('HDEL', key, who) end
end

local function usage(line, delta)
  if line.customer ~= '' then bump(K.cust, line.customer, delta) end
  if line.channel ~= '' then bump(K.chan, line.channel, delta) end
end

----------------------------------------------------------------------------- derived figures

local function free_oh(name)
  local b = locs[name]
  return math.max(0, b.oh - pol.safety - b.oa)
end

local function bo_free()
  if pol.mode ~= 'backorder' then return 0 end
  local used_bo = 0
  for _, b in pairs(locs) do used_bo = used_bo + b.ba end
  return math.max(0, pol.backorder_limit - used_bo)
end

local function bo_location(loc)
  if loc ~= '' then return loc end
  local names = sorted_loc_names()
  if #names > 0 then return names[1] end
  return 'default'
end

local function capacity(loc)
  local total = 0
  for name in pairs(locs) do
    if loc == '' or loc == name then total = total + free_oh(name) end
  end
  for id, lot in pairs(lots) do
    if loc == '' or lot.loc == loc then total = total + math.max(0, promisable(lot) - lot.alloc) end
  end
  return total + bo_free()
end

-- the wire position (all locations, or only `location` when it is not nil)
local function position(location)
  local safety = pol.safety
  local pit, transit = {}, {}
  for _, lot in pairs(lots) do
    transit[lot.loc] = (transit[lot.loc] or 0) + lot.qty
    pit[lot.loc] = (pit[lot.loc] or 0) + promisable(lot)
  end
  local names
  if location == nil then
    names = sorted_loc_names()
  elseif locs[location] then
    names = { location }
  else
    names = {}
  end
  local per = {}
  local t = { on_hand = 0, safety = 0, held = 0, committed = 0, in_transit = 0, pit = 0, atp = 0,
              now = 0, short = 0 }
  for _, name in ipairs(names) do
    local b = locs[name]
    local p = pit[name] or 0
    local it = transit[name] or 0
    local atp = b.oh + p - b.cm - b.hd - safety
    per[name] = {
      on_hand = b.oh, safety = safety, held = b.hd, committed = b.cm, in_transit = it,
      promisable_in_transit = p, atp = atp, oh_alloc = b.oa, bo_alloc = b.ba, short = b.st,
    }
    t.on_hand = t.on_hand + b.oh
    t.safety = t.safety + safety
    t.held = t.held + b.hd
    t.committed = t.committed + b.cm
    t.in_transit = t.in_transit + it
    t.pit = t.pit + p
    t.atp = t.atp + atp
    t.now = t.now + free_oh(name)
    t.short = t.short + b.st
  end
  local next_ms = 0
  for _, id in ipairs(lots_in_order('')) do
    local lot = lots[id]
    if (location == nil or lot.loc == location) and promisable(lot) - lot.alloc > 0
        and (next_ms == 0 or lot.eta_ms < next_ms) then
      next_ms = lot.eta_ms
    end
  end
  return {
    sku = SKU, on_hand = t.on_hand, safety = t.safety, held = t.held, committed = t.committed,
    in_transit = t.in_transit, promisable_in_transit = t.pit, atp = t.atp,
    promisable_now = t.now, next_promise_ms = next_ms, oversold = t.short, locations = per,
  }
end

-- ATP of one location, or of the SKU when loc is ''
local function atp_of(loc)
  local safety = pol.safety
  local total = 0
  if loc ~= '' and not locs[loc] then return 0 end
  for name, b in pairs(locs) do
    if loc == '' or name == loc then total = total + b.oh - b.cm - b.hd - safety end
  end
  for _, lot in pairs(lots) do
    if loc == '' or lot.loc == loc then total = total + promisable(lot) end
  end
  return total
end

----------------------------------------------------------------------------- allocation

-- take up to qty units FIFO at loc ('' = any): list of {kind, ref, loc, qty}
local function allocate(qty, loc)
  local out = {}
  local left = qty
  for _, name in ipairs(sorted_loc_names()) do
    if left == 0 then break end
    if loc == '' or name == loc then
      local take = math.min(left, free_oh(name))
      if take > 0 then
        out[#out + 1] = { 'oh', name, name, take }
        left = left - take
      end
    end
  end
  if left > 0 then
    for _, id in ipairs(lots_in_order(loc)) do
      if left == 0 then break end
      local lot = lots[id]
      local take = math.min(left, math.max(0, promisable(lot) - lot.alloc))
      if take > 0 then
        out[#out + 1] = { 'lot', id, lot.loc, take }
        left = left - take
      end
    end
  end
  if left > 0 then
    local take = math.min(left, bo_free())
    if take > 0 then out[#out + 1] = { 'bo', '', bo_location(loc), take } end
  end
  return out
end

-- add an allocation, folding it into an entry of the same kind, ref and location
local function merge(allocs, new)
  for _, a in ipairs(allocs) do
    if a[1] == new[1] and a[2] == new[2] and a[3] == new[3] then
      a[4] = a[4] + new[4]
      return
    end
  end
  allocs[#allocs + 1] = { new[1], new[2], new[3], new[4] }
end

local function drop_empty(line)
  local kept = {}
  for _, a in ipairs(line.alloc) do
    if a[4] > 0 then kept[#kept + 1] = a end
  end
  line.alloc = kept
end

-- add allocations to a live line and to the pool and bucket counters
local function book(line, allocs)
  for _, a in ipairs(allocs) do
    local kind, ref, loc, q = a[1], a[2], a[3], a[4]
    local b = loc_touch(loc)
    if kind == 'oh' then
      b.oa = b.oa + q
    elseif kind == 'lot' then
      lots[ref].alloc = lots[ref].alloc + q
      lot_dirty[ref] = true
    elseif kind == 'bo' then
      b.ba = b.ba + q
    else
      b.st = b.st + q
    end
    if line.state == 'held' then b.hd = b.hd + q else b.cm = b.cm + q end
    merge(line.alloc, a)
  end
  mark(line.rid)
end

-- remove q units of one allocation entry from the pool and bucket counters
local function unbook(line, a, q)
  local kind, ref = a[1], a[2]
  local b = loc_touch(a[3])
  if kind == 'oh' then
    b.oa = b.oa - q
  elseif kind == 'lot' then
    if lots[ref] then
      lots[ref].alloc = lots[ref].alloc - q
      lot_dirty[ref] = true
    end
  elseif kind == 'bo' then
    b.ba = b.ba - q
  else
    b.st = b.st - q
  end
  if line.state == 'held' then b.hd = b.hd - q else b.cm = b.cm - q end
  a[4] = a[4] - q
  mark(line.rid)
end

local function return_units(line)
  for _, a in ipairs(line.alloc) do unbook(line, a, a[4]) end
  drop_empty(line)
  usage(line, -line.qty)
end

local function promise(allocs)
  local p = NOW
  for _, a in ipairs(allocs) do
    if a[1] == 'lot' then
      p = math.max(p, lots[a[2]].eta_ms)
    elseif a[1] == 'bo' then
      p = math.max(p, NOW + pol.backorder_days * DAY_MS)
    end
  end
  return p
end

-- promised date from the line's supplied allocations, never later than needed
local function repromise(line)
  local base = 0
  for _, a in ipairs(line.alloc) do
    if a[1] == 'lot' then
      base = math.max(base, lots[a[2]].eta_ms)
    elseif a[1] == 'bo' then
      base = math.max(base, NOW + pol.backorder_days * DAY_MS)
    end
  end
  if base > 0 then return base end
  return math.min(line.promised_ms, NOW)
end

----------------------------------------------------------------------------- expiry

-- expire every held line whose time has come, in (expires_ms, rid) order; returns how many
local function expire_due()
  local due = redis.call('ZRANGEBYSCORE', K.exp, '-inf', NOW)
  if #due == 0 then return 0 end
  local n = 0
  prefetch_lines(due)
  for _, rid in ipairs(due) do
    local line = get_line(rid)
    if line and line.state == 'held' and line.expires_ms > 0 and line.expires_ms <= NOW then
      return_units(line)
      line.state = 'expired'
      mark(rid)
      n = n + 1
    end
  end
  redis.call('ZREMRANGEBYSCORE', K.exp, '-inf', NOW)
  return n
end

----------------------------------------------------------------------------- operations

-- r = {rid, qty, loc, ttl_ms, channel, customer, commit}
local function hold_one(r, replace_dead)
  local existing = get_line(r.rid)
  if existing and not (replace_dead and (existing.state == 'released' or existing.state == 'expired')) then
    local same = existing.qty == r.qty and existing.loc == r.loc
    return { status = same and 'duplicate' or 'conflict', rid = r.rid, line = existing }
  end
  local reason = nil
  if pol.order_cap > 0 and r.qty > pol.order_cap then
    reason = 'order_cap'
  elseif pol.customer_limit > 0 and r.customer ~= ''
      and used(K.cust, r.customer) + r.qty > pol.customer_limit then
    reason = 'customer_limit'
  elseif r.channel ~= '' and pol.quotas[r.channel] ~= nil
      and used(K.chan, r.channel) + r.qty > pol.quotas[r.channel] then
    reason = 'channel_quota'
  end
  local available = capacity(r.loc)
  if not reason and available < r.qty then reason = 'insufficient' end
  if reason then
    return { status = 'refused', rid = r.rid, reason = reason, available = available }
  end
  local allocs = allocate(r.qty, r.loc)
  local line = {
    rid = r.rid, sku = SKU, qty = r.qty, loc = r.loc,
    state = r.commit and 'committed' or 'held',
    expires_ms = r.commit and 0 or NOW + r.ttl_ms,
    seq = next_seq(), channel = r.channel, customer = r.customer, alloc = {},
    promised_ms = promise(allocs), atp_after = 0,
  }
  put_line(line)
  book(line, allocs)
  usage(line, r.qty)
  line.atp_after = atp_of(r.loc)
  if not r.commit then exp_add(r.rid, line.expires_ms) end
  return { status = 'ok', rid = r.rid, line = line }
end

local function op_confirm(rid)
  local line = get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state == 'committed' then return { status = 'duplicate', rid = rid, line = line } end
  if line.state ~= 'held' then
    return { status = 'refused', rid = rid, reason = line.state, line = line }
  end
  for _, a in ipairs(line.alloc) do
    local b = loc_touch(a[3])
    b.hd = b.hd - a[4]
    b.cm = b.cm + a[4]
  end
  line.state = 'committed'
  line.expires_ms = 0
  mark(rid)
  exp_remove(rid)
  return { status = 'ok', rid = rid, line = line }
end

local function op_release(rid)
  local line = get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state == 'released' or line.state == 'expired' then
    return { status = 'duplicate', rid = rid, line = line }
  end
  if line.state == 'shipped' then
    return { status = 'refused', rid = rid, reason = 'shipped', line = line }
  end
  return_units(line)
  line.state = 'released'
  line.expires_ms = 0
  mark(rid)
  exp_remove(rid)
  return { status = 'ok', rid = rid, line = line }
end

local function op_rollback(rid)
  local line = get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state == 'shipped' then
    return { status = 'refused', rid = rid, reason = 'shipped', line = line }
  end
  if is_live(line) then return_units(line) end
  delete_line(rid)
  exp_remove(rid)
  return { status = 'ok', rid = rid }
end

local function op_extend(rid, ttl_ms)
  local line = get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state ~= 'held' then
    return { status = 'refused', rid = rid, reason = line.state, line = line }
  end
  line.expires_ms = NOW + ttl_ms
  mark(rid)
  exp_add(rid, line.expires_ms)
  return { status = 'ok', rid = rid, line = line }
end

----------------------------------------------------------------------------- rebalance

-- remember a line's promised date before the command changed it (rid -> old ms)
local touched, touched_order = {}, {}
local function touch(line)
  if touched[line.rid] == nil then
    touched[line.rid] = line.promised_ms
    touched_order[#touched_order + 1] = line.rid
  end
end

-- newest lines first give back up to `excess` units of the entries `matches` accepts
local function shed(excess, matches)
  if excess <= 0 then return end
  for _, line in ipairs(live_lines(true)) do
    local chosen = {}
    for _, a in ipairs(line.alloc) do
      if matches(a) then chosen[#chosen + 1] = a end
    end
    for _, a in ipairs(chosen) do
      if excess == 0 then return end
      local q = math.min(excess, a[4])
      touch(line)
      local loc = a[3]
      unbook(line, a, q)
      drop_empty(line)
      book(line, { { 'short', '', loc, q } })
      excess = excess - q
    end
  end
end

local function any_short()
  for _, b in pairs(locs) do
    if b.st ~= 0 then return true end
  end
  return false
end

-- give back over-allocated supply (newest first), then re-fill shorts (oldest first)
local function rebalance()
  local safety = pol.safety
  for _, name in ipairs(sorted_loc_names()) do
    local b = locs[name]
    shed(b.oa - math.max(0, b.oh - safety), function(a) return a[1] == 'oh' and a[3] == name end)
  end
  for _, id in ipairs(lots_in_order('')) do
    local lot = lots[id]
    shed(lot.alloc - promisable(lot), function(a) return a[1] == 'lot' and a[2] == id end)
  end
  local limit = 0
  if pol.mode == 'backorder' then limit = pol.backorder_limit end
  local bo_used = 0
  for _, b in pairs(locs) do bo_used = bo_used + b.ba end
  shed(bo_used - limit, function(a) return a[1] == 'bo' end)
  if not any_short() then return end
  for _, line in ipairs(live_lines(false)) do
    local shorts = {}
    for _, a in ipairs(line.alloc) do
      if a[1] == 'short' then shorts[#shorts + 1] = a end
    end
    for _, a in ipairs(shorts) do
      local got = allocate(a[4], line.loc)
      if #got > 0 then
        touch(line)
        local n = 0
        for _, g in ipairs(got) do n = n + g[4] end
        unbook(line, a, n)
        drop_empty(line)
        book(line, got)
      end
    end
  end
end

-- re-date the touched lines; the ones now promised later, newest first
local function redate()
  local slipped = {}
  for _, rid in ipairs(touched_order) do
    local line = lines[rid]
    local old = touched[rid]
    local new = repromise(line)
    if new ~= line.promised_ms then
      line.promised_ms = new
      mark(rid)
    end
    if new > old then slipped[#slipped + 1] = { rid = rid, old_ms = old, new_ms = new, seq = line.seq } end
  end
  table.sort(slipped, function(a, b) return a.seq > b.seq end)
  for _, s in ipairs(slipped) do s.seq = nil end
  return slipped
end

-- live lines with short units, newest first
local function at_risk()
  local out = {}
  if not any_short() then return out end
  for _, line in ipairs(live_lines(true)) do
    local short = 0
    for _, a in ipairs(line.alloc) do
      if a[1] == 'short' then short = short + a[4] end
    end
    if short > 0 then out[#out + 1] = { rid = line.rid, short = short } end
  end
  return out
end

----------------------------------------------------------------------------- write back

local function flush()
  local set, del = {}, {}
  for name in pairs(loc_dirty) do
    local b = locs[name]
    for _, k in ipairs(BUCKETS) do
      local v = b[k]
      if v ~= 0 or k == 'oh' then
        set[#set + 1] = name .. '|' .. k
        set[#set + 1] = v
      else
        del[#del + 1] = name .. '|' .. k
      end
    end
  end
  if #set > 0 then call_chunked('HSET', K.loc, set, 2) end
  if #del > 0 then call_chunked('HDEL', K.loc, del, 1) end

  set, del = {}, {}
  for id in pairs(lot_dirty) do
    set[#set + 1] = id
    set[#set + 1] = cjson.encode(lots[id])
  end
  for id in pairs(lot_gone) do del[#del + 1] = id end
  if #set > 0 then call_chunked('HSET', K.lots, set, 2) end
  if #del > 0 then call_chunked('HDEL', K.lots, del, 1) end

  set, del = {}, {}
  for rid in pairs(line_dirty) do
    set[#set + 1] = rid
    set[#set + 1] = encode_line(lines[rid])
  end
  for rid in pairs(line_gone) do del[#del + 1] = rid end
  if #set > 0 then call_chunked('HSET', K.res, set, 2) end
  if #del > 0 then call_chunked('HDEL', K.res, del, 1) end

  set, del = {}, {}
  for rid in pairs(exp_del) do del[#del + 1] = rid end
  for rid, ms in pairs(exp_set) do
    set[#set + 1] = ms
    set[#set + 1] = rid
  end
  if #del > 0 then call_chunked('ZREM', K.exp, del, 1) end
  if #set > 0 then call_chunked('ZADD', K.exp, set, 2) end

  if seq_value then redis.call('SET', K.seq, seq_value) end
  loc_dirty, lot_dirty, lot_gone, line_dirty, line_gone = {}, {}, {}, {}, {}
  exp_set, exp_del = {}, {}
end
