-- reservation.lua — one operation on one reservation line of one SKU, after lazy expiry.
-- KEYS: the twelve keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 op (confirm | release | extend | rollback | get),
--       4 rid, 5 ttl_ms (extend only)
-- Reply: json op reply {status, rid, line?, reason?}; get: {status: ok, rid, line} or
--        {status: not_found, rid}

expire_due()
local op, rid = ARGV[3], ARGV[4]
local reply
if op == 'confirm' then
  reply = op_confirm(rid)
elseif op == 'release' then
  reply = op_release(rid)
elseif op == 'extend' then
  reply = op_extend(rid, tonumber(ARGV[5]))
elseif op == 'rollback' then
  reply = op_rollback(rid)
elseif op == 'get' then
  local line = get_line(rid)
  if line then
    reply = { status = 'ok', rid = rid, line = line }
  else
    reply = { status = 'not_found', rid = rid }
  end
else
  flush()
  return redis.error_reply('ERR unknown reservation op ' .. tostring(op))
end
reply = reply_json(reply)
flush()
return reply
