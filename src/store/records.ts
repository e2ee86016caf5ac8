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
  /** Unix ms (Redis clock) of each step; null for steps it has not taken. */
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
  /** While queued: its priority and when it expires. */
  readonly priority: number | null;
  readonly expiresAt: number | null;
  /** The request key of the submit that queued or placed it (the client's, or one its router made up). */
  readonly requestKey: string;
  /** Command and environment JSON for its worker's agent ('' when none). */
  readonly spec: string;
  /** While queued: what it asks for beyond cpu, memory and GPU count. */
  readonly gpu: string | null;
  readonly pool: string | null;
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
    queuedAt: optionalInteger(what, hash, 'queuedAt'),
    placedAt: status === 'queued' ? null : optionalInteger(what, hash, 'placedAt'),
    runningAt: status === 'queued' ? null : optionalInteger(what, hash, 'runningAt'),
    deliveredAt: status === 'queued' ? null : optionalInteger(what, hash, 'deliveredAt'),
    endedAt: optionalInteger(what, hash, 'endedAt'),
    exitCode: hash.exitCode === undefined || hash.exitCode === '' ? null : integer(what, hash, 'exitCode'),
    reason: reason as ContainerReason | null,
    priority: hash.priority === undefined ? null : integer(what, hash, 'priority'),
    expiresAt: status === 'queued' ? optionalInteger(what, hash, 'expiresAt') : null,
    requestKey: hash.requestKey ?? '',
    spec: hash.spec ?? '',
    gpu: hash.gpu === undefined || hash.gpu === '' ? null : hash.gpu,
    pool: hash.pool === undefined || hash.pool === '' ? null : hash.pool,
  };
}

/**
 * An ended container's tombstone (see commit_batch.lua and backlog_commit.lua):
 * "<status> <workerId|-> <shard> <cpu> <memory> <gpuCount> <placedAt> <endedAt> <requestKey|-> [<reason> <queuedAt> [<exitCode|-> <runningAt>]]".
 */
export function containerFromTombstone(id: string, tombstone: string): ContainerRecord {
  const what = `container ${id} (tombstone)`;
  const fields = tombstone.split(' ');
  if ((fields.length !== 9 && fields.length !== 11 && fields.length !== 13) || !isContainerStatus(fields[0])) throw new CorruptRecordError(what, 'value', tombstone);
  const names = ['status', 'workerId', 'shard', 'cpu', 'memory', 'gpuCount', 'placedAt', 'endedAt', 'requestKey', 'reason', 'queuedAt', 'exitCode', 'runningAt'];
  const hash: Record<string, string> = Object.fromEntries(fields.map((field, i) => [names[i]!, field]));
  if (hash.requestKey === '-') hash.requestKey = '';
  if (hash.exitCode === '-') delete hash.exitCode;
  // Tombstones written before reasons were recorded are releases by a client.
  if (hash.reason === undefined) hash.reason = 'RELEASED';
  return containerFromHash(id, hash, what);
}
