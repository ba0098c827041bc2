-- publish.lua — a reservation event kept in the SKU's change log until the relay ships it: the
-- relay produces the event to inventory.reservations (key: the reservation id) with the record,
-- so an event whose change was answered is lost neither to a crash nor to a broker that is away
-- (docs/changelog.md "Reservation events"). Each change's event is kept once: the call notes the
-- change in the reservation's marks, so a request repeated after a crash may publish its event
-- again (it cannot know whether the first try did) and the log still gets it once.
-- KEYS: the keys of the SKU (see lib.lua), then 18: the reservation's marks (string, in the SKU's
--       slot: ' <change>' for each change whose event was kept; of extensions only the last)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 the reservation id (the message key), 4 the event (JSON),
--       5 the change (its event id after 'res:<rid>:': held, confirmed, released,
--       extended:<expires_ms>), 6 how long the marks are kept (ms)
-- Reply: 1 kept (a record written), 0 kept before (nothing written)

local function marked(marks, change)
  return marks and string.find(marks .. ' ', ' ' .. change .. ' ', 1, true) ~= nil
end

entry('publish', function()
  K.marks, K.stashes = K.stashes and K.stashes[1], nil -- key 18 is the marks, no reply stash
  local change = ARGV[5]
  if K.marks and change then -- a record of an event kept without marks replays without them
    local at = NOW + tonumber(ARGV[6])
    if not redis.call('SET', K.marks, ' ' .. change, 'NX', 'PXAT', at) then
      local marks = redis.call('GET', K.marks)
      if marked(marks, change) then return 0 end
      if string.sub(change, 1, 9) == 'extended:' then
        marks = string.gsub(marks, ' extended:%d+', '')
      end
      redis.call('SET', K.marks, marks .. ' ' .. change, 'PXAT', at)
    end
  end
  S.wrote = true
  return 1
end)
