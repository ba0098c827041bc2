-- hold.lua — a batch of holds of one SKU (the coalesced hot path); each request all-or-nothing,
-- processed in order, after lazy expiry.
-- KEYS: the twelve keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), then 7 slots per request:
--       rid, qty, loc ('' = any), ttl_ms, channel ('' = none), customer ('' = none), commit (0|1)
-- Reply: json array, one hold reply per request, in order:
--       {status: ok|duplicate, rid, line} | {status: refused, rid, reason, available}
--       | {status: conflict, rid, line}

expire_due()
local rids = {}
for i = 3, #ARGV, 7 do rids[#rids + 1] = ARGV[i] end
prefetch_lines(rids)
local replies = {}
for i = 3, #ARGV, 7 do
  replies[#replies + 1] = reply_json(hold_one({
    rid = ARGV[i], qty = tonumber(ARGV[i + 1]), loc = ARGV[i + 2], ttl_ms = tonumber(ARGV[i + 3]),
    channel = ARGV[i + 4], customer = ARGV[i + 5], commit = ARGV[i + 6] == '1',
  }, false))
end
flush()
return '[' .. table.concat(replies, ',') .. ']'
