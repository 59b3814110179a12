-- After the relay answered: pin a delivery to its answer time, or give its slot back.
local window_keys = KEYS
local member = ARGV[1]
local delivered = ARGV[2] == '1'

local now = clock_ms()
for _, key in ipairs(window_keys) do
  if delivered then
    redis.call('ZADD', key, 'XX', now, member)
  else
    redis.call('ZREM', key, member)
  end
end
return now
