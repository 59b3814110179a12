-- What admission would add to each recipient's reasons from shared state (suppression, then the
-- cooldown for one not already rejected), read without writing anything: no cooldown is taken.
-- Returns one JSON list of {code, detail} per recipient, in order.
local cooldown_on = ARGV[1] == '1'  -- the rules have a recipient cooldown
local recipients = {unpack(ARGV, 2)}  -- address, mailbox, domain, '1' if already rejected; repeated

local now = clock_ms()
local found = {}
for i = 1, #recipients, 4 do
  local address, mailbox, domain = recipients[i], recipients[i + 1], recipients[i + 2]
  local rejected = recipients[i + 3] == '1'
  local reasons = {}
  local refused = suppression_reason(address, mailbox, domain)
  if refused then
    table.insert(reasons, refused)
    rejected = true
  end
  if not rejected and cooldown_on then
    local held = cooldown_reason(key_cooldown(mailbox), now)
    if held then table.insert(reasons, held) end
  end
  table.insert(found, #reasons > 0 and cjson.encode(reasons) or '[]')
end
return found
