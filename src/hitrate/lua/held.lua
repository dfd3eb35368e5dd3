-- held.lua: is the entry still the one this caller filled? (Redis Cluster: read with the
-- check after a fill - see hitrate.plans.aside.settle - so that the fill's value is shared
-- with callers that arrived meanwhile only if no invalidation or write replaced it.)
-- KEYS[1]  entry key
-- ARGV[1]  SHA1 (hex) of the entry bytes the fill wrote
-- Returns 1 when the entry holds exactly those bytes, else 0.
local value = redis.call('GET', KEYS[1])
if value and redis.sha1hex(value) == ARGV[1] then
  return 1
end
return 0
