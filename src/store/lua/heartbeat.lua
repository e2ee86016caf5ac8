--[[
  heartbeat: a replica says it is alive, and learns who else is. Membership lives in Redis, next to
  the leases: a replica that cannot reach Redis cannot hold leases either, so "alive" means
  "able to own shards". Times come from Redis's clock, so replicas' clocks need not agree.

  Input:
    KEYS[1]   the member set (sorted set: member -> expiry in Unix ms)   <prefix>:members
    ARGV[1]   the replica id
    ARGV[2]   how long this heartbeat keeps the member alive, in ms; 0 removes the member (leave)
  Output:
    the ids of the live members (in expiry order); expired members are removed first
]]

local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ttl == nil or ttl < 0 or ttl > 3600000 then
  return redis.error_reply('ERR heartbeat: ttl out of range')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nowMs)
if ttl > 0 then
  redis.call('ZADD', KEYS[1], nowMs + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
