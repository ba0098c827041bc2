-- hold.lua — a batch of holds of one SKU (the coalesced hot path); each request all-or-nothing,
-- processed in order, after the due holds are given back.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), then 2 slots per request: rid, and the request's terms
--       '<qty>|<loc ('' = any)>|<ttl_ms>|<channel ('' = none)>|<customer ('' = none)>|<commit 0|1>'
--       (the terms of a batch mostly repeat: each distinct string is parsed once)
-- Reply: array, two items per request, in order: status, then for ok | duplicate | conflict the
--        line in its stored form (see lib.lua), for refused '<reason>:<available>', then for a
--        guard ':<limit>' and, but for order_cap, ':<used>'; the store builds the hold replies
--        {status, rid, line} | {status: refused, rid, reason, available[, limit[, used]]}
--        (or '~more' while more seconds of holds are due than one call folds: lib.lua FOLD_MAX)

entry('hold', function()
  local flush = F.flush
  -- the due bucket of the first request's expiry, read with the state (F.flush_due writes it)
  local ttl = tonumber(string.match(ARGV[4] or '', '^%d+|[^|]*|(%d+)|') or '')
  if ttl then
    local T = F.due_at(NOW + ttl)
    local vals = F.load_state('p' .. F.num(T))
    F.due_seen(T, vals[6])
  else
    F.load_state()
  end
  F.settle(HOLD_BURY)
  if S.more_due then return F.more() end
  local rids = {}
  for i = 3, #ARGV, 2 do rids[#rids + 1] = ARGV[i] end
  F.prefetch_lines(rids)
  local out = {}
  local terms = {} -- terms string -> {qty, loc, ttl_ms, channel, customer, commit}
  local hold_one, num = F.hold_one, F.num
  for i = 3, #ARGV, 2 do
    local t = terms[ARGV[i + 1]]
    if not t then
      local qty, loc, ttl, channel, customer, commit = string.match(ARGV[i + 1],
        '^(%d+)|([^|]*)|(%d+)|([^|]*)|([^|]*)|([01])$')
      t = { tonumber(qty), loc, tonumber(ttl), channel, customer, commit == '1' }
      terms[ARGV[i + 1]] = t
    end
    local status, raw, reason, available, limit, used = hold_one(ARGV[i], t[1], t[2], t[3], t[4], t[5],
      t[6], false)
    out[#out + 1] = status
    if not raw then
      raw = reason .. ':' .. num(available)
      if limit then raw = raw .. ':' .. num(limit) end
      if used then raw = raw .. ':' .. num(used) end
    end
    out[#out + 1] = raw
  end
  flush()
  return out
end)
