/**
 * Converting Redis hashes into typed records. Data crossing this boundary is checked: a hash that
 * does not parse is reported as corrupt instead of flowing on as NaN.
 */
import { isWorkerStatus, type WorkerRecord } from '../../actors/capacity.js';

export type ContainerStatus = 'placed' | 'released';

export interface ContainerRecord {
  readonly id: string;
  readonly status: ContainerStatus;
  readonly workerId: string;
  readonly shard: number;
  readonly cpu: number;
  readonly memory: number;
  readonly gpuCount: number;
  readonly placedAt: number;
  readonly releasedAt: number | null;
  /** The request key of the submit that placed it (the client's, or one its router made up). */
  readonly requestKey: string;
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

export function containerFromHash(id: string, hash: Record<string, string>, what = `container ${id}`): ContainerRecord {
  const status = hash.status;
  if (status !== 'placed' && status !== 'released') throw new CorruptRecordError(what, 'status', status);
  return {
    id,
    status,
    workerId: text(what, hash, 'workerId'),
    shard: integer(what, hash, 'shard'),
    cpu: integer(what, hash, 'cpu'),
    memory: integer(what, hash, 'memory'),
    gpuCount: integer(what, hash, 'gpuCount'),
    placedAt: integer(what, hash, 'placedAt'),
    releasedAt: hash.releasedAt === undefined ? null : integer(what, hash, 'releasedAt'),
    requestKey: hash.requestKey ?? '',
  };
}

/**
 * A released container's tombstone (see commit_batch.lua):
 * "released <workerId> <shard> <cpu> <memory> <gpuCount> <placedAt> <releasedAt> <requestKey|->".
 */
export function containerFromTombstone(id: string, tombstone: string): ContainerRecord {
  const what = `container ${id} (tombstone)`;
  const fields = tombstone.split(' ');
  if (fields.length !== 9 || fields[0] !== 'released') throw new CorruptRecordError(what, 'value', tombstone);
  const names = ['status', 'workerId', 'shard', 'cpu', 'memory', 'gpuCount', 'placedAt', 'releasedAt', 'requestKey'];
  const hash = Object.fromEntries(names.map((name, i) => [name, fields[i]!]));
  if (hash.requestKey === '-') hash.requestKey = '';
  return containerFromHash(id, hash, what);
}
