-- A batch of queued settlements (state/redis_admissions.py), in queue order. Each operation:
-- 's' settle (the token estimate replaced by the real count while its bucket is there, the
-- reservation by the real cost), 'r' release (request slot, tokens and reservation given back),
-- 'p' spend only (what a replica admitted on its own while Redis was away). A reservation is
-- settled once: its field goes with it, so a batch sent twice counts its cost once; an expired
-- one (a tombstone 'x', its amount given back already) still counts its cost.
--
-- KEYS, four per operation: requests zset, token buckets hash, account hash, reservations zset.
-- ARGV: account key ttl s, then seven per operation: kind, ticket number, what it took ('q'
-- request slot, 't' tokens, 'b' reservation), bucket second, estimated tokens, real tokens,
-- real cost (nano-dollars).
local account_ttl = tonumber(ARGV[1])
local count = #KEYS / 4
for i = 0, count - 1 do
  local req, tok, account, reservations = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3],
    KEYS[i * 4 + 4]
  local a = 1 + i * 7
  local kind, n, took, second = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local estimate, tokens, cost = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]),
    tonumber(ARGV[a + 7])
  if kind == 'p' then
    if cost > 0 then
      redis.call('HINCRBY', account, 'spent', cost)
      redis.call('EXPIRE', account, account_ttl)
    end
  else
    if string.find(took, 't', 1, true) then
      local delta = -estimate
      if kind == 's' then
        delta = tokens - estimate
      end
      if delta ~= 0 and redis.call('HEXISTS', tok, second) == 1 then
        if redis.call('HINCRBY', tok, second, delta) < 0 then
          redis.call('HSET', tok, second, 0)
        end
      end
    end
    if kind == 'r' and string.find(took, 'q', 1, true) then
      redis.call('ZREM', req, n)
    end
    if string.find(took, 'b', 1, true) then
      local field = 'r' .. n
      local amount = redis.call('HGET', account, field)
      if amount then
        if amount ~= 'x' then
          redis.call('HINCRBY', account, 'reserved', -tonumber(amount))
        end
        redis.call('HDEL', account, field)
        redis.call('ZREM', reservations, n)
        if kind == 's' and cost > 0 then
          redis.call('HINCRBY', account, 'spent', cost)
        end
        redis.call('EXPIRE', account, account_ttl)
      end
    end
  end
end
return count
