-- lease.lua: read an entry, or take the fill lease for it, in one atomic step.
-- KEYS[1]  entry key                      app:{user:42}
-- KEYS[2]  lease key                      app:{user:42}:lease
-- KEYS[3]  write-bookkeeping hash         app:{user:42}:w (see write_begin.lua)
-- KEYS[4]  the prefix's generations hash  app:~gen (see keys.py)
-- KEYS[5..] version keys of the tags this fill will carry (app:~tag:{t}:v)
-- ARGV[1]  lease token (random, unique to this caller)
-- ARGV[2]  lease time in milliseconds
-- ARGV[3]  "" to return the entry when there is one; otherwise this is a refresh of a
--          stale or early-expiring entry (or one not fresh for the caller), and ARGV[3] is
--          the entry the caller saw: the lease is taken only if that entry is still the
--          one stored, so an entry refreshed a moment ago is not refreshed again
-- ARGV[4]  the key's family
-- ARGV[5]  a fresh random token: the generations hash's id if it has none (it is new, or
--          was lost: a new id retires every entry stamped under the old one)
-- Returns {status, value, holder, ep_all, ep_family, ns_all, ns_family, id, taggen...}:
--   status 1: the entry exists (and, for a refresh, is newer than the caller's); value =
--             its bytes
--   status 2: the lease is granted to ARGV[1]
--   status 3: another caller holds the lease, holder = its token
--   status 4: a write-through of this key is in flight: no lease (its value is not yet
--             known); the caller loads without filling
--   ep_*: the fill epochs (prefix-wide and the family's), which pattern invalidation and
--         bump change; fill.lua refuses the fill when one changed meanwhile
--   ns_*, id: the namespace generations and hash id the entry is stamped with
--   version...: the current version token of each tag (one is made for a tag that has
--              none: never used, expired or evicted); the entry records them, and is
--              served only while they are current, and fill.lua compares them so a tag
--              invalidated meanwhile refuses the fill
-- On Redis Cluster (only KEYS[1..3] given: the generations hash and the tag versions
-- live in other slots) the caller passes them, as read just before:
-- ARGV[6..10] ep_all, ep_family, ns_all, ns_family, id; ARGV[11..] the tag versions.
-- They are returned as if read here; the fill is then checked after it is written
-- (see hitrate.plans.aside.settle).
local out
if #KEYS == 3 then
  out = {0, '', '', ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]}
  for i = 11, #ARGV do
    out[#out + 1] = ARGV[i]
  end
else
  local g = redis.call('HMGET', KEYS[4], 'ep:*', 'ep:' .. ARGV[4], 'ns:*', 'ns:' .. ARGV[4], 'id')
  if not g[5] then
    redis.call('HSETNX', KEYS[4], 'id', ARGV[5])
    g[5] = redis.call('HGET', KEYS[4], 'id')
  end
  out = {0, '', '', g[1] or '', g[2] or '', g[3] or '', g[4] or '', g[5]}
  for i = 5, #KEYS do
    local v = redis.call('GET', KEYS[i])
    if not v then
      -- Long enough for the fill (it is refused after the lease time anyway), which keeps
      -- the version as long as the entries that record it.
      v = ARGV[5] .. '.' .. (i - 4)
      redis.call('SET', KEYS[i], v, 'PX', tonumber(ARGV[2]) + 60000)
    end
    out[#out + 1] = v
  end
end
local value = redis.call('GET', KEYS[1])
if value and (ARGV[3] == '' or value ~= ARGV[3]) then
  out[1], out[2] = 1, value
elseif redis.call('HLEN', KEYS[3]) > 1 then
  out[1] = 4
elseif redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  out[1] = 2
else
  out[1], out[3] = 3, redis.call('GET', KEYS[2]) or ''
end
return out
