-- apply.lua — one supply command of one SKU, applied idempotently, after lazy expiry.
-- KEYS: the keys of the SKU (see lib.lua), then, when ARGV 9 > 0, K.stash: the reply stash key
--       '<prefix>-rp:{sku}:<source>:<offset>' (engine/store/reply_stash.py)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 cmd, 4 event_id ('' = no event-id check),
--       5 source ('topic:partition', '' = no offset check), 6 offset (-1 = none),
--       7 payload json (validated and completed by the store),
--       8 journal note: reason|ref, each with '%' and '|' escaped by the store,
--       9 keep_s: seconds to keep the reply under the stash key (0 or absent = not kept)
-- cmd: inbound_created | inbound_updated | inbound_cancelled | receipt | adjust | count | ship |
--      order_placed | order_cancelled | policy | reliability
-- Reply: json supply reply {status, reason?, at_risk: [{rid, short}],
--        slipped: [{rid, old_ms, new_ms}], lot?, clamped?, line?, available?, position}
--        (or '~more' while more holds are due than one call expires: lib.lua EXPIRE_LINES)
--
-- A command whose offset is at or below the source's watermark, or whose event id is one of the
-- last 1000 applied, is a duplicate. Any other command records both, appends to the journal (last
-- 200) and is applied; all but ship / order_placed / order_cancelled rebalance. The reply of an
-- applied command or of a duplicate by event id is kept under the stash key for keep_s seconds
-- (a replay aid for the flow's alert step); a duplicate by offset writes nothing.

local EVENT_LOG_SIZE = 1000
local EVENT_TRIM_EVERY = 250
local JOURNAL_SIZE = 200
local REBALANCING = {
  inbound_created = true, inbound_updated = true, inbound_cancelled = true, receipt = true,
  adjust = true, count = true, policy = true, reliability = true,
}

local H = {}

function H.inbound_created(p)
  local id = p.inbound_id
  local all = F.get_lots()
  if all[id] then return { status = 'duplicate', reason = 'exists' } end
  F.loc_get(p.loc)
  all[id] = { loc = p.loc, qty = p.qty, eta_ms = p.eta_ms, supplier = p.supplier, alloc = 0 }
  lot_chg[id] = true
  return { status = 'ok' }
end

-- the live lines drawing on lot `id`, newest first, each with its entries of the lot
local function lines_on_lot(id)
  local out = {}
  F.each_in_pool('l' .. id, true, function(line)
    local entries = {}
    for _, a in ipairs(line.alloc) do
      if a[1] == 'lot' and a[2] == id then entries[#entries + 1] = a end
    end
    if #entries > 0 then out[#out + 1] = { line = line, entries = entries } end
  end)
  return out
end

function H.inbound_updated(p)
  local lot = F.get_lots()[p.inbound_id]
  if not lot then return { status = 'not_found' } end
  if p.eta_ms ~= 0 then
    for _, hit in ipairs(lines_on_lot(p.inbound_id)) do F.touch(hit.line) end
    lot.eta_ms = p.eta_ms
  end
  if p.qty ~= 0 then lot.qty = p.qty end
  lot_chg[p.inbound_id] = true
  return { status = 'ok' }
end

-- move every allocation of lot `id` to `kind` at `loc` ('short' at the lot's location on a
-- cancellation, 'oh' at the receiving location on a receipt)
local function move_lot_allocations(id, kind, loc)
  for _, hit in ipairs(lines_on_lot(id)) do
    local line = hit.line
    for _, a in ipairs(hit.entries) do
      local q = a[4]
      F.touch(line)
      F.unbook(line, a, q)
      F.drop_empty(line)
      F.book(line, { { kind, kind == 'oh' and loc or '', loc, q } })
    end
  end
end

function H.inbound_cancelled(p)
  local id = p.inbound_id
  local lot = F.get_lots()[id]
  if not lot then return { status = 'not_found' } end
  move_lot_allocations(id, 'short', lot.loc)
  F.lot_delete(id)
  return { status = 'ok' }
end

function H.receipt(p)
  local b = F.loc_touch(p.loc)
  b.oh = b.oh + p.qty
  local reply = { status = 'ok' }
  local id = p.inbound_id
  local lot = id ~= '' and F.get_lots()[id] or nil
  if lot then
    reply.lot = '{"inbound_id":"' .. id .. '","qty":' .. lot.qty .. ',"eta_ms":' .. lot.eta_ms ..
      ',"supplier":"' .. lot.supplier .. '"}'
    move_lot_allocations(id, 'oh', p.loc)
    F.lot_delete(id)
  end
  return reply
end

function H.adjust(p)
  local b = F.loc_touch(p.loc)
  local target = b.oh + p.delta
  b.oh = math.max(0, target)
  if target < 0 then return { status = 'ok', clamped = true } end
  return { status = 'ok' }
end

function H.count(p)
  F.loc_touch(p.loc).oh = p.on_hand
  return { status = 'ok' }
end

function H.ship(p)
  local b = F.loc_touch(p.loc)
  b.oh = math.max(0, b.oh - p.qty)
  local line = F.get_line(p.rid)
  if not line then return { status = 'ok' } end
  if line.state == 'committed' then
    local left = p.qty
    for _, kind in ipairs({ 'oh', 'lot', 'bo', 'short' }) do
      for _, a in ipairs(line.alloc) do
        if left == 0 then break end
        if a[1] == kind and a[4] > 0 then
          local q = math.min(left, a[4])
          F.unbook(line, a, q)
          left = left - q
        end
      end
    end
    F.drop_empty(line)
    if #line.alloc == 0 then
      line.state = 'shipped'
      dead_chg[line.rid] = NOW
    end
    F.mark(line.rid)
  end
  return { status = 'ok', line = F.line_json(line) }
end

-- does an order line ask for what the live line of its id holds? (loc '' = the order names none)
local function order_matches(line, p)
  return line.qty == p.qty and (p.loc == '' or p.loc == line.loc)
end

-- the order's terms differ from the live line of its id: the order is what was sold, so the line
-- is replaced by a committed line of the order's terms, checked like any new line with the old
-- line's units given back first; refused, the old line stays exactly as it was
local function order_replace(p, line)
  local kept, state = {}, line.state
  for i, a in ipairs(line.alloc) do kept[i] = { a[1], a[2], a[3], a[4] } end
  F.return_units(line)
  line.state = 'released' -- so hold_one may replace it
  local status, _, reason, available = F.hold_one(p.rid, p.qty, p.loc, 600000, p.channel,
    p.customer or '', true, true)
  if status == 'refused' then
    line.state = state
    F.book(line, kept)
    F.usage(line.customer, line.channel, line.qty)
    return { status = 'refused', reason = reason, available = available }
  end
  return { status = status, reason = 'replaced', line = F.line_json(F.get_line(p.rid)) }
end

function H.order_placed(p)
  local rid = p.rid
  local line = F.get_line(rid)
  if line and F.is_live(line) and not order_matches(line, p) then return order_replace(p, line) end
  if line and line.state == 'held' then
    local out = F.op_confirm(rid)
    return { status = out.status, line = F.line_json(out.line) }
  end
  if line and (line.state == 'committed' or line.state == 'shipped') then
    return { status = 'duplicate', reason = line.state, line = F.line_json(line) }
  end
  local status, _, reason, available = F.hold_one(rid, p.qty, p.loc, 600000, p.channel,
    p.customer or '', true, true)
  if status == 'refused' then
    return { status = 'refused', reason = reason, available = available }
  end
  return { status = status, line = F.line_json(F.get_line(rid)) }
end

function H.order_cancelled(p)
  local out = F.op_release(p.rid)
  local reply = { status = out.status, reason = out.reason }
  if out.line then reply.line = F.line_json(out.line) end
  return reply
end

-- the policy fields the scripts use, in the '!P' form parse_policy reads
local function compact_policy(p)
  local q = {}
  for ch, v in pairs(p.quotas or {}) do q[#q + 1] = ch .. '=' .. v end
  table.sort(q)
  return table.concat({ p.mode, p.cap_pm, p.horizon_s, p.use_reliability and 1 or 0,
    p.backorder_limit, p.backorder_days, p.safety, p.order_cap, p.customer_limit }, ',') ..
    '|' .. table.concat(q, ',')
end

function H.policy(p)
  redis.call('SET', K.pol, cjson.encode(p.policy))
  local compact = compact_policy(p.policy)
  state_set['!P'] = compact
  F.parse_policy(compact)
  return { status = 'ok' }
end

function H.reliability(p)
  redis.call('HSET', K.srel, p.supplier, p.rel_pm)
  if S.rel_loaded then rel[p.supplier] = p.rel_pm end
  return { status = 'ok' }
end

-- the reply as json; `r` holds lot and line as json already
local function finish(r, slipped)
  local risk = F.at_risk()
  local out = { '{"status":"', r.status, '"' }
  if r.reason then out[#out + 1] = ',"reason":"' .. r.reason .. '"' end
  if r.available then out[#out + 1] = ',"available":' .. r.available end
  if r.clamped then out[#out + 1] = ',"clamped":true' end
  if r.lot then out[#out + 1] = ',"lot":' .. r.lot end
  if r.line then out[#out + 1] = ',"line":' .. r.line end
  local parts = {}
  for i, a in ipairs(risk) do parts[i] = '{"rid":"' .. a.rid .. '","short":' .. a.short .. '}' end
  out[#out + 1] = ',"at_risk":[' .. table.concat(parts, ',') .. ']'
  parts = {}
  for i, s in ipairs(slipped) do
    parts[i] = '{"rid":"' .. s.rid .. '","old_ms":' .. s.old_ms .. ',"new_ms":' .. s.new_ms .. '}'
  end
  out[#out + 1] = ',"slipped":[' .. table.concat(parts, ',') .. ']'
  out[#out + 1] = ',"position":' .. F.position_json(nil) .. '}'
  F.flush()
  return table.concat(out)
end

-- record event_id as the S.events-th id applied. The ring field 'r<S.events mod 1000>' names the
-- id applied 1000 ids ago, which leaves the window now (it cannot have been applied again since:
-- it was a duplicate until this moment), so its field goes: O(1) per id, the log never read whole.
local function log_event(event_id)
  S.events = S.events + 1
  local slot = 'r' .. (S.events % EVENT_LOG_SIZE)
  local gone = redis.call('HGET', K.state, slot)
  if gone then
    redis.call('HDEL', K.state, 'e' .. gone)
  elseif S.events > EVENT_LOG_SIZE and S.events % EVENT_TRIM_EVERY == 0 then
    -- a log written before the ring: its ids have no slot, so drop the old ones in bulk until
    -- the ring has gone round once
    local oldest = S.events - EVENT_LOG_SIZE
    local flat = redis.call('HGETALL', K.state)
    local old = {}
    for i = 1, #flat, 2 do
      if string.byte(flat[i], 1) == 101 and tonumber(flat[i + 1]) <= oldest then old[#old + 1] = flat[i] end
    end
    if #old > 0 then F.call_chunked('HDEL', K.state, old, 1) end
  end
  state_set[slot] = event_id
  state_set['e' .. event_id] = S.events
end

local cmd, event_id, source = ARGV[3], ARGV[4], ARGV[5]
local offset = tonumber(ARGV[6]) or -1
local keep_s = tonumber(ARGV[9]) or 0

-- the reply, kept under the stash key when asked to
local function kept(reply)
  if keep_s > 0 then redis.call('SET', K.stash, reply, 'EX', keep_s) end
  return reply
end
local checks_offset = source ~= '' and offset >= 0
local seen = F.load_state(checks_offset and '@' .. source or '!', event_id ~= '' and 'e' .. event_id or '!')
F.expire_due()
if S.more_due then return F.more() end
local handler = H[cmd]
if not handler then
  F.flush()
  return redis.error_reply('ERR unknown supply command ' .. tostring(cmd))
end

if checks_offset and offset <= tonumber(seen[4] or '-1') then
  return finish({ status = 'duplicate', reason = 'offset' }, {})
end
if event_id ~= '' and seen[5] and tonumber(seen[5]) > S.events - EVENT_LOG_SIZE then
  return kept(finish({ status = 'duplicate', reason = 'event_id' }, {}))
end

if checks_offset then state_set['@' .. source] = ARGV[6] end
if event_id ~= '' then log_event(event_id) end
S.applied = S.applied + 1
S.dirty = true
state_set['j' .. (S.applied % JOURNAL_SIZE)] =
  NOW .. '|' .. cmd .. '|' .. (event_id ~= '' and S.events or '') .. '|' .. ARGV[8]

local reply = handler(cjson.decode(ARGV[7]))
if REBALANCING[cmd] then F.rebalance() end
return kept(finish(reply, F.redate()))
