-- apply.lua — supply commands of one SKU, applied idempotently after the due holds are given back: apply takes one,
-- apply_many several in order (its own header is further down).
-- KEYS: the keys of the SKU (see lib.lua), then, when ARGV 9 > 0, the reply stash key
--       '<prefix>-rp:{sku}:<source>:<offset>' (K.stashes[1]; engine/store/reply_stash.py)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 cmd, 4 event_id ('' = no event-id check),
--       5 source ('topic:partition', '' = no offset check), 6 offset (-1 = none),
--       7 payload json (validated and completed by the store; for '~continue' the job's token),
--       8 journal note: reason|ref, each with '%' and '|' escaped by the store,
--       9 keep_s: seconds to keep the reply under the stash key (0 = not kept; -1 = not kept,
--         and the reply leaves out "position": its caller has no use for it),
--      10 the most lines one call works on (0 = JOB_LINES)
-- cmd: inbound_created | inbound_updated | inbound_cancelled | receipt | adjust | count | ship |
--      order_placed | order_cancelled | policy | reliability, or '~continue': the next part of
--      the job whose token is ARGV 7
-- Reply: json supply reply {status, reason?, at_risk: [{rid, short}],
--        slipped: [{rid, old_ms, new_ms}], lot?, clamped?, line?, available?, position};
--        at_risk and slipped name the lines this command touched (docs/semantics.md).
--        Or, for the store (engine/store/scripts.py), which sends the call again:
--        '~more'  more seconds of holds are due than one call folds (lib.lua FOLD_MAX); nothing applied
--        '~part<token>|"at_risk":[…],"slipped":[…]'  the command's work on lines goes on in the
--                 next call ('~continue' with the token); the lists are this call's share
--        '~busy<token>'  another command's job is in progress: nothing applied; finish that
--                 job first ('~continue' with its token), then send this command again
--        '~busy'  an earlier offset of the same source is waiting for due holds to expire
--
-- A command whose offset is at or below the source's watermark, or whose event id is one of the
-- last 1000 applied, is a duplicate (reason 'offset', 'event_id', or 'event_id_reused' when the
-- id came with another command or payload). Any other command records both, appends to the journal (last
-- 200) and is applied; all but ship / order_placed / order_cancelled rebalance. The reply of an
-- applied command or of a duplicate by event id is kept under the stash key for keep_s seconds
-- (a replay aid for the flow's alert step); a duplicate by offset writes nothing.

local EVENT_LOG_SIZE = 1000
-- lines one call works on before the job pauses (ARGV 10 may set fewer: tests). A count, not a
-- time: a call must be a pure function of the state, its time and its arguments, so that its
-- change record replays to the same state (docs/changelog.md). A line costs 20-35 µs of Lua
-- (decode, re-book, re-encode, index members), so 16 keep a job's call near 0.5 ms; fewer
-- would shorten it, but every pause also ends a stream batch's call for the SKU (more calls,
-- each paying the fixed cost again).
local JOB_LINES = 16
-- how long a stream command stopped for due holds makes later offsets of its source wait
local BLOCK_MS = 5000
local EVENT_TRIM_EVERY = 250
local JOURNAL_SIZE = 200
local REBALANCING = {
  inbound_created = true, inbound_updated = true, inbound_cancelled = true, receipt = true,
  adjust = true, count = true, policy = true, reliability = true,
}

local H = {}

-- apply_many reads what each command checks for all of them at its start, in two HMGETs: the
-- fields of seen_fields and the event ring's next slots (field -> value, false: absent). Fields
-- this call deletes are listed in `deleted` and gone from Redis at the next write-back
-- (flush_all); until then they read as absent. (begin_batch sets all three afresh per call.)
local prefetched, ring_pre, deleted = {}, {}, {}

local function begin_batch()
  prefetched, ring_pre, deleted = {}, {}, {}
end

-- F.flush, after deleting the fields this call deleted
local function flush_all()
  local fields = {}
  for f in pairs(deleted) do fields[#fields + 1] = f end
  if #fields > 0 then F.call_chunked('HDEL', K.state, fields, 1) end
  deleted = {}
  F.flush()
end

function H.inbound_created(p)
  local id = p.inbound_id
  local all = F.get_lots()
  if all[id] then return { status = 'duplicate', reason = 'exists' } end
  F.loc_get(p.loc)
  all[id] = { loc = p.loc, qty = p.qty, eta_ms = p.eta_ms, supplier = p.supplier, alloc = 0 }
  lot_chg[id] = true
  F.lots_changed()
  return { status = 'ok' }
end

-- The handlers change what one command changes directly and leave the work on lines to the
-- job's phases (J.phases, lua/rebalance.lua), which a long history spreads over several calls.

function H.inbound_updated(p, J)
  local lot = F.get_lots()[p.inbound_id]
  if not lot then return { status = 'not_found' } end
  if p.eta_ms ~= 0 then
    J.phases[#J.phases + 1] = 'touch' -- its lines' dates are noted, then re-dated by the report
    J.lot = p.inbound_id
    lot.eta_ms = p.eta_ms
  end
  if p.qty ~= 0 then lot.qty = p.qty end
  lot_chg[p.inbound_id] = true
  F.lots_changed()
  return { status = 'ok' }
end

-- the job moves every allocation of lot `id` to `kind` at `loc` ('short' at the lot's location
-- on a cancellation, 'oh' at the receiving location on a receipt, whose `qty` units are put on
-- hand once all have moved); meanwhile the lot is closing: promisable to nobody
local function close_lot(J, id, kind, loc, qty)
  J.phases[#J.phases + 1] = 'move'
  J.lot, J.kind, J.loc, J.qty, J.closing = id, kind, loc, qty, id
  F.get_lots()[id].closing = true
  F.lots_changed()
end

function H.inbound_cancelled(p, J)
  local id = p.inbound_id
  local lot = F.get_lots()[id]
  if not lot then return { status = 'not_found' } end
  close_lot(J, id, 'short', lot.loc, 0)
  return { status = 'ok' }
end

function H.receipt(p, J)
  local reply = { status = 'ok' }
  local id = p.inbound_id
  local lot = id ~= '' and F.get_lots()[id] or nil
  if lot then
    reply.lot = '{"inbound_id":"' .. id .. '","qty":' .. lot.qty .. ',"eta_ms":' .. lot.eta_ms ..
      ',"supplier":"' .. lot.supplier .. '"}'
    F.loc_touch(p.loc)
    close_lot(J, id, 'oh', p.loc, p.qty)
  else
    local b = F.loc_touch(p.loc)
    b.oh = b.oh + p.qty
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
    if state == 'held' then
      line.bucket = F.due_at(line.expires_ms)
      F.due_count(line.bucket, 1, line.qty, line.customer, line.channel)
    end
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
  S.wrote = true
  redis.call('SET', K.pol, cjson.encode(p.policy))
  local compact = compact_policy(p.policy)
  state_set['!P'] = compact
  F.parse_policy(compact)
  return { status = 'ok' }
end

function H.reliability(p)
  S.wrote = true
  redis.call('HSET', K.srel, p.supplier, p.rel_pm)
  if S.rel_loaded then rel[p.supplier] = p.rel_pm end
  F.lots_changed()
  return { status = 'ok' }
end

-- the lists of a reply: {"slipped": [...], "at_risk": [...]} without the braces
local function lists_json(report)
  local parts = {}
  for i, a in ipairs(report.at_risk) do parts[i] = '{"rid":"' .. a.rid .. '","short":' .. a.short .. '}' end
  local out = '"at_risk":[' .. table.concat(parts, ',') .. ']'
  parts = {}
  for i, s in ipairs(report.slipped) do
    parts[i] = '{"rid":"' .. s.rid .. '","old_ms":' .. s.old_ms .. ',"new_ms":' .. s.new_ms .. '}'
  end
  return out .. ',"slipped":[' .. table.concat(parts, ',') .. ']'
end

-- the reply as json; `r` holds lot and line as json already
local function finish(r, report)
  local out = { '{"status":"', r.status, '"' }
  if r.reason then out[#out + 1] = ',"reason":"' .. r.reason .. '"' end
  if r.available then out[#out + 1] = ',"available":' .. r.available end
  if r.clamped then out[#out + 1] = ',"clamped":true' end
  if r.lot then out[#out + 1] = ',"lot":' .. r.lot end
  if r.line then out[#out + 1] = ',"line":' .. r.line end
  out[#out + 1] = ',' .. lists_json(report or S.report)
  -- the position reads every lot of the SKU: about 30 % of the stream's script time
  if not S.bare then out[#out + 1] = ',"position":' .. F.position_json(nil) end
  out[#out + 1] = '}'
  if not S.group then flush_all() end -- (apply_many writes back once, after its last command)
  return table.concat(out)
end

local NOTHING = { at_risk = {}, slipped = {} }

-- the quantity a command names, for its journal entry: qty, delta (adjust) or on_hand (count); ''
-- for the commands without one (policy, reliability, a cancel)
local function movement_qty(payload)
  return string.match(payload, '"qty":(%-?%d+)') or string.match(payload, '"delta":(%-?%d+)')
    or string.match(payload, '"on_hand":(%d+)') or ''
end

-- what an event id stands for in this SKU: a digest of the command and its payload, so that the
-- id coming back with other content is told apart from a redelivery
local function content_digest(c)
  return string.sub(redis.sha1hex(c.cmd .. '\n' .. c.payload .. '\n' .. c.note), 1, 12)
end

-- the number and digest of a recent-event field ('<n>' was written before digests were: it
-- matches any content)
local function event_entry(value)
  local n, digest = string.match(value, '^(%d+):?(%x*)$')
  return tonumber(n), digest
end

-- record event_id as the S.events-th id applied. The ring field 'r<S.events mod 1000>' names the
-- id applied 1000 ids ago, which leaves the window now (it cannot have been applied again since:
-- it was a duplicate until this moment), so its field goes: O(1) per id, the log never read whole.
local function log_event(event_id, digest)
  S.events = S.events + 1
  local slot = 'r' .. (S.events % EVENT_LOG_SIZE)
  local gone = state_set[slot]
  if gone == nil then
    gone = ring_pre[slot]
    if gone == nil then gone = redis.call('HGET', K.state, slot) end
  end
  if gone then
    deleted['e' .. gone] = true
    state_set['e' .. gone] = nil
  elseif S.events > EVENT_LOG_SIZE and S.events % EVENT_TRIM_EVERY == 0 then
    -- a log written before the ring: its ids have no slot, so drop the old ones in bulk until
    -- the ring has gone round once
    local oldest = S.events - EVENT_LOG_SIZE
    local flat = redis.call('HGETALL', K.state)
    local old = {}
    for i = 1, #flat, 2 do
      if string.byte(flat[i], 1) == 101 and event_entry(flat[i + 1]) <= oldest then old[#old + 1] = flat[i] end
    end
    if #old > 0 then F.call_chunked('HDEL', K.state, old, 1) end
  end
  state_set[slot] = event_id
  state_set['e' .. event_id] = S.events .. ':' .. digest
  deleted['e' .. event_id] = nil
end

-- One command, once the call's state is loaded and no due hold is left: its reply (json), or
-- '~part…' / '~busy…' (see the header), or '~stop' (not applied: an unknown command, for the
-- store to send alone). c: {cmd, event_id, source, offset (number), offset_raw, payload (json,
-- or the job's token for '~continue'), note, keep_s, budget, stash (its index in K.stashes)};
-- seen: the state fields '@<source>', 'e<event_id>' and '!B' as they are now.
local function apply_one(c, seen)
  local cmd, event_id, source, offset = c.cmd, c.event_id, c.source, c.offset
  S.budget = c.budget > 0 and c.budget or JOB_LINES
  S.bare = c.keep_s < 0
  S.report = { at_risk = {}, slipped = {} }
  S.touched, S.touched_order = {}, {}

  -- the reply, kept under the stash key when asked to
  local function kept(reply)
    if c.keep_s > 0 then redis.call('SET', K.stashes[c.stash], reply, 'EX', c.keep_s) end
    return reply
  end

  -- run the job as far as this call's budget goes: its reply when done, else a part
  -- '~part<token>|<lists>' (the lines it reported so far) and the job kept under '!J'
  local function advance(J)
    S.job = J
    if F.run_job(J) then
      if J.saved then F.call_chunked('HDEL', K.state, { '!J' }, 1) end
      S.job = false
      return kept(finish(J.head))
    end
    F.save_touched()
    J.saved = true
    state_set['!J'] = cjson.encode(J)
    local part = '~part' .. J.t .. '|' .. lists_json(S.report)
    flush_all()
    return part
  end

  local checks_offset = source ~= '' and offset >= 0
  if cmd == '~continue' then
    local J = S.job
    if J and J.t == c.payload then return advance(J) end
    -- the job was finished by another caller: its reply went there
    return finish({ status = 'ok', reason = 'job_done' }, NOTHING)
  end
  local handler = H[cmd]
  if not handler then return '~stop' end

  local block = seen[3]
  if block then
    local bsrc, boff, bms = string.match(block, '^(.*)|(%d+)|(%d+)$')
    local mine = checks_offset and bsrc == source
    if mine and offset > tonumber(boff) and NOW - tonumber(bms) < BLOCK_MS then
      flush_all()
      return '~busy'
    end
    -- the command it waited for is here (or never came back in time)
    if (mine and offset == tonumber(boff)) or NOW - tonumber(bms) >= BLOCK_MS then
      deleted['!B'] = true
      state_set['!B'] = nil
    end
  end
  if checks_offset and offset <= tonumber(seen[1] or '-1') then
    return finish({ status = 'duplicate', reason = 'offset' }, NOTHING)
  end
  local digest = event_id ~= '' and content_digest(c)
  if digest and seen[2] then
    local n, was = event_entry(seen[2])
    if n > S.events - EVENT_LOG_SIZE then
      -- nothing is applied either way; the flow dead-letters an id reused with other content
      local reason = (was == '' or was == digest) and 'event_id' or 'event_id_reused'
      return kept(finish({ status = 'duplicate', reason = reason }, NOTHING))
    end
  end
  if S.job then
    flush_all()
    return '~busy' .. S.job.t
  end

  if checks_offset then state_set['@' .. source] = c.offset_raw end
  if digest then log_event(event_id, digest) end
  S.applied = S.applied + 1
  S.dirty = true
  state_set['j' .. (S.applied % JOURNAL_SIZE)] = NOW .. '|' .. cmd .. '|' .. (event_id ~= '' and S.events or '') ..
    '|' .. movement_qty(c.payload) .. '|' .. c.note

  local J = { t = tostring(S.applied), phases = {}, i = 1 }
  J.head = handler(cjson.decode(c.payload), J)
  if REBALANCING[cmd] then
    J.phases[#J.phases + 1] = 'shed'
    J.phases[#J.phases + 1] = 'refill'
  end
  J.phases[#J.phases + 1] = 'report'
  return advance(J)
end

-- the command whose 8 arguments start at ARGV[i] (cmd, event_id, source, offset, payload, note,
-- keep_s, budget); stash: the index of its stash key in K.stashes (when keep_s > 0)
local function command_at(i, stash)
  local keep_s = tonumber(ARGV[i + 6]) or 0
  return {
    cmd = ARGV[i], event_id = ARGV[i + 1], source = ARGV[i + 2], offset = tonumber(ARGV[i + 3]) or -1,
    offset_raw = ARGV[i + 3], payload = ARGV[i + 4], note = ARGV[i + 5], keep_s = keep_s,
    budget = tonumber(ARGV[i + 7] or '') or 0, stash = keep_s > 0 and stash or nil,
  }
end

-- the state fields apply_one checks for c
local function seen_fields(c)
  return c.source ~= '' and c.offset >= 0 and '@' .. c.source or '!',
    c.event_id ~= '' and 'e' .. c.event_id or '!', '!B'
end

-- those fields as they are now, written back or not (apply_many writes back at its end): this
-- call's writes and deletions, else what apply_many read at its start
local function seen_now(c)
  local names = { seen_fields(c) }
  local vals = {}
  for i, name in ipairs(names) do
    local v = state_set[name]
    if v == nil and not deleted[name] then
      v = prefetched[name]
      if v == nil then v = redis.call('HGET', K.state, name) or false end
    end
    vals[i] = v or nil
  end
  return vals
end

-- due holds left: the command waits (nothing applied), and later offsets of its source wait for
-- it (a pipelined batch runs them before the store sends this one again)
local function wait_for_expiry(c, block)
  local mark = c.source .. '|' .. c.offset .. '|'
  if c.source ~= '' and c.offset >= 0 and c.cmd ~= '~continue'
      and (not block or string.sub(block, 1, #mark) == mark) then
    state_set['!B'] = mark .. NOW -- (again: the wait is counted from this command's last call)
  end
  return F.more()
end

entry('apply', function()
  begin_batch()
  local c = command_at(3, 1)
  local vals = F.load_state(seen_fields(c))
  F.settle()
  if S.more_due then return wait_for_expiry(c, vals[8]) end
  local reply = apply_one(c, { vals[6], vals[7], vals[8] })
  if reply == '~stop' then
    flush_all()
    return redis.error_reply('ERR unknown supply command ' .. tostring(c.cmd))
  end
  return reply
end)

-- apply_many: several commands of the SKU in one call, in order (the stream's batches).
-- ARGV: 1 sku, 2 now_ms, 3 n, then 8 per command from ARGV[4] (as apply's ARGV 3..10).
-- KEYS: the SKU's keys, then the stash keys of the commands with keep_s > 0, in their order.
-- Reply: '~more' (due holds left: nothing applied), or an array of the commands' replies in
-- order, ending early at the first that is '~part…', '~busy…' or '~stop' (the store carries on
-- from that command with apply calls).
entry('apply_many', function()
  begin_batch()
  local n = tonumber(ARGV[3])
  local stash = 1
  local cs = {}
  local fields = {}
  for k = 1, n do
    local c = command_at(4 + (k - 1) * 8, stash)
    if c.keep_s > 0 then stash = stash + 1 end
    cs[k] = c
    local a, b = seen_fields(c)
    fields[#fields + 1] = a
    fields[#fields + 1] = b
  end
  -- every command's checked fields ('!B' is read with the first's), then the ring slots the
  -- commands' event ids may take
  local first = { seen_fields(cs[1]) }
  local vals = F.load_state(first[1], first[2], first[3], unpack(fields, 3))
  for i = 3, #fields do prefetched[fields[i]] = vals[6 + i] or false end
  prefetched[fields[1]], prefetched[fields[2]], prefetched['!B'] = vals[6] or false, vals[7] or false,
    vals[8] or false
  F.settle()
  if S.more_due then return wait_for_expiry(cs[1], vals[8]) end
  local slots = {}
  for k = 1, n do slots[k] = 'r' .. ((S.events + k) % EVENT_LOG_SIZE) end
  local ring = redis.call('HMGET', K.state, unpack(slots))
  for k = 1, n do ring_pre[slots[k]] = ring[k] or false end
  -- and the lines the orders and shipments name
  local rids = {}
  for k = 1, n do
    local cmd = cs[k].cmd
    if cmd == 'order_placed' or cmd == 'order_cancelled' or cmd == 'ship' then
      rids[#rids + 1] = string.match(cs[k].payload, '"rid":"([^"]*)"')
    end
  end
  if #rids > 0 then F.prefetch_lines(rids) end
  local out = {}
  local seen = { vals[6], vals[7], vals[8] }
  -- the commands read the state they change from this call's tables, so it is written back once
  S.group = true
  for k = 1, n do
    if k > 1 then seen = seen_now(cs[k]) end
    local reply = apply_one(cs[k], seen)
    out[k] = reply
    if string.byte(reply, 1) == 126 then break end -- '~': the store carries on from here
  end
  flush_all()
  return out
end)
