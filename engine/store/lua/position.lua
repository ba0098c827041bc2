-- position.lua — the position of one SKU (all locations, or one), after the due holds are given back. The store
-- pipelines one call per SKU for a batch.
-- KEYS: the keys of the SKU (see lib.lua)
-- ARGV: 1 sku, 2 now_ms (0 = TIME), 3 location ('' = all),
--       4 '1' = read only, no lazy expiry (the invariant checker), else absent
-- Reply: json position {sku, on_hand, safety, held, committed, in_transit,
--        promisable_in_transit, atp, promisable_now, next_promise_ms, oversold, backordered,
--        locations} (docs/semantics.md "Derived figures")
--        (or '~more' while more seconds of holds are due than one call folds: lib.lua FOLD_MAX)
-- Computed on Redis TIME for all locations of a SKU that exists, the reply is also kept in the
-- pos key (see lib.lua), where the store's batch reads find it.

entry('position', function()
  local flush = F.flush
  local exists = F.load_state()[1]
  local readonly = ARGV[4] == '1'
  if not readonly then F.settle() end
  if S.more_due then return F.more() end
  local where = ARGV[3]
  if where == '' then where = nil end
  local reply = F.position_json(where)
  flush()
  if where == nil and exists and not readonly and ARGV[2] == '0' then F.keep_position(reply) end
  return reply
end)
