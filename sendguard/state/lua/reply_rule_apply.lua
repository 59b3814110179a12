-- A reply rule defers or slows a scope, once per rule and scope in each window, with its audit
-- entry: replies that match again within the window keep the action in force and write nothing.
-- Returns {1 (applied by this call) or 0, when the window ends (ms)}.
local rule = ARGV[1]                -- the rule, as a hash of its settings
local scope = ARGV[2]               -- the scope of the message that got the reply
local action = ARGV[3]              -- defer | slow
local duration = tonumber(ARGV[4])  -- ms
local limit = ARGV[5]               -- slow: sends allowed per `per`
local per = ARGV[6]                 -- slow: ms
local audit_entry = ARGV[7]         -- reply_rule.applied; its outcome is when the action ends
local now = clock_ms()

local once = key_reply_once(rule, scope)
local ends = now + duration
if not redis.call('SET', once, ends, 'NX', 'PX', duration) then
  return {0, tonumber(redis.call('GET', once))}
end
local hold = key_reply_hold(scope)
if action == 'defer' then
  redis.call('HSET', hold, 'defer_until', math.max(ends, tonumber(redis.call('HGET', hold, 'defer_until') or '0')))
else
  local slow_until = tonumber(redis.call('HGET', hold, 'slow_until') or '0')
  if slow_until > now then
    -- A slow in force keeps its limit and its window of sends, and lasts to the later end.
    redis.call('HSET', hold, 'slow_until', math.max(ends, slow_until))
  else
    redis.call('HSET', hold, 'slow_until', ends, 'slow_limit', limit, 'slow_per', per)
    redis.call('DEL', key_reply_window(scope))
  end
end
local held = redis.call('HMGET', hold, 'defer_until', 'slow_until')
redis.call('PEXPIREAT', hold, math.max(tonumber(held[1] or '0'), tonumber(held[2] or '0')))
audit(audit_entry, '"until":' .. ends)
return {1, ends}
