-- lb_around.lua: the entries around a member of a leaderboard, in one step.
-- KEYS[1]  the sorted set (scores stored negated: ascending order is best first)
-- ARGV[1]  the member
-- ARGV[2]  n: how many entries above and below it
-- Returns {start, {member, stored score, ...}} with start the 0-based rank of the first
-- entry, or nil when the member is not on the leaderboard.
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if not rank then
  return nil
end
local n = tonumber(ARGV[2])
local start = math.max(0, rank - n)
return {start, redis.call('ZRANGE', KEYS[1], start, rank + n, 'WITHSCORES')}
