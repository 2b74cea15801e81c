-- Settles one admitted call: its tokens entry is corrected from the worst case to the usage
-- (when still in the window) and its concurrency lease is released.
-- KEYS, 3 per scope: tokens log, tokens sum, concurrent leases. ARGV: call id, worst, actual.
local id, worst, actual = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 0, #KEYS / 3 - 1 do
  local tkey, skey, ckey = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local member = id .. ':' .. worst
  local score = redis.call('ZSCORE', tkey, member)
  if score then
    redis.call('ZREM', tkey, member)
    redis.call('ZADD', tkey, score, id .. ':' .. actual)
    redis.call('DECRBY', skey, tonumber(worst) - actual)
  end
  redis.call('ZREM', ckey, id)
end
return 1
