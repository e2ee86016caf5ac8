/**
 * Drover's Redis store: the typed face of the Lua scripts and the reads replicas and routers need.
 * Redis is the source of truth; every capacity change goes through `commitBatch` or
 * `registerWorker`, both fenced by the shard epoch.
 */
import type { Redis } from 'ioredis';
import type { WorkerRecord, WorkerSpec, WorkerStatus } from '../../actors/capacity.js';
import { KeySpace } from './keys.js';
import { containerFromHash, hashFromPairs, workerFromHash, type ContainerRecord } from './records.js';
import { runScript } from './scripts.js';

/** Most ops one commit_batch call carries (the script enforces the same bound). */
export const MAX_BATCH_OPS = 1000;

export interface StoreOptions {
  readonly prefix: string;
  /** Entries kept per shard history stream (approximate trim); 0 disables the history. */
  readonly historyCap: number;
  /** Seconds a released container's record is kept; 0 keeps it forever. */
  readonly releasedRetentionSeconds: number;
}

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
  /** The router's id of the client request; stored so a retry recognises its own placement. */
  readonly nonce: string;
}
export interface ReleaseOp {
  readonly kind: 'release';
  readonly containerId: string;
  readonly workerId: string;
  readonly expectedVersion: number;
}
export interface StatusOp {
  readonly kind: 'status';
  readonly workerId: string;
  readonly expectedVersion: number;
  readonly status: WorkerStatus;
}
export type BatchOp = PlaceOp | ReleaseOp | StatusOp;

export const OUTCOME_CODES = [
  'PLACED',
  'ALREADY_PLACED',
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
] as const;
export type OutcomeCode = (typeof OUTCOME_CODES)[number];

export interface OpOutcome {
  readonly code: OutcomeCode;
  /** The worker's ResourceVersion after the op (or the current one, for RV_CONFLICT). */
  readonly version: number;
  /** Code-specific: "worker nonce" (ALREADY_PLACED), the holding worker (WRONG_WORKER), freed "cpu memory gpu" (RELEASED). */
  readonly extra: string;
}

export type BatchResult =
  | { readonly fenced: true; readonly currentEpoch: number }
  | { readonly fenced: false; readonly outcomes: readonly OpOutcome[] };

export type RegisterOutcome =
  | { readonly outcome: 'fenced'; readonly currentEpoch: number }
  | { readonly outcome: 'created' | 'exists' | 'spec-mismatch'; readonly worker: WorkerRecord };

const outcomeCodes = new Set<string>(OUTCOME_CODES);

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

  /** Bump the shard's epoch if the caller still holds `leaseValue`; 0 when it does not. */
  async takeEpoch(shard: number, leaseValue: string): Promise<number> {
    const epoch = Number(await runScript(this.redis, 'take_epoch', [this.keys.lease(shard), this.keys.epoch(shard)], [leaseValue]));
    if (!Number.isSafeInteger(epoch) || epoch < 0) throw new Error(`take_epoch returned ${epoch}`);
    return epoch;
  }

  async currentEpoch(shard: number): Promise<number> {
    return Number((await this.redis.get(this.keys.epoch(shard))) ?? 0);
  }

  async registerWorker(epoch: number, spec: WorkerSpec, status: WorkerStatus): Promise<RegisterOutcome> {
    const k = this.keys;
    const reply = (await runScript(
      this.redis,
      'register_worker',
      [k.epoch(spec.shard), k.worker(spec.shard, spec.id), k.shardWorkers(spec.shard), k.history(spec.shard)],
      [epoch, this.options.historyCap, spec.id, spec.shard, spec.cpu, spec.memory, spec.gpu ?? '', spec.gpuCount, spec.pool ?? '', status],
    )) as unknown[];
    const code = reply[0];
    if (code === 'FENCED') return { outcome: 'fenced', currentEpoch: Number(reply[1]) };
    const worker = workerFromHash(hashFromPairs(reply, 1));
    if (code === 'CREATED') return { outcome: 'created', worker };
    if (code === 'EXISTS') return { outcome: 'exists', worker };
    if (code === 'SPEC_MISMATCH') return { outcome: 'spec-mismatch', worker };
    throw new Error(`register_worker returned unknown code ${String(code)}`);
  }

  /** Apply up to MAX_BATCH_OPS ops of one shard atomically, fenced by `epoch`. */
  async commitBatch(shard: number, epoch: number, ops: readonly BatchOp[]): Promise<BatchResult> {
    if (ops.length === 0 || ops.length > MAX_BATCH_OPS) throw new Error(`commit batch of ${ops.length} ops (1..${MAX_BATCH_OPS})`);
    const k = this.keys;
    const keys: string[] = [k.epoch(shard), k.history(shard)];
    const args: (string | number)[] = [epoch, shard, this.options.historyCap, this.options.releasedRetentionSeconds, ops.length];
    for (const op of ops) {
      const workerKey = k.worker(shard, op.workerId);
      if (op.kind === 'status') {
        keys.push(workerKey, workerKey, workerKey);
        args.push('S', '', op.workerId, op.expectedVersion, op.status, '', '', 0, '');
      } else {
        keys.push(workerKey, k.workerContainers(shard, op.workerId), k.container(op.containerId));
        if (op.kind === 'place') args.push('P', op.containerId, op.workerId, op.expectedVersion, op.cpu, op.memory, op.gpuCount, op.deadline, op.nonce);
        else args.push('R', op.containerId, op.workerId, op.expectedVersion, '', '', '', 0, '');
      }
    }
    const reply = (await runScript(this.redis, 'commit_batch', keys, args)) as unknown[];
    if (reply[0] === 'FENCED') return { fenced: true, currentEpoch: Number(reply[1]) };
    if (reply[0] !== 'OK' || reply.length !== 1 + 3 * ops.length) {
      throw new Error(`commit_batch returned a malformed reply of ${reply.length} items for ${ops.length} ops`);
    }
    const outcomes: OpOutcome[] = [];
    for (let i = 0; i < ops.length; i += 1) {
      const code = String(reply[1 + 3 * i]);
      if (!outcomeCodes.has(code)) throw new Error(`commit_batch returned unknown code ${code}`);
      outcomes.push({ code: code as OutcomeCode, version: Number(reply[2 + 3 * i]), extra: String(reply[3 + 3 * i]) });
    }
    return { fenced: false, outcomes };
  }

  /** Refresh this replica's membership (ttlMs 0: leave) and return the live members, sorted. */
  async heartbeat(replicaId: string, ttlMs: number): Promise<string[]> {
    const reply = await runScript(this.redis, 'heartbeat', [this.keys.members()], [replicaId, ttlMs]);
    if (!Array.isArray(reply)) throw new Error('heartbeat returned a non-list');
    return reply.map(String).sort();
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

  async readContainer(containerId: string): Promise<ContainerRecord | null> {
    const hash = await this.redis.hgetall(this.keys.container(containerId));
    return Object.keys(hash).length === 0 ? null : containerFromHash(containerId, hash);
  }

  async workerContainerIds(shard: number, workerId: string): Promise<string[]> {
    return this.redis.smembers(this.keys.workerContainers(shard, workerId));
  }
}
