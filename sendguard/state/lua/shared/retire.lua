-- retire(id, retention_ms, was_waiting): a finished message is kept for retention_ms. When it
-- was waiting until now, its batch's template counts one message fewer, and is kept for
-- retention_ms too once none waits: a template lives as long as the messages that fill it.
local function retire(id, retention_ms, was_waiting)
  local key = key_msg(id)
  redis.call('PEXPIRE', key, retention_ms)
  redis.call('PEXPIRE', key_hist(id), retention_ms)
  local batch = redis.call('HGET', key, 'template')
  if was_waiting and batch then
    local template = key_template(batch)
    if redis.call('EXISTS', template) == 1 and redis.call('HINCRBY', template, 'waiting', -1) <= 0 then
      redis.call('PEXPIRE', template, retention_ms)
    end
  end
end
