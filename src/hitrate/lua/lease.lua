-- lease.lua: read an entry, or take the fill lease for it, in one atomic step.
-- KEYS[1]  entry key                      app:{user:42}
-- KEYS[2]  lease key                      app:{user:42}:lease
-- KEYS[3..] tag generation keys of the tags this fill will carry (app:tag:{t}:gen)
-- ARGV[1]  lease token (random, unique to this caller)
-- ARGV[2]  lease time in milliseconds
-- ARGV[3]  "1" to take the lease even though the entry exists (refresh of a stale or
--          early-expiring entry), "0" to return the entry when there is one
-- Returns {status, value, holder, gen...}:
--   status 1: the entry exists, value = its bytes (only when ARGV[3] == "0")
--   status 2: the lease is granted to ARGV[1]
--   status 3: another caller holds the lease, holder = its token
--   gen...: the current value of each tag generation key ("" when absent), which fill.lua
--           compares so a tag invalidated meanwhile refuses the fill
local gens = {}
for i = 3, #KEYS do
  gens[#gens + 1] = redis.call('GET', KEYS[i]) or ''
end
if ARGV[3] == '0' then
  local value = redis.call('GET', KEYS[1])
  if value then
    return {1, value, '', unpack(gens)}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, '', '', unpack(gens)}
end
return {3, '', redis.call('GET', KEYS[2]) or '', unpack(gens)}
