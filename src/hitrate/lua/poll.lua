-- poll.lua: a caller waiting for another caller's fill looks again, and marks the key as
-- awaited, so the fill (fill.lua) or the lease's release (release.lua) publishes it on the
-- wake channel and the waiter's process wakes it at once (see hitrate/listener.py).
-- KEYS[1]  entry key                      app:{user:42}
-- KEYS[2]  lease key                      app:{user:42}:lease
-- KEYS[3]  error key                      app:{user:42}:err
-- KEYS[4]  wait marker                    app:{user:42}:wait
-- ARGV[1]  how long the mark lasts, milliseconds (the caller's longest wait)
-- Returns {entry, lease holder, error text}, each nil when absent (what MGET returns).
-- The mark is set only while there is something to wait for: no entry, the lease held.
local found = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
if not found[1] and found[2] then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[1])
end
return found
