-- Take the chaining lock if it is free, renew it if it is ours; 1 while we hold it.
local lock_key = KEYS[1]
local owner = ARGV[1]
local ttl_ms = ARGV[2]

local holder = redis.call('GET', lock_key)
if holder == owner then
  redis.call('PEXPIRE', lock_key, ttl_ms)
  return 1
end
if holder then return 0 end
redis.call('SET', lock_key, owner, 'PX', ttl_ms)
return 1
