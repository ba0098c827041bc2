-- rebalance.lua — the supply-side rules, loaded by apply.lua only (after lib.lua): giving back
-- over-allocated supply, re-filling shorts, re-dating promises. Lines are found through the pool
-- index (K.pool, lib.lua), so the work is the lines a change concerns, never the SKU's history.
-- KEYS / ARGV: those of lib.lua (K.job: the paused job's touched lines). No reply of its own.

----------------------------------------------------------------------------- rebalance

-- promised date from the line's supplied allocations, never later than needed
function F.repromise(line)
  local base = 0
  for _, a in ipairs(line.alloc) do
    if a[1] == 'lot' then
      base = math.max(base, F.get_lots()[a[2]].eta_ms)
    elseif a[1] == 'bo' then
      base = math.max(base, NOW + pol.backorder_days * DAY_MS)
    end
  end
  if base > 0 then return base end
  return math.min(line.promised_ms, NOW)
end

-- remember a line's promised date before the command changed it (rid -> old ms); a job that
-- pauses keeps them in K.job (F.save_touched) until its report phase
function F.touch(line)
  local touched = S.touched
  if touched[line.rid] == nil then
    touched[line.rid] = line.promised_ms
    S.touched_order[#S.touched_order + 1] = line.rid
  end
end

-- one more line of work in this call; true once the call's budget is spent
function F.spend()
  S.budget = S.budget - 1
  return S.budget <= 0
end

-- the newest lines drawing on `pool` first give back up to `excess` units of the entries
-- `matches` accepts; false when the budget ran out first
function F.shed(excess, pool, matches)
  if excess <= 0 then return true end
  local paused = false
  F.each_in_pool(pool, true, function(line)
    local chosen = {}
    for _, a in ipairs(line.alloc) do
      if matches(a) then chosen[#chosen + 1] = a end
    end
    for _, a in ipairs(chosen) do
      if excess == 0 then return true end
      local q = math.min(excess, a[4])
      F.touch(line)
      local loc = a[3]
      F.unbook(line, a, q)
      F.drop_empty(line)
      F.book(line, { { 'short', '', loc, q } })
      excess = excess - q
    end
    if excess == 0 then return true end
    paused = F.spend()
    return paused
  end)
  return not paused and S.budget > 0
end

function F.any_short()
  for _, b in pairs(locs) do
    if b.st ~= 0 then return true end
  end
  return false
end

----------------------------------------------------------------------------- job phases
-- A supply command's work on lines runs as phases (F.run_job); each returns true when done and
-- false when the call's budget ran out, leaving a whole state: every line it changed is changed
-- completely, with the buckets, lots and indexes in step. The next call resumes the phase.

-- move every allocation of lot J.lot to J.kind ('oh' at J.loc on a receipt, 'short' at the
-- lot's location on a cancellation), newest lines first; then the lot goes, and a receipt's
-- units are put on hand (only then: until every line has moved, the lot's units are neither
-- promisable nor free on hand, so nothing is promised twice in between)
function F.phase_move(J)
  local id, kind, loc = J.lot, J.kind, J.loc
  local paused = false
  F.each_in_pool('l' .. id, true, function(line)
    local entries = {}
    for _, a in ipairs(line.alloc) do
      if a[1] == 'lot' and a[2] == id then entries[#entries + 1] = a end
    end
    for _, a in ipairs(entries) do
      local q = a[4]
      F.touch(line)
      F.unbook(line, a, q)
      F.drop_empty(line)
      F.book(line, { { kind, kind == 'oh' and loc or '', loc, q } })
    end
    paused = F.spend()
    return paused
  end)
  if paused or S.budget <= 0 then return false end
  if kind == 'oh' then
    local b = F.loc_touch(loc)
    b.oh = b.oh + J.qty
  end
  F.lot_delete(id)
  J.closing = nil
  return true
end

-- walk `pool` from the job's cursor, fn(line) doing one line's work, until the budget runs out
-- (false) or the pool does or fn returns true (the phase is done: true); the cursor follows
function F.walk_from(J, pool, newest_first, fn)
  local paused = false
  J.c = F.each_in_pool(pool, newest_first, function(line)
    if fn(line) then return true end
    paused = F.spend()
    return paused
  end, J.c)
  return not paused and S.budget > 0
end

-- note the promised date of every line on lot J.lot (its ETA changed), newest first
function F.phase_touch(J)
  return F.walk_from(J, 'l' .. J.lot, true, F.touch)
end

-- give back over-allocated supply, newest first: on-hand by location, lots by ETA, backorder.
-- The excess of each pool is read from the buckets, so a resumed shed starts again from them.
function F.phase_shed()
  local safety = pol.safety
  for _, name in ipairs(F.sorted_loc_names()) do
    local b = locs[name]
    if not F.shed(b.oa - math.max(0, b.oh - safety), 'o' .. name,
        function(a) return a[1] == 'oh' and a[3] == name end) then
      return false
    end
  end
  local all = F.get_lots()
  for _, id in ipairs(F.lots_in_order('')) do
    local lot = all[id]
    if not lot.closing and not F.shed(lot.alloc - F.promisable(lot), 'l' .. id,
        function(a) return a[1] == 'lot' and a[2] == id end) then
      return false
    end
  end
  local limit = 0
  if pol.mode == 'backorder' then limit = pol.backorder_limit end
  local bo_used = 0
  for _, b in pairs(locs) do bo_used = bo_used + b.ba end
  return F.shed(bo_used - limit, 'b', function(a) return a[1] == 'bo' end)
end

-- re-fill shorts, oldest line first. A line gets nothing once nothing is left anywhere
-- (capacity of '' bounds every location's), so the walk stops there instead of visiting every
-- short line.
function F.phase_refill(J)
  if not F.any_short() or F.capacity('') == 0 then return true end
  local visited = 0
  return F.walk_from(J, 's', false, function(line)
    local shorts = {}
    for _, a in ipairs(line.alloc) do
      if a[1] == 'short' then shorts[#shorts + 1] = a end
    end
    for _, a in ipairs(shorts) do
      local got = F.allocate(a[4], line.loc)
      if #got > 0 then
        F.touch(line)
        local n = 0
        for _, g in ipairs(got) do n = n + g[4] end
        F.unbook(line, a, n)
        F.drop_empty(line)
        F.book(line, got)
      end
    end
    visited = visited + 1
    return visited % 64 == 0 and F.capacity('') == 0
  end)
end

-- re-date one touched line and report it: slipped when now promised later than `old`, at risk
-- while it has short units (lines that ended meanwhile are left out)
local function report_line(rid, old, out)
  local line = F.get_line(rid)
  if not line or not F.is_live(line) then return end
  local new = F.repromise(line)
  if new ~= line.promised_ms then
    line.promised_ms = new
    F.mark(rid)
  end
  if new > old then out.slipped[#out.slipped + 1] = { rid = rid, old_ms = old, new_ms = new } end
  local short = 0
  for _, a in ipairs(line.alloc) do
    if a[1] == 'short' then short = short + a[4] end
  end
  if short > 0 then out.at_risk[#out.at_risk + 1] = { rid = rid, short = short } end
end

-- the touched lines of this call into K.job ('<seq:012>|<rid>|<old promised ms>', lexical order
-- = seq order), for the report phase of a job that pauses
function F.save_touched()
  local add, touched = {}, S.touched
  for _, rid in ipairs(S.touched_order) do
    local line = F.get_line(rid)
    add[#add + 1] = '0'
    add[#add + 1] = string.format('%012d|', line.seq) .. rid .. '|' .. F.num(touched[rid])
    touched[rid] = nil
  end
  S.touched_order = {}
  if #add > 0 then F.call_chunked('ZADD', K.job, add, 2) end
end

-- re-date the touched lines, newest first, into S.report {slipped, at_risk}: from this call's
-- memory, or from K.job once the job has paused before
function F.phase_report(J)
  local out = S.report
  if not J.saved then
    local seq, order = {}, S.touched_order
    for _, rid in ipairs(order) do seq[rid] = F.get_line(rid).seq end
    table.sort(order, function(a, b) return seq[a] > seq[b] end)
    for _, rid in ipairs(order) do report_line(rid, S.touched[rid], out) end
    return true
  end
  F.save_touched()
  while true do
    local page = redis.call('ZREVRANGEBYLEX', K.job, '+', '-', 'LIMIT', 0, math.min(POOL_PAGE, S.budget))
    if #page == 0 then return true end
    local done, paused = {}, false
    for _, m in ipairs(page) do
      local rid, old = string.match(m, '^%d+|(.+)|(%d+)$')
      report_line(rid, tonumber(old), out)
      done[#done + 1] = m
      paused = F.spend()
      if paused then break end
    end
    F.call_chunked('ZREM', K.job, done, 1)
    if paused then return false end
  end
end

-- run the job's phases from where it stands; true when all are done
function F.run_job(J)
  while J.i <= #J.phases do
    if not F['phase_' .. J.phases[J.i]](J) then return false end
    J.i = J.i + 1
    J.c = nil
  end
  return true
end
