/**
 * Converting Redis hashes into typed records. Data crossing this boundary is checked: a hash that
 * does not parse is reported as corrupt instead of flowing on as NaN.
 */
import { isWorkerStatus, type WorkerRecord } from '../../actors/capacity.js';
import { isContainerStatus, type ContainerReason, type ContainerStatus } from '../../actors/container-machine.js';

export interface ContainerRecord {
  readonly id: string;
  readonly status: ContainerStatus;
  /** The worker it is (or was) placed on; null while queued or when it ended without a placement. */
  readonly workerId: string | null;
  /** The worker's shard once placed; before that (and if never placed), its home shard's backlog. */
  readonly shard: number;
  readonly cpu: number;
  readonly memory: number;
  readonly gpuCount: number;
  /**
   * Unix ms (Redis clock) of each step; null for steps it has not taken. queuedAt is null for a
   * container that was never queued (placed at once when submitted).
   */
  readonly queuedAt: number | null;
  readonly placedAt: number | null;
  /** When its worker's agent confirmed it runs. */
  readonly runningAt: number | null;
  /**
   * When its assignment was first sent to its worker's agent (null: never, so it cannot be running
   * and may be requeued). Only live records carry it.
   */
  readonly deliveredAt?: number | null;
  readonly endedAt: number | null;
  /** The exit code, when it exited (or exited while stopping). */
  readonly exitCode: number | null;
  /** Why it ended (released, failed or lost). */
  readonly reason: ContainerReason | null;
  /** Its priority (null only in a tombstone written before tombstones kept it), and while queued when it expires. */
  readonly priority: number | null;
  readonly expiresAt: number | null;
  /** How long it may wait in the backlog, as submitted; null when the record does not say. */
  readonly maxWaitMs: number | null;
  /** The request key of the submit that queued or placed it (the client's, or one its router made up). */
  readonly requestKey: string;
  /** Command and environment JSON for its worker's agent ('' when none, and in a tombstone). */
  readonly spec: string;
  /**
   * A tombstone's digest of that JSON instead (SHA-1 hex; null when it had none); undefined for a
   * live record, whose `spec` is whole, and for a tombstone written before tombstones kept it.
   */
  readonly specDigest?: string | null;
  /** What it asks for beyond cpu, memory and GPU count. */
  readonly gpu: string | null;
  readonly pool: string | null;
  /**
   * How many status writes the record has seen (every one adds one; see commit_batch.lua). 0 for a
   * record no version that counts has written since it was created (kept from before the count).
   */
  readonly seq: number;
}

export class CorruptRecordError extends Error {
  constructor(what: string, field: string, value: unknown) {
    super(`corrupt ${what}: field ${field} is ${JSON.stringify(value)}`);
    this.name = 'CorruptRecordError';
  }
}

function integer(what: string, hash: Record<string, string>, field: string): number {
  const raw = hash[field];
  const value = raw === undefined ? Number.NaN : Number(raw);
  if (!Number.isSafeInteger(value)) throw new CorruptRecordError(what, field, raw);
  return value;
}

function text(what: string, hash: Record<string, string>, field: string): string {
  const raw = hash[field];
  if (raw === undefined) throw new CorruptRecordError(what, field, raw);
  return raw;
}

/** Redis replies to HGETALL with an object; scripts reply with a flat [field, value, ...] list. */
export function hashFromPairs(pairs: readonly unknown[], start = 0): Record<string, string> {
  const hash: Record<string, string> = {};
  for (let i = start; i + 1 < pairs.length; i += 2) hash[String(pairs[i])] = String(pairs[i + 1]);
  return hash;
}

export function workerFromHash(hash: Record<string, string>): WorkerRecord {
  const what = `worker ${hash.id ?? '?'}`;
  const status = hash.status;
  if (!isWorkerStatus(status)) throw new CorruptRecordError(what, 'status', status);
  const gpu = text(what, hash, 'gpu');
  const pool = text(what, hash, 'pool');
  return {
    ...(hash.agent === '1' ? { agent: true } : {}),
    id: text(what, hash, 'id'),
    shard: integer(what, hash, 'shard'),
    cpu: integer(what, hash, 'cpu'),
    memory: integer(what, hash, 'memory'),
    gpu: gpu === '' ? null : gpu,
    gpuCount: integer(what, hash, 'gpuCount'),
    pool: pool === '' ? null : pool,
    freeCpu: integer(what, hash, 'freeCpu'),
    freeMemory: integer(what, hash, 'freeMemory'),
    freeGpuCount: integer(what, hash, 'freeGpuCount'),
    status,
    resourceVersion: integer(what, hash, 'resourceVersion'),
  };
}

function optionalInteger(what: string, hash: Record<string, string>, field: string): number | null {
  const raw = hash[field];
  if (raw === undefined || raw === '' || raw === '0' || raw === '-') return null;
  return integer(what, hash, field);
}

const REASONS: ReadonlySet<string> = new Set(['EXPIRED', 'CANCELLED', 'RELEASED', 'WORKER_LOST', 'NOT_RUNNING']);

export function containerFromHash(id: string, hash: Record<string, string>, what = `container ${id}`): ContainerRecord {
  const status = hash.status;
  if (!isContainerStatus(status)) throw new CorruptRecordError(what, 'status', status);
  const workerId = hash.workerId === undefined || hash.workerId === '-' || status === 'queued' ? null : hash.workerId;
  const shard = workerId === null ? hash.home ?? hash.shard : hash.shard;
  const reason = hash.reason === undefined || hash.reason === '-' ? null : hash.reason;
  if (reason !== null && !REASONS.has(reason)) throw new CorruptRecordError(what, 'reason', reason);
  return {
    id,
    status,
    workerId,
    shard: integer(what, { shard: shard ?? '' }, 'shard'),
    cpu: integer(what, hash, 'cpu'),
    memory: integer(what, hash, 'memory'),
    gpuCount: integer(what, hash, 'gpuCount'),
    // Only a container that went through a backlog has a home; one placed at once has a queuedAt
    // too (its submit time, kept for a requeue), but it was never queued.
    queuedAt: hash.home === undefined ? null : optionalInteger(what, hash, 'queuedAt'),
    placedAt: status === 'queued' ? null : optionalInteger(what, hash, 'placedAt'),
    runningAt: status === 'queued' ? null : optionalInteger(what, hash, 'runningAt'),
    deliveredAt: status === 'queued' ? null : optionalInteger(what, hash, 'deliveredAt'),
    endedAt: optionalInteger(what, hash, 'endedAt'),
    exitCode: hash.exitCode === undefined || hash.exitCode === '' ? null : integer(what, hash, 'exitCode'),
    reason: reason as ContainerReason | null,
    priority: hash.priority === undefined ? null : integer(what, hash, 'priority'),
    expiresAt: status === 'queued' ? optionalInteger(what, hash, 'expiresAt') : null,
    maxWaitMs: maxWaitOf(what, hash),
    requestKey: hash.requestKey ?? '',
    spec: hash.spec ?? '',
    gpu: hash.gpu === undefined || hash.gpu === '' ? null : hash.gpu,
    pool: hash.pool === undefined || hash.pool === '' ? null : hash.pool,
    seq: hash.seq === undefined ? 0 : integer(what, hash, 'seq'),
  };
}

/** As submitted: kept with a placement; a queued record says it by its expiry. */
function maxWaitOf(what: string, hash: Record<string, string>): number | null {
  if (hash.maxWaitMs !== undefined && hash.maxWaitMs !== '-') return integer(what, hash, 'maxWaitMs');
  if (hash.status !== 'queued' || hash.expiresAt === undefined || hash.queuedAt === undefined) return null;
  return integer(what, hash, 'expiresAt') - integer(what, hash, 'queuedAt');
}

/**
 * An ended container's tombstone (see commit_batch.lua and backlog_commit.lua): 19 space-separated
 * fields, "<status> <workerId|-> <shard> <cpu> <memory> <gpuCount> <placedAt> <endedAt>
 * <requestKey|-> <reason> <queuedAt> <exitCode|-> <runningAt> <priority> <gpu|-> <pool|-> <maxWaitMs|->
 * <specDigest|-> <seq>" (a time of 0 is a step not taken). Older tombstones end after 9, 11, 13 or
 * 18 fields (seq then reads 0).
 */
export function containerFromTombstone(id: string, tombstone: string): ContainerRecord {
  const what = `container ${id} (tombstone)`;
  const fields = tombstone.split(' ');
  if (![9, 11, 13, 18, 19].includes(fields.length) || !isContainerStatus(fields[0])) throw new CorruptRecordError(what, 'value', tombstone);
  const names = ['status', 'workerId', 'shard', 'cpu', 'memory', 'gpuCount', 'placedAt', 'endedAt', 'requestKey', 'reason', 'queuedAt', 'exitCode', 'runningAt',
    'priority', 'gpu', 'pool', 'maxWaitMs', 'specDigest', 'seq'];
  const hash: Record<string, string> = Object.fromEntries(fields.map((field, i) => [names[i]!, field]));
  if (hash.requestKey === '-') hash.requestKey = '';
  if (hash.exitCode === '-') delete hash.exitCode;
  if (hash.gpu === '-') hash.gpu = '';
  if (hash.pool === '-') hash.pool = '';
  // Tombstones written before reasons were recorded are releases by a client.
  if (hash.reason === undefined) hash.reason = 'RELEASED';
  // A tombstone's queuedAt is 0 unless the container was queued: no home needed to tell.
  hash.home = hash.shard!;
  const record = containerFromHash(id, hash, what);
  if (fields.length < 18) return record;
  if (hash.specDigest !== '-' && !/^[0-9a-f]{40}$/.test(hash.specDigest!)) throw new CorruptRecordError(what, 'specDigest', hash.specDigest);
  return { ...record, specDigest: hash.specDigest === '-' ? null : hash.specDigest! };
}
