-- Key events (state/redis_keys.py), atomically for every replica: the transition rules of
-- keys/policy.py, line by line (`refresh`, then the event's rule), on Redis' clock, one time for
-- the whole call as the Python backends take one. tests/state/test_policy_mirror.py proves both
-- agree. A key not stored yet starts as a fresh ready record of the event's provider.
--
-- KEYS: 1 index set of key ids, then one record hash per key, in the order first touched.
-- ARGV: the seven Rules (default_cooldown_s, exhausted_default_s, failure_threshold,
-- failure_cooldown_s, failure_cooldown_max_s, cooling_cap_s, exhausted_cap_s), then per key its
-- id (as many as record KEYS), then nine per event: record number (1-based), provider, kind,
-- tokens, status, retry_after_s, reset_at ('' for none; the caller sends '' for a number that
-- is not finite, which the rules treat as none), message (cut to 120 characters), count.
-- Returns, per key, its id followed by its record's fields and values.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rules = {
  default_cooldown = tonumber(ARGV[1]),
  exhausted_default = tonumber(ARGV[2]),
  failure_threshold = tonumber(ARGV[3]),
  failure_cooldown = tonumber(ARGV[4]),
  failure_cooldown_max = tonumber(ARGV[5]),
  cooling_cap = tonumber(ARGV[6]),
  exhausted_cap = tonumber(ARGV[7]),
}
local nkeys = #KEYS - 1
local today = utc_date(now)

local function num(x)
  return string.format('%.17g', x)
end

local function int(x)
  return string.format('%d', x)
end

local function finite(x)
  return x == x and x ~= math.huge and x ~= -math.huge
end

-- policy.wait: the default unless finite and positive, then capped
local function wait(value, default, cap)
  if value == nil or not finite(value) or value <= 0 then
    value = default
  end
  return math.min(value, cap)
end

local function read(key, provider)
  local raw = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #raw, 2 do
    h[raw[i]] = raw[i + 1]
  end
  return {
    provider = h['provider'] or provider,
    state = h['state'] or 'ready',
    till = tonumber(h['until'] or ''),
    reason = h['reason'],
    fail_streak = tonumber(h['fail_streak'] or '0'),
    next_cooldown = tonumber(h['next_cooldown_s'] or '0'),
    day = h['day'] or '',
    requests_today = tonumber(h['requests_today'] or '0'),
    tokens_today = tonumber(h['tokens_today'] or '0'),
    requests_total = tonumber(h['requests_total'] or '0'),
    tokens_total = tonumber(h['tokens_total'] or '0'),
  }
end

-- policy.refresh
local function refresh(r)
  if r.day ~= today then
    r.day, r.requests_today, r.tokens_today = today, 0, 0
  end
  if (r.state == 'cooling' or r.state == 'exhausted') and r.till ~= nil and r.till <= now then
    r.state, r.till, r.reason = 'ready', nil, nil
  end
end

-- policy.apply
local function apply(r, kind, tokens, status, retry_after, reset_at, message, count)
  refresh(r)
  if kind == 'used' then
    r.requests_today = r.requests_today + count
    r.requests_total = r.requests_total + count
  elseif kind == 'unused' then
    r.requests_today = math.max(0, r.requests_today - count)
    r.requests_total = math.max(0, r.requests_total - count)
  elseif kind == 'success' then
    r.tokens_today = r.tokens_today + tokens
    r.tokens_total = r.tokens_total + tokens
    r.fail_streak, r.next_cooldown = 0, 0
  elseif kind == 'rate_limited' then
    local cooldown = wait(retry_after, rules.default_cooldown, rules.cooling_cap)
    r.state, r.till, r.reason = 'cooling', now + cooldown, 'rate limited (' .. status .. ')'
  elseif kind == 'quota_exhausted' then
    local reset_in = nil
    if reset_at ~= nil then
      reset_in = reset_at - now
    end
    local spent = wait(reset_in, rules.exhausted_default, rules.exhausted_cap)
    r.state, r.till = 'exhausted', now + spent
    r.reason = 'quota exhausted: ' .. message
  elseif kind == 'bucket_exhausted' then
    local reset_in = nil
    if reset_at ~= nil then
      reset_in = reset_at - now
    end
    local till = now + wait(reset_in, rules.exhausted_default, rules.exhausted_cap)
    if r.state ~= 'invalid' and not (r.state == 'exhausted' and r.till ~= nil and r.till >= till) then
      r.state, r.till = 'exhausted', till
      r.reason = 'quota exhausted: bucket ' .. message
    end
  elseif kind == 'key_rejected' then
    r.state, r.till = 'invalid', nil
    r.reason = 'rejected by the provider (' .. status .. ')'
  elseif kind == 'server' or kind == 'timeout' then
    r.fail_streak = r.fail_streak + 1
    if r.fail_streak >= rules.failure_threshold then
      local cooldown = r.next_cooldown
      if cooldown == 0 then
        cooldown = rules.failure_cooldown
      end
      r.state, r.till = 'cooling', now + cooldown
      r.reason = string.format('%d failures in a row', r.fail_streak)
      r.fail_streak = 0
      r.next_cooldown = math.min(cooldown * 2, rules.failure_cooldown_max)
    end
  elseif kind == 'enable' then
    r.state, r.till, r.reason, r.fail_streak, r.next_cooldown = 'ready', nil, nil, 0, 0
  elseif kind == 'disable' then
    r.state, r.till, r.reason = 'invalid', nil, 'disabled by admin'
  end
end

local function fields(r)
  local out = {
    'provider', r.provider, 'state', r.state, 'fail_streak', int(r.fail_streak),
    'next_cooldown_s', num(r.next_cooldown), 'day', r.day,
    'requests_today', int(r.requests_today), 'tokens_today', int(r.tokens_today),
    'requests_total', int(r.requests_total), 'tokens_total', int(r.tokens_total),
  }
  if r.till ~= nil then
    out[#out + 1], out[#out + 2] = 'until', num(r.till)
  end
  if r.reason ~= nil then
    out[#out + 1], out[#out + 2] = 'reason', r.reason
  end
  return out
end

local records = {}
local first = 8 + nkeys
for a = first, #ARGV, 9 do
  local j = tonumber(ARGV[a])
  local r = records[j]
  if r == nil then
    r = read(KEYS[j + 1], ARGV[a + 1])
    records[j] = r
  end
  apply(r, ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4], tonumber(ARGV[a + 5]),
    tonumber(ARGV[a + 6]), ARGV[a + 7], tonumber(ARGV[a + 8]))
end

local out = {}
for j = 1, nkeys do
  local r = records[j]
  local key, body = KEYS[j + 1], fields(r)
  redis.call('HSET', key, unpack(body))
  if r.till == nil then
    redis.call('HDEL', key, 'until')
  end
  if r.reason == nil then
    redis.call('HDEL', key, 'reason')
  end
  redis.call('SADD', KEYS[1], ARGV[7 + j])
  table.insert(body, 1, ARGV[7 + j])
  out[j] = body
end
return out
