-- sweep.lua — expire the due holds of one SKU (the background sweeper's per-SKU step).
-- KEYS: the twelve keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME)
-- Reply: integer, the number of lines expired

local n = expire_due()
flush()
return n
