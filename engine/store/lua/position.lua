-- position.lua — the position of one SKU (all locations, or one), after lazy expiry. The store
-- pipelines one call per SKU for a batch.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 location ('' = all),
--       4 '1' = read only, no lazy expiry (the invariant checker), else absent
-- Reply: json position {sku, on_hand, safety, held, committed, in_transit,
--        promisable_in_transit, atp, promisable_now, next_promise_ms, oversold, locations}

local flush = F.flush
F.load_state()
if ARGV[4] ~= '1' then F.expire_due() end
local where = ARGV[3]
if where == '' then where = nil end
local reply = F.position_json(where)
flush()
return reply
