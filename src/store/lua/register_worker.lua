#!lua
--[[
  register_worker: create a worker in its shard, fenced by the shard epoch. Registering again with
  the same spec changes nothing and answers EXISTS (registration is idempotent); a different spec
  under the same id is refused, because capacity already promised on the old spec cannot be
  re-counted safely here.

  A worker belongs to exactly one shard, the FNV-1a 32 hash of its id modulo the shard count (as
  src/shard/shard-map.ts computes it). The script computes it too and refuses any other shard: an
  owner that forwarded a registration published on the wrong shard subject would otherwise create
  a second record of the same machine, whose capacity would then be promised twice.

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
    ARGV[11]  the cluster's shard count (1-4096)
    ARGV[12]  '1' when a worker agent registers it (it heartbeats and can be lost), else ''
              (an agent registering an existing worker marks it as run by an agent)
  Output:
    {'FENCED', currentEpoch}          nothing written
    {'WRONG_SHARD', shard}            the id hashes to `shard`, not ARGV[4]; nothing written
    {'CREATED'}                       created exactly as the arguments say (status ARGV[10], all
                                      capacity free, resourceVersion 1): the caller knows the hash,
                                      so it is not sent back (a fleet registers by the thousand)
    {'EXISTS', field, value, ...}     same spec already registered; nothing written
    {'SPEC_MISMATCH', field, value, ...}  registered with another spec; nothing written
]]

local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or '0'}
end

local shards = tonumber(ARGV[11])
if shards == nil or shards < 1 or shards > 4096 or shards ~= math.floor(shards) then
  return redis.error_reply('ERR register_worker: shard count out of range')
end

-- FNV-1a 32 over the id's bytes (ids are ASCII). Lua numbers are doubles, exact up to 2^53, so
-- the multiply by the FNV prime 16777619 = 2^24 + 403 is split to stay exact:
-- (h * 2^24) mod 2^32 = (h mod 2^8) * 2^24, and h * 403 < 2^41.
local hash = 2166136261
local id = ARGV[3]
for i = 1, #id do
  local low = hash % 256
  hash = hash - low + bit.band(bit.bxor(low, string.byte(id, i)), 255)
  hash = ((hash % 256) * 16777216 + hash * 403) % 4294967296
end
local expected = hash % shards
if tostring(expected) ~= ARGV[4] then
  return {'WRONG_SHARD', expected}
end

local existing = redis.call('HMGET', KEYS[2], 'cpu', 'memory', 'gpu', 'gpuCount', 'pool')
if existing[1] then
  local same = existing[1] == ARGV[5] and existing[2] == ARGV[6] and existing[3] == ARGV[7]
    and existing[4] == ARGV[8] and existing[5] == ARGV[9]
  local code = same and 'EXISTS' or 'SPEC_MISMATCH'
  if same and ARGV[12] == '1' and redis.call('HGET', KEYS[2], 'agent') ~= '1' then
    redis.call('HSET', KEYS[2], 'agent', '1')
  end
  local out = {code}
  for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = v end
  return out
end

-- Checked before the first write, so a wrong type cannot leave a half-registered worker.
local setType = redis.call('TYPE', KEYS[3]).ok
if setType ~= 'none' and setType ~= 'set' then
  return redis.error_reply('ERR register_worker: ' .. KEYS[3] .. ' is a ' .. setType)
end
local historyCap = tonumber(ARGV[2])
if historyCap > 0 then
  local streamType = redis.call('TYPE', KEYS[4]).ok
  if streamType ~= 'none' and streamType ~= 'stream' then
    return redis.error_reply('ERR register_worker: ' .. KEYS[4] .. ' is a ' .. streamType)
  end
end

redis.call('HSET', KEYS[2],
  'id', ARGV[3], 'shard', ARGV[4], 'cpu', ARGV[5], 'memory', ARGV[6], 'gpu', ARGV[7], 'gpuCount', ARGV[8],
  'pool', ARGV[9], 'freeCpu', ARGV[5], 'freeMemory', ARGV[6], 'freeGpuCount', ARGV[8],
  'status', ARGV[10], 'resourceVersion', 1)
if ARGV[12] == '1' then redis.call('HSET', KEYS[2], 'agent', '1') end
redis.call('SADD', KEYS[3], ARGV[3])
if historyCap > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', historyCap, '*', 'op', 'register', 'worker', ARGV[3],
    'cpu', ARGV[5], 'memory', ARGV[6], 'gpuCount', ARGV[8], 'version', 1, 'epoch', epoch)
end
return {'CREATED'}
