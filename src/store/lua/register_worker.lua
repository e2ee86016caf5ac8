--[[
  register_worker: create a worker in its shard, fenced by the shard epoch. Registering again with
  the same spec changes nothing and answers EXISTS (registration is idempotent); a different spec
  under the same id is refused, because capacity already promised on the old spec cannot be
  re-counted safely here.

  Input:
    KEYS[1]   the shard's epoch key          {<prefix>:s<n>}:epoch
    KEYS[2]   the worker's hash              {<prefix>:s<n>}:worker:<id>
    KEYS[3]   the shard's worker set         {<prefix>:s<n>}:workers
    KEYS[4]   the shard's history stream     {<prefix>:s<n>}:history
    ARGV[1]   the writer's epoch
    ARGV[2]   history length cap; 0 writes no history
    ARGV[3]   worker id        ARGV[4] shard number
    ARGV[5]   cpu (millicores) ARGV[6] memory (MiB)
    ARGV[7]   GPU type, '' for none       ARGV[8] GPU count
    ARGV[9]   pool, '' for none           ARGV[10] initial status
  Output:
    {'FENCED', currentEpoch}          nothing written
    {'CREATED', field, value, ...}    the new worker's hash
    {'EXISTS', field, value, ...}     same spec already registered; nothing written
    {'SPEC_MISMATCH', field, value, ...}  registered with another spec; nothing written
]]

local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or '0'}
end

local existing = redis.call('HMGET', KEYS[2], 'cpu', 'memory', 'gpu', 'gpuCount', 'pool')
if existing[1] then
  local same = existing[1] == ARGV[5] and existing[2] == ARGV[6] and existing[3] == ARGV[7]
    and existing[4] == ARGV[8] and existing[5] == ARGV[9]
  local code = same and 'EXISTS' or 'SPEC_MISMATCH'
  local out = {code}
  for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = v end
  return out
end

redis.call('HSET', KEYS[2],
  'id', ARGV[3], 'shard', ARGV[4], 'cpu', ARGV[5], 'memory', ARGV[6], 'gpu', ARGV[7], 'gpuCount', ARGV[8],
  'pool', ARGV[9], 'freeCpu', ARGV[5], 'freeMemory', ARGV[6], 'freeGpuCount', ARGV[8],
  'status', ARGV[10], 'resourceVersion', 1)
redis.call('SADD', KEYS[3], ARGV[3])
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'op', 'register', 'worker', ARGV[3],
    'cpu', ARGV[5], 'memory', ARGV[6], 'gpuCount', ARGV[8], 'version', 1, 'epoch', epoch)
end
local out = {'CREATED'}
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = v end
return out
