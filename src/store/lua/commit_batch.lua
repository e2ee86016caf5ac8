#!lua
--[[
  commit_batch: apply one shard's batch of placements, releases, container transitions and
  requeues, worker status changes and removals, fenced. Every capacity change Drover makes goes through this script, so these checks
  are the whole of the safety argument: a writer whose lease was taken over is refused here, by
  Redis, whatever it believes about itself.

  The script runs in two phases. Phase 1 reads every key the batch touches (and checks its type),
  decides every op's outcome and writes nothing. Phase 2 only writes what phase 1 decided. Redis
  does not roll back a script's earlier writes when it fails part way, so everything that can fail
  (a malformed op, a key of the wrong type) must fail in phase 1. The `#!lua` line above makes
  Redis refuse the whole script up front when it is over `maxmemory`, instead of failing at the
  first write, and refuse a key the caller did not declare (Redis Cluster safety).

  Input:
    KEYS[1]              the shard's epoch key                      {<prefix>:s<n>}:epoch
    KEYS[2]              the shard's history stream                 {<prefix>:s<n>}:history
    KEYS[3]              the shard's requeue outbox (set)           {<prefix>:s<n>}:requeue
    KEYS[4]              the shard's backlog (sorted set)           {<prefix>:s<n>}:backlog
    KEYS[5+3i .. 7+3i]   op i (i from 0), by kind:
                           P, R, T, Q, D: the worker's hash, the worker's container set, the container's key
                           A:    the worker's hash, the worker's container set, the worker's hash
                           S:    the worker's hash three times
                           X:    the worker's hash, the worker's container set, the shard's worker set
                           O:    the outbox three times
    ARGV[1]              the writer's epoch (the number its lease acquisition got)
    ARGV[2]              the shard number (recorded on each placement)
    ARGV[3]              history length cap; 0 writes no history
    ARGV[4]              seconds to keep a released container's tombstone; 0 keeps it forever
    ARGV[5]              op count n (at most 1000)
    ARGV[6+14i .. 19+14i] op i: kind, containerId, workerId, expectedVersion, a, b, c, deadline, key, spec, d, e, f, g
                           kind 'P' place:   a = cpu, b = memory (whole, at least 1), c = gpuCount
                                             (whole, at least 0); key = the client's request key;
                                             spec = the command/env JSON for the worker's agent, or '';
                                             d = its priority, e = its maxWaitMs, f = its GPU type or
                                             '', g = its pool or '' (kept for a requeue)
                           kind 'Q':         d = the container's home shard (its backlog)
                           kind 'R' release: its capacity is freed and it ends: a = the status it
                                             ends in ('' or 'released', 'exited', 'lost'), b = the
                                             reason ('' for RELEASED), c = the exit code or ''; key
                                             unused (a release is idempotent by container id)
                           kind 'T' transition: a = the statuses it may be in, comma-separated
                                             (of placed, running, unknown), b = the status it moves
                                             to ('running', 'stopping' or 'unknown'); capacity unchanged
                           kind 'D' deliver: a placed container's assignment is about to be sent to
                                             its worker's agent: a = the agent incarnation it goes
                                             to, which must be the worker's recorded one. Marks it
                                             delivered (deliveredAt): from now on it may be running,
                                             so a requeue (Q) refuses it
                           kind 'A' agent:   a = the incarnation of the agent reporting for the
                                             worker; b = '1' when the owner saw the recorded one
                                             silent for longer than DROVER_WORKER_TTL_MS. Recorded
                                             when there is none, it is the same, the worker is
                                             pending or lost, or (b = '1') the worker holds no
                                             container; otherwise refused (a second live agent)
                           kind 'Q' requeue: a placed container never delivered to its agent goes back to
                                             the queue (status queued, capacity freed, its id in the
                                             outbox until its home shard's backlog has it again;
                                             when its home is this shard, also back in KEYS[4] at
                                             once, with its queue time as score)
                           kind 'O' outbox:  the id's home shard has it again: forget it
                           kind 'S' status:  a = the new status; containerId unused
                           kind 'X' remove:  the worker leaves the shard; only when it holds no
                                             container and is not 'available'
                         deadline: Unix ms (Redis clock) after which a placement must not be
                         written because its router has given up on it; 0 = none
                         A malformed op fails the whole batch before anything is written.

  expectedVersion is the worker's ResourceVersion as the writer's actor last saw it, the same for
  every op of one worker in a batch: it must equal the version the worker had when the batch
  began (the script's own writes within the batch bump the version but are not a conflict).

  A live container is a hash (status placed, workerId, shard, cpu, memory, gpuCount, placedAt,
  requestKey, and spec if any). A queued one (see backlog_commit.lua) is a hash with status queued:
  a placement turns it into a placed one only with the request key that queued it, keeping its
  queuedAt, priority and spec. When the queued container's home shard (its backlog) is this shard,
  the same script takes its id out of this shard's backlog set (KEYS[4]): its record says placed in
  the same atomic step, so the set never loses an id whose record is still queued, and the home
  backlog's owner has no drop to write for it (the backlog places in the home shard first).
  An ended container is a tombstone: a string of space-separated fields
    <status> <workerId|-> <shard> <cpu> <memory> <gpuCount> <placedAt> <endedAt> <requestKey|-> <reason>
    <queuedAt> <exitCode|-> <runningAt> <priority> <gpu|-> <pool|-> <maxWaitMs|-> <sha1 of spec|-> <seq>
  (a time of 0: a step not taken; queuedAt is 0 for a container never queued, one without a home;
  tombstones written by older versions end after 9, 11, 13 or 18 fields) that expires after ARGV[4]
  seconds; it keeps the id from being placed again, lets a retried submit recognise its own
  request (and compare its body), and keeps every field `containers.get` shows. workerId '-'
  means it ended without ever being placed (its shard is then its home shard). (Ids, request keys
  and names cannot hold spaces.)

  seq: every write that changes a container's status (P, R, T, Q here; queue and end in
  backlog_commit.lua) sets the record's `seq` field to the previous value plus one (a record
  without one counts as 0), and a tombstone keeps it as its last field: a consumer of the
  container's events sees one number per status write, and a jump means it missed one. D and A
  change no container status and leave it alone.

  Output:
    {'FENCED', currentEpoch}   nothing was written: the writer's epoch is not the current one
    {'OK', code_0, version_0, extra_0, seq_0, code_1, ...}: four items per op, in order; seq is the
    container's new seq for an op that changed its status (PLACED, RELEASED, TRANSITIONED,
    REQUEUED), else 0
      PLACED            version = the worker's new version; extra = 'unqueued' when the container
                        was queued in this shard's backlog and left it, else ''
      ALREADY_PLACED    extra = "<worker> <requestKey>": where the container is (or was) placed and
                        the request key that placed it; nothing written
      NOT_PLACEABLE     extra = "<status> <requestKey>": queued by another request key, or ended
                        without a placement (cancelled, expired); "different <requestKey>": queued
                        by this request key with another body; nothing written
      RV_CONFLICT       version = the worker's current version; nothing written
      NO_CAPACITY       the worker lacks the capacity in Redis; nothing written
      NOT_SCHEDULABLE   extra = the worker's status; nothing written
      WORKER_NOT_FOUND  nothing written
      EXPIRED           the placement's deadline has passed; nothing written
      RELEASED          version = the worker's new version, extra = "cpu memory gpuCount" freed
      ALREADY_RELEASED  extra = the worker; nothing written (release is idempotent)
      NOT_FOUND         no such container (or it is queued, not placed); nothing written
      WRONG_WORKER      extra = the worker actually holding the container; nothing written
      STATUS_SET        version = the worker's new version
      REMOVED           the worker's hash and container set are deleted, it left the shard's set
      NOT_REMOVABLE     extra = "status <status>" or "containers <n>"; nothing written
      TRANSITIONED      T: the container's status is now b
      NOT_IN_STATE      T, Q, D: extra = the status it is in (or 'none', 'elsewhere', 'delivered' for a
                        Q of a delivered one, 'incarnation' for a D to another agent); nothing written
      DELIVERED         D: it is marked delivered
      AGENT_RECORDED    A: the incarnation is the worker's (extra = the one it replaced, or '')
      AGENT_CONFLICT    A: extra = the worker's recorded incarnation; nothing written
      REQUEUED          Q: version = the worker's new version, extra = "cpu memory gpuCount" freed
      ACKED             O: the id left the outbox
]]

local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or '0'}
end

local shard = ARGV[2]
local historyCap = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
if n == nil or n < 0 or n > 1000 or historyCap == nil or retention == nil
  or #KEYS ~= 4 + 3 * n or #ARGV ~= 5 + 14 * n then
  return redis.error_reply('ERR commit_batch: malformed batch')
end

local STATUSES = {pending = true, available = true, unreachable = true, draining = true, disabled = true, lost = true}
-- What a transition (T) may move a container to, and the statuses it may move it from.
local TRANSITION_TO = {running = true, stopping = true, unknown = true}
local TRANSITION_FROM = {placed = true, running = true, unknown = true}
local function transitionFromList(list)
  if list == '' then return false end
  for status in string.gmatch(list, '[^,]+') do
    if not TRANSITION_FROM[status] then return false end
  end
  return true
end

local function wholeAtLeast(text, min)
  local value = tonumber(text)
  return value ~= nil and value == math.floor(value) and value >= min and value < 2^53
end

-- Keys are written in phase 2; a key of the wrong type must be found now, before any write.
local function expectType(key, wanted)
  local found = redis.call('TYPE', key).ok
  if found ~= 'none' and found ~= wanted then
    return redis.error_reply('ERR commit_batch: key ' .. key .. ' is a ' .. found .. ', not a ' .. wanted)
  end
  return nil
end

-- ---------------------------------------------------------------- phase 0: the ops are well formed
for i = 0, n - 1 do
  local base = 6 + 14 * i
  local kind = ARGV[base]
  local ok = wholeAtLeast(ARGV[base + 3], 0) and wholeAtLeast(ARGV[base + 7], 0)
  if kind == 'P' then
    -- A placement takes at least 1 millicore and 1 MiB and a whole number of each: a zero,
    -- negative or fractional amount would create capacity instead of taking it.
    ok = ok and wholeAtLeast(ARGV[base + 4], 1) and wholeAtLeast(ARGV[base + 5], 1)
      and wholeAtLeast(ARGV[base + 6], 0) and ARGV[base + 8] ~= '' and not string.find(ARGV[base + 8], ' ', 1, true)
      and tonumber(ARGV[base + 10]) ~= nil and wholeAtLeast(ARGV[base + 11], 1)
  elseif kind == 'S' then
    ok = ok and STATUSES[ARGV[base + 4]] == true
  elseif kind == 'R' then
    local final, reason, code = ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
    ok = ok and not string.find(ARGV[base + 8], ' ', 1, true)
      and (final == '' or final == 'released' or final == 'exited' or final == 'lost')
      and not string.find(reason, ' ', 1, true) and (code == '' or tonumber(code) ~= nil)
  elseif kind == 'T' then
    ok = ok and TRANSITION_TO[ARGV[base + 5]] == true and transitionFromList(ARGV[base + 4])
  elseif kind == 'D' then
    ok = ok and ARGV[base + 4] ~= '' and not string.find(ARGV[base + 4], ' ', 1, true)
  elseif kind == 'A' then
    ok = ok and ARGV[base + 4] ~= '' and not string.find(ARGV[base + 4], ' ', 1, true) and (ARGV[base + 5] == '' or ARGV[base + 5] == '1')
  elseif kind ~= 'X' and kind ~= 'Q' and kind ~= 'O' then
    ok = false
  end
  if not ok then
    return redis.error_reply('ERR commit_batch: malformed op ' .. i .. ' (' .. tostring(kind) .. ')')
  end
end

if historyCap > 0 then
  local wrong = expectType(KEYS[2], 'stream')
  if wrong then return wrong end
end
do
  local wrong = expectType(KEYS[3], 'set') or expectType(KEYS[4], 'zset')
  if wrong then return wrong end
end

local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- ---------------------------------------------------------------- phase 1: read and decide
-- Each worker's hash is read once per batch and written once at its end: a batch often holds
-- many ops for one worker (the owner packs workers). `false` marks a worker that does not exist
-- (or that this batch removes); `before` is the version it had when the batch began, which every
-- op's expectedVersion must match; `containers` counts what this batch added to its container set.
local workers = {}
local workerOrder = {}
local function loadWorker(key)
  local w = workers[key]
  if w == nil then
    local v = redis.call('HMGET', key, 'resourceVersion', 'status', 'freeCpu', 'freeMemory', 'freeGpuCount')
    local version = tonumber(v[1])
    if version == nil then
      w = false
    else
      w = {before = version, version = version, status = v[2], freeCpu = tonumber(v[3]), freeMemory = tonumber(v[4]),
        freeGpus = tonumber(v[5]), dirty = false, containers = 0}
    end
    workers[key] = w
  end
  return w
end

-- A container's state as this batch sees it: read once, then updated by the batch's own ops.
local containers = {}
local function loadContainer(key)
  local c = containers[key]
  if c == nil then
    local found = redis.call('TYPE', key).ok
    if found == 'none' then
      c = {state = 'none', seq = 0}
    elseif found == 'hash' then
      local v = redis.call('HMGET', key, 'workerId', 'cpu', 'memory', 'gpuCount', 'placedAt', 'requestKey', 'status', 'queuedAt', 'runningAt', 'home', 'deliveredAt', 'seq')
      -- 'placed' (and, with an agent, 'running' or 'stopping') hold capacity; 'queued' holds none yet.
      c = {state = v[7] == 'queued' and 'queued' or 'placed', status = v[7], workerId = v[1] or '-', cpu = tonumber(v[2]),
        memory = tonumber(v[3]), gpus = tonumber(v[4]), placedAt = v[5], requestKey = v[6] or '', queuedAt = v[8], runningAt = v[9],
        home = v[10], delivered = v[11] ~= false and v[11] ~= nil, seq = tonumber(v[12]) or 0}
    elseif found == 'string' then
      local f = {}
      for field in string.gmatch(redis.call('GET', key), '%S+') do f[#f + 1] = field end
      c = {state = f[1] or 'released', ended = true, workerId = f[2] or '-', requestKey = f[9] ~= '-' and f[9] or '', seq = tonumber(f[19]) or 0}
    else
      return nil, redis.error_reply('ERR commit_batch: key ' .. key .. ' is a ' .. found)
    end
    containers[key] = c
  end
  return c, nil
end

local out = {'OK'}
-- What phase 2 writes, per op index: the worker's version after the op, for ops that write
-- (nil for refused ops); `written` holds a release's tombstone or a status op's new status, and
-- `freed` what a release freed. Flat tables indexed by op, not a table per op: a batch holds up to
-- 1,000 ops.
local writeVersion = {}
local written = {}
local freed = {}
-- The container's seq after a status-changing op (P, R, T, Q), by op index.
local seqs = {}
-- Ids of queued containers placed by this batch whose home backlog is this shard's (phase 2 takes
-- them out of KEYS[4]).
local unqueued = {}

local function reply(code, version, extra, seq)
  out[#out + 1] = code
  out[#out + 1] = version
  out[#out + 1] = extra
  out[#out + 1] = seq or 0
end

local function bump(key, w)
  w.version = w.version + 1
  if not w.dirty then
    w.dirty = true
    workerOrder[#workerOrder + 1] = key
  end
end

-- Give a container's capacity back to its worker (a release, a requeue): the worker, or nil when
-- the op is refused (already replied).
local function giveBack(workerKey, expected, c)
  local w = loadWorker(workerKey)
  if not w then
    reply('WORKER_NOT_FOUND', 0, '')
    return nil
  end
  if w.before ~= expected then
    reply('RV_CONFLICT', w.version, '')
    return nil
  end
  w.freeCpu, w.freeMemory, w.freeGpus = w.freeCpu + c.cpu, w.freeMemory + c.memory, w.freeGpus + c.gpus
  w.containers = w.containers - 1
  bump(workerKey, w)
  return w
end

local checkedSets = {}
local function checkSet(key)
  if checkedSets[key] then return nil end
  checkedSets[key] = true
  return expectType(key, 'set')
end

-- Whether place op `base` asks for what queued container c (its record at `key`) asks for. A retry
-- of the submit that queued it may place it, but only as that submit. The spec is compared when the
-- op carries one (the backlog's own placements carry none: the record keeps it).
local function sameAsQueued(c, key, base)
  local q = redis.call('HMGET', key, 'priority', 'gpu', 'pool', 'spec')
  return c.cpu == tonumber(ARGV[base + 4]) and c.memory == tonumber(ARGV[base + 5]) and c.gpus == tonumber(ARGV[base + 6])
    and tonumber(q[1] or '0') == tonumber(ARGV[base + 10]) and (q[2] or '') == ARGV[base + 12] and (q[3] or '') == ARGV[base + 13]
    and (ARGV[base + 9] == '' or (q[4] or '') == ARGV[base + 9])
end

for i = 0, n - 1 do
  local workerKey, setKey, thirdKey = KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i]
  local base = 6 + 14 * i
  local kind, containerId, workerId = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local expected = tonumber(ARGV[base + 3])
  local deadline = tonumber(ARGV[base + 7])
  local requestKey = ARGV[base + 8]

  if kind == 'P' then
    local cpu, memory, gpus = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6])
    local c, failure = loadContainer(thirdKey)
    if failure then return failure end
    local wrong = checkSet(setKey)
    if wrong then return wrong end
    if c.state == 'queued' and c.requestKey ~= requestKey then
      reply('NOT_PLACEABLE', 0, 'queued ' .. c.requestKey)
    elseif c.state == 'queued' and not sameAsQueued(c, thirdKey, base) then
      reply('NOT_PLACEABLE', 0, 'different ' .. c.requestKey)
    elseif c.state ~= 'none' and c.state ~= 'queued' and c.workerId == '-' then
      reply('NOT_PLACEABLE', 0, c.state .. ' ' .. c.requestKey)
    elseif c.state ~= 'none' and c.state ~= 'queued' then
      reply('ALREADY_PLACED', 0, c.workerId .. ' ' .. c.requestKey)
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
        w.containers = w.containers + 1
        bump(workerKey, w)
        written[i] = c.state
        seqs[i] = c.seq + 1
        containers[thirdKey] = {state = 'placed', workerId = workerId, cpu = cpu, memory = memory, gpus = gpus,
          placedAt = tostring(nowMs), requestKey = requestKey, queuedAt = c.queuedAt, status = 'placed', seq = seqs[i]}
        writeVersion[i] = w.version
        if c.state == 'queued' and c.home == shard then
          unqueued[#unqueued + 1] = containerId
          reply('PLACED', w.version, 'unqueued', seqs[i])
        else
          reply('PLACED', w.version, '', seqs[i])
        end
      end
    end
  elseif kind == 'R' then
    local c, failure = loadContainer(thirdKey)
    if failure then return failure end
    local wrong = checkSet(setKey)
    if wrong then return wrong end
    if c.state == 'none' or c.state == 'queued' then
      reply('NOT_FOUND', 0, c.state)
    elseif c.workerId ~= workerId then
      reply('WRONG_WORKER', 0, c.workerId)
    elseif c.ended then
      reply('ALREADY_RELEASED', 0, c.workerId)
    else
      local w = giveBack(workerKey, expected, c)
      if w then
        local final = ARGV[base + 4] ~= '' and ARGV[base + 4] or 'released'
        local reason = ARGV[base + 5] ~= '' and ARGV[base + 5] or (final == 'released' and 'RELEASED' or '-')
        -- The rest of the request goes with it: nothing the record shows is lost when it ends.
        local kept = redis.call('HMGET', thirdKey, 'priority', 'gpu', 'pool', 'maxWaitMs', 'spec')
        local tombstone = final .. ' ' .. workerId .. ' ' .. shard .. ' ' .. c.cpu .. ' ' .. c.memory .. ' ' .. c.gpus
          .. ' ' .. c.placedAt .. ' ' .. nowMs .. ' ' .. (c.requestKey ~= '' and c.requestKey or '-')
          .. ' ' .. reason .. ' ' .. (c.home and c.queuedAt or '0')
          .. ' ' .. (ARGV[base + 6] ~= '' and ARGV[base + 6] or '-') .. ' ' .. (c.runningAt or '0')
          .. ' ' .. (kept[1] or '0') .. ' ' .. ((kept[2] or '') ~= '' and kept[2] or '-') .. ' ' .. ((kept[3] or '') ~= '' and kept[3] or '-')
          .. ' ' .. (kept[4] or '-') .. ' ' .. ((kept[5] or '') ~= '' and redis.sha1hex(kept[5]) or '-')
          .. ' ' .. (c.seq + 1)
        seqs[i] = c.seq + 1
        containers[thirdKey] = {state = final, ended = true, workerId = workerId, requestKey = c.requestKey, seq = seqs[i]}
        writeVersion[i] = w.version
        written[i] = tombstone
        freed[i] = c
        reply('RELEASED', w.version, c.cpu .. ' ' .. c.memory .. ' ' .. c.gpus, seqs[i])
      end
    end
  elseif kind == 'T' then
    local c, failure = loadContainer(thirdKey)
    if failure then return failure end
    local allowed = ',' .. ARGV[base + 4] .. ','
    if c.state ~= 'placed' or c.ended then
      reply('NOT_IN_STATE', 0, c.state == 'none' and 'none' or (c.status or c.state))
    elseif c.workerId ~= workerId then
      reply('NOT_IN_STATE', 0, 'elsewhere')
    elseif not string.find(allowed, ',' .. c.status .. ',', 1, true) then
      reply('NOT_IN_STATE', 0, c.status)
    else
      c.status = ARGV[base + 5]
      c.seq = c.seq + 1
      seqs[i] = c.seq
      writeVersion[i] = 0
      written[i] = c.status
      reply('TRANSITIONED', 0, c.status, c.seq)
    end
  elseif kind == 'D' then
    local c, failure = loadContainer(thirdKey)
    if failure then return failure end
    local w = loadWorker(workerKey)
    if c.state ~= 'placed' or c.ended then
      reply('NOT_IN_STATE', 0, c.state == 'none' and 'none' or (c.status or c.state))
    elseif c.workerId ~= workerId then
      reply('NOT_IN_STATE', 0, 'elsewhere')
    elseif c.status ~= 'placed' then
      reply('NOT_IN_STATE', 0, c.status)
    elseif not w or (w.incarnation or redis.call('HGET', workerKey, 'incarnation')) ~= ARGV[base + 4] then
      reply('NOT_IN_STATE', 0, 'incarnation')
    else
      c.delivered = true
      writeVersion[i] = 0
      reply('DELIVERED', 0, '')
    end
  elseif kind == 'A' then
    local wrong = checkSet(setKey)
    if wrong then return wrong end
    local w = loadWorker(workerKey)
    if not w then
      reply('WORKER_NOT_FOUND', 0, '')
    else
      -- The batch's own earlier A op for this worker counts as recorded.
      local current = w.incarnation
      if current == nil then current = redis.call('HGET', workerKey, 'incarnation') or '' end
      local wanted = ARGV[base + 4]
      if current == wanted then
        reply('AGENT_RECORDED', 0, current)
      elseif current == '' or w.status == 'pending' or w.status == 'lost'
        or (ARGV[base + 5] == '1' and redis.call('SCARD', setKey) + w.containers == 0) then
        w.incarnation = wanted
        writeVersion[i] = 0
        written[i] = wanted
        reply('AGENT_RECORDED', 0, current)
      else
        w.incarnation = current
        reply('AGENT_CONFLICT', 0, current)
      end
    end
  elseif kind == 'Q' then
    local c, failure = loadContainer(thirdKey)
    if failure then return failure end
    local wrong = checkSet(setKey)
    if wrong then return wrong end
    if c.state ~= 'placed' or c.ended or c.status ~= 'placed' then
      reply('NOT_IN_STATE', 0, c.state == 'none' and 'none' or (c.status or c.state))
    elseif c.workerId ~= workerId then
      reply('NOT_IN_STATE', 0, 'elsewhere')
    elseif c.delivered then
      -- Its agent may have started it: it must never run a second time elsewhere.
      reply('NOT_IN_STATE', 0, 'delivered')
    else
      local w = giveBack(workerKey, expected, c)
      if w then
        seqs[i] = c.seq + 1
        containers[thirdKey] = {state = 'queued', status = 'queued', workerId = '-', requestKey = c.requestKey, queuedAt = c.queuedAt, seq = seqs[i]}
        writeVersion[i] = w.version
        freed[i] = c
        reply('REQUEUED', w.version, c.cpu .. ' ' .. c.memory .. ' ' .. c.gpus, seqs[i])
      end
    end
  elseif kind == 'O' then
    writeVersion[i] = 0
    reply('ACKED', 0, '')
  elseif kind == 'S' then
    local w = loadWorker(workerKey)
    if not w then
      reply('WORKER_NOT_FOUND', 0, '')
    elseif w.before ~= expected then
      reply('RV_CONFLICT', w.version, '')
    else
      w.status = ARGV[base + 4]
      bump(workerKey, w)
      writeVersion[i] = w.version
      written[i] = w.status
      reply('STATUS_SET', w.version, '')
    end
  elseif kind == 'X' then
    local wrong = checkSet(setKey) or expectType(thirdKey, 'set')
    if wrong then return wrong end
    local w = loadWorker(workerKey)
    if not w then
      reply('WORKER_NOT_FOUND', 0, '')
    elseif w.before ~= expected then
      reply('RV_CONFLICT', w.version, '')
    elseif w.status == 'available' then
      reply('NOT_REMOVABLE', w.version, 'status available')
    else
      local held = redis.call('SCARD', setKey) + w.containers
      if held > 0 then
        reply('NOT_REMOVABLE', w.version, 'containers ' .. held)
      else
        workers[workerKey] = false
        writeVersion[i] = w.version + 1
        reply('REMOVED', w.version + 1, '')
      end
    end
  end
end

-- ---------------------------------------------------------------- phase 2: write what was decided
local function history(fields)
  if historyCap > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', historyCap, '*', unpack(fields))
  end
end

for i = 0, n - 1 do
  local version = writeVersion[i]
  if version then
    local workerKey, setKey, thirdKey = KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i]
    local base = 6 + 14 * i
    local kind, containerId, workerId = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    if kind == 'P' then
      local cpu, memory, gpus = ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
      redis.call('HSET', thirdKey, 'status', 'placed', 'workerId', workerId, 'shard', shard,
        'cpu', cpu, 'memory', memory, 'gpuCount', gpus, 'placedAt', nowMs, 'requestKey', ARGV[base + 8], 'seq', seqs[i])
      if ARGV[base + 9] ~= '' then redis.call('HSET', thirdKey, 'spec', ARGV[base + 9]) end
      -- Kept for a requeue (its worker lost before running it): it goes back with its priority and
      -- its submit time (a queued container's queuedAt, else now), and a fresh maxWaitMs.
      redis.call('HSETNX', thirdKey, 'priority', ARGV[base + 10])
      redis.call('HSETNX', thirdKey, 'queuedAt', nowMs)
      redis.call('HSET', thirdKey, 'maxWaitMs', ARGV[base + 11], 'gpu', ARGV[base + 12], 'pool', ARGV[base + 13])
      -- A queued container keeps queuedAt, priority, spec and expiresAt (which applies again if it
      -- is ever requeued: a worker lost before it ran it).
      redis.call('SADD', setKey, containerId)
      history({'op', 'place', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory,
        'gpuCount', gpus, 'version', version, 'epoch', epoch})
    elseif kind == 'R' then
      local c = freed[i]
      if retention > 0 then
        redis.call('SET', thirdKey, written[i], 'EX', retention)
      else
        redis.call('SET', thirdKey, written[i])
      end
      redis.call('SREM', setKey, containerId)
      history({'op', 'release', 'container', containerId, 'worker', workerId, 'cpu', c.cpu, 'memory', c.memory,
        'gpuCount', c.gpus, 'version', version, 'epoch', epoch})
    elseif kind == 'T' then
      redis.call('HSET', thirdKey, 'status', written[i], 'seq', seqs[i])
      -- runningAt and stoppingAt keep their first time (a container back from unknown ran all
      -- along); unknownAt says when it last became unknown.
      if written[i] == 'unknown' then
        redis.call('HSET', thirdKey, 'unknownAt', nowMs)
      else
        redis.call('HSETNX', thirdKey, written[i] .. 'At', nowMs)
      end
      history({'op', 'transition', 'container', containerId, 'worker', workerId, 'status', written[i], 'epoch', epoch})
    elseif kind == 'Q' then
      local c = freed[i]
      -- Back to what the backlog wrote, with its queue time, priority, key, spec and expiry.
      local maxWait = tonumber(redis.call('HGET', thirdKey, 'maxWaitMs')) or 3600000
      redis.call('HSET', thirdKey, 'status', 'queued', 'expiresAt', nowMs + maxWait, 'home', ARGV[base + 10], 'seq', seqs[i])
      redis.call('HDEL', thirdKey, 'workerId', 'placedAt', 'runningAt', 'stoppingAt', 'deliveredAt', 'unknownAt')
      redis.call('SREM', setKey, containerId)
      redis.call('SADD', KEYS[3], containerId)
      -- Home here: back in this shard's backlog set in the same step. A placement at home took it
      -- out (see P), possibly one its backlog did not make (a client's retry, a stale owner's
      -- attempt), whose backlog then still holds the entry in memory and will not write it again
      -- when the outbox hands it over: without this, a record saying queued would be in neither
      -- the set nor, once acked, the outbox, and a crash would lose it.
      if ARGV[base + 10] == shard then
        redis.call('ZADD', KEYS[4], 'NX', tonumber(c.queuedAt) or nowMs, containerId)
      end
      history({'op', 'requeue', 'container', containerId, 'worker', workerId, 'cpu', c.cpu, 'memory', c.memory,
        'gpuCount', c.gpus, 'version', version, 'epoch', epoch})
    elseif kind == 'O' then
      redis.call('SREM', KEYS[3], containerId)
    elseif kind == 'D' then
      redis.call('HSET', thirdKey, 'deliveredAt', nowMs)
    elseif kind == 'A' then
      redis.call('HSET', workerKey, 'incarnation', written[i])
      history({'op', 'agent', 'worker', workerId, 'incarnation', written[i], 'epoch', epoch})
    elseif kind == 'S' then
      history({'op', 'status', 'worker', workerId, 'status', written[i], 'version', version, 'epoch', epoch})
    elseif kind == 'X' then
      redis.call('DEL', workerKey, setKey)
      redis.call('SREM', thirdKey, workerId)
      history({'op', 'remove', 'worker', workerId, 'version', version, 'epoch', epoch})
    end
  end
end

-- unpack() has a stack limit: at most 500 members per ZREM.
for from = 1, #unqueued, 500 do
  redis.call('ZREM', KEYS[4], unpack(unqueued, from, math.min(from + 499, #unqueued)))
end

for _, key in ipairs(workerOrder) do
  local w = workers[key]
  -- A worker this batch removed is false here: it has nothing left to write.
  if w then
    redis.call('HSET', key, 'freeCpu', w.freeCpu, 'freeMemory', w.freeMemory, 'freeGpuCount', w.freeGpus,
      'status', w.status, 'resourceVersion', w.version)
  end
end

return out
