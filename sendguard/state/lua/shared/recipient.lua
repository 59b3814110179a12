-- The reasons a recipient is refused on shared state, worded once for admission (admit.lua) and
-- for the check that queues nothing (recipient_check.lua), so the two can never disagree.
local function suppression_reason(to, mailbox, domain, seen)
  local entry = suppressed(to, mailbox, domain, seen)
  if entry then
    return {code='suppressed', detail='the recipient is on the suppression list (' .. entry .. ')'}
  end
  return nil
end

local function cooldown_reason(holder)
  return {code='recipient_cooldown',
    detail='the recipient already has message ' .. holder .. ' within the cooldown'}
end
