-- Admits one call against every bucket of its scopes, all or nothing, in one round trip.
-- Sliding-window logs: "N per minute" means at most N in any 60 s, whatever the timing.
-- KEYS, 4 per scope: requests log (zset id -> ms), tokens log (zset "id:tokens" -> ms),
--   tokens sum (string), concurrent leases (zset id -> expiry ms).
-- ARGV: call id, worst-case tokens, lease ms, then 3 per scope: rpm, tpm, concurrent (0: none).
-- Returns {admitted, kind, scope, retry_ms, limit, rq_limit, rq_remaining, rq_reset, tk_limit,
--   tk_remaining, tk_reset}; kind 1 requests, 2 tokens, 3 concurrent; limits -1 when none.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local id, tokens, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local refused = nil
-- {is tokens, limit, used, reset} of every bucket, for the headers once the verdict is known
local seen = {}
local function oldest(key, fallback)
  local o = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if o[2] then return tonumber(o[2]) + window - now end
  return fallback
end
for i = 0, #KEYS / 4 - 1 do
  local rkey, tkey, skey, ckey = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local rpm, tpm, conc = tonumber(ARGV[4 + 3 * i]), tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rkey, '-inf', now - window)
    local used = redis.call('ZCARD', rkey)
    local reset = oldest(rkey, window)
    if used + 1 > rpm then
      local o = redis.call('ZRANGE', rkey, used - rpm, used - rpm, 'WITHSCORES')
      reset = tonumber(o[2]) + window - now
      refused = refused or {1, i, reset, rpm}
    end
    seen[#seen + 1] = {false, rpm, used, reset}
  end
  if tpm > 0 then
    local gone = redis.call('ZRANGEBYSCORE', tkey, '-inf', now - window)
    if #gone > 0 then
      local freed = 0
      for _, m in ipairs(gone) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
      redis.call('DECRBY', skey, freed)
      redis.call('ZREMRANGEBYSCORE', tkey, '-inf', now - window)
    end
    local sum = tonumber(redis.call('GET', skey) or '0')
    local reset = oldest(tkey, window)
    if sum + tokens > tpm then
      local retry = -1
      if tokens <= tpm then
        local log = redis.call('ZRANGE', tkey, 0, -1, 'WITHSCORES')
        local freed = 0
        for j = 1, #log, 2 do
          freed = freed + tonumber(string.match(log[j], ':(%d+)$'))
          if sum - freed + tokens <= tpm then retry = tonumber(log[j + 1]) + window - now break end
        end
      end
      reset = retry < 0 and window or retry
      refused = refused or {2, i, retry, tpm}
    end
    seen[#seen + 1] = {true, tpm, sum, reset}
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)
    if redis.call('ZCARD', ckey) + 1 > conc then
      refused = refused or {3, i, 1000, conc}
    end
  end
end
local rq = {-1, 0, 0}
local tk = {-1, 0, 0}
for _, b in ipairs(seen) do
  local charge = 0
  if not refused then charge = b[1] and tokens or 1 end
  local remaining = math.max(b[2] - b[3] - charge, 0)
  local h = b[1] and tk or rq
  if h[1] < 0 or remaining < h[2] then h[1], h[2], h[3] = b[2], remaining, b[4] end
end
if refused then
  return {0, refused[1], refused[2], refused[3], refused[4], rq[1], rq[2], rq[3], tk[1], tk[2], tk[3]}
end
for i = 0, #KEYS / 4 - 1 do
  local rkey, tkey, skey, ckey = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local rpm, tpm, conc = tonumber(ARGV[4 + 3 * i]), tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  if rpm > 0 then
    redis.call('ZADD', rkey, now, id)
    redis.call('PEXPIRE', rkey, window)
  end
  if tpm > 0 then
    redis.call('ZADD', tkey, now, id .. ':' .. tokens)
    redis.call('INCRBY', skey, tokens)
    redis.call('PEXPIRE', tkey, window)
    redis.call('PEXPIRE', skey, window)
  end
  if conc > 0 then
    redis.call('ZADD', ckey, now + lease, id)
    redis.call('PEXPIRE', ckey, lease)
  end
end
return {1, 0, 0, 0, 0, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3]}
