#!lua
--[[
  register_workers: create up to 200 workers of one shard in one call, fenced by the shard epoch
  (an owner gathers the registrations that arrive while its previous call is in flight: a fleet
  registers by the thousand, and one call per worker cost more than the registering itself).

  Each worker is registered on its own terms, in order: registering again with the same spec
  changes nothing and answers EXISTS (registration is idempotent); a different spec under the same
  id is refused, because capacity already promised on the old spec cannot be re-counted safely
  here. The same id twice in one call: the second finds the first.

  A worker belongs to exactly one shard, the FNV-1a 32 hash of its id modulo the shard count (as
  src/shard/shard-map.ts computes it). The script computes it too and refuses any other shard: an
  owner that forwarded a registration published on the wrong shard subject would otherwise create
  a second record of the same machine, whose capacity would then be promised twice.

  Input:
    KEYS[1]      the shard's epoch key          {<prefix>:s<n>}:epoch
    KEYS[2]      the shard's worker set         {<prefix>:s<n>}:workers
    KEYS[3]      the shard's history stream     {<prefix>:s<n>}:history
    KEYS[3 + i]  worker i's hash                {<prefix>:s<n>}:worker:<id>     (i = 1..n)
    ARGV[1]   the writer's epoch
    ARGV[2]   history length cap; 0 writes no history
    ARGV[3]   the shard number
    ARGV[4]   the cluster's shard count (1-4096)
    ARGV[5]   n, the number of workers (1-200)
    per worker i, from b = 5 + 8 * (i - 1):
      ARGV[b+1] id                 ARGV[b+2] cpu (millicores)   ARGV[b+3] memory (MiB)
      ARGV[b+4] GPU type, '' for none                           ARGV[b+5] GPU count
      ARGV[b+6] pool, '' for none  ARGV[b+7] initial status
      ARGV[b+8] '1' when a worker agent registers it (it heartbeats and can be lost), else ''
                (an agent registering an existing worker marks it as run by an agent)
  Output:
    {'FENCED', currentEpoch}          nothing written
    {'DONE', result_1, ..., result_n}, each one of:
      {'CREATED'}                     created exactly as the arguments say (status as given, all
                                      capacity free, resourceVersion 1): the caller knows the hash,
                                      so it is not sent back
      {'WRONG_SHARD', shard}          the id hashes to `shard`, not ARGV[3]; nothing written for it
      {'EXISTS', field, value, ...}   same spec already registered; nothing written for it (but
                                      the agent mark, see ARGV[b+8])
      {'SPEC_MISMATCH', field, value, ...}  registered with another spec; nothing written for it
  Errors, with nothing written: a shard count or n out of range, a KEYS count that does not match
  n, the worker set, the history stream or any worker's hash holding another type.
]]

local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or '0'}
end

local shards = tonumber(ARGV[4])
if shards == nil or shards < 1 or shards > 4096 or shards ~= math.floor(shards) then
  return redis.error_reply('ERR register_workers: shard count out of range')
end
local n = tonumber(ARGV[5])
if n == nil or n < 1 or n > 200 or n ~= math.floor(n) then
  return redis.error_reply('ERR register_workers: worker count out of range')
end
if #KEYS ~= 3 + n or #ARGV ~= 5 + 8 * n then
  return redis.error_reply('ERR register_workers: KEYS and ARGV do not match the worker count')
end

-- Every type is checked before the first write, so a wrong type cannot leave a half-done call.
local setType = redis.call('TYPE', KEYS[2]).ok
if setType ~= 'none' and setType ~= 'set' then
  return redis.error_reply('ERR register_workers: ' .. KEYS[2] .. ' is a ' .. setType)
end
local historyCap = tonumber(ARGV[2])
if historyCap > 0 then
  local streamType = redis.call('TYPE', KEYS[3]).ok
  if streamType ~= 'none' and streamType ~= 'stream' then
    return redis.error_reply('ERR register_workers: ' .. KEYS[3] .. ' is a ' .. streamType)
  end
end
for i = 1, n do
  local hashType = redis.call('TYPE', KEYS[3 + i]).ok
  if hashType ~= 'none' and hashType ~= 'hash' then
    return redis.error_reply('ERR register_workers: ' .. KEYS[3 + i] .. ' is a ' .. hashType)
  end
end

-- FNV-1a 32 over the id's bytes (ids are ASCII). Lua numbers are doubles, exact up to 2^53, so
-- the multiply by the FNV prime 16777619 = 2^24 + 403 is split to stay exact:
-- (h * 2^24) mod 2^32 = (h mod 2^8) * 2^24, and h * 403 < 2^41.
local function shardOf(id)
  local hash = 2166136261
  for i = 1, #id do
    local low = hash % 256
    hash = hash - low + bit.band(bit.bxor(low, string.byte(id, i)), 255)
    hash = ((hash % 256) * 16777216 + hash * 403) % 4294967296
  end
  return hash % shards
end

local out = {'DONE'}
for i = 1, n do
  local key = KEYS[3 + i]
  local b = 5 + 8 * (i - 1)
  local id, cpu, memory, gpu, gpuCount, pool, status, agent =
    ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local expected = shardOf(id)
  if tostring(expected) ~= ARGV[3] then
    out[#out + 1] = {'WRONG_SHARD', expected}
  else
    local existing = redis.call('HMGET', key, 'cpu', 'memory', 'gpu', 'gpuCount', 'pool')
    if existing[1] then
      local same = existing[1] == cpu and existing[2] == memory and existing[3] == gpu
        and existing[4] == gpuCount and existing[5] == pool
      if same and agent == '1' and redis.call('HGET', key, 'agent') ~= '1' then
        redis.call('HSET', key, 'agent', '1')
      end
      local result = {same and 'EXISTS' or 'SPEC_MISMATCH'}
      for _, v in ipairs(redis.call('HGETALL', key)) do result[#result + 1] = v end
      out[#out + 1] = result
    else
      redis.call('HSET', key,
        'id', id, 'shard', ARGV[3], 'cpu', cpu, 'memory', memory, 'gpu', gpu, 'gpuCount', gpuCount,
        'pool', pool, 'freeCpu', cpu, 'freeMemory', memory, 'freeGpuCount', gpuCount,
        'status', status, 'resourceVersion', 1)
      if agent == '1' then redis.call('HSET', key, 'agent', '1') end
      redis.call('SADD', KEYS[2], id)
      if historyCap > 0 then
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', historyCap, '*', 'op', 'register', 'worker', id,
          'cpu', cpu, 'memory', memory, 'gpuCount', gpuCount, 'version', 1, 'epoch', epoch)
      end
      out[#out + 1] = {'CREATED'}
    end
  end
end
return out
