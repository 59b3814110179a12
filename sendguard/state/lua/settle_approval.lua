-- Queue (approved), cancel (denied) or expire the messages still waiting for an approval request.
-- Returns how many moved.
local messages_key, due_key, count_key = KEYS[1], KEYS[2], KEYS[3]
local outcome = ARGV[1]             -- approved | denied | expired
local detail = ARGV[2]              -- for the history
local retention_ms = ARGV[3]
local now = clock_ms()

local moved = 0
for _, id in ipairs(redis.call('SMEMBERS', messages_key)) do
  local key = key_msg(id)
  local cur = redis.call('HMGET', key, 'status', 'not_before')
  if cur[1] == 'pending_approval' then
    local new, cause = 'queued', 'approved'
    if outcome == 'denied' then new, cause = 'cancelled', 'approval_denied' end
    if outcome == 'expired' then new, cause = 'expired', 'approval_expired' end
    redis.call('HSET', key, 'status', new)
    redis.call('HINCRBY', count_key, 'pending_approval', -1)
    history(key_hist(id), now, new, cause, detail)
    if new == 'queued' then
      redis.call('HINCRBY', count_key, 'queued', 1)
      redis.call('ZADD', due_key, math.max(now, tonumber(cur[2] or '0')), id)
    else
      redis.call('HSET', key, 'reasons', cjson.encode({{code=cause, detail=detail}}))
      finished(id, retention_ms, true)
    end
    moved = moved + 1
  end
end
return moved
