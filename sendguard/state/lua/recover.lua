-- Requeue claims whose daemon died, and the given daemon's claims it no longer works on.
-- A message that was mid-send is counted uncertain, unless its own daemon says the relay never
-- had it. Returns {recovered, of which uncertain}.
local inflight_key, due_key, count_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit = tonumber(ARGV[1])     -- claims looked at
local own = ARGV[2]                 -- the asking daemon; '' for none
local live_count = tonumber(ARGV[3])
local live_claims = {unpack(ARGV, 4, 3 + live_count)}  -- the tokens of the claims it still works on
local unsent_claims = {unpack(ARGV, 4 + live_count)}   -- its claims let go of before the relay had them
local now = clock_ms()

local live = {}
for _, claim in ipairs(live_claims) do live[claim] = true end
local unsent = {}
for _, claim in ipairs(unsent_claims) do unsent[claim] = true end
local ids = redis.call('ZRANGE', inflight_key, 0, limit - 1)
local recovered, uncertain = 0, 0
for _, id in ipairs(ids) do
  local key = key_msg(id)
  local cur = redis.call('HMGET', key, 'owner', 'claim')
  local owner, lost = cur[1], false
  if owner == own then
    lost = not live[cur[2]]
  else
    lost = not owner or redis.call('EXISTS', key_instance(owner)) == 0
  end
  if lost then
    redis.call('ZREM', inflight_key, id)
    redis.call('HDEL', key, 'claim', 'owner')
    local status = redis.call('HGET', key, 'status')
    if status == 'sending' then
      redis.call('HSET', key, 'status', 'queued')
      redis.call('HINCRBY', count_key, 'sending', -1)
      redis.call('HINCRBY', count_key, 'queued', 1)
      if owner == own and unsent[cur[2]] then
        history(key_hist(id), now, 'queued', 'not_sent',
          'its daemon lost Redis before the relay had it; not sent, and retried')
      else
        uncertain = uncertain + 1
        redis.call('HINCRBY', key, 'uncertain', 1)
        redis.call('HINCRBY', stats_key, 'uncertain', 1)
        history(key_hist(id), now, 'queued', 'recovered',
          'the daemon sending it stopped or lost Redis mid-send; it may have been delivered and is retried')
      end
      status = 'queued'
    end
    if WAITING[status] then
      redis.call('ZADD', due_key, now, id)
      recovered = recovered + 1
    end
  end
end
return {recovered, uncertain}
