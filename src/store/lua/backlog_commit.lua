#!lua
--[[
  backlog_commit: apply one home shard's batch of backlog writes, fenced by that shard's epoch.
  The backlog of shard h holds the queued containers whose id hashes to h; the replica holding h's
  lease owns it, exactly as it owns h's workers, so no other writer needs to exist.

  A queued container is the container's own record (a hash with status "queued"), plus its id in
  the shard's backlog sorted set (scored by the time it was queued) so the next owner finds it. The
  record is the one commit_batch.lua turns into a placement: a queued container is placed by
  commit_batch only with the request key that queued it, and only while it is still queued, so a
  request is placed at most once however many owners try; and it is never removed from the set
  before its record says it is placed or ended, so it is never lost.

  Two phases, as in commit_batch.lua: phase 1 reads, type-checks and decides everything and writes
  nothing; phase 2 writes what phase 1 decided.

  Input:
    KEYS[1]        the shard's epoch key          {<prefix>:s<h>}:epoch
    KEYS[2]        the shard's backlog            {<prefix>:s<h>}:backlog   (sorted set)
    KEYS[3+i]      op i's container record         <prefix>:container:<id>
    ARGV[1]        the writer's epoch
    ARGV[2]        the shard number h
    ARGV[3]        the most containers this shard's backlog may hold (1 .. 10,000,000)
    ARGV[4]        seconds to keep an ended container's tombstone; 0 keeps it forever
    ARGV[5]        op count n (at most 1000)
    ARGV[6 ..]     the ops, one after the other; each starts with its kind and id:
      'Q', id, requestKey, priority, maxWaitMs (it expires that long after the queue time), cpu,
           memory, gpu type or '', gpuCount, pool or '', command/env JSON or ''   (11 fields) queue
      'D', id                                                                    (2 fields)  drop:
           forget the id (placed or ended elsewhere); drops come by the hundred after placements,
           so they carry nothing else
      'E', id, '', the status it ends in ('released' or 'failed'), the reason ('CANCELLED',
           'EXPIRED'), and six '' (11 fields)                                              end:
           only from 'queued'; its tombstone (format in commit_batch.lua) keeps the request.
           A record that is not queued (placed, or already ended) leaves the set instead, as a
           drop would, so the caller never writes a drop after it
    A malformed op fails the whole batch before anything is written.

  seq: a queue op that writes a new record sets its `seq` to 1, and an end sets the tombstone's to
  the record's plus one (see commit_batch.lua: every status write adds one); a queue op that finds
  the record already queued by its request key (a retry, or a requeue whose record commit_batch's
  Q wrote and counted) changes no status and leaves it alone.

  Output:
    {'FENCED', currentEpoch}      nothing was written
    {'OK', code_0, extra_0, seq_0, ...}  three items per op, in order; seq is the container's new
                                  seq when the op changed its status (QUEUED of a new record,
                                  ENDED_NOW), else 0
      QUEUED        extra = queuedAt; new, or already queued by the same request key (idempotent)
      QUEUED_BY     extra = the other request key that queued it; nothing written
      PLACED        extra = "<worker> <requestKey>" it is placed (or was, and is released since)
      ENDED         extra = "<status> <requestKey>": it ended without a placement (cancelled, expired)
      FULL          the backlog holds ARGV[3] containers; nothing written
      DROPPED       Q's id left the set (or was not in it)
      STILL_QUEUED  D refused: the record still says queued (it must not be forgotten)
      ENDED_NOW     E wrote the tombstone; extra = queuedAt
      NOT_QUEUED    E refused: extra = the status the record holds ('none' if there is none);
                    the id left the set (or was not in it)
]]

local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or '0'}
end

local shard = ARGV[2]
local maxQueued = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
if n == nil or n < 0 or n > 1000 or maxQueued == nil or maxQueued < 1 or retention == nil or #KEYS ~= 2 + n then
  return redis.error_reply('ERR backlog_commit: malformed batch')
end

local function whole(text, min)
  local value = tonumber(text)
  return value ~= nil and value == math.floor(value) and value >= min and value < 2^53
end
local function spaceless(text)
  return text ~= '' and not string.find(text, ' ', 1, true)
end

-- ---------------------------------------------------------------- phase 0: the ops are well formed
-- Where each op's fields start in ARGV (a drop has 2, the others 11).
local bases = {}
local cursor = 6
for i = 0, n - 1 do
  local base = cursor
  bases[i] = base
  local kind = ARGV[base]
  cursor = base + (kind == 'D' and 2 or 11)
  if cursor - 1 > #ARGV then
    return redis.error_reply('ERR backlog_commit: malformed batch')
  end
  local ok = spaceless(ARGV[base + 1])
  if kind == 'Q' then
    local priority = tonumber(ARGV[base + 3])
    ok = ok and spaceless(ARGV[base + 2]) and priority ~= nil and priority == math.floor(priority)
      and whole(ARGV[base + 4], 1) and whole(ARGV[base + 5], 1) and whole(ARGV[base + 6], 1) and whole(ARGV[base + 8], 0)
  elseif kind == 'E' then
    ok = ok and (ARGV[base + 3] == 'released' or ARGV[base + 3] == 'failed') and spaceless(ARGV[base + 4])
  elseif kind ~= 'D' then
    ok = false
  end
  if not ok then
    return redis.error_reply('ERR backlog_commit: malformed op ' .. i .. ' (' .. tostring(kind) .. ')')
  end
end
if cursor - 1 ~= #ARGV then
  return redis.error_reply('ERR backlog_commit: malformed batch')
end

local found = redis.call('TYPE', KEYS[2]).ok
if found ~= 'none' and found ~= 'zset' then
  return redis.error_reply('ERR backlog_commit: key ' .. KEYS[2] .. ' is a ' .. found .. ', not a zset')
end

local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- ---------------------------------------------------------------- phase 1: read and decide
-- A record as this batch sees it: read once, then updated by the batch's own ops.
local records = {}
local function load(key)
  local r = records[key]
  if r == nil then
    local kind = redis.call('TYPE', key).ok
    if kind == 'none' then
      r = {status = 'none'}
    elseif kind == 'hash' then
      local v = redis.call('HMGET', key, 'status', 'workerId', 'requestKey', 'queuedAt', 'cpu', 'memory', 'gpuCount', 'seq')
      r = {status = v[1] or 'none', workerId = v[2] or '-', requestKey = v[3] or '', queuedAt = v[4] or '0',
        cpu = v[5], memory = v[6], gpus = v[7], seq = tonumber(v[8]) or 0}
    elseif kind == 'string' then
      local f = {}
      for field in string.gmatch(redis.call('GET', key), '%S+') do f[#f + 1] = field end
      r = {status = f[1] or 'released', workerId = f[2] or '-', requestKey = (f[9] ~= '-' and f[9]) or ''}
    else
      return nil, redis.error_reply('ERR backlog_commit: key ' .. key .. ' is a ' .. kind)
    end
    records[key] = r
  end
  return r, nil
end

-- Only a queue op needs the backlog's size (drops come by the hundred after placements).
local size = nil
local out = {'OK'}
local write = {}
local function reply(code, extra, seq)
  out[#out + 1] = code
  out[#out + 1] = extra
  out[#out + 1] = seq or 0
end

for i = 0, n - 1 do
  local key = KEYS[3 + i]
  local base = bases[i]
  local kind, id, requestKey = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local r, failure
  if kind == 'D' and records[key] == nil then
    -- A drop only needs to know whether the record still says queued: one field, not seven.
    local found = redis.call('TYPE', key).ok
    if found == 'hash' then
      r = {status = redis.call('HGET', key, 'status') or 'none'}
    elseif found == 'none' or found == 'string' then
      r = {status = found == 'none' and 'none' or 'ended'}
    else
      return redis.error_reply('ERR backlog_commit: key ' .. key .. ' is a ' .. found)
    end
  else
    r, failure = load(key)
    if failure then return failure end
  end
  if kind == 'Q' and size == nil then size = redis.call('ZCARD', KEYS[2]) end
  if kind == 'Q' then
    if r.status == 'queued' then
      if r.requestKey == requestKey then
        write[i] = 'requeue'
        reply('QUEUED', r.queuedAt)
      else
        reply('QUEUED_BY', r.requestKey)
      end
    elseif r.status ~= 'none' and r.workerId == '-' then
      reply('ENDED', r.status .. ' ' .. r.requestKey)
    elseif r.status ~= 'none' then
      reply('PLACED', r.workerId .. ' ' .. r.requestKey)
    elseif size >= maxQueued then
      reply('FULL', '')
    else
      size = size + 1
      write[i] = 'queue'
      -- A new record: its first status write (an id used again after its tombstone expired starts over).
      records[key] = {status = 'queued', workerId = '-', requestKey = requestKey, queuedAt = tostring(nowMs),
        cpu = ARGV[base + 5], memory = ARGV[base + 6], gpus = ARGV[base + 8], seq = 1}
      reply('QUEUED', tostring(nowMs), 1)
    end
  elseif kind == 'D' then
    if r.status == 'queued' then
      reply('STILL_QUEUED', '')
    else
      write[i] = 'drop'
      reply('DROPPED', '')
    end
  else
    if r.status ~= 'queued' then
      -- Not queued: whatever holds it (a placement, an earlier end whose reply was lost) is not
      -- the backlog, so its id leaves the set here, as a drop (D) would take it out.
      write[i] = 'drop'
      reply('NOT_QUEUED', r.status)
    else
      write[i] = 'end'
      local status, reason = ARGV[base + 3], ARGV[base + 4]
      -- The tombstone keeps the whole request (format in commit_batch.lua): nothing shown is lost.
      local kept = redis.call('HMGET', key, 'priority', 'gpu', 'pool', 'maxWaitMs', 'expiresAt', 'spec')
      local maxWait = kept[4] or ((tonumber(kept[5]) and tonumber(r.queuedAt)) and (tonumber(kept[5]) - tonumber(r.queuedAt)) or '-')
      write[-1 - i] = status .. ' - ' .. shard .. ' ' .. r.cpu .. ' ' .. r.memory .. ' ' .. r.gpus .. ' 0 ' .. nowMs
        .. ' ' .. (r.requestKey ~= '' and r.requestKey or '-') .. ' ' .. reason .. ' ' .. r.queuedAt .. ' - 0'
        .. ' ' .. (kept[1] or '0') .. ' ' .. ((kept[2] or '') ~= '' and kept[2] or '-') .. ' ' .. ((kept[3] or '') ~= '' and kept[3] or '-')
        .. ' ' .. maxWait .. ' ' .. ((kept[6] or '') ~= '' and redis.sha1hex(kept[6]) or '-') .. ' ' .. (r.seq + 1)
      records[key] = {status = status, workerId = '-', requestKey = r.requestKey, seq = r.seq + 1}
      reply('ENDED_NOW', r.queuedAt, r.seq + 1)
    end
  end
end

-- ---------------------------------------------------------------- phase 2: write what was decided
-- Drops (they come by the hundred after placements) leave the set in one ZREM per run of them;
-- a run ends before any other write, so the set sees the ops in their order.
local dropping = {}
local function flushDrops()
  if #dropping > 0 then
    redis.call('ZREM', KEYS[2], unpack(dropping))
    dropping = {}
  end
end
for i = 0, n - 1 do
  local action = write[i]
  if action == 'drop' then
    dropping[#dropping + 1] = ARGV[bases[i] + 1]
    -- unpack() has a stack limit: at most 500 members per ZREM.
    if #dropping >= 500 then flushDrops() end
  elseif action then
    flushDrops()
    local key = KEYS[3 + i]
    local base = bases[i]
    local id = ARGV[base + 1]
    if action == 'queue' then
      local fields = {'status', 'queued', 'requestKey', ARGV[base + 2], 'home', shard, 'queuedAt', nowMs,
        'priority', ARGV[base + 3], 'expiresAt', nowMs + tonumber(ARGV[base + 4]), 'cpu', ARGV[base + 5], 'memory', ARGV[base + 6],
        'gpu', ARGV[base + 7], 'gpuCount', ARGV[base + 8], 'pool', ARGV[base + 9], 'seq', 1}
      if ARGV[base + 10] ~= '' then
        fields[#fields + 1] = 'spec'
        fields[#fields + 1] = ARGV[base + 10]
      end
      redis.call('HSET', key, unpack(fields))
      redis.call('ZADD', KEYS[2], nowMs, id)
    elseif action == 'requeue' then
      -- The same request again: make sure the set has it (a retry after a half-finished requeue).
      redis.call('ZADD', KEYS[2], 'NX', records[key].queuedAt, id)
    elseif action == 'end' then
      if retention > 0 then
        redis.call('SET', key, write[-1 - i], 'EX', retention)
      else
        redis.call('SET', key, write[-1 - i])
      end
      redis.call('ZREM', KEYS[2], id)
    end
  end
end
flushDrops()

return out
