-- rebalance.lua — the supply-side rules, loaded by apply.lua only (after lib.lua): giving back
-- over-allocated supply, re-filling shorts, re-dating promises. Lines are found through the pool
-- index (K.pool, lib.lua), so the work is the lines a change concerns, never the SKU's history.
-- KEYS / ARGV: those of lib.lua. No reply of its own.

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

-- remember a line's promised date before the command changed it (rid -> old ms)
local touched, touched_order = {}, {}
function F.touch(line)
  if touched[line.rid] == nil then
    touched[line.rid] = line.promised_ms
    touched_order[#touched_order + 1] = line.rid
  end
end

-- the newest lines drawing on `pool` first give back up to `excess` units of the entries
-- `matches` accepts
function F.shed(excess, pool, matches)
  if excess <= 0 then return end
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
    return excess == 0
  end)
end

function F.any_short()
  for _, b in pairs(locs) do
    if b.st ~= 0 then return true end
  end
  return false
end

-- give back over-allocated supply (newest first), then re-fill shorts (oldest first)
function F.rebalance()
  local safety = pol.safety
  for _, name in ipairs(F.sorted_loc_names()) do
    local b = locs[name]
    F.shed(b.oa - math.max(0, b.oh - safety), 'o' .. name, function(a) return a[1] == 'oh' and a[3] == name end)
  end
  local all = F.get_lots()
  for _, id in ipairs(F.lots_in_order('')) do
    local lot = all[id]
    F.shed(lot.alloc - F.promisable(lot), 'l' .. id, function(a) return a[1] == 'lot' and a[2] == id end)
  end
  local limit = 0
  if pol.mode == 'backorder' then limit = pol.backorder_limit end
  local bo_used = 0
  for _, b in pairs(locs) do bo_used = bo_used + b.ba end
  F.shed(bo_used - limit, 'b', function(a) return a[1] == 'bo' end)
  if not F.any_short() then return end
  -- oldest first; a line gets nothing once nothing is left anywhere (capacity of '' bounds every
  -- location's), so the walk stops there instead of visiting every short line
  if F.capacity('') == 0 then return end
  local visited = 0
  F.each_in_pool('s', false, function(line)
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

-- re-date the touched lines; the ones now promised later, newest first
function F.redate()
  local slipped = {}
  for _, rid in ipairs(touched_order) do
    local line = lines[rid]
    local old = touched[rid]
    local new = F.repromise(line)
    if new ~= line.promised_ms then
      line.promised_ms = new
      F.mark(rid)
    end
    if new > old then slipped[#slipped + 1] = { rid = rid, old_ms = old, new_ms = new, seq = line.seq } end
  end
  table.sort(slipped, function(a, b) return a.seq > b.seq end)
  for _, s in ipairs(slipped) do s.seq = nil end
  return slipped
end

-- live lines with short units, newest first
function F.at_risk()
  local out = {}
  if not F.any_short() then return out end
  F.each_in_pool('s', true, function(line)
    local short = 0
    for _, a in ipairs(line.alloc) do
      if a[1] == 'short' then short = short + a[4] end
    end
    if short > 0 then out[#out + 1] = { rid = line.rid, short = short } end
  end)
  return out
end
