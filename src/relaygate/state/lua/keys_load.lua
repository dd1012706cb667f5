-- Every key record (state/redis_keys.py): for each key id in the index set, the id followed by
-- its hash's fields and values. KEYS: 1 index set. ARGV: 1 record key prefix.
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. id)
  if #fields > 0 then
    table.insert(fields, 1, id)
    out[#out + 1] = fields
  end
end
return out
