-- A message's scopes without a `scopes` field: admission stores the list only when the record's
-- fields do not give it back (derived_scopes), which keeps the record's one long field out of the
-- hash, so the hash stays in Redis' compact encoding. MessageRecord.from_hash derives the same way.
--
-- derived_scopes(to_domain, from_addr, segment, campaign, agent): the scopes those fields give,
-- most specific first (false for a field the record lacks), the From address taken as the inbox.
-- scopes_json(scopes, to_domain, from_addr, segment, campaign, agent): a record's scopes as JSON
-- from those fields, read by the caller: its `scopes` field, else derived.
-- record_scopes(key): the scopes of the record at `key`, read here.
local function derived_scopes(to_domain, from_addr, segment, campaign, agent)
  local inbox = from_addr or ''
  local list = {'recipient_domain:' .. (to_domain or ''), 'sender_domain:' .. inbox:match('[^@]*$'), 'inbox:' .. inbox}
  if segment then list[#list + 1] = 'segment:' .. segment end
  if campaign then list[#list + 1] = 'campaign:' .. campaign end
  list[#list + 1] = 'agent:' .. (agent or '')
  list[#list + 1] = 'global'
  return list
end
local function scopes_json(scopes, to_domain, from_addr, segment, campaign, agent)
  return scopes or cjson.encode(derived_scopes(to_domain, from_addr, segment, campaign, agent))
end
local function record_scopes(key)
  local f = redis.call('HMGET', key, 'scopes', 'to_domain', 'from_addr', 'segment', 'campaign', 'agent')
  return scopes_json(f[1], f[2], f[3], f[4], f[5], f[6])
end
