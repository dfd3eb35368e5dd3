-- rl_sliding.lua: sliding-window rate limit, the exact "log" variant (not the two-counter
-- approximation): every allowed unit is a member of a sorted set scored by the server time
-- (TIME) it was allowed at, so at most `limit` units are allowed in ANY window of `per`.
-- Memory: up to `limit` members per identity. The expiry is set in the same step as every
-- addition, and covers the newest member.
-- KEYS[1]  sorted set of allowed units    app:~rl:{api:alice}:sliding
-- ARGV[1]  limit (units per window)
-- ARGV[2]  window length in microseconds
-- ARGV[3]  cost of this request (1 <= cost <= limit)
-- ARGV[4]  '1' to consume (hit), '0' to only look (peek)
-- ARGV[5]  a random token, unique to this call (member names)
-- Returns {allowed 1|0, remaining, retry_after, reset_after}, times in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, per, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local since = now - per -- units allowed at or before this have left the window
local open = string.format('(%d', since) -- %d: Lua's tostring would round to 14 digits
local used
if ARGV[4] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', since))
  used = redis.call('ZCARD', KEYS[1])
else
  used = redis.call('ZCOUNT', KEYS[1], open, '+inf')
end
local allowed = used + cost <= limit
local retry_after = 0
if allowed and ARGV[4] == '1' then
  for i = 1, cost do
    redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[5] .. ':' .. i)
  end
  used = used + cost
  redis.call('PEXPIRE', KEYS[1], math.ceil(per / 1000))
elseif not allowed then
  -- wait until enough of the oldest units have left the window
  local k = used + cost - limit - 1
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], open, '+inf', 'WITHSCORES', 'LIMIT', k, 1)
  retry_after = tonumber(oldest[2]) + per - now
end
local reset_after = 0
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) > since then
  reset_after = tonumber(newest[2]) + per - now
end
return {allowed and 1 or 0, limit - used, retry_after, reset_after}
