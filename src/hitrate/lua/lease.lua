-- lease.lua: read an entry, or take the fill lease for it, in one atomic step.
-- KEYS[1]  entry key                      app:{user:42}
-- KEYS[2]  lease key                      app:{user:42}:lease
-- KEYS[3..] tag generation keys of the tags this fill will carry (app:tag:{t}:gen)
-- ARGV[1]  lease token (random, unique to this caller)
-- ARGV[2]  lease time in milliseconds
-- ARGV[3]  "" to return the entry when there is one; otherwise this is a refresh of a
--          stale or early-expiring entry, and ARGV[3] is the expiry field (bytes 5-12 of
--          the header) of the entry the caller saw: the lease is taken only if that entry
--          is still the one stored, so an entry refreshed a moment ago is not refreshed again
-- Returns {status, value, holder, gen...}:
--   status 1: the entry exists (and, for a refresh, is newer than the caller's); value =
--             its bytes
--   status 2: the lease is granted to ARGV[1]
--   status 3: another caller holds the lease, holder = its token
--   gen...: the current value of each tag generation key ("" when absent), which fill.lua
--           compares so a tag invalidated meanwhile refuses the fill
local gens = {}
for i = 3, #KEYS do
  gens[#gens + 1] = redis.call('GET', KEYS[i]) or ''
end
local value = redis.call('GET', KEYS[1])
if value and (ARGV[3] == '' or string.sub(value, 5, 12) ~= ARGV[3]) then
  return {1, value, '', unpack(gens)}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, '', '', unpack(gens)}
end
return {3, '', redis.call('GET', KEYS[2]) or '', unpack(gens)}
