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

-- open_request(id, fields, now, ttl_ms, most, entry): open a pending request of `fields.agent`
-- (fields: its record but for its times, a Lua table), with its audit entry, unless the agent has
-- `most` requests pending already: then nothing is written and false is returned. The agent's
-- pending requests are indexed by expiry (key_agent_approvals), which approval_decide.lua and
-- approval_expire.lua leave in step; one past its expiry that the sweep has not expired yet no
-- longer counts, as nobody can decide it. Checked and opened in one step, so two submissions at
-- once cannot both take the last place.
local function open_request(id, fields, now, ttl_ms, most, entry)
  local index = key_agent_approvals(fields.agent)
  if redis.call('ZCOUNT', index, '(' .. now, '+inf') >= most then return false end
  local key = key_approval(id)
  for name, value in pairs(fields) do redis.call('HSET', key, name, value) end
  redis.call('HSET', key, 'created', now, 'expires', now + ttl_ms)
  redis.call('ZADD', key_approvals(), now, id)
  redis.call('ZADD', key_approvals_pending(), now + ttl_ms, id)
  redis.call('ZADD', index, now + ttl_ms, id)
  redis.call('PEXPIRE', index, math.max(redis.call('PTTL', index), ttl_ms))
  redis.call('RPUSH', key_audit_pending(), entry)
  return true
end
