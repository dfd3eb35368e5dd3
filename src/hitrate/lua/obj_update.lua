-- obj_update.lua: change some fields of a cached object, only if it is still cached, so an
-- expired or invalidated object is never resurrected with a partial set of fields. HSET
-- leaves the hash's expiry as it was. A fill in flight loaded the object before this
-- change, so its lease is revoked either way.
-- KEYS[1]  object hash
-- KEYS[2]  its fill lease
-- ARGV[1 ..]  field, value, field, value, ...
-- Returns 1 when the object was updated, 0 when it was not cached.
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 1, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
