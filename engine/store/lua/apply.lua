-- apply.lua — one supply command of one SKU, applied idempotently, after lazy expiry.
-- KEYS: the twelve keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 cmd, 4 event_id ('' = no event-id check),
--       5 source ('topic:partition', '' = no offset check), 6 offset (-1 = none),
--       7 payload json (validated and completed by the store), 8 reason, 9 ref
-- cmd: inbound_created | inbound_updated | inbound_cancelled | receipt | adjust | count | ship |
--      order_placed | order_cancelled | policy | reliability
-- Reply: json supply reply {status, reason?, at_risk: [{rid, short}],
--        slipped: [{rid, old_ms, new_ms}], lot?, clamped?, line?, available?, position}
--
-- A command whose offset is at or below the source's watermark, or whose event id is in the
-- recent-event log (last 1000), is a duplicate. Any other command records both, appends to the
-- journal (last 200) and is applied; all but ship / order_placed / order_cancelled rebalance.

local EVENT_LOG_SIZE = 1000
local JOURNAL_SIZE = 200
local REBALANCING = {
  inbound_created = true, inbound_updated = true, inbound_cancelled = true, receipt = true,
  adjust = true, count = true, policy = true, reliability = true,
}

local H = {}

function H.inbound_created(p)
  local id = p.inbound_id
  if lots[id] then return { status = 'duplicate', reason = 'exists' } end
  loc_get(p.loc)
  lots[id] = { loc = p.loc, qty = p.qty, eta_ms = p.eta_ms, supplier = p.supplier, alloc = 0 }
  lot_dirty[id] = true
  lot_gone[id] = nil
  return { status = 'ok' }
end

local function lines_on_lot(id)
  local out = {}
  for _, line in ipairs(live_lines(true)) do
    local entries = {}
    for _, a in ipairs(line.alloc) do
      if a[1] == 'lot' and a[2] == id then entries[#entries + 1] = a end
    end
    if #entries > 0 then out[#out + 1] = { line = line, entries = entries } end
  end
  return out
end

function H.inbound_updated(p)
  local lot = lots[p.inbound_id]
  if not lot then return { status = 'not_found' } end
  if p.eta_ms ~= 0 then
    for _, hit in ipairs(lines_on_lot(p.inbound_id)) do touch(hit.line) end
    lot.eta_ms = p.eta_ms
  end
  if p.qty ~= 0 then lot.qty = p.qty end
  lot_dirty[p.inbound_id] = true
  return { status = 'ok' }
end

-- move every allocation of lot `id` to `kind` at `loc` ('short' at the lot's location on a
-- cancellation, 'oh' at the receiving location on a receipt)
local function move_lot_allocations(id, kind, loc)
  for _, hit in ipairs(lines_on_lot(id)) do
    local line = hit.line
    for _, a in ipairs(hit.entries) do
      local q = a[4]
      touch(line)
      unbook(line, a, q)
      drop_empty(line)
      book(line, { { kind, kind == 'oh' and loc or '', loc, q } })
    end
  end
end

function H.inbound_cancelled(p)
  local id = p.inbound_id
  local lot = lots[id]
  if not lot then return { status = 'not_found' } end
  move_lot_allocations(id, 'short', lot.loc)
  lot_delete(id)
  return { status = 'ok' }
end

function H.receipt(p)
  local b = loc_touch(p.loc)
  b.oh = b.oh + p.qty
  local reply = { status = 'ok' }
  local id = p.inbound_id
  local lot = id ~= '' and lots[id] or nil
  if lot then
    reply.lot = { inbound_id = id, qty = lot.qty, eta_ms = lot.eta_ms, supplier = lot.supplier }
    move_lot_allocations(id, 'oh', p.loc)
    lot_delete(id)
  end
  return reply
end

function H.adjust(p)
  local b = loc_touch(p.loc)
  local target = b.oh + p.delta
  b.oh = math.max(0, target)
  if target < 0 then return { status = 'ok', clamped = true } end
  return { status = 'ok' }
end

function H.count(p)
  loc_touch(p.loc).oh = p.on_hand
  return { status = 'ok' }
end

function H.ship(p)
  local b = loc_touch(p.loc)
  b.oh = math.max(0, b.oh - p.qty)
  local line = get_line(p.rid)
  if not line then return { status = 'ok' } end
  if line.state == 'committed' then
    local left = p.qty
    for _, kind in ipairs({ 'oh', 'lot', 'bo', 'short' }) do
      for _, a in ipairs(line.alloc) do
        if left == 0 then break end
        if a[1] == kind and a[4] > 0 then
          local q = math.min(left, a[4])
          unbook(line, a, q)
          left = left - q
        end
      end
    end
    drop_empty(line)
    if #line.alloc == 0 then line.state = 'shipped' end
    mark(line.rid)
  end
  return { status = 'ok', line = wire(line) }
end

function H.order_placed(p)
  local rid = p.rid
  local line = get_line(rid)
  if line and line.state == 'held' then
    local out = op_confirm(rid)
    return { status = out.status, line = wire(out.line) }
  end
  if line and (line.state == 'committed' or line.state == 'shipped') then
    return { status = 'duplicate', reason = line.state, line = wire(line) }
  end
  local out = hold_one({ rid = rid, qty = p.qty, loc = p.loc, ttl_ms = 600000, channel = p.channel,
                         customer = p.customer or '', commit = true }, true)
  if out.status == 'refused' then
    return { status = 'refused', reason = out.reason, available = out.available }
  end
  return { status = out.status, line = wire(out.line) }
end

function H.order_cancelled(p)
  local out = op_release(p.rid)
  out.rid = nil
  if out.line then out.line = wire(out.line) end
  return out
end

function H.policy(p)
  redis.call('SET', K.pol, cjson.encode(p.policy))
  load_policy()
  return { status = 'ok' }
end

function H.reliability(p)
  redis.call('HSET', K.srel, p.supplier, p.rel_pm)
  if rel then rel[p.supplier] = p.rel_pm end
  return { status = 'ok' }
end

local function finish(reply, slipped)
  reply.at_risk = at_risk()
  reply.slipped = slipped
  reply.position = position(nil)
  flush()
  return cjson.encode(reply)
end

expire_due()
local cmd, event_id, source = ARGV[3], ARGV[4], ARGV[5]
local offset = tonumber(ARGV[6]) or -1
local handler = H[cmd]
if not handler then
  flush()
  return redis.error_reply('ERR unknown supply command ' .. tostring(cmd))
end

if source ~= '' and offset >= 0 then
  local last = tonumber(redis.call('HGET', K.off, source) or '-1')
  if offset <= last then return finish({ status = 'duplicate', reason = 'offset' }, {}) end
end
if event_id ~= '' and redis.call('ZSCORE', K.evt, event_id) then
  return finish({ status = 'duplicate', reason = 'event_id' }, {})
end

if source ~= '' and offset >= 0 then redis.call('HSET', K.off, source, ARGV[6]) end
if event_id ~= '' then
  local top = redis.call('ZREVRANGE', K.evt, 0, 0, 'WITHSCORES')
  local order = 1
  if #top > 0 then order = tonumber(top[2]) + 1 end
  redis.call('ZADD', K.evt, order, event_id)
  redis.call('ZREMRANGEBYRANK', K.evt, 0, -(EVENT_LOG_SIZE + 1))
end
redis.call('LPUSH', K.jrnl, cjson.encode({
  event_id = event_id, cmd = cmd, reason = ARGV[8], ref = ARGV[9], at = NOW,
}))
redis.call('LTRIM', K.jrnl, 0, JOURNAL_SIZE - 1)

local reply = handler(cjson.decode(ARGV[7]))
if REBALANCING[cmd] then rebalance() end
return finish(reply, redate())
