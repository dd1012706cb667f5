-- One replica's heartbeat (state/redis_db.py): its id scored with Redis' clock, replicas not
-- seen for `stale` seconds dropped, the number alive returned.
-- KEYS: 1 replicas zset. ARGV: replica id, stale s, key ttl s.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
