-- sweep.lua — the background sweeper's per-SKU step: expire the due holds, and purge the lines
-- that have been in a final state (released, expired, shipped) for longer than the retention.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 retention_ms (0 or absent = purge nothing)
-- Reply: array: the number of lines expired, then the rids of the purged lines

-- delete the lines that reached a final state at or before `cutoff`; usage of purged shipped
-- lines stays counted ('~' fields say how much of it has no line any more). Returns their rids.
local function purge_dead(cutoff)
  local rids = redis.call('ZRANGEBYSCORE', K.dead, '-inf', cutoff)
  if #rids == 0 then return rids end
  F.prefetch_lines(rids)
  local gone = {}
  for _, rid in ipairs(rids) do
    local line = F.get_line(rid)
    if line and not F.is_live(line) then
      if line.state == 'shipped' then
        if line.customer ~= '' then redis.call('HINCRBY', K.cust, '~' .. line.customer, line.qty) end
        if line.channel ~= '' then redis.call('HINCRBY', K.chan, '~' .. line.channel, line.qty) end
      end
      F.delete_line(rid)
      gone[#gone + 1] = rid
    end
  end
  redis.call('ZREMRANGEBYSCORE', K.dead, '-inf', cutoff)
  return gone
end

F.load_state()
local out = { F.expire_due() }
local retention = tonumber(ARGV[3] or '0') or 0
if retention > 0 then
  for _, rid in ipairs(purge_dead(NOW - retention)) do out[#out + 1] = rid end
end
F.flush()
return out
