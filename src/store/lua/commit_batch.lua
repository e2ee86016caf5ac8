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

  expectedVersion is the worker's ResourceVersion as the writer's actor last saw it, the same for
  every op of one worker in a batch: it must equal the version the worker had when the batch
  began (the script's own writes within the batch bump the version but are not a conflict).

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

-- Each worker's hash is read once per batch and written once at its end: a batch often holds
-- many ops for one worker (the owner packs workers), and the script is atomic, so nobody can see
-- the state in between. `false` marks a worker that does not exist; `before` is the version it
-- had when the batch began, which every op's expectedVersion must match.
local workers = {}
local dirty = {}

local function loadWorker(key)
  local w = workers[key]
  if w == nil then
    local v = redis.call('HMGET', key, 'resourceVersion', 'status', 'freeCpu', 'freeMemory', 'freeGpuCount')
    local version = tonumber(v[1])
    if version == nil then
      w = false
    else
      w = {before = version, version = version, status = v[2], freeCpu = tonumber(v[3]), freeMemory = tonumber(v[4]),
        freeGpus = tonumber(v[5])}
    end
    workers[key] = w
  end
  return w
end

local function bump(key, w)
  w.version = w.version + 1
  if not w.dirty then
    w.dirty = true
    dirty[#dirty + 1] = key
  end
end

for i = 0, n - 1 do
  local workerKey, setKey, containerKey = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local base = 6 + 9 * i
  local kind, containerId, workerId = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local expected = tonumber(ARGV[base + 3])
  local deadline = tonumber(ARGV[base + 7])

  if kind == 'P' then
    local cpu, memory, gpus = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6])
    local holder = redis.call('HMGET', containerKey, 'workerId', 'nonce')
    if holder[1] then
      reply('ALREADY_PLACED', 0, holder[1] .. ' ' .. (holder[2] or ''))
    elseif deadline > 0 and nowMs > deadline then
      reply('EXPIRED', 0, '')
    else
      local w = loadWorker(workerKey)
      if not w then
        reply('WORKER_NOT_FOUND', 0, '')
      elseif w.before ~= expected then
        reply('RV_CONFLICT', w.version, '')
      elseif w.status ~= 'available' then
        reply('NOT_SCHEDULABLE', w.version, w.status)
      elseif w.freeCpu < cpu or w.freeMemory < memory or w.freeGpus < gpus then
        reply('NO_CAPACITY', w.version, '')
      else
        w.freeCpu, w.freeMemory, w.freeGpus = w.freeCpu - cpu, w.freeMemory - memory, w.freeGpus - gpus
        bump(workerKey, w)
        redis.call('HSET', containerKey, 'status', 'placed', 'workerId', workerId, 'shard', shard,
          'cpu', cpu, 'memory', memory, 'gpuCount', gpus, 'placedAt', nowMs, 'nonce', ARGV[base + 8])
        redis.call('SADD', setKey, containerId)
        history({'op', 'place', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory,
          'gpuCount', gpus, 'version', w.version, 'epoch', epoch})
        reply('PLACED', w.version, '')
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
      local w = loadWorker(workerKey)
      if not w then
        reply('WORKER_NOT_FOUND', 0, '')
      elseif w.before ~= expected then
        reply('RV_CONFLICT', w.version, '')
      else
        local cpu, memory, gpus = tonumber(c[3]), tonumber(c[4]), tonumber(c[5])
        w.freeCpu, w.freeMemory, w.freeGpus = w.freeCpu + cpu, w.freeMemory + memory, w.freeGpus + gpus
        bump(workerKey, w)
        redis.call('HSET', containerKey, 'status', 'released', 'releasedAt', nowMs)
        if retention > 0 then
          redis.call('EXPIRE', containerKey, retention)
        end
        redis.call('SREM', setKey, containerId)
        history({'op', 'release', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory,
          'gpuCount', gpus, 'version', w.version, 'epoch', epoch})
        reply('RELEASED', w.version, cpu .. ' ' .. memory .. ' ' .. gpus)
      end
    end
  elseif kind == 'S' then
    local w = loadWorker(workerKey)
    if not w then
      reply('WORKER_NOT_FOUND', 0, '')
    elseif w.before ~= expected then
      reply('RV_CONFLICT', w.version, '')
    else
      w.status = ARGV[base + 4]
      bump(workerKey, w)
      history({'op', 'status', 'worker', workerId, 'status', w.status, 'version', w.version, 'epoch', epoch})
      reply('STATUS_SET', w.version, '')
    end
  end
end

for _, key in ipairs(dirty) do
  local w = workers[key]
  redis.call('HSET', key, 'freeCpu', w.freeCpu, 'freeMemory', w.freeMemory, 'freeGpuCount', w.freeGpus,
    'status', w.status, 'resourceVersion', w.version)
end

return out
