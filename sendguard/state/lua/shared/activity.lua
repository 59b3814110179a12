-- count_activity(agent, field, now): one more `field` (sent, rejected:<code>, denied, tripped, ...)
-- in the agent's bucket for the hour of `now`, written by the script that records the event itself,
-- so the register's last 24 hours cost no round trip of their own. '' counts nothing.
local function count_activity(agent, field, now)
  if not agent or agent == '' or field == '' then return end
  local hour = math.floor(now / ACTIVITY_BUCKET_MS)
  local key = key_activity(agent, hour)
  -- The expiry is a function of the key alone and is written with every field's first count, the
  -- only writes this hash gets: a field counted before found it set already.
  if redis.call('HINCRBY', key, field, 1) == 1 then
    redis.call('PEXPIREAT', key, (hour + ACTIVITY_BUCKETS_KEPT) * ACTIVITY_BUCKET_MS)
  end
end
