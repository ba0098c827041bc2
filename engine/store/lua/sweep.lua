-- sweep.lua — the background sweeper's per-SKU step: give back due holds and bury their lines
-- (lib.lua F.settle), and purge the lines
-- that have been in a final state (released, expired, shipped) for longer than the retention.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 retention_ms (0 or absent = purge nothing),
--       4 the most lines one call purges (absent = 64): a purge of a long history is many
--       short calls, each leaving a whole state, never one long one
-- Reply: array: the number of lines buried (each expired line is counted once, here or by
--        another call that read it), 1 if due holds, lines to bury or lines older than the
--        retention are left for another call (else 0), then the rids of the purged lines

-- delete up to `limit` lines that reached a final state at or before `cutoff`, oldest first;
-- usage of purged shipped lines stays counted ('~' fields say how much of it has no line any
-- more). Returns their rids and whether more are due.
local function purge_dead(cutoff, limit)
  local rids = redis.call('ZRANGEBYSCORE', K.dead, '-inf', cutoff, 'LIMIT', 0, limit + 1)
  local more = #rids > limit
  if more then rids[#rids] = nil end
  if #rids == 0 then return rids, false end
  F.prefetch_lines(rids)
  local gone = {}
  for _, rid in ipairs(rids) do
    local line = F.get_line(rid)
    if line and not F.is_live(line) then
      if line.state == 'shipped' then
        S.wrote = true
        if line.customer ~= '' then redis.call('HINCRBY', K.cust, '~' .. line.customer, line.qty) end
        if line.channel ~= '' then redis.call('HINCRBY', K.chan, '~' .. line.channel, line.qty) end
      end
      F.delete_line(rid)
      gone[#gone + 1] = rid
    end
  end
  F.call_chunked('ZREM', K.dead, rids, 1)
  return gone, more
end

entry('sweep', function()
  F.load_state()
  F.settle()
  local out = { S.buried, 0 }
  local retention = tonumber(ARGV[3] or '0') or 0
  if S.more_due or S.bury_more then
    out[2] = 1
  elseif retention > 0 then
    local gone, more = purge_dead(NOW - retention, tonumber(ARGV[4] or '64') or 64)
    if more then out[2] = 1 end
    for _, rid in ipairs(gone) do out[#out + 1] = rid end
  end
  F.flush()
  return out
end)
