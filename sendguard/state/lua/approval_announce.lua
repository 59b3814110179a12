-- Claim the pending requests whose approvers may not have been told, for this daemon to announce.
-- A request is announced by whoever opened it, at once; `announced` is written when the webhook
-- took an announcement. One with no `announced` is claimed here once `lease_ms` (the notifier's
-- whole retry budget, and a margin) has passed since it was opened or last claimed: by then that
-- post has succeeded or given up, so nobody posts it twice at once and one daemon a lease claims
-- it, however many sweep. At most `most` a call, so a webhook that was down for a while (or an agent
-- that opened thousands of requests) gets the posts in batches, a sweep apart, not all at once.
-- Returns {id, tier, label, why, requested_by} for each request claimed.
local pending_key = KEYS[1]
local lease_ms = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local now = clock_ms()

local claimed = {}
for _, id in ipairs(redis.call('ZRANGE', pending_key, 0, -1)) do
  if #claimed >= most then break end
  local key = key_approval(id)
  local r = redis.call('HMGET', key, 'status', 'announced', 'created', 'announce_claimed', 'tier', 'label', 'why',
    'requested_by')
  local since = math.max(tonumber(r[3] or '0'), tonumber(r[4] or '0'))
  if r[1] == 'pending' and not r[2] and since + lease_ms <= now then
    redis.call('HSET', key, 'announce_claimed', now)
    table.insert(claimed, {id, r[5], r[6], r[7] or '', r[8]})
  end
end
return claimed
