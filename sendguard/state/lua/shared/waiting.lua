-- finished(id, retention_ms): a message that will never be sent or tried again leaves the waiting
-- index of its mailbox (keys.py `waiting`), and its record and history expire after the retention.
local function finished(id, retention_ms)
  local key = key_msg(id)
  local mailbox = redis.call('HGET', key, 'to_canonical')
  if mailbox then redis.call('SREM', key_waiting(mailbox), id) end
  redis.call('PEXPIRE', key, retention_ms)
  redis.call('PEXPIRE', key_hist(id), retention_ms)
end
