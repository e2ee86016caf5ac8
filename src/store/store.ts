/**
 * Drover's Redis store: the typed face of the Lua scripts and the reads replicas and routers need.
 * Redis is the source of truth; every capacity change goes through `commitBatch` or
 * `registerWorker`, both fenced by the shard epoch.
 */
import type { Redis } from 'ioredis';
import type { WorkerRecord, WorkerSpec, WorkerStatus } from '../../actors/capacity.js';
import { KeySpace } from './keys.js';
import { containerFromHash, containerFromTombstone, hashFromPairs, workerFromHash, type ContainerRecord } from './records.js';
import { runScript } from './scripts.js';
import { DEFAULT_MAX_WAIT_MS } from '../protocol/limits.js';

/** Most ops one commit_batch call carries (the script enforces the same bound). */
export const MAX_BATCH_OPS = 1000;

export interface StoreOptions {
  readonly prefix: string;
  /** The cluster's shard count: register_workers checks that a worker hashes to its shard. */
  readonly shards: number;
  /** Entries kept per shard history stream (approximate trim); 0 disables the history. */
  readonly historyCap: number;
  /** Seconds a released container's tombstone is kept; 0 keeps it forever. */
  readonly releasedRetentionSeconds: number;
  /** The most containers one shard's backlog may hold (backlog_commit.lua refuses more). */
  readonly maxQueuedPerShard?: number;
}

/** A backlog write of one home shard (see backlog_commit.lua). */
export type BacklogOp =
  | {
      readonly kind: 'queue';
      readonly containerId: string;
      readonly requestKey: string;
      readonly priority: number;
      /** It expires this long after the queue time (Redis's clock). */
      readonly maxWaitMs: number;
      readonly cpu: number;
      readonly memory: number;
      readonly gpu: string | null;
      readonly gpuCount: number;
      readonly pool: string | null;
      readonly spec: string;
    }
  /** Forget a container the backlog no longer holds (its record says placed or ended). */
  | { readonly kind: 'drop'; readonly containerId: string }
  /** End a queued container without a placement. */
  | { readonly kind: 'end'; readonly containerId: string; readonly status: 'released' | 'failed'; readonly reason: 'CANCELLED' | 'EXPIRED' };

export const BACKLOG_CODES = ['QUEUED', 'QUEUED_BY', 'PLACED', 'ENDED', 'FULL', 'DROPPED', 'STILL_QUEUED', 'ENDED_NOW', 'NOT_QUEUED'] as const;
export type BacklogCode = (typeof BACKLOG_CODES)[number];
export interface BacklogOutcome {
  readonly code: BacklogCode;
  /** Code-specific; see backlog_commit.lua. */
  readonly extra: string;
  /** The container's seq after the op when it changed its status (a new queued record, an end), else 0. */
  readonly seq: number;
}
export type BacklogResult =
  | { readonly fenced: true; readonly currentEpoch: number }
  | { readonly fenced: false; readonly outcomes: readonly BacklogOutcome[] };
const backlogCodes = new Set<string>(BACKLOG_CODES);

export interface PlaceOp {
  readonly kind: 'place';
  readonly containerId: string;
  readonly workerId: string;
  readonly expectedVersion: number;
  readonly cpu: number;
  readonly memory: number;
  readonly gpuCount: number;
  /** Unix ms after which the write must not happen; 0 for none. */
  readonly deadline: number;
  /** The client's request key (or the router's, when the client sent none); stored so a retry recognises its own placement. */
  readonly requestKey: string;
  /** Command and environment JSON for the worker's agent; none or '' (a queued container keeps its own). */
  readonly spec?: string;
  /** Its priority, maxWaitMs, GPU type and pool, kept should it be requeued (default 0, one hour, none, none). */
  readonly priority?: number;
  readonly maxWaitMs?: number;
  readonly gpu?: string | null;
  readonly pool?: string | null;
}
export interface ReleaseOp {
  readonly kind: 'release';
  readonly containerId: string;
  readonly workerId: string;
  readonly expectedVersion: number;
  /** The status it ends in (default released), why, and its exit code when it exited. */
  readonly final?: 'released' | 'exited' | 'lost';
  readonly reason?: string;
  readonly exitCode?: number;
}
/** A container's status changes without its capacity changing (its agent started it, a stop was asked). */
export interface TransitionOp {
  readonly kind: 'transition';
  readonly containerId: string;
  readonly workerId: string;
  readonly expectedVersion: number;
  readonly from: ReadonlyArray<TransitionFrom>;
  readonly to: TransitionTo;
}
/** The statuses a transition op may move a container from and to (see commit_batch.lua, op T). */
export type TransitionFrom = 'placed' | 'running' | 'unknown';
export type TransitionTo = 'running' | 'stopping' | 'unknown';
/**
 * A placed container's assignment is about to go to its worker's agent (incarnation `incarnation`,
 * which must be the worker's recorded one): it is marked delivered, and can no longer be requeued.
 */
export interface DeliverOp {
  readonly kind: 'deliver';
  readonly containerId: string;
  readonly workerId: string;
  readonly expectedVersion: number;
  readonly incarnation: string;
}
/**
 * The agent incarnation reporting for a worker becomes the worker's, unless another live one holds
 * it. `silent`: the owner has not heard the recorded incarnation for longer than the worker TTL
 * (then a worker that holds no container may change hands).
 */
export interface AgentOp {
  readonly kind: 'agent';
  readonly workerId: string;
  readonly expectedVersion: number;
  readonly incarnation: string;
  readonly silent: boolean;
}
/** A placed container its worker never ran goes back to the queue (the worker was lost). */
export interface RequeueOp {
  readonly kind: 'requeue';
  readonly containerId: string;
  /** The container's home shard (its backlog), recorded for containers.get while it waits. */
  readonly homeShard: number;
  readonly workerId: string;
  readonly expectedVersion: number;
}
/** The container's home shard holds it again: it leaves this shard's requeue outbox. */
export interface OutboxAckOp {
  readonly kind: 'outbox-ack';
  readonly containerId: string;
  readonly workerId: '';
  readonly expectedVersion: 0;
}
export interface StatusOp {
  readonly kind: 'status';
  readonly workerId: string;
  readonly expectedVersion: number;
  readonly status: WorkerStatus;
}
/** The worker leaves its shard: only when it holds no container and is not available. */
export interface RemoveOp {
  readonly kind: 'remove';
  readonly workerId: string;
  readonly expectedVersion: number;
}
export type BatchOp = PlaceOp | ReleaseOp | StatusOp | RemoveOp | TransitionOp | RequeueOp | OutboxAckOp | DeliverOp | AgentOp;

export const OUTCOME_CODES = [
  'PLACED',
  'ALREADY_PLACED',
  'NOT_PLACEABLE',
  'RV_CONFLICT',
  'NO_CAPACITY',
  'NOT_SCHEDULABLE',
  'WORKER_NOT_FOUND',
  'EXPIRED',
  'RELEASED',
  'ALREADY_RELEASED',
  'NOT_FOUND',
  'WRONG_WORKER',
  'STATUS_SET',
  'REMOVED',
  'NOT_REMOVABLE',
  'TRANSITIONED',
  'NOT_IN_STATE',
  'REQUEUED',
  'ACKED',
  'DELIVERED',
  'AGENT_RECORDED',
  'AGENT_CONFLICT',
] as const;
export type OutcomeCode = (typeof OUTCOME_CODES)[number];

export interface OpOutcome {
  readonly code: OutcomeCode;
  /** The worker's ResourceVersion after the op (or the current one, for RV_CONFLICT). */
  readonly version: number;
  /**
   * Code-specific: "worker requestKey" (ALREADY_PLACED), the worker (ALREADY_RELEASED), the holding worker
   * (WRONG_WORKER), freed "cpu memory gpu" (RELEASED), "status S" or "containers N" (NOT_REMOVABLE).
   */
  readonly extra: string;
  /**
   * The container's seq after the op when the op changed its status (PLACED, RELEASED,
   * TRANSITIONED, REQUEUED), else 0: the publisher puts it in the event without reading the record.
   */
  readonly seq: number;
}

export type BatchResult =
  | { readonly fenced: true; readonly currentEpoch: number }
  | { readonly fenced: false; readonly outcomes: readonly OpOutcome[] };

/** What registering one worker came to, in a call that was not fenced. */
export type WorkerRegisterOutcome =
  | { readonly outcome: 'wrong-shard'; readonly shard: number }
  | { readonly outcome: 'created' | 'exists' | 'spec-mismatch'; readonly worker: WorkerRecord };

export type RegisterOutcome = { readonly outcome: 'fenced'; readonly currentEpoch: number } | WorkerRegisterOutcome;

/** What one register_workers call came to: fenced as a whole, or one outcome per worker, in order. */
export type RegisterBatchResult =
  | { readonly fenced: true; readonly currentEpoch: number }
  | { readonly fenced: false; readonly outcomes: readonly WorkerRegisterOutcome[] };

/** Most workers one register_workers call takes (the script refuses more). */
export const MAX_REGISTRATIONS_PER_CALL = 200;

export type HeartbeatResult =
  | { readonly duplicate: false; readonly members: string[] }
  | { readonly duplicate: true; readonly heldForMs: number };

const outcomeCodes = new Set<string>(OUTCOME_CODES);

/** A script's seq item: a whole number from 0 (0: the op changed no container status). */
function seqOf(item: unknown, script: string): number {
  const seq = Number(item);
  if (!Number.isSafeInteger(seq) || seq < 0) throw new Error(`${script} returned a malformed seq ${JSON.stringify(item)}`);
  return seq;
}

export class DroverStore {
  readonly keys: KeySpace;

  constructor(
    readonly redis: Redis,
    readonly options: StoreOptions,
  ) {
    this.keys = new KeySpace(options.prefix);
  }

  /**
   * Record the shard count on first use and refuse to run with another: a worker's shard is a hash
   * of its id modulo the count, so replicas that disagree would look for workers in wrong shards.
   */
  async ensureShardCount(shards: number): Promise<void> {
    await this.redis.hsetnx(this.keys.config(), 'shards', String(shards));
    const stored = Number(await this.redis.hget(this.keys.config(), 'shards'));
    if (stored !== shards) {
      throw new Error(
        `this Redis holds a Drover cluster with ${stored} shards under prefix "${this.options.prefix}", ` +
          `but DROVER_SHARDS is ${shards}; use the same shard count or another prefix`,
      );
    }
  }

  /**
   * Take the shard's lease with `leaseValue` for `ttlMs` and bump its epoch, in one atomic step (see
   * acquire_lease.lua). Idempotent for the same value. The epoch, or 0 when another value holds it.
   */
  async acquireLease(shard: number, leaseValue: string, ttlMs: number): Promise<{ epoch: number; heldForMs: number }> {
    const reply = await runScript(this.redis, 'acquire_lease', [this.keys.lease(shard), this.keys.epoch(shard)], [leaseValue, ttlMs]);
    const [epoch, heldForMs] = Array.isArray(reply) ? reply.map(Number) : [Number.NaN, Number.NaN];
    if (!Number.isSafeInteger(epoch) || epoch! < 0 || !Number.isSafeInteger(heldForMs)) {
      throw new Error(`acquire_lease returned ${JSON.stringify(reply)}`);
    }
    return { epoch: epoch!, heldForMs: heldForMs! };
  }

  async currentEpoch(shard: number): Promise<number> {
    return Number((await this.redis.get(this.keys.epoch(shard))) ?? 0);
  }

  /** Register one worker (see registerWorkers). */
  async registerWorker(epoch: number, spec: WorkerSpec, status: WorkerStatus): Promise<RegisterOutcome> {
    const result = await this.registerWorkers(epoch, spec.shard, [{ spec, status }]);
    return result.fenced ? { outcome: 'fenced', currentEpoch: result.currentEpoch } : result.outcomes[0]!;
  }

  /**
   * Register up to MAX_REGISTRATIONS_PER_CALL workers of one shard in one script call, fenced by
   * `epoch` (register_workers.lua): each has its own outcome, in order.
   */
  async registerWorkers(
    epoch: number,
    shard: number,
    workers: ReadonlyArray<{ readonly spec: WorkerSpec; readonly status: WorkerStatus }>,
  ): Promise<RegisterBatchResult> {
    if (workers.length === 0 || workers.length > MAX_REGISTRATIONS_PER_CALL) {
      throw new Error(`register_workers with ${workers.length} workers (1..${MAX_REGISTRATIONS_PER_CALL})`);
    }
    const k = this.keys;
    const keys: string[] = [k.epoch(shard), k.shardWorkers(shard), k.history(shard)];
    const args: (string | number)[] = [epoch, this.options.historyCap, shard, this.options.shards, workers.length];
    for (const { spec, status } of workers) {
      if (spec.shard !== shard) throw new Error(`worker ${spec.id} is given for shard ${spec.shard}, not ${shard}`);
      keys.push(k.worker(shard, spec.id));
      args.push(spec.id, spec.cpu, spec.memory, spec.gpu ?? '', spec.gpuCount, spec.pool ?? '', status, spec.agent === true ? '1' : '');
    }
    const reply = (await runScript(this.redis, 'register_workers', keys, args)) as unknown[];
    if (reply[0] === 'FENCED') return { fenced: true, currentEpoch: Number(reply[1]) };
    if (reply[0] !== 'DONE' || reply.length !== workers.length + 1) {
      throw new Error(`register_workers answered ${String(reply[0])} with ${reply.length - 1} results for ${workers.length} workers`);
    }
    const outcomes = workers.map(({ spec, status }, index): WorkerRegisterOutcome => {
      const result = reply[index + 1] as unknown[];
      const code = result[0];
      if (code === 'WRONG_SHARD') return { outcome: 'wrong-shard', shard: Number(result[1]) };
      if (code === 'CREATED') {
        if (result.length !== 1) throw new Error(`register_workers answered CREATED with ${result.length - 1} extra items`);
        // The script wrote exactly these fields (see register_workers.lua) and does not send them back.
        const created: WorkerRecord = {
          id: spec.id, shard: spec.shard, cpu: spec.cpu, memory: spec.memory, gpu: spec.gpu, gpuCount: spec.gpuCount, pool: spec.pool,
          freeCpu: spec.cpu, freeMemory: spec.memory, freeGpuCount: spec.gpuCount, status, resourceVersion: 1,
          ...(spec.agent === true ? { agent: true } : {}),
        };
        return { outcome: 'created', worker: created };
      }
      const worker = workerFromHash(hashFromPairs(result, 1));
      if (code === 'EXISTS') return { outcome: 'exists', worker };
      if (code === 'SPEC_MISMATCH') return { outcome: 'spec-mismatch', worker };
      throw new Error(`register_workers answered unknown code ${String(code)}`);
    });
    return { fenced: false, outcomes };
  }

  /** Apply up to MAX_BATCH_OPS ops of one shard atomically, fenced by `epoch`. */
  async commitBatch(shard: number, epoch: number, ops: readonly BatchOp[]): Promise<BatchResult> {
    if (ops.length === 0 || ops.length > MAX_BATCH_OPS) throw new Error(`commit batch of ${ops.length} ops (1..${MAX_BATCH_OPS})`);
    const k = this.keys;
    const keys: string[] = [k.epoch(shard), k.history(shard), k.requeueOutbox(shard), k.backlog(shard)];
    const args: (string | number)[] = [epoch, shard, this.options.historyCap, this.options.releasedRetentionSeconds, ops.length];
    for (const op of ops) {
      if (op.kind === 'outbox-ack') {
        const outbox = k.requeueOutbox(shard);
        keys.push(outbox, outbox, outbox);
        args.push('O', op.containerId, '', 0, '', '', '', 0, '', '', '', '', '', '');
        continue;
      }
      const workerKey = k.worker(shard, op.workerId);
      switch (op.kind) {
        case 'status':
          keys.push(workerKey, workerKey, workerKey);
          args.push('S', '', op.workerId, op.expectedVersion, op.status, '', '', 0, '', '', '', '', '', '');
          break;
        case 'remove':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), k.shardWorkers(shard));
          args.push('X', '', op.workerId, op.expectedVersion, '', '', '', 0, '', '', '', '', '', '');
          break;
        case 'place':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), k.container(op.containerId));
          args.push('P', op.containerId, op.workerId, op.expectedVersion, op.cpu, op.memory, op.gpuCount, op.deadline, op.requestKey, op.spec ?? '', op.priority ?? 0, op.maxWaitMs ?? DEFAULT_MAX_WAIT_MS, op.gpu ?? '', op.pool ?? '');
          break;
        case 'release':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), k.container(op.containerId));
          args.push('R', op.containerId, op.workerId, op.expectedVersion, op.final ?? '', op.reason ?? '', op.exitCode ?? '', 0, '', '', '', '', '', '');
          break;
        case 'transition':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), k.container(op.containerId));
          args.push('T', op.containerId, op.workerId, op.expectedVersion, op.from.join(','), op.to, '', 0, '', '', '', '', '', '');
          break;
        case 'requeue':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), k.container(op.containerId));
          args.push('Q', op.containerId, op.workerId, op.expectedVersion, '', '', '', 0, '', '', op.homeShard, '', '', '');
          break;
        case 'deliver':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), k.container(op.containerId));
          args.push('D', op.containerId, op.workerId, op.expectedVersion, op.incarnation, '', '', 0, '', '', '', '', '', '');
          break;
        case 'agent':
          keys.push(workerKey, k.workerContainers(shard, op.workerId), workerKey);
          args.push('A', '', op.workerId, op.expectedVersion, op.incarnation, op.silent ? '1' : '', '', 0, '', '', '', '', '', '');
          break;
      }
    }
    const reply = (await runScript(this.redis, 'commit_batch', keys, args)) as unknown[];
    if (reply[0] === 'FENCED') return { fenced: true, currentEpoch: Number(reply[1]) };
    if (reply[0] !== 'OK' || reply.length !== 1 + 4 * ops.length) {
      throw new Error(`commit_batch returned a malformed reply of ${reply.length} items for ${ops.length} ops`);
    }
    const outcomes: OpOutcome[] = [];
    for (let i = 0; i < ops.length; i += 1) {
      const code = String(reply[1 + 4 * i]);
      if (!outcomeCodes.has(code)) throw new Error(`commit_batch returned unknown code ${code}`);
      outcomes.push({ code: code as OutcomeCode, version: Number(reply[2 + 4 * i]), extra: String(reply[3 + 4 * i]), seq: seqOf(reply[4 + 4 * i], 'commit_batch') });
    }
    return { fenced: false, outcomes };
  }

  /** Apply up to MAX_BATCH_OPS backlog writes of home shard `shard` atomically, fenced by `epoch`. */
  async commitBacklog(shard: number, epoch: number, ops: readonly BacklogOp[]): Promise<BacklogResult> {
    if (ops.length === 0 || ops.length > MAX_BATCH_OPS) throw new Error(`backlog batch of ${ops.length} ops (1..${MAX_BATCH_OPS})`);
    const k = this.keys;
    const keys: string[] = [k.epoch(shard), k.backlog(shard)];
    const args: (string | number)[] = [epoch, shard, this.options.maxQueuedPerShard ?? 1_000_000, this.options.releasedRetentionSeconds, ops.length];
    for (const op of ops) {
      keys.push(k.container(op.containerId));
      switch (op.kind) {
        case 'queue':
          args.push('Q', op.containerId, op.requestKey, op.priority, op.maxWaitMs, op.cpu, op.memory, op.gpu ?? '', op.gpuCount, op.pool ?? '', op.spec);
          break;
        case 'drop':
          args.push('D', op.containerId);
          break;
        case 'end':
          args.push('E', op.containerId, '', op.status, op.reason, '', '', '', '', '', '');
          break;
      }
    }
    const reply = (await runScript(this.redis, 'backlog_commit', keys, args)) as unknown[];
    if (reply[0] === 'FENCED') return { fenced: true, currentEpoch: Number(reply[1]) };
    if (reply[0] !== 'OK' || reply.length !== 1 + 3 * ops.length) {
      throw new Error(`backlog_commit returned a malformed reply of ${reply.length} items for ${ops.length} ops`);
    }
    const outcomes: BacklogOutcome[] = [];
    for (let i = 0; i < ops.length; i += 1) {
      const code = String(reply[1 + 3 * i]);
      if (!backlogCodes.has(code)) throw new Error(`backlog_commit returned unknown code ${code}`);
      outcomes.push({ code: code as BacklogCode, extra: String(reply[2 + 3 * i]), seq: seqOf(reply[3 + 3 * i], 'backlog_commit') });
    }
    return { fenced: false, outcomes };
  }

  /**
   * The ids in a shard's backlog set with their records, read after the epoch bump (so no earlier
   * owner's write is missed). An id whose record no longer says queued comes back with that record
   * (or null): the caller drops it from the set.
   */
  async loadBacklog(shard: number): Promise<Array<{ id: string; record: ContainerRecord | null }>> {
    const ids = await this.redis.zrange(this.keys.backlog(shard), '0', '-1');
    const records: Array<{ id: string; record: ContainerRecord | null }> = [];
    for (let start = 0; start < ids.length; start += MAX_BATCH_OPS) {
      const slice = ids.slice(start, start + MAX_BATCH_OPS);
      const read = await this.readContainers(slice);
      slice.forEach((id, index) => records.push({ id, record: read[index] ?? null }));
    }
    return records;
  }

  /**
   * One page of a shard's backlog set, in queue-time order: at most `count` ids from index `start`
   * (the owner's reconciliation walks the set page by page, so one read stays bounded).
   */
  async backlogPage(shard: number, start: number, count: number): Promise<string[]> {
    return this.redis.zrange(this.keys.backlog(shard), String(start), String(start + count - 1));
  }

  /** For each id, whether it is in the shard's backlog set (one ZMSCORE, at most MAX_BATCH_OPS ids). */
  async inBacklog(shard: number, ids: readonly string[]): Promise<boolean[]> {
    if (ids.length === 0) return [];
    if (ids.length > MAX_BATCH_OPS) throw new Error(`backlog membership of ${ids.length} ids (at most ${MAX_BATCH_OPS})`);
    const scores = await this.redis.zmscore(this.keys.backlog(shard), ...ids);
    return scores.map((score) => score !== null);
  }

  /** For each id: whether it is in the shard's backlog set, and its record (one round trip each, at most MAX_BATCH_OPS ids). */
  async backlogMembers(shard: number, ids: readonly string[]): Promise<Array<{ id: string; inSet: boolean; record: ContainerRecord | null }>> {
    if (ids.length === 0) return [];
    if (ids.length > MAX_BATCH_OPS) throw new Error(`backlog membership of ${ids.length} ids (at most ${MAX_BATCH_OPS})`);
    const scores = await this.redis.zmscore(this.keys.backlog(shard), ...ids);
    const records = await this.readContainers(ids);
    return ids.map((id, index) => ({ id, inSet: scores[index] !== null, record: records[index] ?? null }));
  }

  /** How many containers each shard's backlog set holds (one pipelined round trip). */
  async backlogSizes(): Promise<number[]> {
    const pipeline = this.redis.pipeline();
    for (let shard = 0; shard < this.options.shards; shard += 1) pipeline.zcard(this.keys.backlog(shard));
    return ((await pipeline.exec()) ?? []).map(([error, size]) => {
      if (error) throw error;
      return Number(size);
    });
  }

  /**
   * Refresh this replica's membership (ttlMs 0: leave) and return the live members, sorted; or the
   * time another live process with the same replica id (another incarnation) still holds the id.
   */
  async heartbeat(replicaId: string, incarnation: string, ttlMs: number): Promise<HeartbeatResult> {
    const reply = await runScript(this.redis, 'heartbeat', [this.keys.members()], [replicaId, ttlMs, incarnation]);
    if (!Array.isArray(reply) || (reply[0] !== 'OK' && reply[0] !== 'DUPLICATE')) throw new Error(`heartbeat returned ${JSON.stringify(reply)}`);
    if (reply[0] === 'DUPLICATE') return { duplicate: true, heldForMs: Number(reply[1]) };
    return { duplicate: false, members: [...new Set(reply.slice(1).map(String))].sort() };
  }

  async readWorker(shard: number, workerId: string): Promise<WorkerRecord | null> {
    const hash = await this.redis.hgetall(this.keys.worker(shard, workerId));
    return Object.keys(hash).length === 0 ? null : workerFromHash(hash);
  }

  /** Every worker of a shard, read after the epoch bump so no earlier owner's write is missed. */
  async loadShard(shard: number): Promise<WorkerRecord[]> {
    const ids = await this.redis.smembers(this.keys.shardWorkers(shard));
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hgetall(this.keys.worker(shard, id));
    const replies = (await pipeline.exec()) ?? [];
    const workers: WorkerRecord[] = [];
    for (const [error, hash] of replies) {
      if (error) throw error;
      const record = hash as Record<string, string>;
      if (Object.keys(record).length > 0) workers.push(workerFromHash(record));
    }
    return workers;
  }

  async listShardWorkerIds(shard: number): Promise<string[]> {
    return (await this.redis.smembers(this.keys.shardWorkers(shard))).sort();
  }

  /** A live container (a hash) or a released one (a tombstone string; see commit_batch.lua). */
  async readContainer(containerId: string): Promise<ContainerRecord | null> {
    const key = this.keys.container(containerId);
    let hash: Record<string, string>;
    try {
      hash = await this.redis.hgetall(key);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('WRONGTYPE')) throw error;
      const tombstone = await this.redis.get(key);
      return tombstone === null ? null : containerFromTombstone(containerId, tombstone);
    }
    return Object.keys(hash).length === 0 ? null : containerFromHash(containerId, hash);
  }

  /** Many containers at once (two pipelined round trips at most): null for an unknown id. */
  async readContainers(containerIds: readonly string[]): Promise<Array<ContainerRecord | null>> {
    if (containerIds.length === 0) return [];
    const hashes = (await containerIds.reduce((p, id) => p.hgetall(this.keys.container(id)), this.redis.pipeline()).exec()) ?? [];
    const records: Array<ContainerRecord | null> = containerIds.map(() => null);
    const tombstoneAt: number[] = [];
    hashes.forEach(([error, hash], index) => {
      const id = containerIds[index]!;
      if (error) {
        if (!error.message.startsWith('WRONGTYPE')) throw error;
        tombstoneAt.push(index);
      } else if (Object.keys(hash as object).length > 0) {
        records[index] = containerFromHash(id, hash as Record<string, string>);
      }
    });
    if (tombstoneAt.length > 0) {
      const pipeline = this.redis.pipeline();
      for (const index of tombstoneAt) pipeline.get(this.keys.container(containerIds[index]!));
      const values = (await pipeline.exec()) ?? [];
      values.forEach(([error, value], i) => {
        if (error) throw error;
        const index = tombstoneAt[i]!;
        if (value !== null) records[index] = containerFromTombstone(containerIds[index]!, String(value));
      });
    }
    return records;
  }

  /** The ids in a shard's requeue outbox (see commit_batch.lua, op Q). */
  async requeueOutbox(shard: number): Promise<string[]> {
    return this.redis.smembers(this.keys.requeueOutbox(shard));
  }

  async workerContainerIds(shard: number, workerId: string): Promise<string[]> {
    return this.redis.smembers(this.keys.workerContainers(shard, workerId));
  }
}
