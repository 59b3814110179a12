-- history(key, at, status, cause, detail): one transition onto a message's history list.
local function history(key, at, status, cause, detail)
  redis.call('RPUSH', key, cjson.encode({at=at, status=status, cause=cause, detail=detail}))
end
