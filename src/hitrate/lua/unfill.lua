-- unfill.lua: take back an entry this caller just filled, if it is still the one written
-- (Redis Cluster: a fill epoch or tag version changed while it loaded, which one server
-- checks inside fill.lua; see hitrate.plans.aside.settle).
-- KEYS[1]  entry key
-- ARGV[1]  SHA1 (hex) of the entry bytes the fill wrote
-- Returns 1 when deleted, 0 when the entry had changed (a newer write stays).
local value = redis.call('GET', KEYS[1])
if value and redis.sha1hex(value) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
