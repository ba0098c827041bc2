-- figures.lua — the wire position, loaded by position.lua and apply.lua (after lib.lua).
-- KEYS / ARGV: those of lib.lua. No reply of its own.

----------------------------------------------------------------------------- position

-- the wire position as json (all locations, or only `location` when it is not nil)
function F.position_json(location)
  local num, promisable, free_oh = F.num, F.promisable, F.free_oh
  local safety = pol.safety
  local pit, transit = {}, {}
  local next_ms = 0
  for _, lot in pairs(F.get_lots()) do
    local p = promisable(lot)
    transit[lot.loc] = (transit[lot.loc] or 0) + lot.qty
    pit[lot.loc] = (pit[lot.loc] or 0) + p
    if (location == nil or lot.loc == location) and p - lot.alloc > 0
        and (next_ms == 0 or lot.eta_ms < next_ms) then
      next_ms = lot.eta_ms
    end
  end
  local names
  if location == nil then
    names = F.sorted_loc_names()
  elseif locs[location] then
    names = { location }
  else
    names = {}
  end
  local per = {}
  local oh, hd, cm, it, pt, atp, now, short = 0, 0, 0, 0, 0, 0, 0, 0
  for i, name in ipairs(names) do
    local b = locs[name]
    local p = pit[name] or 0
    local t = transit[name] or 0
    local a = b.oh + p - b.cm - b.hd - safety
    per[i] = '"' .. name .. '":{"on_hand":' .. num(b.oh) .. ',"safety":' .. num(safety) ..
      ',"held":' .. num(b.hd) .. ',"committed":' .. num(b.cm) .. ',"in_transit":' .. num(t) ..
      ',"promisable_in_transit":' .. num(p) .. ',"atp":' .. num(a) .. ',"oh_alloc":' .. num(b.oa) ..
      ',"bo_alloc":' .. num(b.ba) .. ',"short":' .. num(b.st) .. '}'
    oh, hd, cm, it, pt, atp = oh + b.oh, hd + b.hd, cm + b.cm, it + t, pt + p, atp + a
    now, short = now + free_oh(name), short + b.st
  end
  return '{"sku":"' .. SKU .. '","on_hand":' .. num(oh) .. ',"safety":' .. num(safety * #names) ..
    ',"held":' .. num(hd) .. ',"committed":' .. num(cm) .. ',"in_transit":' .. num(it) ..
    ',"promisable_in_transit":' .. num(pt) .. ',"atp":' .. num(atp) .. ',"promisable_now":' .. num(now) ..
    ',"next_promise_ms":' .. num(next_ms) .. ',"oversold":' .. num(short) ..
    ',"locations":{' .. table.concat(per, ',') .. '}}'
end
