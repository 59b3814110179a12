-- Admit decided submissions, each as if on its own: suppression, the recipient's cooldown,
-- approval and safe mode are settled here, atomically with the write; for a single message of a
-- tier-0 agent, also the company's reply stop and the agent's mass-send count. Its argument is a JSON
-- list with one argument list a submission (below); the answer is a list with one answer each:
-- {'revoked'} when the token it was given to check is gone (nothing written); {'capped'} when it
-- needs a new tier-2 request and its agent has the most pending already (nothing written, nor
-- counted: see mass_route); {'existing', id} for
-- a known idempotency key; {'replied', until (ms)} when a reply stop covers the recipient's company
-- (nothing written: the caller decides it again with that reason); else {'new', status, reasons
-- (JSON), held_by, the mass-send count's answer ('' when not counted here), the approval request}.
-- Every key is derived from the decision below (key_*), none passed in, which halves what each of a
-- batch's thousands of submissions sends. The arguments come as JSON: redis-py encodes each
-- argument of a command in Python, and one encoding costs less than nineteen. A batch's chunk
-- comes in one call, so what is the same for all its recipients is done once: Redis' time and the
-- trips are read once, a recipient domain's suppression looked up once, and the writes that only
-- add up (the agent's index and its trim, the queue, the status counts, a template's waiting count,
-- the audit entries in order) are made once for the call, after its submissions.
local calls = cjson.decode(ARGV[1])
local now = clock_ms()
-- Nothing here trips a scope, so whether any is tripped is read once.
local any_tripped = redis.call('HLEN', key_trips()) > 0
local count_key, due_key = key_count(), key_due()
local indexed = {}    -- an agent's index key -> its new members (score, id, ...), its size and retention
local due_later = {}  -- the queue's new members: due, id, ...
local counted = {}    -- status -> messages that entered it
local waits_on = {}   -- a template's key -> messages that now wait for it
local entries = {}    -- audit entries not appended yet, in order
local domains_seen = {}  -- a recipient domain's suppression entry (or false): nothing here suppresses

-- The audit entries so far appended, in order, before anything else appends one.
local function entries_appended()
  if #entries > 0 then redis.call('RPUSH', key_audit_pending(), unpack(entries)) end
  entries = {}
end

-- A template's waiting count raised (and its expiry dropped) before anything reads it.
local function templates_counted()
  for key, n in pairs(waits_on) do
    redis.call('HINCRBY', key, 'waiting', n)
    redis.call('PERSIST', key)
  end
  waits_on = {}
end

local function admit(args)
  local id = args[1]
  local decided_status = args[2]      -- what the checks in Python decided
  local decided_reasons = args[3]     -- JSON list of {code, detail}
  local delay_ms = tonumber(args[4])  -- how long after now it may go (a deferred check's wait)
  local cooldown_ms = args[5]
  local idempotency = args[6]         -- the submission's idempotency key (the agent's, or derived)
  local idempotency_ttl_ms = args[7]
  local keep_rejected = args[8] == '1'  -- the key answers a rejection too, not only an accepted message
  local retention_ms = args[9]
  local scopes = args[10]             -- JSON list, most specific first
  local approval = args[11]           -- the request it waits for; '' for none
  local audit_entry = args[12]        -- a pending audit entry with "outcome": "@" (see audit()); '' for none
  local send_at = tonumber(args[13])  -- ms: not before the time the agent asked for; 0 for none
  local agent_index_size = tonumber(args[14])  -- how many of its newest messages an agent can list
  -- The record's fields as one object each, those at their default left out: what the agent
  -- submitted, and its content's hash fields (its subject, or its template and values), which a
  -- rejected message does not keep. `to_canonical` is left out when it is `to` as written.
  local submitted, content = args[15], args[16]
  local check_replied = args[17] == '1'  -- the company's reply stop is checked here
  local mass = args[18]               -- approval_route's arguments when the mass-send count is made here
  local body = args[19]               -- its own text, html and headers as JSON (keys.py `content`); '' for none
  -- A token the daemon recalled from memory instead of reading it: its id and hash, checked here
  -- first, so a token revoked meanwhile writes nothing. '' for a token read from Redis already.
  local token_id, token_hash = args[20], args[21]
  local agent = submitted.agent
  -- The recipient as written, its mailbox (canonical form) and its domain.
  local address, domain = submitted.to or '', submitted.to_domain or ''
  local mailbox = submitted.to_canonical or address
  local template = content.template or ''  -- the batch whose stored template holds the content
  local msg_key, hist_key = key_msg(id), key_hist(id)
  local idempotency_key = key_idempotency(agent, idempotency)
  local cooldown_key, waiting_key = key_cooldown(mailbox), key_waiting(mailbox)
  local agent_index_key = key_agent_messages(agent)  -- the agent's newest messages, for listing them
  local replied_key = key_company_replied(agent)     -- its company reply stops: domain -> until (ms)
  local sends_key, request_key = key_mass_sends(agent), key_mass_request(agent)  -- its mass-send count, tier-2 request
  local due = math.max(now + delay_ms, send_at)

  if token_id ~= '' and redis.call('HGET', key_token(token_id), 'hash') ~= token_hash then
    return {'revoked'}
  end
  local existing = redis.call('GET', idempotency_key)
  if existing and redis.call('EXISTS', key_msg(existing)) == 1 then
    return {'existing', existing}
  end
  if check_replied then
    local stopped = redis.call('HGET', replied_key, domain)
    if stopped and tonumber(stopped) > now then return {'replied', stopped} end
  end
  local status = decided_status
  local reasons = cjson.decode(decided_reasons)
  local refused = suppression_reason(address, mailbox, domain, domains_seen)
  if refused then
    table.insert(reasons, refused)
    status = 'rejected'
  end
  if status ~= 'rejected' and tonumber(cooldown_ms) > 0 then
    if not redis.call('SET', cooldown_key, id, 'NX', 'PX', cooldown_ms) then
      table.insert(reasons, cooldown_reason(cooldown_key, now))
      status = 'rejected'
    end
  end
  -- Counted only once nothing here refuses it: a message to a suppressed recipient or one in its
  -- cooldown spends no mass-send headroom and opens or joins no approval request.
  local route, found_request = '', ''
  if #mass > 0 and status ~= 'rejected' then
    entries_appended()  -- a new request's entry comes after those of the submissions before
    route, found_request = mass_route(sends_key, request_key, mass, now)
    if route == 'capped' then
      -- Refused whole (the caller says why): its agent has the most requests pending already. The
      -- cooldown it took above is given back; nothing else of it was written.
      if tonumber(cooldown_ms) > 0 then redis.call('DEL', cooldown_key) end
      return {'capped'}
    end
    if route == 'joined' or route == 'new' then approval = found_request end
  end
  local encoded = '[]'
  if #reasons > 0 then encoded = cjson.encode(reasons) end
  local record = {'status', status, 'created', now}  -- its id is its key's (records before kept it too)
  -- The scopes are stored only when the record's fields do not give them back (record.lua).
  local given, derived = cjson.decode(scopes), derived_scopes(submitted.to_domain, submitted.from_addr,
    submitted.segment, submitted.campaign, agent)
  local same = #given == #derived
  for i = 1, #given do same = same and given[i] == derived[i] end
  if not same then table.insert(record, 'scopes') table.insert(record, scopes) end
  -- Only what says more than the defaults: no reasons, and never sent before it was created.
  if #reasons > 0 then table.insert(record, 'reasons') table.insert(record, encoded) end
  if due > now then table.insert(record, 'not_before') table.insert(record, due) end
  local function add(fields)
    for name, value in pairs(fields) do
      record[#record + 1] = name
      record[#record + 1] = value
    end
  end
  add(submitted)
  if route == 'covered' then  -- an approved tier-2 request's headroom let it through
    record[#record + 1] = 'released_by'
    record[#record + 1] = found_request
  end
  if status ~= 'rejected' then
    add(content)
    if body ~= '' then redis.call('SET', key_content(id), body) end  -- apart: see keys.py `content`
  end
  redis.call('HSET', msg_key, unpack(record))
  -- A message queued with nothing to say has no history list until it moves on: its first entry,
  -- `submitted` `queued` at `created`, is implied (Store.get), which saves a list a waiting message.
  if status ~= 'queued' or #reasons > 0 then
    history(hist_key, now, status, 'submitted', #reasons > 0 and reasons[1].code or '')
  end
  -- (Trimmed once for the call: keeping the newest after each addition keeps the newest at the end.)
  local index = indexed[agent_index_key]
  if not index then
    index = {members={}, size=agent_index_size, retention=retention_ms}
    indexed[agent_index_key] = index
  end
  index.members[#index.members + 1] = now
  index.members[#index.members + 1] = id
  local held_by = ''
  if WAITING[status] then
    redis.call('HSET', waiting_key, id, '')
    if template ~= '' then  -- kept while a message waits for it (see finished)
      local key = key_template(template)
      waits_on[key] = (waits_on[key] or 0) + 1
    end
    local scope = approval == '' and any_tripped and tripped(scopes)
    if approval ~= '' then
      -- Waits for people; safe mode is checked again when it is approved and claimed.
      status = 'pending_approval'
      redis.call('HSET', msg_key, 'status', status, 'approval', approval)
      redis.call('SADD', key_approval_messages(approval), id)
      counted[status] = (counted[status] or 0) + 1
      history(hist_key, now, status, 'approval_required', 'approval request ' .. approval)
      local decided = redis.call('HMGET', key_approval(approval), 'status', 'settled')
      if decided[1] ~= 'pending' then
        -- Decided while this was on its way in (a batch still being admitted, a run's late
        -- joiner): the decision already taken settles it, so nothing waits for a closed request.
        templates_counted()  -- the template it may leave is counted with it first (finished)
        settle_waiting(id, decided[1], decided[2] or 'the approval request is gone', now, retention_ms)
        status = redis.call('HGET', msg_key, 'status')
      end
    elseif scope then
      hold(id, scope, now, nil)
      status, held_by = 'held', scope
    else
      counted[status] = (counted[status] or 0) + 1
      due_later[#due_later + 1] = due
      due_later[#due_later + 1] = id
    end
  else
    redis.call('PEXPIRE', msg_key, retention_ms)
    redis.call('PEXPIRE', hist_key, retention_ms)
  end
  if status ~= 'rejected' or keep_rejected then redis.call('SET', idempotency_key, id, 'PX', idempotency_ttl_ms) end
  if status == 'rejected' then
    count_activity(agent, 'rejected', now)
    for _, r in ipairs(reasons) do count_activity(agent, 'rejected:' .. r.code, now) end
  end
  if audit_entry ~= '' then
    -- The decision enters the audit trail in the same step: its placeholder becomes the outcome.
    local codes = {}
    for i, r in ipairs(reasons) do codes[i] = r.code end
    local outcome = '"status":' .. cjson.encode(status) .. ',"reasons":' ..
      (#codes > 0 and cjson.encode(codes) or '[]') .. ',"held_by":' ..
      (held_by ~= '' and cjson.encode(held_by) or 'null') .. ',"approval_id":' ..
      (approval ~= '' and cjson.encode(approval) or 'null')
    entries[#entries + 1] = audited(audit_entry, outcome)
  end
  return {'new', status, encoded, held_by, route, approval}
end

-- A submission whose script errs stops the call, but those before it are finished first: their
-- records are written, so their queue entries, counts and audit entries must be too, or a retry
-- would find them by their idempotency keys, admitted, with nothing queued and nothing recorded.
local answers, failed = {}, nil
for i, args in ipairs(calls) do
  local ok, answer = pcall(admit, args)
  if not ok then failed = answer break end
  answers[i] = answer
end
templates_counted()
entries_appended()
for status, n in pairs(counted) do redis.call('HINCRBY', count_key, status, n) end
if #due_later > 0 then redis.call('ZADD', due_key, unpack(due_later)) end
-- Bounded by count and by age, so an agent's index costs the same however long it has sent.
for key, index in pairs(indexed) do
  redis.call('ZADD', key, unpack(index.members))
  redis.call('ZREMRANGEBYRANK', key, 0, -index.size - 1)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - index.retention))
  redis.call('PEXPIRE', key, index.retention)
end
if failed then return redis.error_reply(type(failed) == 'table' and failed.err or tostring(failed)) end
return answers
