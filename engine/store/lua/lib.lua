-- lib.lua — the head of the atp function library (engine/store/scripts.py builds it: lib.lua,
-- ops.lua, rebalance.lua, then each entry file in a block of its own, then the registrations).
-- Redis runs the library once, at FUNCTION LOAD: the functions below are built then and kept;
-- a call (FCALL atp_<version>_<entry>) only resets the call's state (begin) and runs the entry.
--
-- KEYS (every script, in this order; all carry the hash tag {sku}, so one cluster slot):
--   1 state hash, the SKU's small state:
--       '!L'          '<seq>,<applied>,<events>|<loc>=<oh>,<hd>,<cm>,<oa>,<ba>,<st>|…' — counters
--                     (lines created, commands applied, event ids applied) and each location's
--                     buckets (on_hand, held, committed, oh_alloc, bo_alloc, short), by name
--       '!P'          the policy fields the scripts use, compact (absent = defaults):
--                     '<mode>,<cap_pm>,<horizon_s>,<use_rel 0|1>,<bo_limit>,<bo_days>,<safety>,
--                     <order_cap>,<customer_limit>|<channel>=<quota>,…'
--       '@<source>'   last applied offset of an input partition
--       'e<event_id>' the recent-event log: the events counter when the id was applied (an id
--                     counts while it is one of the last 1000)
--       'r<k>'        the event ring, k = events counter mod 1000: the id applied then, so the id
--                     leaving the window is found (and its 'e' field deleted) without a scan
--       'j<k>'        journal ring, k = applied mod 200: '<at>|<cmd>|<events counter or ''>|<note>'
--                     (note = reason|ref, escaped by the store)
--       '!K'          '1' while a position is kept under KEYS[10] ('' or absent: none to delete)
--       '!J'          the supply job in progress, json (apply.lua): {t: its token, phases, i: the
--                     phase it is in, c: that phase's cursor, head: the command's reply, saved,
--                     lot / kind / loc / qty: the lot it moves or re-dates, closing: the lot
--                     being received or cancelled, promisable to nobody meanwhile}
--       '!B'          '<source>|<offset>|<ms>': a stream command that stopped for due holds; later
--                     offsets of that source wait for it (apply.lua), for at most 5 s
--       '!W'          '<W>,<pending>,<next>': due buckets up to second W are folded, <pending> of
--                     their lines are not buried yet, <next> is the earliest unfolded T (0: none
--                     known); absent = 0,0,0
--       'p<T>'        a due bucket (see KEYS[14]): '<n>|<alloc>': n = held lines expiring at second
--                     T (after the fold: lines of T not yet buried) and, until the fold, the sum of
--                     their allocations in the line's alloc form ('kind,ref,loc,qty' joined by
--                     ';'). Kept here so that a hold reads and writes its bucket with the state
--                     it reads and writes anyway (hold.lua names the field to F.load_state).
--   2 lots  hash lot_id -> '<loc>,<qty>,<eta_ms>,<supplier>,<alloc>'
--   3 res   hash rid -> a live line (held, committed), compact: '<state>|<qty>|<loc>|<expires_ms>|<seq>|<channel>|
--           <customer>|<promised_ms>|<atp_after>|<alloc>', alloc = 'kind,ref,loc,qty' entries
--           joined by ';' (wire shape: docs/semantics.md "line"; engine/store/wire.py decodes it)
--   4 exp   zset, the expiry index: member = the rids (space separated) that were set to expire
--           at its score, one member per call and time, split into members of at most 16 rids.
--           It finds the lines of folded buckets to bury (F.bury_due). A line confirmed,
--           released or extended since is a stale entry: burying skips it (it checks the line),
--           and every entry leaves the index once its time has passed.
--   5 dead  zset rid -> ms when the line reached a final state (released, expired, shipped); the
--           sweeper purges lines older than the retention
--   6 cust  hash customer -> live+shipped units; '~<customer>' -> units of purged shipped lines
--           (still counted, kept apart for the invariant checker)
--   7 chan  hash channel -> units (same)
--   8 srel  hash supplier -> reliability per mille
--   9 pol   string json policy, complete (what readers outside the scripts use; kept in step
--           with '!P' by the policy command)
--  10 pos   string, the position of all locations as json, kept by position.lua until the
--           moment it could change by time alone (PXAT); deleted by every script that changes
--           buckets, lots, the policy or an expiry ('!K' says whether there is one). The store
--           reads it with a plain GET.
--  11 ended hash rid -> a line in a final state (released, expired, shipped), the same form: kept
--           apart so that what reads every live line never reads the retention's history
--  12 pool  zset, the pool index, every score 0: one member '<pool>|<seq, 12 digits>|<rid>' for each
--           pool a live line draws on: 'o<loc>' (on-hand at loc), 'l<lot_id>', 'b' (backorder),
--           's' (short). A lexical range of one pool lists its lines by seq, so shedding (newest
--           first), refilling (oldest first), a lot's receipt, cancellation or re-dating and the
--           at-risk list read only the lines they concern. Kept by F.sync_pools from the lines
--           that changed; built once from res when a store written without it is first used.
--  13 job   zset, the lines a paused supply job touched (apply.lua, rebalance.lua F.save_touched):
--           '<seq, 12 digits>|<rid>|<promised ms before the command>', every score 0
--  14 due   hash, the due usage. Held lines are counted in the due bucket of the second they
--           expire at (expires_ms is always a whole second, T; the buckets are the 'p<T>' fields
--           of the state hash). A bucket's units are given back all at once when T comes
--           (F.fold), so a due hold's units are promisable at once however many lines came due;
--           the lines themselves are then "buried" (state expired, usage returned, out of the
--           indexes) a few per call (F.bury_due) or when a call reads them (F.got_line).
--       'c<T>|<customer>', 'h<T>|<channel>'  units of the held lines of T per customer / channel:
--                     a guard subtracts the ones of folded buckets (due, not yet buried)
--  15 duet  zset T -> T of the due buckets (folded ones stay until their lines are buried)
--  16 log   list, the change log: a record of each call that changed the SKU (F.record), oldest
--           first, until the relay ships it to Kafka and trims it (docs/changelog.md)
--  17 changed  set of the SKUs with waiting records, this SKU's (engine/store/keys.py
--           changed_key: one per keyspace, or per cluster slot): F.record puts the SKU in when
--           its log was empty, the relay's trim takes it out when it empties the log
--  18… stash (apply.lua only, optional) the reply stash keys of the commands, K.stashes
--       (engine/store/reply_stash.py); publish.lua: 18… the events' reservations' marks (K.marks)
-- ARGV (every script): 1 sku, 2 now_ms (0 = Redis TIME; > 0 only from tests), then the entry's own.
--
-- Rules: docs/semantics.md, mirrored step by step from engine/domain/oracle.py so that replies and
-- state are identical. Integer arithmetic only; strings are compared bytewise (Lua's "<" would use
-- the server's locale collation). Ids are validated by the store ([A-Za-z0-9._:-]), so JSON is
-- written by concatenation without escaping; numbers stay below 1e14.
-- Entries call F.load_state() first, change the tables below, and F.flush() writes back.
--
-- Cost: a call's fixed part is begin (a few small tables) and one HMGET of the state; numbers
-- that repeat are formatted once (F.num) and locations that did not change are written back as
-- they were read.
--
-- Everything a call reads or changes lives in the locals below, which begin sets afresh: nothing
-- of one call survives into the next (a library's locals outlive its calls).

local KEYS, ARGV            -- the call's keys and arguments (FCALL's, as EVAL's would be)
local K                     -- the keys by role (see above)
local SKU, NOW              -- ARGV 1 and the call's time in ms (ARGV 2, or Redis TIME)
local DAY_MS = 86400000

-- the call's state (begin empties it); within a call, tables change in place (F.flush starts
-- the change tables afresh once they are written)
local S                     -- scalars (begin lists them)
local pol                   -- the policy (F.load_state)
local rel                   -- supplier -> rel_pm (F.reliability loads it)
local locs                  -- name -> {oh, hd, cm, oa, ba, st}
local loc_raw               -- name -> its '!L' segment as read, until the location is touched
local state_set             -- further state fields to write: field -> value
local lots                  -- id -> {loc, qty, eta_ms, supplier, alloc} (F.get_lots loads them)
local lines                 -- rid -> line; false = known absent or deleted; true = created in
                            -- this call, only its stored form is at hand (F.get_line decodes it)
local line_raw              -- rid -> the stored form of the line as it is now (nil once it changed)
local line_home             -- rid -> the hash the line is stored in as read (K.res or K.ended)
local line_orig             -- rid -> the stored form of the line as read (its pool members then)
local pool_dirty            -- rid -> true: the line changed since the last F.sync_pools
local pool_now              -- rid -> its pools as of the last F.sync_pools (F.line_pools)
local pool_fresh            -- rid -> the pools of a line F.hold_one created
-- changes to write back: key -> true / value (write) or false (delete)
local lot_chg, line_chg, dead_chg
local exp_add               -- expires_ms -> rids to add to the expiry index
local due_chg               -- T -> {n = delta, e = {'kind,ref,loc' -> delta}}: due bucket changes
local due_raw               -- T -> its 'p<T>' record as read (false: none), once read
local due_folded            -- T -> true: folded in this call (its allocations are gone)
local due_use               -- 'c<T>|<customer>' / 'h<T>|<channel>' -> delta
local use_chg               -- K.cust / K.chan -> who -> delta: usage changes to write
local NUM                   -- number -> its decimal string
local PROM                  -- lot table -> its promisable units, and 'order:<loc>' -> the lot ids
                            -- of F.lots_in_order; until a lot's terms change (F.lots_changed)
local OH_ALLOC              -- location -> qty -> stored form of one on-hand allocation there

-- start a call: its keys, arguments and time, and empty state
local function begin(keys, argv)
  KEYS, ARGV = keys, argv
  K = {
    state = keys[1], lots = keys[2], res = keys[3], exp = keys[4], dead = keys[5], cust = keys[6],
    chan = keys[7], srel = keys[8], pol = keys[9], pos = keys[10], ended = keys[11], pool = keys[12],
    job = keys[13], due = keys[14], duet = keys[15], log = keys[16], changed = keys[17],
    stashes = #keys > 17 and { unpack(keys, 18) } or nil,
  }
  SKU = argv[1]
  NOW = tonumber(argv[2]) or 0
  if NOW <= 0 then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  S = {
    seq = 0, applied = 0, events = 0, -- counters kept in '!L'
    dirty = false,            -- '!L' must be written back
    pos_stale = false,        -- the kept position is out of date even if '!L' is not
    kept = false,             -- a position is kept (pos key), to delete on a change
    names = false,            -- sorted location names (false = rebuild)
    lots_loaded = false, rel_loaded = false, live_lines = false, pool_ready = false,
    touched = {}, touched_order = {}, -- rid -> promised ms before the command, and their order
                                      -- (rebalance.lua F.touch)
    W = 0, pending = 0, next_due = 0, -- '!W' (F.load_state)
    wdirty = false,           -- '!W' must be written back
    no_w = false,             -- '!W' was absent (F.settle builds the buckets of older stores)
    due_checked = false,      -- ensure_due looked already in this call
    buried = 0,               -- lines buried in this call (F.bury)
    expired = {},             -- the lines this call expired, as their record effect (F.expired)
    wrote = false,            -- the call changed the SKU's state (F.record logs it)
    args = false,             -- the record's args when not the call's own (publish.lua)
    bare = false,             -- apply.lua: the command's reply leaves out the position
  }
  pol, rel, locs, loc_raw, state_set, lots, lines = {}, {}, {}, {}, {}, {}, {}
  line_raw, line_home, line_orig, pool_dirty, pool_now, pool_fresh = {}, {}, {}, {}, {}, {}
  lot_chg, line_chg, dead_chg, exp_add, NUM, OH_ALLOC, PROM = {}, {}, {}, {}, {}, {}, {}
  due_chg, due_raw, due_folded, due_use = {}, {}, {}, {}
  use_chg = { [K.cust] = {}, [K.chan] = {} }
end

-- the functions
local F = {}

-- a whole number as a string, memoised: formatting a number costs more than a table lookup, and
-- quantities, times and bucket values repeat within a call
function F.num(n)
  local s = NUM[n]
  if not s then
    s = string.format('%d', n)
    NUM[n] = s
  end
  return s
end

-- bytewise "a < b" (Python's order for the ASCII ids we allow)
function F.blt(a, b)
  if a == b then return false end
  local la, lb = #a, #b
  local n = la < lb and la or lb
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end

-- redis.call with many arguments, chunked to stay inside Lua's C stack limit
function F.call_chunked(cmd, key, items, per)
  S.wrote = true
  local i, n = 1, #items
  if n <= per * 500 then return redis.call(cmd, key, unpack(items)) end
  while i <= n do
    local last = math.min(n, i + per * 500 - 1)
    redis.call(cmd, key, unpack(items, i, last))
    i = last + 1
  end
end

----------------------------------------------------------------------------- state

function F.parse_policy(raw)
  F.lots_changed()
  local p = pol
  p.mode, p.cap_pm, p.horizon_s, p.use_reliability, p.backorder_limit = 'strict', 1000, 0, false, 0
  p.backorder_days, p.safety, p.order_cap, p.customer_limit, p.quotas = 14, 0, 0, 0, {}
  if not raw then return end
  local mode, cap, hor, use, bol, bod, saf, ocap, clim, q = string.match(raw,
    '^(%a+),(%d+),(%d+),(%d),(%d+),(%d+),(%d+),(%d+),(%d+)|(.*)$')
  p.mode, p.cap_pm, p.horizon_s, p.use_reliability = mode, tonumber(cap), tonumber(hor), use == '1'
  p.backorder_limit, p.backorder_days, p.safety = tonumber(bol), tonumber(bod), tonumber(saf)
  p.order_cap, p.customer_limit = tonumber(ocap), tonumber(clim)
  for ch, v in string.gmatch(q, '([^,=]+)=(%d+)') do p.quotas[ch] = tonumber(v) end
end

-- read '!L', '!P', '!K', '!J' and '!W' (and any further state fields, returned from index 6 on)
function F.load_state(...)
  local vals = redis.call('HMGET', K.state, '!L', '!P', '!K', '!J', '!W', ...)
  S.kept = vals[3] == '1'
  S.job = vals[4] and cjson.decode(vals[4]) or false
  if vals[5] then
    local w, p, n = string.match(vals[5], '^(%d+),(%-?%d+),(%d+)$')
    S.W, S.pending, S.next_due = tonumber(w), tonumber(p), tonumber(n)
  else
    S.no_w = true
  end
  local raw = vals[1]
  if raw then
    local a, b, c = string.match(raw, '^(%d+),(%d+),(%d+)')
    S.seq, S.applied, S.events = tonumber(a), tonumber(b), tonumber(c)
    for seg, name, oh, hd, cm, oa, ba, st in string.gmatch(raw,
        '|(([^=|]+)=(%-?%d+),(%-?%d+),(%-?%d+),(%-?%d+),(%-?%d+),(%-?%d+))') do
      locs[name] = {
        oh = tonumber(oh), hd = tonumber(hd), cm = tonumber(cm), oa = tonumber(oa),
        ba = tonumber(ba), st = tonumber(st),
      }
      loc_raw[name] = seg
    end
  end
  F.parse_policy(vals[2])
  return vals
end

function F.sorted_loc_names()
  local names = S.names
  if not names then
    names = {}
    for name in pairs(locs) do names[#names + 1] = name end
    if #names > 1 then table.sort(names, F.blt) end
    S.names = names
  end
  return names
end

function F.encode_state()
  local parts = { string.format('%d,%d,%d', S.seq, S.applied, S.events) }
  local names = F.sorted_loc_names()
  for i = 1, #names do
    local name = names[i]
    local seg = loc_raw[name]
    if not seg then
      local b = locs[name]
      seg = string.format('%s=%d,%d,%d,%d,%d,%d', name, b.oh, b.hd, b.cm, b.oa, b.ba, b.st)
    end
    parts[i + 1] = seg
  end
  return table.concat(parts, '|')
end

-- the buckets of a location, creating it (a named location stays for good)
function F.loc_get(name)
  local l = locs[name]
  if not l then
    l = { oh = 0, hd = 0, cm = 0, oa = 0, ba = 0, st = 0 }
    locs[name] = l
    S.dirty = true
    S.names = false
  end
  return l
end

-- the buckets of a location that is about to change
function F.loc_touch(name)
  S.dirty = true
  loc_raw[name] = nil
  return locs[name] or F.loc_get(name)
end

----------------------------------------------------------------------------- lots

function F.get_lots()
  if not S.lots_loaded then
    S.lots_loaded = true
    local flat = redis.call('HGETALL', K.lots)
    for i = 1, #flat, 2 do
      local loc, qty, eta, sup, alloc = string.match(flat[i + 1], '^([^,]*),(%d+),(%d+),([^,]*),(%-?%d+)$')
      lots[flat[i]] = {
        loc = loc, qty = tonumber(qty), eta_ms = tonumber(eta), supplier = sup, alloc = tonumber(alloc),
      }
    end
    local closing = S.job and S.job.closing
    if closing and lots[closing] then lots[closing].closing = true end
  end
  return lots
end

function F.promisable(lot)
  local p = PROM[lot]
  if p then return p end
  if pol.mode == 'strict' or lot.closing then
    p = 0
  elseif pol.horizon_s > 0 and lot.eta_ms > NOW + pol.horizon_s * 1000 then
    p = 0
  else
    local r = 1000
    if pol.use_reliability then r = F.reliability(lot.supplier) end
    -- < 2^53, so the double quotient floors exactly
    p = math.floor(lot.qty * pol.cap_pm * r / 1000000)
  end
  PROM[lot] = p
  return p
end

-- a lot's terms (qty, ETA, closing), the set of lots, the policy or a supplier's reliability
-- changed: what F.promisable and F.lots_in_order remembered is stale. (Every hold reads each lot
-- two or three times, and a batch of holds or stream commands reads them all again per command:
-- with a hundred open lots they are a large part of a call.)
function F.lots_changed()
  PROM = {}
end

----------------------------------------------------------------------------- lines

-- the pool index's name of the pool an allocation (kind, ref, loc) draws on (KEYS[12])
local function pool_name(kind, ref, at)
  if kind == 'oh' then return 'o' .. at end
  if kind == 'lot' then return 'l' .. ref end
  if kind == 'bo' then return 'b' end
  return 's'
end

-- the line table of a stored line, and the names of the pools its allocations draw on (as in
-- F.line_pools: read here, where the entries are parsed anyway, so that F.sync_pools need not
-- parse the stored form again to find the members a changed line leaves)
function F.decode_line(rid, raw)
  local state, qty, loc, exp, seq, channel, customer, promised, atp, alloc = string.match(raw,
    '^(%a+)|(%d+)|([^|]*)|(%d+)|(%d+)|([^|]*)|([^|]*)|(%d+)|(%-?%d+)|(.*)$')
  local entries, names = {}, {}
  for kind, ref, at, q in string.gmatch(alloc, '([^,;]+),([^,;]*),([^,;]+),(%d+)') do
    entries[#entries + 1] = { kind, ref, at, tonumber(q) }
    names[pool_name(kind, ref, at)] = true
  end
  local expires = tonumber(exp)
  return {
    rid = rid, sku = SKU, qty = tonumber(qty), loc = loc, state = state, expires_ms = expires,
    seq = tonumber(seq), channel = channel, customer = customer, alloc = entries,
    promised_ms = tonumber(promised), atp_after = tonumber(atp),
    -- the due bucket the line is counted in (held lines only)
    bucket = state == 'held' and expires > 0 and F.due_at(expires) or nil,
  }, names
end

function F.got_line(rid, raw, home)
  if raw then
    local line, names = F.decode_line(rid, raw)
    lines[rid] = line
    if pool_now[rid] == nil and (line.state == 'held' or line.state == 'committed') then
      pool_now[rid] = { seq = line.seq, names = names } -- what F.stored_pools(raw) would say
    end
    line_raw[rid] = raw
    line_orig[rid] = raw
    line_home[rid] = home
    -- a held line of a folded bucket has expired: its units went back with the bucket
    if line.bucket and line.bucket <= S.W then F.bury(line) end
  else
    lines[rid] = false
  end
end

-- the line of rid as a table, or nil
function F.get_line(rid)
  local line = lines[rid]
  if line == nil then
    local raw = redis.call('HGET', K.res, rid)
    if raw then
      F.got_line(rid, raw, K.res)
    else
      F.got_line(rid, redis.call('HGET', K.ended, rid), K.ended)
    end
    line = lines[rid]
  elseif line == true then
    line = F.decode_line(rid, line_raw[rid])
    lines[rid] = line
  end
  return line or nil
end

-- load the lines of many rids with HMGET (the batch and expiry paths)
function F.prefetch_lines(rids)
  local want = {}
  for i = 1, #rids do
    if lines[rids[i]] == nil then want[#want + 1] = rids[i] end
  end
  local missing = F.hmget_lines(K.res, want)
  if #missing > 0 then F.hmget_lines(K.ended, missing) end
end

-- read the lines of rids from one of the two line hashes; returns the rids it does not hold
function F.hmget_lines(key, rids)
  local missing = {}
  local i = 1
  while i <= #rids do
    local last = math.min(#rids, i + 999)
    local vals = redis.call('HMGET', key, unpack(rids, i, last))
    for j = i, last do
      local raw = vals[j - i + 1]
      if raw then
        F.got_line(rids[j], raw, key)
      else
        lines[rids[j]] = false
        missing[#missing + 1] = rids[j]
      end
    end
    i = last + 1
  end
  return missing
end

-- the allocations in the stored form ('kind,ref,loc,qty' joined by ';')
function F.encode_alloc(alloc)
  local n = #alloc
  if n == 0 then return '' end
  local num = F.num
  if n == 1 then
    local a = alloc[1]
    if a[1] == 'oh' and a[2] == a[3] then -- the usual one: remembered per location and qty
      local at = OH_ALLOC[a[2]]
      if not at then
        at = {}
        OH_ALLOC[a[2]] = at
      end
      local s = at[a[4]]
      if not s then
        s = 'oh,' .. a[2] .. ',' .. a[3] .. ',' .. num(a[4])
        at[a[4]] = s
      end
      return s
    end
    return a[1] .. ',' .. a[2] .. ',' .. a[3] .. ',' .. num(a[4])
  end
  local parts = {}
  for i = 1, n do
    local a = alloc[i]
    parts[i] = a[1] .. ',' .. a[2] .. ',' .. a[3] .. ',' .. num(a[4])
  end
  return table.concat(parts, ';')
end

-- the stored form of a line (what hold replies carry too)
function F.encode_line(line)
  local s = line_raw[line.rid]
  if not s then
    local num = F.num
    s = line.state .. '|' .. num(line.qty) .. '|' .. line.loc .. '|' .. num(line.expires_ms) .. '|' ..
      line.seq .. '|' .. line.channel .. '|' .. line.customer .. '|' .. num(line.promised_ms) .. '|' ..
      line.atp_after .. '|' .. F.encode_alloc(line.alloc)
    line_raw[line.rid] = s
  end
  return s
end

----------------------------------------------------------------------------- derived figures

function F.free_oh(name)
  local b = locs[name]
  local free = b.oh - pol.safety - b.oa
  return free > 0 and free or 0
end

function F.bo_free()
  if pol.mode ~= 'backorder' then return 0 end
  local used_bo = 0
  for _, b in pairs(locs) do used_bo = used_bo + b.ba end
  return math.max(0, pol.backorder_limit - used_bo)
end

-- what a hold at loc ('' = any) may take; in strict mode no lot is promisable
function F.capacity(loc)
  local total = 0
  local safety = pol.safety
  for name, b in pairs(locs) do
    if loc == '' or loc == name then
      local free = b.oh - safety - b.oa
      if free > 0 then total = total + free end
    end
  end
  if pol.mode ~= 'strict' then
    for _, lot in pairs(F.get_lots()) do
      if loc == '' or lot.loc == loc then total = total + math.max(0, F.promisable(lot) - lot.alloc) end
    end
  end
  if pol.mode == 'backorder' then total = total + F.bo_free() end
  return total
end

-- ATP of one location, or of the SKU when loc is '' (docs/semantics.md "Derived figures"). Safety
-- holds back only stock that is there, so an empty location is 0, not -safety; backordered units
-- are promised from future supply and take nothing (only short units make ATP negative). The
-- SKU's ATP adds the backorder room, so it is what a hold may take less what is oversold.
function F.atp_of(loc)
  local safety = pol.safety
  local total = 0
  if loc ~= '' and not locs[loc] then return 0 end
  for name, b in pairs(locs) do
    if loc == '' or name == loc then
      total = total + b.oh - math.min(safety, b.oh) - (b.hd + b.cm - b.ba)
    end
  end
  if pol.mode ~= 'strict' then
    for _, lot in pairs(F.get_lots()) do
      if loc == '' or lot.loc == loc then total = total + F.promisable(lot) end
    end
  end
  if loc == '' then total = total + F.bo_free() end
  return total
end

----------------------------------------------------------------------------- allocation

-- take up to qty units FIFO at loc ('' = any): list of {kind, ref, loc, qty}, never listing a
-- kind, ref and location twice
function F.allocate(qty, loc)
  local out = {}
  local left = qty
  local names = F.sorted_loc_names()
  for i = 1, #names do
    if left == 0 then break end
    local name = names[i]
    if loc == '' or name == loc then
      local take = math.min(left, F.free_oh(name))
      if take > 0 then
        out[#out + 1] = { 'oh', name, name, take }
        left = left - take
      end
    end
  end
  if left > 0 and pol.mode ~= 'strict' then
    local all = F.get_lots()
    for _, id in ipairs(F.lots_in_order(loc)) do
      if left == 0 then break end
      local lot = all[id]
      local take = math.min(left, math.max(0, F.promisable(lot) - lot.alloc))
      if take > 0 then
        out[#out + 1] = { 'lot', id, lot.loc, take }
        left = left - take
      end
    end
  end
  if left > 0 then
    local take = math.min(left, F.bo_free())
    if take > 0 then out[#out + 1] = { 'bo', '', F.bo_location(loc), take } end
  end
  return out
end

function F.promise(allocs)
  local p = NOW
  if #allocs == 1 and allocs[1][1] == 'oh' then return p end
  for i = 1, #allocs do
    local a = allocs[i]
    if a[1] == 'lot' then
      p = math.max(p, F.get_lots()[a[2]].eta_ms)
    elseif a[1] == 'bo' then
      p = math.max(p, NOW + pol.backorder_days * DAY_MS)
    end
  end
  return p
end

-- book the allocations of a new line on the pool and bucket counters (held or committed)
function F.book_new(allocs, held)
  for i = 1, #allocs do
    local a = allocs[i]
    local kind, q, at = a[1], a[4], a[3]
    local b = locs[at] or F.loc_get(at)
    loc_raw[at] = nil
    if kind == 'oh' then
      b.oa = b.oa + q
    elseif kind == 'lot' then
      local lot = F.get_lots()[a[2]]
      lot.alloc = lot.alloc + q
      lot_chg[a[2]] = true
    else
      b.ba = b.ba + q
    end
    if held then b.hd = b.hd + q else b.cm = b.cm + q end
  end
  S.dirty = true
end

----------------------------------------------------------------------------- expiry

-- index rid to expire at ms (F.flush writes one zset member per time)
function F.expire_at(rid, ms)
  local rids = exp_add[ms]
  if rids then rids[#rids + 1] = rid else exp_add[ms] = { rid } end
end

-- Expiry works on due buckets (KEYS[14], [15]): every held line is counted in the bucket of the
-- second it expires at, and when that second comes the first call of the SKU gives back the
-- bucket's units all at once (F.fold: one record per second, whatever the number of lines). So a
-- due hold's units are promisable at once, however many lines came due together. The lines are
-- buried afterwards, a few per call (F.bury_due), or as soon as a call reads one (F.got_line):
-- their state becomes expired, usage is returned, they leave the indexes. Until then a guard
-- subtracts their usage (F.used_live). Only when more than FOLD_MAX seconds are due at once
-- (no call touched the SKU for that long) does a call answer F.more() and let the store call
-- again, each call leaving a whole state.
local FOLD_MAX = 64
local DUE_MS = 1000
-- lines buried per call, from at most EXPIRE_MEMBERS index entries; the checkout's calls (hold,
-- reservation) bury fewer, the sweeper and the stream's calls the rest
local EXPIRE_MEMBERS, EXPIRE_LINES, HOLD_BURY = 16, 16, 4
-- the most rids one index entry holds (F.flush splits a batch's), so a chunk takes whole entries
local EXPIRE_ENTRY = 16
-- folded buckets a guard reads the due usage of (beyond: their units count as used)
local GUARD_BUCKETS = 64
-- pool-index members read per ZRANGEBYLEX of a walk over one pool (F.each_in_pool)
local POOL_PAGE = 128

-- the whole second a hold taken until ms expires at (expiries are kept whole seconds)
function F.due_at(ms)
  return math.ceil(ms / DUE_MS) * DUE_MS
end

local function due_rec(T)
  local r = due_chg[T]
  if not r then
    r = { n = 0, e = {} }
    due_chg[T] = r
  end
  return r
end

-- q units of allocation a (kind, ref, loc) join (or, q < 0, leave) bucket T
function F.due_entry(T, a, q)
  local e = due_rec(T).e
  local key = a[1] .. ',' .. a[2] .. ',' .. a[3]
  e[key] = (e[key] or 0) + q
end

-- one line of qty units joins (sign 1) or leaves (-1) bucket T: its count and usage
function F.due_count(T, sign, qty, customer, channel)
  local r = due_rec(T)
  r.n = r.n + sign
  local t = F.num(T)
  if customer ~= '' then
    local f = 'c' .. t .. '|' .. customer
    due_use[f] = (due_use[f] or 0) + sign * qty
  end
  if channel ~= '' then
    local f = 'h' .. t .. '|' .. channel
    due_use[f] = (due_use[f] or 0) + sign * qty
  end
  if sign > 0 and T > S.W and (S.next_due == 0 or T < S.next_due) then
    S.next_due = T
    S.wdirty = true
  end
end

-- the stored form of bucket T's record as read with the state ('p<T>'), so F.flush_due does not
-- read it again
function F.due_seen(T, raw)
  due_raw[T] = raw or false
end

-- a held line starts to be counted in the bucket of its expiry
function F.due_enter(line)
  local T = F.due_at(line.expires_ms)
  line.bucket = T
  F.due_count(T, 1, line.qty, line.customer, line.channel)
  for _, a in ipairs(line.alloc) do F.due_entry(T, a, a[4]) end
end

-- a held line stops being counted in its bucket (confirmed, extended, reverted)
function F.due_leave(line)
  local T = line.bucket
  if not T then return end
  for _, a in ipairs(line.alloc) do F.due_entry(T, a, -a[4]) end
  F.due_count(T, -1, line.qty, line.customer, line.channel)
  line.bucket = nil
end

-- give back q units of one allocation of a folded bucket to its pool and location
local function fold_units(kind, ref, at, q)
  local b = F.pool_less(kind, ref, at, q)
  b.hd = b.hd - q
end

-- give back the units of every bucket that is due (at most FOLD_MAX of them; more: S.more_due)
function F.fold()
  local nd = S.next_due
  if nd == 0 or nd > NOW then return end
  local ts = redis.call('ZRANGEBYSCORE', K.duet, '(' .. F.num(S.W), NOW, 'LIMIT', 0, FOLD_MAX + 1)
  if #ts > FOLD_MAX then
    S.more_due = true
    ts[#ts] = nil
  end
  if #ts > 0 then
    local fields = {}
    for i = 1, #ts do fields[i] = 'p' .. ts[i] end
    local recs = redis.call('HMGET', K.state, unpack(fields))
    for i = 1, #ts do
      local T, raw = tonumber(ts[i]), recs[i]
      due_raw[T] = raw or false
      due_folded[T] = true
      if raw then
        local n, alloc = string.match(raw, '^(%-?%d+)|(.*)$')
        S.pending = S.pending + tonumber(n)
        for kind, ref, at, q in string.gmatch(alloc, '([^,;]+),([^,;]*),([^,;]+),(%-?%d+)') do
          fold_units(kind, ref, at, tonumber(q))
        end
      end
      S.W = T
    end
    S.pos_stale = true
  end
  local after = redis.call('ZRANGEBYSCORE', K.duet, '(' .. F.num(S.W), '+inf', 'LIMIT', 0, 1)
  S.next_due = #after > 0 and tonumber(after[1]) or 0
  S.wdirty = true
end

-- a held line of a folded bucket ends as expired: its units went back with the bucket, its usage
-- and its place in the indexes go now; it counts as ended from its expiry
-- a line that ended as expired in this call, for its change record's "expired" list (F.record):
-- the relay tells consumers (reservation.expired). Ids are validated: no escaping needed.
function F.expired(line)
  local num = F.num
  S.expired[#S.expired + 1] = '{"rid":"' .. line.rid .. '","qty":' .. num(line.qty) .. ',"location":"' .. line.loc ..
    '","expires_ms":' .. num(line.expires_ms) .. ',"channel":"' .. line.channel .. '","customer_id":"' ..
    line.customer .. '","promised_ms":' .. num(line.promised_ms) .. ',"atp_after":' .. num(line.atp_after) .. '}'
end

function F.bury(line)
  F.due_count(line.bucket, -1, line.qty, line.customer, line.channel)
  line.bucket = nil
  F.usage(line.customer, line.channel, -line.qty)
  line.alloc = {}
  line.state = 'expired'
  F.expired(line)
  F.mark(line.rid)
  dead_chg[line.rid] = line.expires_ms
  S.pending = S.pending - 1
  S.wdirty = true
  S.buried = S.buried + 1
end

-- bury up to `most` lines of folded buckets, oldest entries first (F.got_line buries each as it
-- is read); sets S.bury_more when some are left
function F.bury_due(most)
  if S.pending <= 0 then return end
  local due = redis.call('ZRANGEBYSCORE', K.exp, '-inf', S.W, 'WITHSCORES', 'LIMIT', 0, EXPIRE_MEMBERS + 1)
  local rids, seen, taken = {}, {}, {}
  for i = 1, #due, 2 do
    if i > 2 * EXPIRE_MEMBERS or #rids >= most then
      S.bury_more = true
      break
    end
    taken[#taken + 1] = due[i]
    for rid in string.gmatch(due[i], '%S+') do
      if #rids >= most then
        -- the entry's other rids stay due under a new entry of the same time
        F.expire_at(rid, tonumber(due[i + 1]))
        S.bury_more = true
      elseif not seen[rid] then
        seen[rid] = true
        rids[#rids + 1] = rid
      end
    end
  end
  F.prefetch_lines(rids)
  if #taken > 0 then F.call_chunked('ZREM', K.exp, taken, 1) end
end

-- build the due buckets of a store written before they existed: '!W' absent, yet live lines.
-- Its held lines are in no bucket, so neither a fold nor their burial would give their units
-- back. Done once per SKU, as the pool index is (F.ensure_pools): it reads the live lines whole,
-- and writes '!W', so that no later call looks again.
local function ensure_due()
  S.due_checked = true
  if redis.call('HLEN', K.res) == 0 then return end
  local flat = redis.call('HGETALL', K.res)
  for i = 1, #flat, 2 do
    local line = F.decode_line(flat[i], flat[i + 1])
    if line.bucket then F.due_enter(line) end
  end
  S.wdirty = true
  S.no_w = false
  F.flush() -- the fold reads the buckets from Redis
end

-- what every entry that may act does first: give back due buckets, then bury a few lines
function F.settle(most)
  if S.no_w and not S.due_checked then ensure_due() end
  F.fold()
  F.bury_due(most or EXPIRE_LINES)
end

-- the reply of an entry that stopped with more seconds due than one call folds (FOLD_MAX)
function F.more()
  F.flush()
  return '~more'
end

----------------------------------------------------------------------------- operations

-- the guard a hold of qty breaks (order_cap, customer_limit, channel_quota), its limit and the
-- units already counted against it (nil for the per-reservation order_cap); nil when none
local function broken_guard(qty, channel, customer)
  if pol.order_cap > 0 and qty > pol.order_cap then return 'order_cap', pol.order_cap end
  if pol.customer_limit > 0 and customer ~= '' then
    local used = F.used_live(K.cust, customer, 'c')
    if used + qty > pol.customer_limit then return 'customer_limit', pol.customer_limit, used end
  end
  local quota = channel ~= '' and pol.quotas[channel]
  if quota then
    local used = F.used_live(K.chan, channel, 'h')
    if used + qty > quota then return 'channel_quota', quota, used end
  end
end

-- true when a lot of the SKU comes in at loc (a location may have inbound before any on-hand)
function F.lot_at(loc)
  for _, lot in pairs(F.get_lots()) do
    if lot.loc == loc then return true end
  end
  return false
end

-- one hold request: the status ('ok', 'duplicate', 'conflict' or 'refused'), then the line's stored
-- form, or for a refusal nil, the reason, the capacity that was available and, for a guard, its
-- limit and usage
function F.hold_one(rid, qty, loc, ttl_ms, channel, customer, commit, replace_dead)
  local existing = F.get_line(rid)
  if existing and not (replace_dead and (existing.state == 'released' or existing.state == 'expired')) then
    if existing.qty == qty and existing.loc == loc then return 'duplicate', F.encode_line(existing) end
    return 'conflict', F.encode_line(existing)
  end
  if loc ~= '' and not locs[loc] and not F.lot_at(loc) then return 'refused', nil, 'unknown_location', 0 end
  local reason, limit, used = broken_guard(qty, channel, customer)
  local available = F.capacity(loc)
  if S.job then
    -- a supply job is still re-filling short lines: they come first
    for _, b in pairs(locs) do available = available - b.st end
    if available < 0 then available = 0 end
  end
  if not reason and available < qty then reason = 'insufficient' end
  if reason then return 'refused', nil, reason, available, limit, used end
  if existing then dead_chg[rid] = false end -- a released or expired line is replaced
  local allocs = F.allocate(qty, loc)
  local seq = S.seq + 1
  S.seq = seq
  F.book_new(allocs, not commit)
  if customer ~= '' or channel ~= '' then F.usage(customer, channel, qty) end
  local num = F.num
  local expires = commit and 0 or F.due_at(NOW + ttl_ms)
  local raw = (commit and 'committed|' or 'held|') .. num(qty) .. '|' .. loc .. '|' .. num(expires) .. '|' ..
    seq .. '|' .. channel .. '|' .. customer .. '|' .. num(F.promise(allocs)) .. '|' .. F.atp_of(loc) ..
    '|' .. F.encode_alloc(allocs)
  lines[rid] = true
  line_raw[rid] = raw
  line_chg[rid] = true
  pool_dirty[rid] = true
  pool_fresh[rid] = F.line_pools(seq, allocs)
  if not commit then
    F.expire_at(rid, expires)
    F.due_count(expires, 1, qty, customer, channel)
    for i = 1, #allocs do F.due_entry(expires, allocs[i], allocs[i][4]) end
  end
  return 'ok', raw
end

----------------------------------------------------------------------------- pool index

-- the pools a live line's allocations draw on (KEYS[12]), as {seq, names = {pool = true}}
function F.line_pools(seq, allocs)
  local names = {}
  for i = 1, #allocs do
    local a = allocs[i]
    names[pool_name(a[1], a[2], a[3])] = true
  end
  return { seq = seq, names = names }
end

local NO_POOLS = { seq = 0, names = {} }

-- the pools of a line in its stored form (none once it ended), read without decoding the rest
function F.stored_pools(raw)
  if not raw then return NO_POOLS end
  local state, seq = string.match(raw, '^(%a+)|%d+|[^|]*|%d+|(%d+)|')
  if state ~= 'held' and state ~= 'committed' then return NO_POOLS end
  local allocs = {}
  for kind, ref, at in string.gmatch(string.match(raw, '|([^|]*)$'), '([^,;]+),([^,;]*),([^,;]+),%d+') do
    allocs[#allocs + 1] = { kind, ref, at }
  end
  return F.line_pools(tonumber(seq), allocs)
end

-- the index members of a line's pools: '<pool>|<seq, 12 digits>|<rid>'
function F.pool_members(rid, pools)
  local tail = string.format('|%012d|', pools.seq) .. rid
  local out = {}
  for name in pairs(pools.names) do out[#out + 1] = name .. tail end
  return out
end

-- build the pool index of a store written before it existed: no index but live lines (every
-- live line draws on some pool, so an index is only ever missing while there is none)
function F.ensure_pools()
  if S.pool_ready then return end
  S.pool_ready = true
  if redis.call('EXISTS', K.pool) == 0 and redis.call('HLEN', K.res) > 0 then F.build_pools() end
end

-- write the pool-index changes of the lines that changed since the last call, so that the index
-- read next (and the one left behind) matches the lines; a store written before the index
-- existed gets it built first, once, from its live lines
function F.sync_pools()
  if not next(pool_dirty) then return end
  F.ensure_pools()
  local add, rem = {}, {}
  for rid in pairs(pool_dirty) do
    pool_dirty[rid] = nil
    local old = pool_now[rid] or F.stored_pools(line_orig[rid])
    local line = lines[rid]
    local new
    if line == true then
      new = pool_fresh[rid] or F.stored_pools(line_raw[rid])
    elseif line and (line.state == 'held' or line.state == 'committed') then
      new = F.line_pools(line.seq, line.alloc)
    else
      new = NO_POOLS
    end
    -- members differ only where the pools differ, unless the line was made anew (another seq)
    local same_seq = old.seq == new.seq
    local gone_tail, new_tail
    for name in pairs(old.names) do
      if not (same_seq and new.names[name]) then
        gone_tail = gone_tail or string.format('|%012d|', old.seq) .. rid
        rem[#rem + 1] = name .. gone_tail
      end
    end
    for name in pairs(new.names) do
      if not (same_seq and old.names[name]) then
        new_tail = new_tail or string.format('|%012d|', new.seq) .. rid
        add[#add + 1] = '0'
        add[#add + 1] = name .. new_tail
      end
    end
    pool_now[rid] = new
  end
  if #rem > 0 then F.call_chunked('ZREM', K.pool, rem, 1) end
  if #add > 0 then F.call_chunked('ZADD', K.pool, add, 2) end
end

----------------------------------------------------------------------------- write back

-- ZADD / ZREM the changes of an index zset (rid -> ms, or false to remove)
function F.write_zset(key, chg)
  if not next(chg) then return end
  local set, del = {}, {}
  local num = F.num
  for rid, ms in pairs(chg) do
    if ms then
      set[#set + 1] = num(ms)
      set[#set + 1] = rid
    else
      del[#del + 1] = rid
    end
  end
  if #del > 0 then F.call_chunked('ZREM', key, del, 1) end
  if #set > 0 then F.call_chunked('ZADD', key, set, 2) end
end

-- the stored form of a due bucket record: n and allocation entries (key -> units)
local function encode_due(n, entries)
  local parts = {}
  for key, q in pairs(entries) do
    if q ~= 0 then parts[#parts + 1] = key .. ',' .. F.num(q) end
  end
  table.sort(parts) -- one stored form for one content
  return F.num(n) .. '|' .. table.concat(parts, ';')
end

-- write the due bucket and usage changes
function F.flush_due()
  if next(due_chg) or next(due_folded) then
    local want, wt = {}, {}
    for T in pairs(due_chg) do
      if due_raw[T] == nil then
        wt[#wt + 1] = T
        want[#want + 1] = 'p' .. F.num(T)
      end
    end
    if #want > 0 then
      local vals = redis.call('HMGET', K.state, unpack(want))
      for i, T in ipairs(wt) do due_raw[T] = vals[i] or false end
    end
    local set, del, zadd, zrem = {}, {}, {}, {}
    local all = {}
    for T in pairs(due_chg) do all[T] = true end
    for T in pairs(due_folded) do all[T] = true end
    for T in pairs(all) do
      local raw, r = due_raw[T], due_chg[T]
      local n, entries = 0, {}
      if raw then
        local cnt, alloc = string.match(raw, '^(%-?%d+)|(.*)$')
        n = tonumber(cnt)
        if not due_folded[T] then
          for key, q in string.gmatch(alloc, '([^;]+),(%-?%d+)') do entries[key] = tonumber(q) end
        end
      end
      if r then
        n = n + r.n
        if not due_folded[T] then
          for key, q in pairs(r.e) do entries[key] = (entries[key] or 0) + q end
        end
      end
      local t = F.num(T)
      if n <= 0 then
        if raw then
          del[#del + 1] = 'p' .. t
          zrem[#zrem + 1] = t
        end
        due_raw[T] = false
      else
        local v = encode_due(n, entries)
        if v ~= raw then
          set[#set + 1] = 'p' .. t
          set[#set + 1] = v
        end
        if not raw then
          zadd[#zadd + 1] = t
          zadd[#zadd + 1] = t
        end
        due_raw[T] = v
      end
    end
    -- (written with the rest of the state hash by F.flush)
    for i = 1, #set, 2 do state_set[set[i]] = set[i + 1] end
    if #del > 0 then F.call_chunked('HDEL', K.state, del, 1) end
    if #zadd > 0 then F.call_chunked('ZADD', K.duet, zadd, 2) end
    if #zrem > 0 then F.call_chunked('ZREM', K.duet, zrem, 1) end
    due_chg, due_folded = {}, {}
  end
  for f, d in pairs(due_use) do
    if d ~= 0 then
      S.wrote = true
      if redis.call('HINCRBY', K.due, f, d) == 0 then redis.call('HDEL', K.due, f) end
    end
  end
  due_use = {}
  for key, m in pairs(use_chg) do
    for who, d in pairs(m) do
      if d ~= 0 then
        S.wrote = true
        if redis.call('HINCRBY', key, who, d) == 0 then redis.call('HDEL', key, who) end
      end
    end
    use_chg[key] = {}
  end
  if S.wdirty then
    state_set['!W'] = F.num(S.W) .. ',' .. F.num(S.pending) .. ',' .. F.num(S.next_due)
    S.wdirty = false
  end
end

-- write back everything that changed since the call began or the last flush
function F.flush()
  -- the first lines of a SKU: '!W' says its held lines are counted in buckets (ensure_due)
  if S.no_w and next(line_chg) then
    S.no_w = false
    S.wdirty = true
  end
  F.sync_pools()
  F.flush_due()
  local set = {}
  if S.kept and (S.dirty or S.pos_stale or next(lot_chg)) then
    redis.call('DEL', K.pos)
    state_set['!K'] = ''
    S.kept = false
  end
  if S.dirty then
    set[1] = '!L'
    set[2] = F.encode_state()
  end
  for f, v in pairs(state_set) do
    set[#set + 1] = f
    set[#set + 1] = v
  end
  if #set > 0 then F.call_chunked('HSET', K.state, set, 2) end

  if next(lot_chg) then
    local num = F.num
    set = {}
    local del = {}
    for id, write in pairs(lot_chg) do
      if write then
        local lot = lots[id]
        set[#set + 1] = id
        set[#set + 1] = lot.loc .. ',' .. num(lot.qty) .. ',' .. num(lot.eta_ms) .. ',' .. lot.supplier ..
          ',' .. num(lot.alloc)
      else
        del[#del + 1] = id
      end
    end
    if #set > 0 then F.call_chunked('HSET', K.lots, set, 2) end
    if #del > 0 then F.call_chunked('HDEL', K.lots, del, 1) end
  end

  if next(line_chg) then
    -- a live line is kept in res, an ended one in ended; a line that changed sides leaves the other
    local put = { [K.res] = {}, [K.ended] = {} }
    local drop = { [K.res] = {}, [K.ended] = {} }
    for rid, write in pairs(line_chg) do
      local home = line_home[rid]
      if write then
        local raw = line_raw[rid] or F.encode_line(lines[rid])
        local state = string.match(raw, '^(%a+)|')
        local to = (state == 'held' or state == 'committed') and K.res or K.ended
        local into = put[to]
        into[#into + 1] = rid
        into[#into + 1] = raw
        if home and home ~= to then drop[home][#drop[home] + 1] = rid end
        line_home[rid] = to
      elseif home then
        drop[home][#drop[home] + 1] = rid
        line_home[rid] = nil
      end
    end
    for key, items in pairs(put) do
      if #items > 0 then F.call_chunked('HSET', key, items, 2) end
    end
    for key, rids in pairs(drop) do
      if #rids > 0 then F.call_chunked('HDEL', key, rids, 1) end
    end
  end

  if next(exp_add) then
    set = {}
    for ms, rids in pairs(exp_add) do
      local score = F.num(ms)
      for i = 1, #rids, EXPIRE_ENTRY do
        set[#set + 1] = score
        set[#set + 1] = table.concat(rids, ' ', i, math.min(#rids, i + EXPIRE_ENTRY - 1))
      end
    end
    F.call_chunked('ZADD', K.exp, set, 2)
  end
  F.write_zset(K.dead, dead_chg)
  -- what is written is no longer a change: a later flush of the same call (apply_many ends with
  -- one, after a command that may have written back already) writes only what changed since
  state_set, lot_chg, line_chg, dead_chg, exp_add = {}, {}, {}, {}, {}
  S.dirty, S.pos_stale = false, false
end

----------------------------------------------------------------------------- used less often

function F.reliability(supplier)
  if not S.rel_loaded then
    S.rel_loaded = true
    local flat = redis.call('HGETALL', K.srel)
    for i = 1, #flat, 2 do rel[flat[i]] = tonumber(flat[i + 1]) end
  end
  return rel[supplier] or 1000
end

-- lot ids at loc ('' = any) by (eta_ms, id)
function F.lots_in_order(loc)
  local memo = 'order:' .. loc
  if PROM[memo] then return PROM[memo] end
  local all = F.get_lots()
  local ids = {}
  for id, lot in pairs(all) do
    if loc == '' or lot.loc == loc then ids[#ids + 1] = id end
  end
  if #ids > 1 then
    local blt = F.blt
    table.sort(ids, function(a, b)
      local ea, eb = all[a].eta_ms, all[b].eta_ms
      if ea ~= eb then return ea < eb end
      return blt(a, b)
    end)
  end
  PROM[memo] = ids
  return ids
end

function F.lot_delete(id)
  F.lots_changed()
  F.get_lots()[id] = nil
  lot_chg[id] = false
end

-- every live line (HGETALL of res: the ended ones live apart)
function F.load_live_lines()
  if S.live_lines then return end
  S.live_lines = true
  local flat = redis.call('HGETALL', K.res)
  for i = 1, #flat, 2 do
    if lines[flat[i]] == nil then F.got_line(flat[i], flat[i + 1], K.res) end
  end
end

-- every line, live and ended (the state dump)
function F.load_all_lines()
  F.load_live_lines()
  local flat = redis.call('HGETALL', K.ended)
  for i = 1, #flat, 2 do
    if lines[flat[i]] == nil then F.got_line(flat[i], flat[i + 1], K.ended) end
  end
end

-- the line changed: write it back, and its old stored form is stale
function F.mark(rid)
  line_chg[rid] = true
  line_raw[rid] = nil
  pool_dirty[rid] = true
end

function F.delete_line(rid)
  lines[rid] = false
  line_raw[rid] = nil
  line_chg[rid] = false
  pool_dirty[rid] = true
end

-- the pool index of every stored live line (a store written before the index existed)
function F.build_pools()
  local flat = redis.call('HGETALL', K.res)
  local add = {}
  for i = 1, #flat, 2 do
    for _, m in ipairs(F.pool_members(flat[i], F.stored_pools(flat[i + 1]))) do
      add[#add + 1] = '0'
      add[#add + 1] = m
    end
  end
  if #add > 0 then F.call_chunked('ZADD', K.pool, add, 2) end
end

-- call fn(line) for each live line drawing on `pool`, by seq (newest first when
-- newest_first), from the member after `after` (nil: the first), until it returns true; then
-- returns the member it stopped at (nil when the pool ran out). Reads the index a page at a
-- time, so the work is the lines visited; brings it up to date first and leaves it as it is
-- during the walk. Lines of folded buckets are buried as they are read (F.got_line) and skipped;
-- after a page that buried many, the walk pauses like a spent budget (S.budget = 0), returning
-- the page's last member.
function F.each_in_pool(pool, newest_first, fn, after)
  F.ensure_pools()
  F.sync_pools()
  local buried = S.buried
  local lo, hi = '[' .. pool .. '|', '(' .. pool .. '}'
  -- a page no longer than the call's budget: every line read is decoded
  local size = math.min(POOL_PAGE, math.max(1, S.budget or POOL_PAGE))
  if after then
    if newest_first then hi = '(' .. after else lo = '(' .. after end
  end
  while true do
    local page
    if newest_first then
      page = redis.call('ZREVRANGEBYLEX', K.pool, hi, lo, 'LIMIT', 0, size)
    else
      page = redis.call('ZRANGEBYLEX', K.pool, lo, hi, 'LIMIT', 0, size)
    end
    local rids = {}
    for i = 1, #page do rids[i] = string.match(page[i], '^[^|]*|%d+|(.*)$') end
    F.prefetch_lines(rids)
    for i = 1, #rids do
      local line = F.get_line(rids[i])
      if line and F.is_live(line) and fn(line) then return page[i] end
    end
    if #page < size then return nil end
    if S.budget and S.buried - buried >= POOL_PAGE then
      S.budget = 0
      return page[#page]
    end
    if newest_first then hi = '(' .. page[#page] else lo = '(' .. page[#page] end
  end
end

-- the wire line as json (docs/semantics.md "line")
function F.line_json(line)
  local num = F.num
  local parts = {}
  for i, a in ipairs(line.alloc) do
    parts[i] = '["' .. a[1] .. '","' .. a[2] .. '","' .. a[3] .. '",' .. num(a[4]) .. ']'
  end
  return '{"rid":"' .. line.rid .. '","sku":"' .. SKU .. '","qty":' .. num(line.qty) ..
    ',"loc":"' .. line.loc .. '","state":"' .. line.state .. '","expires_ms":' .. num(line.expires_ms) ..
    ',"seq":' .. num(line.seq) .. ',"channel":"' .. line.channel .. '","customer":"' .. line.customer ..
    '","alloc":[' .. table.concat(parts, ',') .. '],"promised_ms":' .. num(line.promised_ms) ..
    ',"atp_after":' .. num(line.atp_after) .. '}'
end

-- a reply {status, rid, reason?, available?, line?} as json, the line as it is now
function F.reply_json(r)
  local s = '{"status":"' .. r.status .. '","rid":"' .. r.rid .. '"'
  if r.reason then s = s .. ',"reason":"' .. r.reason .. '"' end
  if r.available then s = s .. ',"available":' .. F.num(r.available) end
  if r.line then s = s .. ',"line":' .. F.line_json(r.line) end
  return s .. '}'
end

function F.is_live(line)
  return line.state == 'held' or line.state == 'committed'
end

-- the units counted against a customer (K.cust) or channel (K.chan), changes of this call included
function F.used(key, who)
  return tonumber(redis.call('HGET', key, who) or '0') + (use_chg[key][who] or 0)
end

-- what a guard counts: F.used less the units of lines due but not buried yet (tag: 'c' for a
-- customer, 'h' for a channel; see KEYS[14])
function F.used_live(key, who, tag)
  local used = F.used(key, who)
  if S.pending <= 0 then return used end
  local ts = redis.call('ZRANGEBYSCORE', K.duet, '-inf', S.W, 'LIMIT', 0, GUARD_BUCKETS)
  if #ts == 0 then return used end
  local fields = {}
  for i = 1, #ts do fields[i] = tag .. ts[i] .. '|' .. who end
  local vals = redis.call('HMGET', K.due, unpack(fields))
  for i = 1, #ts do used = used - tonumber(vals[i] or '0') - (due_use[fields[i]] or 0) end
  return used
end

-- customer / channel usage += delta (either may be '': not counted); written by F.flush
function F.usage(customer, channel, delta)
  if customer ~= '' then
    local m = use_chg[K.cust]
    m[customer] = (m[customer] or 0) + delta
  end
  if channel ~= '' then
    local m = use_chg[K.chan]
    m[channel] = (m[channel] or 0) + delta
  end
end

function F.bo_location(loc)
  if loc ~= '' then return loc end
  local names = F.sorted_loc_names()
  if #names > 0 then return names[1] end
  return 'default'
end

-- add an allocation, folding it into an entry of the same kind, ref and location
function F.merge(allocs, new)
  for _, a in ipairs(allocs) do
    if a[1] == new[1] and a[2] == new[2] and a[3] == new[3] then
      a[4] = a[4] + new[4]
      return
    end
  end
  allocs[#allocs + 1] = { new[1], new[2], new[3], new[4] }
end

function F.drop_empty(line)
  local kept = {}
  for _, a in ipairs(line.alloc) do
    if a[4] > 0 then kept[#kept + 1] = a end
  end
  line.alloc = kept
end

-- add allocations to a live line and to the pool and bucket counters
function F.book(line, allocs)
  for _, a in ipairs(allocs) do
    local kind, ref, q = a[1], a[2], a[4]
    local b = F.loc_touch(a[3])
    if kind == 'oh' then
      b.oa = b.oa + q
    elseif kind == 'lot' then
      local lot = F.get_lots()[ref]
      lot.alloc = lot.alloc + q
      lot_chg[ref] = true
    elseif kind == 'bo' then
      b.ba = b.ba + q
    else
      b.st = b.st + q
    end
    if line.state == 'held' then b.hd = b.hd + q else b.cm = b.cm + q end
    if line.bucket then F.due_entry(line.bucket, a, q) end
    F.merge(line.alloc, a)
  end
  F.mark(line.rid)
end

-- take q units of an allocation (kind, ref, at location at) off its pool's counter; returns the
-- location's buckets
function F.pool_less(kind, ref, at, q)
  local b = F.loc_touch(at)
  if kind == 'oh' then
    b.oa = b.oa - q
  elseif kind == 'lot' then
    local lot = F.get_lots()[ref]
    if lot then
      lot.alloc = lot.alloc - q
      lot_chg[ref] = true
    end
  elseif kind == 'bo' then
    b.ba = b.ba - q
  else
    b.st = b.st - q
  end
  return b
end

-- remove q units of one allocation entry from the pool and bucket counters
function F.unbook(line, a, q)
  local b = F.pool_less(a[1], a[2], a[3], q)
  if line.state == 'held' then b.hd = b.hd - q else b.cm = b.cm - q end
  if line.bucket then F.due_entry(line.bucket, a, -q) end
  a[4] = a[4] - q
  F.mark(line.rid)
end

function F.return_units(line)
  for _, a in ipairs(line.alloc) do F.unbook(line, a, a[4]) end
  F.drop_empty(line)
  F.usage(line.customer, line.channel, -line.qty)
  if line.bucket then
    F.due_count(line.bucket, -1, line.qty, line.customer, line.channel)
    line.bucket = nil
  end
end

-- the wire position as json (all locations, or only `location` when it is not nil)
function F.position_json(location)
  local num, promisable, free_oh = F.num, F.promisable, F.free_oh
  local safety = pol.safety
  local pit, transit = {}, {}
  local next_ms = 0
  for _, lot in pairs(F.get_lots()) do
    local p = promisable(lot)
    transit[lot.loc] = (transit[lot.loc] or 0) + lot.qty
    pit[lot.loc] = (pit[lot.loc] or 0) + p
    if (location == nil or lot.loc == location) and p - lot.alloc > 0
        and (next_ms == 0 or lot.eta_ms < next_ms) then
      next_ms = lot.eta_ms
    end
  end
  local names
  if location == nil then
    names = F.sorted_loc_names()
  elseif locs[location] then
    names = { location }
  else
    names = {}
  end
  local per = {}
  local oh, hd, cm, it, pt, atp, now, short, bo, sf = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
  for i, name in ipairs(names) do
    local b = locs[name]
    local p = pit[name] or 0
    local t = transit[name] or 0
    local s = math.min(safety, b.oh) -- the same figures as F.atp_of
    local a = b.oh + p - s - (b.hd + b.cm - b.ba)
    per[i] = '"' .. name .. '":{"on_hand":' .. num(b.oh) .. ',"safety":' .. num(s) ..
      ',"held":' .. num(b.hd) .. ',"committed":' .. num(b.cm) .. ',"in_transit":' .. num(t) ..
      ',"promisable_in_transit":' .. num(p) .. ',"atp":' .. num(a) .. ',"oh_alloc":' .. num(b.oa) ..
      ',"bo_alloc":' .. num(b.ba) .. ',"short":' .. num(b.st) .. '}'
    oh, hd, cm, it, pt, atp = oh + b.oh, hd + b.hd, cm + b.cm, it + t, pt + p, atp + a
    now, short, bo, sf = now + free_oh(name), short + b.st, bo + b.ba, sf + s
  end
  -- the backorder room belongs to no location until a hold places it
  if location == nil then atp = atp + F.bo_free() end
  return '{"sku":"' .. SKU .. '","on_hand":' .. num(oh) .. ',"safety":' .. num(sf) ..
    ',"held":' .. num(hd) .. ',"committed":' .. num(cm) .. ',"in_transit":' .. num(it) ..
    ',"promisable_in_transit":' .. num(pt) .. ',"atp":' .. num(atp) .. ',"promisable_now":' .. num(now) ..
    ',"next_promise_ms":' .. num(next_ms) .. ',"oversold":' .. num(short) .. ',"backordered":' .. num(bo) ..
    ',"locations":{' .. table.concat(per, ',') .. '}}'
end

-- keep the position json (all locations) until the first moment time alone could change it:
-- the next due bucket, a lot's ETA entering the horizon, or a minute from now
function F.keep_position(json)
  local until_ms = NOW + 60000
  if S.next_due > NOW then until_ms = math.min(until_ms, S.next_due) end
  if pol.mode ~= 'strict' and pol.horizon_s > 0 then
    for _, lot in pairs(F.get_lots()) do
      local enters = lot.eta_ms - pol.horizon_s * 1000
      if enters > NOW then until_ms = math.min(until_ms, enters) end
    end
  end
  -- a key lives while the server clock is <= its time: gone by the first moment of change
  redis.call('SET', K.pos, json, 'PXAT', F.num(until_ms - 1))
  redis.call('HSET', K.state, '!K', '1')
end

----------------------------------------------------------------------------- the change log

-- A call that changed the SKU's state appends its change record to the SKU's log (KEYS[16], a
-- list), in the same atomic call, so the log holds every change in the order Redis applied it
-- (docs/changelog.md). The record is the call itself: its entry, its time and its arguments,
-- from which the same call on the same state gives the same state again (every entry is a pure
-- function of the state, NOW and ARGV). It is written as the JSON the relay ships:
-- {"sku", "q": the SKU's change number (1, 2, …; '!Q' in the state hash), "fn": the entry,
-- "now_ms", "args": ARGV from 3 on (or S.args: publish.lua keeps only the events it kept), "stash": apply's stash keys without the key prefix (KEYS
-- from 18 on), when there are some, "expired": the lines the call expired (F.expired), when
-- there are some}. The SKU is a validated id: no escaping needed.
-- A call that changed nothing (a refusal, a duplicate, a read) leaves no record.
function F.record(name)
  if not S.wrote then return end
  local q = redis.call('HINCRBY', K.state, '!Q', 1)
  local args = '[]'
  if S.args then
    args = cjson.encode(S.args)
  elseif #ARGV > 2 then
    args = cjson.encode({ unpack(ARGV, 3) })
  end
  local stash = ''
  if K.stashes then
    local tails = {}
    for i, key in ipairs(K.stashes) do tails[i] = string.sub(key, (string.find(key, '-', 1, true) or 0) + 1) end
    stash = ',"stash":' .. cjson.encode(tails)
  end
  if #S.expired > 0 then stash = stash .. ',"expired":[' .. table.concat(S.expired, ',') .. ']' end
  local n = redis.call('RPUSH', K.log, '{"sku":"' .. SKU .. '","q":' .. F.num(q) .. ',"fn":"' .. name ..
    '","now_ms":' .. F.num(NOW) .. ',"args":' .. args .. stash .. '}')
  if n == 1 then redis.call('SADD', K.changed, SKU) end
end

----------------------------------------------------------------------------- entries

-- entry name -> the function FCALL runs; each entry file adds its own (scripts.py registers them)
local ENTRIES = {}
local function entry(name, body)
  ENTRIES[name] = function(keys, argv)
    begin(keys, argv)
    local reply = body()
    F.record(name)
    return reply
  end
end
