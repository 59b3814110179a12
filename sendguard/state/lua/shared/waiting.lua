-- waiting_ids(mailbox): the ids in the waiting index of a mailbox (keys.py `waiting`), and in the
-- set earlier versions kept it in (`waiting_legacy`), which only empties.
-- leave_waiting(mailbox, id): the message leaves the index, whichever layout holds it.
local function waiting_ids(mailbox)
  local ids = redis.call('HKEYS', key_waiting(mailbox))
  for _, id in ipairs(redis.call('SMEMBERS', key_waiting_legacy(mailbox))) do ids[#ids + 1] = id end
  return ids
end
local function leave_waiting(mailbox, id)
  redis.call('HDEL', key_waiting(mailbox), id)
  redis.call('SREM', key_waiting_legacy(mailbox), id)
end
-- finished(id, retention_ms, was_waiting): a message that will never be sent or tried again leaves
-- the waiting index of its mailbox (keys.py `waiting`), and its record, content and history expire after the
-- retention. When it was waiting until now, its batch's template counts one message fewer, and
-- expires after the retention too once none waits: a template lives as long as the messages that
-- fill it. `known`, optional: the record's {to_canonical, template, to}, when the caller read them.
local function finished(id, retention_ms, was_waiting, known)
  local key = key_msg(id)
  local cur = known or redis.call('HMGET', key, 'to_canonical', 'template', 'to')
  if cur[1] or cur[3] then leave_waiting(cur[1] or cur[3], id) end  -- no to_canonical: it is `to`
  redis.call('PEXPIRE', key, retention_ms)
  redis.call('PEXPIRE', key_content(id), retention_ms)
  redis.call('PEXPIRE', key_hist(id), retention_ms)
  if was_waiting and cur[2] then
    local template = key_template(cur[2])
    if redis.call('EXISTS', template) == 1 and redis.call('HINCRBY', template, 'waiting', -1) <= 0 then
      redis.call('PEXPIRE', template, retention_ms)
    end
  end
end
