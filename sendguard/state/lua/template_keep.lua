-- Store a batch's template once. A retry of the batch finds it and leaves it as it is: its count
-- of waiting messages, and its lifetime (kept without expiry once a message waits for it, by
-- admit.lua). Returns 1 when it was written, 0 when it was already there.
local template_key = KEYS[1]
local retention_ms = ARGV[1]        -- its lifetime until a message waits for it
local fields = {unpack(ARGV, 2)}    -- subject, text, html and headers: name, value, ...

if redis.call('EXISTS', template_key) == 1 then return 0 end
redis.call('HSET', template_key, 'waiting', 0, unpack(fields))
redis.call('PEXPIRE', template_key, retention_ms)
return 1
