-- ops.lua — the lifecycle operations on one reservation line (confirm, release, rollback,
-- extend, revert), loaded by reservation.lua and apply.lua (after lib.lua).
-- KEYS / ARGV: those of lib.lua. Each returns an op reply table {status, rid, line?, reason?}.
-- Lines leaving the held state stay in the expiry index as stale entries (see lib.lua).

----------------------------------------------------------------------------- lifecycle

-- move a line's units from held to committed (sign 1) or back (sign -1) at each location
function F.commit_units(line, sign)
  for _, a in ipairs(line.alloc) do
    local b = F.loc_touch(a[3])
    b.hd = b.hd - sign * a[4]
    b.cm = b.cm + sign * a[4]
  end
end

function F.op_confirm(rid)
  local line = F.get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state == 'committed' then return { status = 'duplicate', rid = rid, line = line } end
  if line.state ~= 'held' then
    return { status = 'refused', rid = rid, reason = line.state, line = line }
  end
  F.due_leave(line)
  F.commit_units(line, 1)
  line.state = 'committed'
  line.expires_ms = 0
  F.mark(rid)
  return { status = 'ok', rid = rid, line = line }
end

function F.op_release(rid)
  local line = F.get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state == 'released' or line.state == 'expired' then
    return { status = 'duplicate', rid = rid, line = line }
  end
  if line.state == 'shipped' then
    return { status = 'refused', rid = rid, reason = 'shipped', line = line }
  end
  F.return_units(line)
  line.state = 'released'
  line.expires_ms = 0
  F.mark(rid)
  dead_chg[rid] = NOW
  return { status = 'ok', rid = rid, line = line }
end

function F.op_rollback(rid)
  local line = F.get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state == 'shipped' then
    return { status = 'refused', rid = rid, reason = 'shipped', line = line }
  end
  if F.is_live(line) then
    F.return_units(line)
  else
    dead_chg[rid] = false
  end
  F.delete_line(rid)
  return { status = 'ok', rid = rid }
end

function F.op_extend(rid, ttl_ms)
  local line = F.get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if line.state ~= 'held' then
    return { status = 'refused', rid = rid, reason = line.state, line = line }
  end
  F.due_leave(line)
  line.expires_ms = F.due_at(NOW + ttl_ms)
  F.due_enter(line)
  F.mark(rid)
  F.expire_at(rid, line.expires_ms)
  S.pos_stale = true -- the kept position counted on the old expiry
  return { status = 'ok', rid = rid, line = line }
end

-- undo this client's confirm or extend of one line of a multi-SKU reservation whose other line
-- refused the same call: the line is held again until expires_ms, or expires now if that time
-- has passed
function F.op_revert(rid, expires_ms)
  local line = F.get_line(rid)
  if not line then return { status = 'not_found', rid = rid } end
  if not F.is_live(line) then
    return { status = 'refused', rid = rid, reason = line.state, line = line }
  end
  if line.state == 'committed' then
    local allocated = 0
    for _, a in ipairs(line.alloc) do allocated = allocated + a[4] end
    if allocated < line.qty then -- a part shipped: that cannot be undone
      return { status = 'refused', rid = rid, reason = 'shipped', line = line }
    end
    F.commit_units(line, -1)
    line.state = 'held'
  end
  F.due_leave(line)
  line.expires_ms = F.due_at(expires_ms)
  F.mark(rid)
  S.pos_stale = true
  if line.expires_ms <= NOW then
    F.return_units(line)
    line.state = 'expired'
    F.expired(line)
    dead_chg[rid] = line.expires_ms
  else
    F.due_enter(line)
    F.expire_at(rid, line.expires_ms)
  end
  return { status = 'ok', rid = rid, line = line }
end
