-- One admission (state/redis_admissions.py), atomic and on Redis' clock: the request window
-- (rpm), the token window (tpm, one-second buckets) and the month's budget, checked in that
-- order as MemoryAdmissions does; a refusal takes nothing, an admission takes its request slot,
-- its tokens and its reservation together. Money is in whole nano-dollars.
--
-- KEYS: 1 requests zset (member ticket number, score time), 2 token buckets hash (second ->
-- tokens), 3 ticket counter. The month's account hash (spent, reserved, r<n> per open
-- reservation) and its reservations zset (n -> expiry) are named here from the prefix, since
-- their month comes from Redis' clock (a standalone Redis: no cluster slots to declare).
-- ARGV: client, rpm, tpm, tokens, budget, cost, prefix, reservation ttl s, tombstone ttl s,
-- window key ttl s, account key ttl s ('' for a limit that is not set).
-- Returns: allowed, refused, remaining requests, reset (microseconds), remaining tokens,
-- retry after s, budget left, month, ticket number (0: nothing taken), token bucket second.
local WINDOW = 60
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local client, prefix = ARGV[1], ARGV[7]
local rpm, tpm, tokens = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local budget, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local res_ttl, tomb_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
local window_ttl, account_ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
local month = string.sub(utc_date(sec), 1, 7)
local rem_req, reset, rem_tok, left = 0, 0, 0, 0

local function refused(by, wait)
  return {0, by, rem_req, math.floor(reset * 1000000 + 0.5), rem_tok,
    math.max(1, math.ceil(wait)), left, month, 0, 0}
end

if rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
  local count = redis.call('ZCARD', KEYS[1])
  reset = WINDOW
  if count > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + WINDOW - now
  end
  rem_req = math.max(0, rpm - count - 1)
  if count >= rpm then
    return refused('requests', reset)
  end
end

if tpm then
  local buckets = redis.call('HGETALL', KEYS[2])
  local edge, used, first = now - WINDOW, 0, nil
  for i = 1, #buckets, 2 do
    local second = tonumber(buckets[i])
    if second + 1 <= edge then
      redis.call('HDEL', KEYS[2], buckets[i])
    else
      used = used + tonumber(buckets[i + 1])
      if first == nil or second < first then
        first = second
      end
    end
  end
  rem_tok = math.max(0, math.floor(tpm - used - tokens))
  if first ~= nil and used + tokens > tpm then
    return refused('tokens', first + 1 + WINDOW - now)
  end
end

local account, reservations
if budget then
  account = prefix .. 'acct:' .. month .. ':' .. client
  reservations = prefix .. 'res:' .. month .. ':' .. client
  -- reservations never settled give their amount back (and stay as tombstones a while, so a
  -- late settlement still counts its cost once)
  local due = redis.call('ZRANGEBYSCORE', reservations, '-inf', now, 'LIMIT', 0, 256)
  for _, n in ipairs(due) do
    local field = 'r' .. n
    local amount = redis.call('HGET', account, field)
    if amount and amount ~= 'x' then
      redis.call('HINCRBY', account, 'reserved', -tonumber(amount))
      redis.call('HSET', account, field, 'x')
      redis.call('ZADD', reservations, now + tomb_ttl, n)
    else
      redis.call('HDEL', account, field)
      redis.call('ZREM', reservations, n)
    end
  end
  local spent = tonumber(redis.call('HGET', account, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', account, 'reserved') or '0')
  if spent + reserved + cost > budget then
    left = math.max(0, budget - spent - reserved)
    return {0, 'budget', rem_req, math.floor(reset * 1000000 + 0.5), rem_tok, 0, left, month,
      0, 0}
  end
  left = budget - spent - reserved - cost
end

if not rpm and not tpm and not budget then
  return {1, '', 0, 0, 0, 0, 0, month, 0, 0}
end
local n = redis.call('INCR', KEYS[3])
if rpm then
  redis.call('ZADD', KEYS[1], now, n)
  redis.call('EXPIRE', KEYS[1], window_ttl)
end
if tpm then
  redis.call('HINCRBY', KEYS[2], sec, tokens)
  redis.call('EXPIRE', KEYS[2], window_ttl)
end
if budget then
  local field = string.format('r%d', n)
  redis.call('HINCRBY', account, 'reserved', cost)
  redis.call('HSET', account, field, cost)
  redis.call('ZADD', reservations, now + res_ttl, n)
  redis.call('EXPIRE', account, account_ttl)
  redis.call('EXPIRE', reservations, account_ttl)
end
return {1, '', rem_req, math.floor(reset * 1000000 + 0.5), rem_tok, 0, left, month, n, sec}
