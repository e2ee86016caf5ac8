#!lua flags=allow-oom
--[[
  acquire_lease: take a shard's lease and start a new ownership epoch, in one atomic step.

  The lease value is chosen by the replica, one per process, so acquiring is idempotent: when an
  acquisition (or an extension) ran in Redis but its reply was lost (a timeout on a slow link), the
  lease holds this replica's own value and the next attempt simply takes it again, with a new
  epoch, instead of leaving a lease nobody can use until it expires. Another replica's value is
  never overwritten. Bumping the epoch in the same step means only the holder of the lease can
  start an epoch, so an acquisition that expired in between cannot fence out the real holder.

  allow-oom: ownership must keep working when Redis is at maxmemory (the writes here are a few
  bytes), so that replicas can still serve reads and hand shards over while an operator makes room.

  Input:
    KEYS[1]   the shard's lease key    {<prefix>:s<n>}:lease
    KEYS[2]   the shard's epoch key    {<prefix>:s<n>}:epoch
    ARGV[1]   the caller's lease value (no spaces)
    ARGV[2]   the lease TTL in ms (100 - 3,600,000)
  Output:
    {epoch, 0}           the lease is the caller's for ARGV[2] ms; epoch is the new epoch (>= 1)
    {0, remainingMs}     another replica holds it for about remainingMs more; nothing written
]]

local ttl = tonumber(ARGV[2])
if ttl == nil or ttl < 100 or ttl > 3600000 or ARGV[1] == '' then
  return redis.error_reply('ERR acquire_lease: bad arguments')
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
return {redis.call('INCR', KEYS[2]), 0}
