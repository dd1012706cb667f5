-- A provider paused until a time (state/redis_keys.py): a later pause extends it, an earlier
-- one changes nothing. KEYS: 1 pauses hash. ARGV: provider, until.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
local until_ts = tonumber(ARGV[2])
if current == nil or until_ts > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
