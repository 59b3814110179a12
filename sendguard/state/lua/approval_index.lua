-- Index the pending requests among the ids given under their agents (key_agent_approvals), as opening
-- one does, unless they are there already: requests opened by a version before the index, taken up
-- at a daemon's start. A request is read and indexed in one step, so one decided meanwhile is not.
-- Returns how many were added.
local ids = ARGV

local added = 0
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', key_approval(id), 'status', 'agent', 'expires')
  if r[1] == 'pending' and r[2] and r[3] then
    added = added + redis.call('ZADD', key_agent_approvals(r[2]), 'NX', r[3], id)
  end
end
return added
