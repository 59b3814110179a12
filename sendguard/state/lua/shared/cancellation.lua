-- cancel_waiting(id, from, cause, detail, retention_ms, at): a message waiting in status `from`
-- becomes cancelled with reason `cause`, wherever it waits (the queue, a claim not yet sending, a
-- held set), and gives back the recipient's cooldown it holds.
local function cancel_waiting(id, from, cause, detail, retention_ms, at)
  local key = key_msg(id)
  local cur = redis.call('HMGET', key, 'held_by', 'to', 'to_canonical')
  if cur[1] then redis.call('SREM', key_held(cur[1]), id) end
  redis.call('HSET', key, 'status', 'cancelled', 'reasons', cjson.encode({{code=cause, detail=detail}}))
  redis.call('HDEL', key, 'held_by', 'claim', 'owner')
  redis.call('ZREM', key_due(), id)
  redis.call('ZREM', key_inflight(), id)
  redis.call('HINCRBY', key_count(), from, -1)
  local cooldown = key_cooldown(cur[3] or cur[2] or '')  -- its mailbox (`to` when that is it already)
  if redis.call('GET', cooldown) == id then redis.call('DEL', cooldown) end
  history(key_hist(id), at, 'cancelled', cause, detail)
  finished(id, retention_ms, true)
end
