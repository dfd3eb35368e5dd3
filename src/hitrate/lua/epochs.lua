-- epochs.lua: read the generations hash on the primary (Redis Cluster: the check after a
-- fill, hitrate.plans.aside.settle, and this process's view of the hash). A plain HMGET or
-- HGETALL would be sent to a replica when the client reads from replicas
-- (?replica_reads=yes), and a lagging replica could miss the epoch a pattern invalidation
-- has just changed, or the hash's id; a script runs where the key is written.
-- KEYS[1]  the prefix's generations hash  app:~gen
-- ARGV     the fields (ep:*, id, ep:<family>, ...); none: the whole hash (HGETALL)
-- Returns their values (nil for a field that is not there), or the flat HGETALL reply.
if #ARGV == 0 then
  return redis.call('HGETALL', KEYS[1])
end
return redis.call('HMGET', KEYS[1], unpack(ARGV))
