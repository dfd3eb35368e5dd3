-- stats_flush.lua: add one batch of a process's counts to the totals and to its minute,
-- exactly once: a batch re-sent after an ambiguous failure (a timeout after Redis already
-- ran it) is recognised by its sequence number and ignored.
-- KEYS[1]  the sending process's sequence key (app:~stats:{app}:seq:<process token>)
-- KEYS[2]  the totals hash (app:~stats:{app}:totals)
-- KEYS[3]  the minute hash the batch was counted in (app:~stats:{app}:m:<epoch minute>)
-- ARGV[1]  the batch's sequence number (1, 2, ... per process; sent in order)
-- ARGV[2]  TTL of the sequence key, seconds
-- ARGV[3]  TTL of the totals hash, seconds (renewed by every batch)
-- ARGV[4]  TTL of the minute hash, seconds
-- ARGV[5..] field, amount, field, amount, ...: fields are "<family>|<counter>"; an amount
--          with a "." is added by HINCRBYFLOAT (load_seconds), the others by HINCRBY
-- Returns 1 when the batch was added, 0 when it had been already.
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq <= last then
  return 0
end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[2])
for i = 5, #ARGV, 2 do
  local field, amount = ARGV[i], ARGV[i + 1]
  if string.find(amount, '.', 1, true) then
    redis.call('HINCRBYFLOAT', KEYS[2], field, amount)
    redis.call('HINCRBYFLOAT', KEYS[3], field, amount)
  else
    redis.call('HINCRBY', KEYS[2], field, amount)
    redis.call('HINCRBY', KEYS[3], field, amount)
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
