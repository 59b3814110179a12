-- A message's move from one status to the next, shared by every script that moves one on
-- (transition.lua, start.lua, finish.lua), so the record, its history, the due queue and the counts
-- move alike whichever script moves it.
--
-- current(id, scoped): the fields a move reads, {status, claim, template, to, to_canonical, to_domain,
-- agent}, in one HMGET; `scoped` adds {scopes, from_addr, segment, campaign}, for current_scopes(cur):
-- the record's scopes as record_scopes gives them (its `scopes` field, else derived). Only a script
-- that needs the scopes asks for their fields: the record is a compact hash, where a field it lacks
-- (most have no `scopes`, `segment` or `campaign`) costs a look at every field it has.
-- permitted(cur, claim, allowed_from): the message exists, the claim (when not '') is still the one
-- it holds and its status is among `allowed_from` (comma-separated; '' for any).
-- move(id, cur, to, cause, detail, delay_ms, keep_claim, retention_ms, audit_entry, activity,
-- fields, mailbox, now): `to` ('' keeps the status), a history entry when there is a cause,
-- `fields` (name, value, ...) set, `audit_entry` ('' for none) appended, the agent's `activity`
-- counted, the claim let go of unless `keep_claim`, queued again `delay_ms` from now when it is not
-- negative, and a cancelled message gives back `mailbox`'s cooldown if it holds it.
local function current(id, scoped)
  if scoped then
    return redis.call('HMGET', key_msg(id), 'status', 'claim', 'template', 'to', 'to_canonical', 'to_domain', 'agent',
      'scopes', 'from_addr', 'segment', 'campaign')
  end
  return redis.call('HMGET', key_msg(id), 'status', 'claim', 'template', 'to', 'to_canonical', 'to_domain', 'agent')
end

local function current_scopes(cur)
  return scopes_json(cur[8], cur[6], cur[9], cur[10], cur[11], cur[7])
end

local function permitted(cur, claim, allowed_from)
  if not cur[1] then return false end
  if claim ~= '' and cur[2] ~= claim then return false end
  return allowed_from == '' or string.find(',' .. allowed_from .. ',', ',' .. cur[1] .. ',', 1, true) ~= nil
end

local function move(id, cur, to, cause, detail, delay_ms, keep_claim, retention_ms, audit_entry, activity,
                    fields, mailbox, now)
  local msg_key = key_msg(id)
  local new = to
  if new == '' then new = cur[1] end
  if new ~= cur[1] then
    fields[#fields + 1] = 'status'
    fields[#fields + 1] = new
  end
  if #fields > 0 then redis.call('HSET', msg_key, unpack(fields)) end
  if audit_entry ~= '' then redis.call('RPUSH', key_audit_pending(), audit_entry) end
  if new ~= cur[1] then
    if WAITING[cur[1]] then redis.call('HINCRBY', key_count(), cur[1], '-1') end
    if WAITING[new] then redis.call('HINCRBY', key_count(), new, '1') end
  end
  if cause ~= '' then history(key_hist(id), now, new, cause, detail) end
  for _, field in ipairs(activity) do count_activity(cur[7], field, now) end
  if not keep_claim then
    redis.call('ZREM', key_inflight(), id)
    redis.call('HDEL', msg_key, 'claim', 'owner')
  end
  redis.call('ZREM', key_due(), id)
  if delay_ms >= 0 then redis.call('ZADD', key_due(), now + delay_ms, id) end
  if TERMINAL[new] then
    -- What finished() reads of the record is what current() read, unless `fields` just set it.
    local known = {cur[5], cur[3], cur[4]}
    for i = 1, #fields, 2 do
      if fields[i] == 'to_canonical' or fields[i] == 'template' or fields[i] == 'to' then known = nil end
    end
    finished(id, retention_ms, WAITING[cur[1]], known)
    local cooldown = key_cooldown(mailbox)
    if new == 'cancelled' and redis.call('GET', cooldown) == id then redis.call('DEL', cooldown) end
  end
end
