--[[
  take_epoch: start a new ownership epoch for a shard whose lease the caller has just acquired.
  Checking the lease value here means only the current lease holder can bump the epoch, so an
  acquisition that expired before this ran cannot fence out the real holder.

  Input:
    KEYS[1]   the shard's lease key (set by redlock)   {<prefix>:s<n>}:lease
    KEYS[2]   the shard's epoch key                    {<prefix>:s<n>}:epoch
    ARGV[1]   the value the caller's redlock lock holds
  Output:
    the new epoch (an integer >= 1), or 0 when the lease is not the caller's (nothing written)
]]

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
return redis.call('INCR', KEYS[2])
