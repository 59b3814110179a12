-- Record one approver's decision if the rules allow it; two deciding at once are serialised here.
-- A decision that settles the request settles its waiting messages in the same step (a message
-- admitted later is settled by admit.lua from the status written here), with the audit entry.
-- Returns {'refused', why} or {new status, ''}.
local request_key, pending_key, messages_key = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local verdict = ARGV[2]             -- approve | deny
local name, group, token = ARGV[3], ARGV[4], ARGV[5]  -- who decides, as their token was minted
local comment = ARGV[6]
local retention_ms = ARGV[7]        -- how long a settled message is kept
local audit_entry = ARGV[8]         -- approval.decided; its outcome is the request's new status
local now = clock_ms()

local r = redis.call('HMGET', request_key, 'status', 'tier', 'requested_by', 'requested_token', 'decisions',
  'expires', 'headroom_for', 'agent')
if not r[1] then return {'refused', 'there is no approval request ' .. id} end
if r[1] ~= 'pending' then return {'refused', 'the request is already ' .. r[1]} end
if now >= tonumber(r[6]) then return {'refused', 'the request has expired'} end
if name == r[3] or token == r[4] then
  return {'refused', name .. ' submitted this request and cannot decide it'}
end
local decisions = cjson.decode(r[5])
local approvals = 0
for _, d in ipairs(decisions) do
  if d.by == name then return {'refused', name .. ' has already decided this request'} end
  if d.verdict == 'approve' then
    approvals = approvals + 1
    if verdict == 'approve' and d.group == group then
      return {'refused', 'the second approval must come from a group other than ' .. group}
    end
  end
end
table.insert(decisions, {by=name, group=group, verdict=verdict, comment=comment, at=now})
redis.call('HSET', request_key, 'decisions', cjson.encode(decisions))
local status = 'pending'
if verdict == 'deny' then
  status = 'denied'
  count_activity(r[8], 'denied', now)
elseif approvals + 1 >= tonumber(r[2]) then
  status = 'approved'
  -- The headroom its approvers were shown starts now.
  redis.call('HSET', request_key, 'headroom_until', now + tonumber(r[7] or '0'))
end
if status ~= 'pending' then
  local settled = status .. ' by ' .. name .. ' (' .. group .. '): ' .. comment
  redis.call('HSET', request_key, 'status', status, 'decided', now, 'settled', settled)
  redis.call('ZREM', pending_key, id)
  redis.call('ZREM', key_agent_approvals(r[8]), id)
  for _, message in ipairs(redis.call('SMEMBERS', messages_key)) do
    settle_waiting(message, status, settled, now, retention_ms)
  end
end
audit(audit_entry, '"status":' .. cjson.encode(status))
return {status, ''}
