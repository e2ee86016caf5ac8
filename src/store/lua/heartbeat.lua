#!lua flags=allow-oom
--[[
  heartbeat: a replica says it is alive, and learns who else is. Membership lives in Redis, next to
  the leases: a replica that cannot reach Redis cannot hold leases either, so "alive" means
  "able to own shards". Times come from Redis's clock, so replicas' clocks need not agree.

  Each entry is "<replica id> <incarnation>": the incarnation is a random value a replica picks
  when its process starts. A second process started with the same replica id (a copy-paste in a
  deployment) is refused while the first one's entry is live, instead of silently taking its
  place; a replica restarted after a crash waits until its old entry has expired.

  allow-oom: membership must keep working when Redis is at maxmemory (see acquire_lease.lua).

  Input:
    KEYS[1]   the member set (sorted set: "<id> <incarnation>" -> expiry in Unix ms)   <prefix>:members
    ARGV[1]   the replica id (no spaces)
    ARGV[2]   how long this heartbeat keeps the member alive, in ms; 0 removes the member (leave)
    ARGV[3]   the replica's incarnation (no spaces)
  Output:
    {'OK', id, id, ...}             the ids of the live members; expired entries are removed first
    {'DUPLICATE', remainingMs}      another incarnation with this id is live for remainingMs more;
                                    nothing written
]]

local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ttl == nil or ttl < 0 or ttl > 3600000 or ARGV[1] == '' or ARGV[3] == '' then
  return redis.error_reply('ERR heartbeat: bad arguments')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nowMs)
local me = ARGV[1] .. ' ' .. ARGV[3]
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local entry = entries[i]
  local space = string.find(entry, ' ', 1, true)
  local id = space and string.sub(entry, 1, space - 1) or entry
  if id == ARGV[1] and entry ~= me and ttl > 0 then
    return {'DUPLICATE', tonumber(entries[i + 1]) - nowMs}
  end
end
if ttl > 0 then
  redis.call('ZADD', KEYS[1], nowMs + ttl, me)
else
  redis.call('ZREM', KEYS[1], me)
end
local out = {'OK'}
for _, entry in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local space = string.find(entry, ' ', 1, true)
  out[#out + 1] = space and string.sub(entry, 1, space - 1) or entry
end
return out
