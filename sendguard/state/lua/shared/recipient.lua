-- The reasons a recipient is refused on shared state, worded once for admission (admit.lua) and
-- for the check that queues nothing (recipient_check.lua), so the two can never disagree.
local function suppression_reason(to, mailbox, domain, seen)
  local entry = suppressed(to, mailbox, domain, seen)
  if entry then
    return {code='suppressed', detail='the recipient is on the suppression list (' .. entry .. ')'}
  end
  return nil
end

-- The cooldown held at `key` (key_cooldown of the mailbox) at `now`, nil when none is. It says when
-- the cooldown ends, never which message holds it: that may be another agent's, and an id is what a
-- reply quotes to prove it concerns a message, so naming it would let anyone forge one that stops it.
local function cooldown_reason(key, now)
  local left = redis.call('PTTL', key)
  if left == -2 then return nil end
  local detail = 'the recipient already has a message within the cooldown'
  if left > 0 then detail = detail .. ', which ends at ' .. utc_iso(now + left) end
  return {code='recipient_cooldown', detail=detail}
end
