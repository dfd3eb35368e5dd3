-- obj_lease.lua: read a cached object, or take the lease to load and fill it, atomically
-- (the object cache's side of the lease plan in plans/leases.py; see lease.lua).
-- KEYS[1]  object hash                   app:~obj:{user:42}
-- KEYS[2]  its fill lease                app:~obj:{user:42}:lease
-- ARGV[1]  lease token (random, unique to this caller)
-- ARGV[2]  lease time in milliseconds
-- Returns {status, fields, holder}: {1, {field, value, ...}, ''} when the object is cached,
-- {2, {}, ''} when the lease was granted to ARGV[1], {3, {}, holder} when another caller
-- holds it (holder = its token, which names its error text if its loader fails).
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then
  return {1, fields, ''}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, {}, ''}
end
return {3, {}, redis.call('GET', KEYS[2]) or ''}
