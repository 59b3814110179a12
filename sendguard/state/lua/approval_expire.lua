-- Expire a request that is still pending, its waiting messages and its audit entry in one step
-- (a message admitted later is expired by admit.lua); 1 if it was pending, 0 if decided meanwhile.
local request_key, pending_key, messages_key = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local retention_ms = ARGV[2]        -- how long an expired message is kept
local audit_entry = ARGV[3]         -- approval.expired
local now = clock_ms()

redis.call('ZREM', pending_key, id)
local r = redis.call('HMGET', request_key, 'status', 'agent')
if r[2] then redis.call('ZREM', key_agent_approvals(r[2]), id) end
if r[1] ~= 'pending' then return 0 end
local settled = 'no decision within the approval ttl'
redis.call('HSET', request_key, 'status', 'expired', 'decided', now, 'settled', settled)
for _, message in ipairs(redis.call('SMEMBERS', messages_key)) do
  settle_waiting(message, 'expired', settled, now, retention_ms)
end
redis.call('RPUSH', key_audit_pending(), audit_entry)
return 1
