--[[
  commit_batch: apply one shard's batch of placements, releases and status changes, fenced.
  Every capacity change Drover makes goes through this script, so these checks are the whole of
  the safety argument: a writer whose lease was taken over is refused here, by Redis, whatever it
  believes about itself.

  Input:
    KEYS[1]              the shard's epoch key                      {<prefix>:s<n>}:epoch
    KEYS[2]              the shard's history stream                 {<prefix>:s<n>}:history
    KEYS[3+3i .. 5+3i]   op i (i from 0): the worker's hash, the worker's container set, the
                         container's hash (a status op repeats the worker key in all three)
    ARGV[1]              the writer's epoch (the number its lease acquisition got)
    ARGV[2]              the shard number (recorded on each placement)
    ARGV[3]              history length cap; 0 writes no history
    ARGV[4]              seconds to keep a released container's record; 0 keeps it forever
    ARGV[5]              op count n (at most 1000)
    ARGV[6+9i .. 14+9i]  op i: kind, containerId, workerId, expectedVersion, a, b, c, deadline, nonce
                           kind 'P' place:   a = cpu, b = memory (whole, at least 1), c = gpuCount
                                             (whole, at least 0); a malformed op fails the batch
                           kind 'R' release: a, b, c, deadline, nonce unused
                           kind 'S' status:  a = the new status; containerId unused
                         deadline: Unix ms (Redis clock) after which a placement must not be
                         written because its router has given up on it; 0 = none
                         nonce: the router's id for the client request, stored with the
                         placement so a retry of the same request can recognise its own write

  expectedVersion is the worker's ResourceVersion as the writer's actor last saw it. Within one
  batch the script counts its own writes to each worker, so op i must find
  version == expectedVersion + (earlier successful ops on that worker in this batch).

  Output:
    {'FENCED', currentEpoch}   nothing was written: the writer's epoch is not the current one
    {'OK', code_0, version_0, extra_0, code_1, ...}: one triple per op, in order
      PLACED            version = the worker's new version
      ALREADY_PLACED    extra = "<worker> <nonce>": where the container is (or was) placed and the
                        nonce of the request that placed it; nothing written
      RV_CONFLICT       version = the worker's current version; nothing written
      NO_CAPACITY       the worker lacks the capacity in Redis; nothing written
      NOT_SCHEDULABLE   extra = the worker's status; nothing written
      WORKER_NOT_FOUND  nothing written
      EXPIRED           the placement's deadline has passed; nothing written
      RELEASED          version = the worker's new version, extra = "cpu memory gpuCount" freed
      ALREADY_RELEASED  extra = the worker; nothing written (release is idempotent)
      NOT_FOUND         no such container; nothing written
      WRONG_WORKER      extra = the worker actually holding the container; nothing written
      STATUS_SET        version = the worker's new version
]]

local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or '0'}
end

local shard = ARGV[2]
local historyCap = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
if n == nil or n < 0 or n > 1000 or #KEYS ~= 2 + 3 * n or #ARGV ~= 5 + 9 * n then
  return redis.error_reply('ERR commit_batch: malformed batch')
end

local STATUSES = {pending = true, available = true, draining = true, disabled = true, lost = true}

local function wholeAtLeast(text, min)
  local value = tonumber(text)
  return value ~= nil and value == math.floor(value) and value >= min and value < 2^53
end

-- Check every op before writing anything: Redis does not roll back a script's earlier writes
-- when it fails part way, so a malformed op must be refused while nothing has been written.
for i = 0, n - 1 do
  local base = 6 + 9 * i
  local kind = ARGV[base]
  local ok = tonumber(ARGV[base + 3]) ~= nil
  if kind == 'P' then
    -- A placement takes at least 1 millicore and 1 MiB and a whole number of each: a zero,
    -- negative or fractional amount would create capacity instead of taking it.
    ok = ok and wholeAtLeast(ARGV[base + 4], 1) and wholeAtLeast(ARGV[base + 5], 1)
      and wholeAtLeast(ARGV[base + 6], 0) and wholeAtLeast(ARGV[base + 7], 0)
  elseif kind == 'S' then
    ok = ok and STATUSES[ARGV[base + 4]] == true
  elseif kind ~= 'R' then
    ok = false
  end
  if not ok then
    return redis.error_reply('ERR commit_batch: malformed op ' .. i .. ' (' .. tostring(kind) .. ')')
  end
end

local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local bumps = {}
local out = {'OK'}

local function history(fields)
  if historyCap > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', historyCap, '*', unpack(fields))
  end
end

local function reply(code, version, extra)
  out[#out + 1] = code
  out[#out + 1] = version
  out[#out + 1] = extra
end

for i = 0, n - 1 do
  local workerKey, setKey, containerKey = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local base = 6 + 9 * i
  local kind, containerId, workerId = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local expected = tonumber(ARGV[base + 3]) + (bumps[workerKey] or 0)
  local deadline = tonumber(ARGV[base + 7])

  if kind == 'P' then
    local cpu, memory, gpus = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6])
    local holder = redis.call('HMGET', containerKey, 'workerId', 'nonce')
    if holder[1] then
      reply('ALREADY_PLACED', 0, holder[1] .. ' ' .. (holder[2] or ''))
    elseif deadline > 0 and nowMs > deadline then
      reply('EXPIRED', 0, '')
    else
      local w = redis.call('HMGET', workerKey, 'resourceVersion', 'status', 'freeCpu', 'freeMemory', 'freeGpuCount')
      local version = tonumber(w[1])
      if version == nil then
        reply('WORKER_NOT_FOUND', 0, '')
      elseif version ~= expected then
        reply('RV_CONFLICT', version, '')
      elseif w[2] ~= 'available' then
        reply('NOT_SCHEDULABLE', version, w[2])
      else
        local freeCpu, freeMemory, freeGpus = tonumber(w[3]) - cpu, tonumber(w[4]) - memory, tonumber(w[5]) - gpus
        if freeCpu < 0 or freeMemory < 0 or freeGpus < 0 then
          reply('NO_CAPACITY', version, '')
        else
          version = version + 1
          redis.call('HSET', workerKey, 'freeCpu', freeCpu, 'freeMemory', freeMemory, 'freeGpuCount', freeGpus,
            'resourceVersion', version)
          redis.call('HSET', containerKey, 'status', 'placed', 'workerId', workerId, 'shard', shard,
            'cpu', cpu, 'memory', memory, 'gpuCount', gpus, 'placedAt', nowMs, 'nonce', ARGV[base + 8])
          redis.call('SADD', setKey, containerId)
          bumps[workerKey] = (bumps[workerKey] or 0) + 1
          history({'op', 'place', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory,
            'gpuCount', gpus, 'version', version, 'epoch', epoch})
          reply('PLACED', version, '')
        end
      end
    end
  elseif kind == 'R' then
    local c = redis.call('HMGET', containerKey, 'status', 'workerId', 'cpu', 'memory', 'gpuCount')
    if not c[1] then
      reply('NOT_FOUND', 0, '')
    elseif c[2] ~= workerId then
      reply('WRONG_WORKER', 0, c[2])
    elseif c[1] == 'released' then
      reply('ALREADY_RELEASED', 0, c[2])
    else
      local w = redis.call('HMGET', workerKey, 'resourceVersion', 'freeCpu', 'freeMemory', 'freeGpuCount')
      local version = tonumber(w[1])
      if version == nil then
        reply('WORKER_NOT_FOUND', 0, '')
      elseif version ~= expected then
        reply('RV_CONFLICT', version, '')
      else
        local cpu, memory, gpus = tonumber(c[3]), tonumber(c[4]), tonumber(c[5])
        version = version + 1
        redis.call('HSET', workerKey, 'freeCpu', tonumber(w[2]) + cpu, 'freeMemory', tonumber(w[3]) + memory,
          'freeGpuCount', tonumber(w[4]) + gpus, 'resourceVersion', version)
        redis.call('HSET', containerKey, 'status', 'released', 'releasedAt', nowMs)
        if retention > 0 then
          redis.call('EXPIRE', containerKey, retention)
        end
        redis.call('SREM', setKey, containerId)
        bumps[workerKey] = (bumps[workerKey] or 0) + 1
        history({'op', 'release', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory,
          'gpuCount', gpus, 'version', version, 'epoch', epoch})
        reply('RELEASED', version, cpu .. ' ' .. memory .. ' ' .. gpus)
      end
    end
  elseif kind == 'S' then
    local version = tonumber(redis.call('HGET', workerKey, 'resourceVersion'))
    if version == nil then
      reply('WORKER_NOT_FOUND', 0, '')
    elseif version ~= expected then
      reply('RV_CONFLICT', version, '')
    else
      version = version + 1
      redis.call('HSET', workerKey, 'status', ARGV[base + 4], 'resourceVersion', version)
      bumps[workerKey] = (bumps[workerKey] or 0) + 1
      history({'op', 'status', 'worker', workerId, 'status', ARGV[base + 4], 'version', version, 'epoch', epoch})
      reply('STATUS_SET', version, '')
    end
  end
end

return out
