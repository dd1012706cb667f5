-- Settled spend from the ledger (state/redis_admissions.py), taken only by accounts Redis does
-- not have (a restart, an emptied Redis): an account opened since is never overwritten.
-- KEYS: account hashes. ARGV: account key ttl s, then the spend of each (nano-dollars).
local seeded = 0
for i, account in ipairs(KEYS) do
  if redis.call('EXISTS', account) == 0 then
    redis.call('HSET', account, 'spent', ARGV[i + 1])
    redis.call('EXPIRE', account, ARGV[1])
    seeded = seeded + 1
  end
end
return seeded
