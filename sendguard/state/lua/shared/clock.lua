-- clock_ms(): Redis' own time in milliseconds. Every due time and history entry of a message is
-- read from this one clock, so daemons whose clocks disagree still order the queue alike.
local function clock_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- utc_iso(ms): a time as people and JSON clients read it, `2026-11-29T04:00:00Z`, rounded up to the
-- second (Redis' Lua has no `os.date`; civil date from days as in Howard Hinnant's algorithm).
local function utc_iso(ms)
  local seconds = math.ceil(ms / 1000)
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60)
end
