-- hold.lua — a batch of holds of one SKU (the coalesced hot path); each request all-or-nothing,
-- processed in order, after lazy expiry.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), then 7 slots per request:
--       rid, qty, loc ('' = any), ttl_ms, channel ('' = none), customer ('' = none), commit (0|1)
-- Reply: array, two items per request, in order: status, then for ok | duplicate | conflict the
--        line in its stored form (see lib.lua), for refused '<reason>:<available>'; the store
--        builds the hold replies {status, rid, line} | {status: refused, rid, reason, available}

local flush = F.flush
F.load_state()
F.expire_due()
local rids = {}
for i = 3, #ARGV, 7 do rids[#rids + 1] = ARGV[i] end
F.prefetch_lines(rids)
local out = {}
local hold_one, num = F.hold_one, F.num
for i = 3, #ARGV, 7 do
  local status, raw, reason, available = hold_one(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2],
    tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5], ARGV[i + 6] == '1', false)
  out[#out + 1] = status
  out[#out + 1] = raw or reason .. ':' .. num(available)
end
flush()
return out
