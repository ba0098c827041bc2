-- reservation.lua — one operation on one reservation line of one SKU, after the due holds are given back.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 op (confirm | release | extend | rollback | revert | get),
--       4 rid, 5 ttl_ms (extend) or expires_ms (revert)
-- Reply: json op reply {status, rid, line?, reason?}; get: {status: ok, rid, line} or
--        {status: not_found, rid}
--        (or '~more' while more seconds of holds are due than one call folds: lib.lua FOLD_MAX)

entry('reservation', function()
  F.load_state()
  F.settle(HOLD_BURY)
  if S.more_due then return F.more() end
  local op, rid = ARGV[3], ARGV[4]
  local reply
  if op == 'confirm' then
    reply = F.op_confirm(rid)
  elseif op == 'release' then
    reply = F.op_release(rid)
  elseif op == 'extend' then
    reply = F.op_extend(rid, tonumber(ARGV[5]))
  elseif op == 'revert' then
    reply = F.op_revert(rid, tonumber(ARGV[5]))
  elseif op == 'rollback' then
    reply = F.op_rollback(rid)
  elseif op == 'get' then
    local line = F.get_line(rid)
    if line then
      reply = { status = 'ok', rid = rid, line = line }
    else
      reply = { status = 'not_found', rid = rid }
    end
  else
    F.flush()
    return redis.error_reply('ERR unknown reservation op ' .. tostring(op))
  end
  reply = F.reply_json(reply)
  F.flush()
  return reply
end)
