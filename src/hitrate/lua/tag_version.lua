-- tag_version.lua: the current version of a tag, made when it has none (Redis Cluster,
-- before a tagged lease: what lease.lua does for each tag on one server, here in the tag's
-- own slot - and on the primary, where a client reading from replicas would not look).
-- KEYS[1]  the tag's version              app:~tag:{t}:v
-- ARGV[1]  a fresh version token, used when the tag has none
-- ARGV[2]  its lifetime in milliseconds (fill.lua / tag_add.lua extend it with entries)
-- Returns the version.
local v = redis.call('GET', KEYS[1])
if not v then
  v = ARGV[1]
  redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
end
return v
