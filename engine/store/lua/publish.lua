-- publish.lua — a reservation event kept in the SKU's change log until the relay ships it: the
-- relay produces the event to inventory.reservations (key: the reservation id) with the record,
-- so an event whose change was answered is lost neither to a crash nor to a broker that is away
-- (docs/changelog.md "Reservation events"). The record is all the call writes.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 the reservation id (the message key), 4 the event (JSON)
-- Reply: 1

entry('publish', function()
  S.wrote = true
  return 1
end)
