-- Record something that happened to a message without changing where it is; 0 if it is gone.
local msg_key, hist_key = KEYS[1], KEYS[2]
local cause, detail = ARGV[1], ARGV[2]
local fields = {unpack(ARGV, 3)}    -- name, value, ... to set on the record
local now = clock_ms()

local status = redis.call('HGET', msg_key, 'status')
if not status then return 0 end
if #fields > 0 then redis.call('HSET', msg_key, unpack(fields)) end
history(hist_key, now, status, cause, detail)
return 1
