-- After the relay answered: pin a delivery to its answer time, or give its slot back.
local window_keys = KEYS
local member = ARGV[1]
local delivered = ARGV[2] == '1'

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for _, key in ipairs(window_keys) do
  if delivered then
    redis.call('ZADD', key, 'XX', now, member)
  else
    redis.call('ZREM', key, member)
  end
end
return now
