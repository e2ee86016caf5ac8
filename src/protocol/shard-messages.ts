/**
 * Internal messages between a router and a shard's owner, and the capacity summaries owners
 * publish. Both ends are Drover replicas of the same version, but the payloads are still checked
 * where they arrive (`parseShardRequest`), because a malformed message must not crash a replica.
 */
import { type PlacementRequest, type WorkerRecord, type WorkerStatus } from '../../actors/capacity.js';
import type { WorkerRegistration } from './validate.js';

/** Most ops in one router-to-owner message. */
export const MAX_SHARD_OPS = 1000;

export type StatusAction = 'drain' | 'disable' | 'enable';

export type ShardOp =
  | {
      readonly k: 'place';
      readonly id: string;
      readonly request: PlacementRequest;
      /** Unique per client request, kept by retries: tells "my own earlier attempt" from a duplicate. */
      readonly nonce: string;
      /** Unix ms after which the owner must not write the placement (the router has answered). */
      readonly deadline: number;
    }
  | { readonly k: 'release'; readonly id: string; readonly workerId: string }
  | { readonly k: 'register'; readonly worker: WorkerRegistration }
  | { readonly k: 'status'; readonly workerId: string; readonly action: StatusAction };

/**
 * Internal result codes. NO_FIT and RETRY never reach clients: the router tries another shard.
 * UNAVAILABLE means this owner cannot serve the shard now (not the holder, fenced, stopping).
 */
export type ShardErrorCode =
  | 'NO_FIT'
  | 'RETRY'
  | 'UNAVAILABLE'
  | 'EXPIRED'
  | 'ALREADY_PLACED'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'INVALID_REQUEST';

export type ShardOpResult =
  | { readonly ok: true; readonly workerId: string }
  | { readonly ok: true; readonly worker: WorkerView }
  | { readonly ok: true; readonly released: true; readonly workerId: string }
  | {
      readonly ok: false;
      readonly code: ShardErrorCode;
      readonly message: string;
      readonly workerId?: string;
      readonly nonce?: string;
      /**
       * The write may still happen (Redis did not answer, or the owner did not answer in time):
       * nobody may conclude "not placed" before the op's deadline has passed.
       */
      readonly unknown?: boolean;
    };

export interface ShardRequest {
  readonly ops: readonly ShardOp[];
}

export interface ShardReply {
  readonly results: readonly ShardOpResult[];
  /** The shard's capacity after these ops, so the asking router's view is fresh at once. */
  readonly capacity: ShardCapacity | null;
}

/** W in the public contract. */
export interface WorkerView {
  readonly id: string;
  readonly shard: number;
  readonly cpu: number;
  readonly memory: number;
  readonly freeCpu: number;
  readonly freeMemory: number;
  readonly gpu: string | null;
  readonly gpuCount: number;
  readonly freeGpuCount: number;
  readonly pool: string | null;
  readonly status: WorkerStatus;
  readonly resourceVersion: number;
}

export function workerView(record: WorkerRecord): WorkerView {
  return {
    id: record.id,
    shard: record.shard,
    cpu: record.cpu,
    memory: record.memory,
    freeCpu: record.freeCpu,
    freeMemory: record.freeMemory,
    gpu: record.gpu,
    gpuCount: record.gpuCount,
    freeGpuCount: record.freeGpuCount,
    pool: record.pool,
    status: record.status,
    resourceVersion: record.resourceVersion,
  };
}

/** Free capacity of the available workers of one (pool, GPU type) group in a shard. */
export interface CapacityGroup {
  readonly pool: string | null;
  readonly gpu: string | null;
  readonly workers: number;
  readonly freeCpu: number;
  readonly freeMemory: number;
  /** Up to 8 workers' free [cpu, memory, gpus]: the largest by CPU and the largest by memory. */
  readonly top: ReadonlyArray<readonly [number, number, number]>;
}

export interface ShardCapacity {
  readonly shard: number;
  /** The replica holding the lease, or null when the shard has just been given up. */
  readonly owner: string | null;
  readonly epoch: number;
  /** Increases with every summary of one ownership epoch; routers drop older ones. */
  readonly seq: number;
  readonly groups: readonly CapacityGroup[];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Shape check of an internal request; the router validated the fields, the owner checks the frame. */
export function parseShardRequest(value: unknown): ShardRequest {
  if (!isObject(value) || !Array.isArray(value.ops)) throw new Error('shard request without an ops array');
  if (value.ops.length === 0 || value.ops.length > MAX_SHARD_OPS) throw new Error(`shard request with ${value.ops.length} ops`);
  for (const op of value.ops) {
    if (!isObject(op) || !['place', 'release', 'register', 'status'].includes(op.k as string)) {
      throw new Error('shard request with a malformed op');
    }
    if (op.k === 'status' && !['drain', 'disable', 'enable'].includes(op.action as string)) {
      throw new Error('shard status op with an unknown action');
    }
  }
  return value as unknown as ShardRequest;
}

export function parseShardCapacity(value: unknown): ShardCapacity | null {
  if (!isObject(value) || typeof value.shard !== 'number' || typeof value.seq !== 'number' || !Array.isArray(value.groups)) {
    return null;
  }
  return value as unknown as ShardCapacity;
}

export const STATUS_ACTION_EVENT = { drain: 'DRAIN', disable: 'DISABLE', enable: 'ENABLE' } as const;
export const STATUS_ACTION_TARGET: Record<StatusAction, WorkerStatus> = { drain: 'draining', disable: 'disabled', enable: 'available' };
