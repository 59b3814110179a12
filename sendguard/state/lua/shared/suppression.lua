-- suppressed_domain(domain): the suppression entry for `domain` or a parent domain of it, or nil.
local function suppressed_domain(domain)
  local domains, rest = {}, domain
  while rest ~= '' do
    table.insert(domains, rest)
    local dot = string.find(rest, '.', 1, true)
    if not dot then break end
    rest = string.sub(rest, dot + 1)
  end
  if #domains == 0 then return nil end
  local found = redis.call('SMISMEMBER', key_suppressed_domains(), unpack(domains))
  for i = 1, #domains do
    if found[i] == 1 then return domains[i] end
  end
  return nil
end
-- suppressed(to, mailbox, domain): the suppression entry that covers a recipient, or nil. The
-- address as written, its mailbox (the canonical address: case folded, +tag taken off), its domain
-- or any parent domain of it (`blocked.example` covers `sub.blocked.example`). Admission and the
-- start of a send both ask here, so they can never disagree. `seen`, optional: a table a script
-- that asks about many recipients and suppresses none passes each time, so that a batch's
-- thousands of recipients at a few domains look each domain up once (domain -> entry or false).
local function suppressed(to, mailbox, domain, seen)
  local addresses = redis.call('SMISMEMBER', key_suppressed_addresses(), to, mailbox)
  if addresses[1] == 1 then return to end
  if addresses[2] == 1 then return mailbox end
  if seen then
    local known = seen[domain]
    if known == nil then
      known = suppressed_domain(domain) or false
      seen[domain] = known
    end
    return known or nil
  end
  return suppressed_domain(domain)
end
