-- Add `count` messages to an agent's run and return how many the run holds within the window.
local run_key = KEYS[1]
local now = tonumber(ARGV[1])       -- ms
local window_ms = tonumber(ARGV[2])
local member = ARGV[3]              -- unique to this call; each message adds member:i
local count = tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', run_key, '-inf', now - window_ms)
for i = 1, count do redis.call('ZADD', run_key, now, member .. ':' .. i) end
redis.call('PEXPIRE', run_key, window_ms)
return redis.call('ZCARD', run_key)
