-- position.lua — the position of one SKU (all locations, or one), after lazy expiry. The store
-- pipelines one call per SKU for a batch.
-- KEYS: the twelve keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 location ('' = all),
--       4 '1' = read only, no lazy expiry (the invariant checker), else absent
-- Reply: json position {sku, on_hand, safety, held, committed, in_transit,
--        promisable_in_transit, atp, promisable_now, next_promise_ms, oversold, locations}

if ARGV[4] ~= '1' then expire_due() end
local where = ARGV[3]
if where == '' then where = nil end
local reply = position(where)
flush()
return cjson.encode(reply)
