-- Give up the chaining lock, only if `owner` holds it (compare-and-delete).
local lock_key = KEYS[1]
local owner = ARGV[1]

if redis.call('GET', lock_key) == owner then return redis.call('DEL', lock_key) end
return 0
