-- Record one approver's decision if the rules allow it; two deciding at once are serialised here.
-- Returns {'refused', why} or {new status, ''}.
local request_key, pending_key = KEYS[1], KEYS[2]
local id = ARGV[1]
local now = tonumber(ARGV[2])       -- ms
local verdict = ARGV[3]             -- approve | deny
local name, group, token = ARGV[4], ARGV[5], ARGV[6]  -- who decides
local comment = ARGV[7]
local ttl_ms = tonumber(ARGV[8])    -- how long an approval stays good

local r = redis.call('HMGET', request_key, 'status', 'tier', 'requested_by', 'requested_token', 'decisions',
  'expires')
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
elseif approvals + 1 >= tonumber(r[2]) then
  status = 'approved'
  redis.call('HSET', request_key, 'good_until', now + ttl_ms)
end
if status ~= 'pending' then
  redis.call('HSET', request_key, 'status', status, 'decided', now)
  redis.call('ZREM', pending_key, id)
end
return {status, ''}
