-- Window totals of every scope that saw a signal within the window: scope, totals (JSON), ...
local active_key = KEYS[1]
local window = tonumber(ARGV[1])    -- ms
local slots = tonumber(ARGV[2])

local now = clock_ms()
local slot = math.floor(now / math.floor(window / slots))
redis.call('ZREMRANGEBYSCORE', active_key, '-inf', now - window)
local out = {}
for _, scope in ipairs(redis.call('ZRANGE', active_key, 0, -1)) do
  local key = key_signals(scope)
  refresh(key, slot, slots)
  table.insert(out, scope)
  table.insert(out, cjson.encode(totals(key)))
end
return out
