-- Expire a request that is still pending; 1 if it was, 0 if it was decided meanwhile.
local request_key, pending_key = KEYS[1], KEYS[2]
local id = ARGV[1]
local now = ARGV[2]                 -- ms

if redis.call('HGET', request_key, 'status') ~= 'pending' then
  redis.call('ZREM', pending_key, id)
  return 0
end
redis.call('HSET', request_key, 'status', 'expired', 'decided', now)
redis.call('ZREM', pending_key, id)
return 1
