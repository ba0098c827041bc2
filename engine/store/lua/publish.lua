-- publish.lua — reservation events kept in the SKU's change log until the relay ships them: the
-- relay produces each event to inventory.reservations (key: its reservation id) with the record,
-- so an event whose change was answered is lost neither to a crash nor to a broker that is away
-- (docs/changelog.md "Reservation events"). One call keeps the events of several reservations
-- whose first SKU this is (the API sends the events waiting for one SKU together).
-- Each change's event is kept once: the call notes the change in its reservation's marks, so a
-- request repeated after a crash may publish its event again (it cannot know whether the first
-- try did) and the log still gets it once.
-- KEYS: the keys of the SKU (see lib.lua), then 18…: each event's reservation's marks (a string
--       in the SKU's slot: ' <change>' for each change whose event was kept; of extensions only
--       the last), in the order of the events
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 how long the marks are kept (ms), then for each event:
--       the reservation id (the message key), the event (JSON), the change (its event id after
--       'res:<rid>:': held, confirmed, released, extended:<expires_ms>)
--       (a record written before marks existed replays as ARGV 3 rid, 4 event: kept, no marks)
-- Reply: for each event 1 kept, 0 kept before. The record's args are the lifetime and the events
--        kept (none kept: no record).

local function marked(marks, change)
  return string.find(marks .. ' ', ' ' .. change .. ' ', 1, true) ~= nil
end

-- note the change in the marks K.marks[n]; false when it was noted before
local function mark(n, change, at)
  if redis.call('SET', K.marks[n], ' ' .. change, 'NX', 'PXAT', at) then return true end
  local marks = redis.call('GET', K.marks[n])
  if marked(marks, change) then return false end
  if string.sub(change, 1, 9) == 'extended:' then
    marks = string.gsub(marks, ' extended:%d+', '')
  end
  redis.call('SET', K.marks[n], marks .. ' ' .. change, 'PXAT', at)
  return true
end

entry('publish', function()
  K.marks, K.stashes = K.stashes or {}, nil -- keys 18… are the marks, no reply stash
  if #ARGV == 4 then -- an event kept without marks, replayed
    S.wrote = true
    return { 1 }
  end
  local at = NOW + tonumber(ARGV[3])
  local kept, reply = { ARGV[3] }, {}
  for i = 4, #ARGV, 3 do
    local n = #reply + 1
    if mark(n, ARGV[i + 2], at) then
      local k = #kept
      kept[k + 1], kept[k + 2], kept[k + 3] = ARGV[i], ARGV[i + 1], ARGV[i + 2]
      reply[n] = 1
    else
      reply[n] = 0
    end
  end
  if #kept > 1 then
    S.wrote, S.args = true, kept
  end
  return reply
end)
