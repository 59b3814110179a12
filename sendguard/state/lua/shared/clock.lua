-- clock_ms(): Redis' own time in milliseconds. Every due time and history entry of a message is
-- read from this one clock, so daemons whose clocks disagree still order the queue alike.
local function clock_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
