-- After the relay answered: pin a delivery to its answer time, or give its window slots back.
-- A gap bucket keeps the attempt at its answer time either way, so retries are spaced too.
local bucket_keys = KEYS            -- the windows, then the gap buckets
local member = ARGV[1]
local delivered = ARGV[2] == '1'
local n = tonumber(ARGV[3])         -- how many of them are windows

local now = clock_ms()
for i, key in ipairs(bucket_keys) do
  if delivered or i > n then
    redis.call('ZADD', key, 'XX', now, member)
  else
    redis.call('ZREM', key, member)
  end
end
return now
