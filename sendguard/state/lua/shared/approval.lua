-- settle_waiting(id, outcome, detail, now, retention_ms): a message waiting for an approval
-- request takes the request's outcome: approved queues it (not before its send_at), denied
-- cancels it, anything else (expired, or a request gone) expires it. 1 if it moved, else 0.
local function settle_waiting(id, outcome, detail, now, retention_ms)
  local key = key_msg(id)
  local cur = redis.call('HMGET', key, 'status', 'not_before')
  if cur[1] ~= 'pending_approval' then return 0 end
  local new, cause = 'expired', 'approval_expired'
  if outcome == 'approved' then new, cause = 'queued', 'approved' end
  if outcome == 'denied' then new, cause = 'cancelled', 'approval_denied' end
  redis.call('HSET', key, 'status', new)
  redis.call('HINCRBY', key_count(), 'pending_approval', -1)
  history(key_hist(id), now, new, cause, detail)
  if new == 'queued' then
    redis.call('HINCRBY', key_count(), 'queued', 1)
    redis.call('ZADD', key_due(), math.max(now, tonumber(cur[2] or '0')), id)
  else
    redis.call('HSET', key, 'reasons', cjson.encode({{code=cause, detail=detail}}))
    finished(id, retention_ms, true)
  end
  return 1
end
