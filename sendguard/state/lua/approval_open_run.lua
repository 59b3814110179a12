-- Open the tier-2 request for an agent's run, unless one is pending or an approved one still
-- covers it. Returns {'pending' | 'covered' | 'new', the request id}.
local run_approval_key, approvals_key, pending_key = KEYS[1], KEYS[2], KEYS[3]
local new_id = ARGV[1]
local now = ARGV[2]                 -- ms
local ttl_ms = tonumber(ARGV[3])
local fields = cjson.decode(ARGV[4])  -- the new request's record

local cur = redis.call('GET', run_approval_key)
if cur then
  local r = redis.call('HMGET', key_approval(cur), 'status', 'good_until')
  if r[1] == 'pending' then return {'pending', cur} end
  if r[1] == 'approved' and tonumber(r[2] or '0') > tonumber(now) then return {'covered', cur} end
end
local key = key_approval(new_id)
for name, value in pairs(fields) do redis.call('HSET', key, name, value) end
redis.call('ZADD', approvals_key, now, new_id)
redis.call('ZADD', pending_key, tonumber(now) + ttl_ms, new_id)
redis.call('SET', run_approval_key, new_id, 'PX', 2 * ttl_ms)
return {'new', new_id}
