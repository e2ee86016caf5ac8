/**
 * Internal messages between a router and a shard's owner, and the capacity summaries owners
 * publish. Both ends are normally Drover replicas of the same version, but a shard subject is a
 * NATS subject like any other and anyone on the bus can publish to it, so every op is checked
 * where it arrives (`parseShardRequest`) with the same rules as the public requests: a malformed or
 * hostile op gets INVALID_REQUEST and never reaches an actor or Redis.
 */
import { type PlacementRequest, type WorkerRecord, type WorkerSpec, type WorkerStatus } from '../../actors/capacity.js';
import { DroverError } from './errors.js';
import { MAX_SPEC_BYTES } from './limits.js';
import { id, invalid, onlyFields, parseAgentReport, parseContainerRequest, parseWorkerRegistration, specJson, type AgentReport, type WorkerRegistration } from './validate.js';

/** Most ops in one router-to-owner message. */
export const MAX_SHARD_OPS = 1000;

export type StatusAction = 'drain' | 'disable' | 'enable';

export type ShardOp =
  | {
      readonly k: 'place';
      readonly id: string;
      readonly request: PlacementRequest;
      /** The client's request key (or the router's): tells "my own earlier attempt" from a duplicate. */
      readonly requestKey: string;
      /** Unix ms after which the owner must not write the placement (the router has answered). */
      readonly deadline: number;
      /** Command and environment JSON for the worker's agent, or ''. */
      readonly spec: string;
      /** Its priority and maxWaitMs, kept with the placement should its worker be lost before running it. */
      readonly priority?: number;
      readonly maxWaitMs?: number;
    }
  /** To the container's home shard: queue it in that shard's backlog (durable when answered). */
  | {
      readonly k: 'enqueue';
      readonly id: string;
      readonly request: PlacementRequest;
      readonly requestKey: string;
      readonly priority: number;
      readonly maxWaitMs: number;
      readonly spec: string;
    }
  /** To the container's home shard: cancel it while it is queued. */
  | { readonly k: 'cancel'; readonly id: string }
  /** To the container's home shard: its record says queued again (its worker was lost); hold it again. */
  | { readonly k: 'requeue'; readonly id: string }
  /**
   * From a backlog whose container has waited too long: hold a worker that can take it (when
   * empty enough) until `until`; nothing else is placed there meanwhile. Renewed while it waits.
   */
  | { readonly k: 'hold'; readonly id: string; readonly request: PlacementRequest; readonly until: number }
  /** A worker agent's heartbeat and report, to its worker's shard. */
  /** `deadline`: Unix ms after which the agent no longer waits for the answer (0: none); not acted on after it. */
  | { readonly k: 'report'; readonly report: AgentReport; readonly deadline: number }
  | { readonly k: 'release'; readonly id: string; readonly workerId: string }
  | { readonly k: 'register'; readonly worker: WorkerRegistration }
  | { readonly k: 'status'; readonly workerId: string; readonly action: StatusAction }
  | { readonly k: 'remove'; readonly workerId: string };

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
  /** The container is queued by another request, or ended without a placement. */
  | 'NOT_PLACEABLE'
  | 'BACKLOG_FULL'
  | 'NOT_FOUND'
  | 'CONFLICT'
  /** A report from an agent incarnation other than the worker's live one. */
  | 'AGENT_CONFLICT'
  | 'INVALID_REQUEST';

export type ShardOpResult =
  /**
   * A placement. `unqueued`: the container was queued in this shard's own backlog and the same
   * commit took it out (commit_batch.lua), so its backlog has no drop to write for it.
   */
  | { readonly ok: true; readonly workerId: string; readonly unqueued?: true }
  | { readonly ok: true; readonly worker: WorkerView }
  | { readonly ok: true; readonly released: true; readonly workerId: string }
  | { readonly ok: true; readonly removed: true }
  /** `existing`: it was queued already, by the same request key (a retry; nothing was written). */
  | { readonly ok: true; readonly queued: true; readonly existing?: true }
  | { readonly ok: true; readonly cancelled: true }
  | { readonly ok: true; readonly requeued: true }
  /** A release of a container its agent runs: the agent is told to stop it; capacity frees when it has. */
  | { readonly ok: true; readonly stopping: true; readonly workerId: string }
  | { readonly ok: true; readonly agent: AgentInstructions }
  /** The worker held for the container, and whether the container fits there now. */
  | { readonly ok: true; readonly held: string; readonly fits: boolean }
  | {
      readonly ok: false;
      readonly code: ShardErrorCode;
      readonly message: string;
      readonly workerId?: string;
      /** With ALREADY_PLACED: the request key of the submit that placed the container. */
      readonly requestKey?: string;
      /**
       * The write may still happen (Redis did not answer, or the owner did not answer in time):
       * nobody may conclude "not placed" before the op's deadline has passed.
       */
      readonly unknown?: boolean;
      /** From a replica's ops subject: it does not serve the op's shard (any more); nothing ran. */
      readonly notServed?: boolean;
    };

export interface ShardRequest {
  readonly ops: readonly ShardOp[];
}

/** An op of a received shard request that failed its checks, kept in place so results line up. */
export interface InvalidShardOp {
  readonly k: 'invalid';
  readonly message: string;
}

export interface ReceivedShardRequest {
  readonly ops: ReadonlyArray<ShardOp | InvalidShardOp>;
}

export interface ShardReply {
  readonly results: readonly ShardOpResult[];
  /** The shard's capacity after these ops, so the asking router's view is fresh at once. */
  readonly capacity: ShardCapacity | null;
}

/** What the owner tells an agent in reply to its report. */
export interface AgentInstructions {
  /** Containers placed on the worker that it does not run yet: start them. */
  readonly assignments: ReadonlyArray<{ id: string; cpu: number; memory: number; gpuCount: number; command: string[] | null; env: Record<string, string> | null }>;
  /** Containers it runs that must stop (released, or unknown to Drover). */
  readonly stops: readonly string[];
  /** Exited containers whose end Drover recorded: drop them from the agent's state. */
  readonly forget: readonly string[];
  /** How often Drover expects a report. */
  readonly heartbeatMs: number;
  /** The report this answers (the agent acts on no other). */
  readonly seq: number;
  /** Silent this long: the worker takes no placements and its containers are `unknown`. */
  readonly ttlMs: number;
  /** Silent this long (plus a margin): the worker is lost and its unknown containers end `lost`. */
  readonly lostAfterMs: number;
  /**
   * The agent stops every container and starts nothing when no report of its has completed for this
   * long (counted from the sending of its last answered report), until one completes again.
   */
  readonly fenceAfterMs: number;
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
  /** Run by a worker agent (it reports, runs containers, is lost when silent). */
  readonly agent: boolean;
}

export function workerView(record: WorkerRecord): WorkerView {
  return workerViewOf(record, record, record.status, record.resourceVersion);
}

/**
 * The worker view from its parts: the spec, its free capacity, status and version (a shard owner
 * builds it straight from an actor's context, with no record in between: see ShardWorkers.view).
 */
export function workerViewOf(
  spec: WorkerSpec,
  free: { readonly freeCpu: number; readonly freeMemory: number; readonly freeGpuCount: number },
  status: WorkerStatus,
  resourceVersion: number,
): WorkerView {
  return {
    agent: spec.agent === true,
    id: spec.id,
    shard: spec.shard,
    cpu: spec.cpu,
    memory: spec.memory,
    freeCpu: free.freeCpu,
    freeMemory: free.freeMemory,
    gpu: spec.gpu,
    gpuCount: spec.gpuCount,
    freeGpuCount: free.freeGpuCount,
    pool: spec.pool,
    status,
    resourceVersion,
  };
}

/** Free [cpu millicores, memory MiB, GPUs] of a worker, or a bound on them. */
export type CapacityPoint = [number, number, number];

/** The workers of one (pool, GPU type) group in a shard; see src/shard/capacity-summary.ts. */
export interface CapacityGroup {
  readonly pool: string | null;
  readonly gpu: string | null;
  /** Workers of the group in any status. */
  readonly registered: number;
  /** Workers of the group that take placements (available). */
  readonly workers: number;
  /** CPU and memory, total and free, summed over the available workers (for ranking shards, not for proofs). */
  readonly cpu: number;
  readonly memory: number;
  readonly freeCpu: number;
  readonly freeMemory: number;
  /** The available workers' Pareto frontier of free capacity (at most FRONTIER_MAX points). */
  readonly frontier: readonly CapacityPoint[];
  /** True when `frontier` is the whole frontier: nothing it does not cover fits the group. */
  readonly exact: boolean;
  /** The largest free amount in each dimension over the group's available workers. */
  readonly max: CapacityPoint;
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

/**
 * Request keys: a client's (see REQUEST_KEY_PATTERN) or a router's "<replica id>.<counter>". No
 * spaces (tombstones are space-separated), and a bound on the length keeps container records small.
 */
const SHARD_REQUEST_KEY_PATTERN = /^[A-Za-z0-9_.:-]{1,160}$/;
/** A deadline is Unix ms; anything outside these years is not one a router made. */
const MIN_DEADLINE_MS = Date.UTC(2020, 0, 1);
const MAX_DEADLINE_MS = Date.UTC(2200, 0, 1);

/**
 * Check one op of a shard request as strictly as the public parsers check a client's request, and
 * return it rebuilt from the checked fields only (nothing unchecked is passed on).
 */
export function parseShardOp(value: unknown): ShardOp {
  if (!isObject(value)) throw invalid('shard op must be an object');
  switch (value.k) {
    case 'place': {
      onlyFields(value, ['k', 'id', 'request', 'requestKey', 'deadline', 'spec', 'priority', 'maxWaitMs'], 'place op');
      const { containerId, request } = placementOf(value, 'place op');
      const requestKey = shardRequestKey(value, 'place op');
      const deadline = value.deadline;
      if (typeof deadline !== 'number' || !Number.isInteger(deadline) || deadline < MIN_DEADLINE_MS || deadline > MAX_DEADLINE_MS) {
        throw invalid('place op: "deadline" must be a time in Unix milliseconds');
      }
      const { priority, maxWaitMs } = parseContainerRequest({ id: containerId, cpu: 1, memory: 1, priority: value.priority, maxWaitMs: value.maxWaitMs }, 'place op');
      return { k: 'place', id: containerId, request, requestKey, deadline, spec: specOf(value, 'place op'), priority, maxWaitMs };
    }
    case 'enqueue': {
      onlyFields(value, ['k', 'id', 'request', 'requestKey', 'priority', 'maxWaitMs', 'spec'], 'enqueue op');
      const { containerId, request } = placementOf(value, 'enqueue op');
      // Priority and maxWaitMs are checked by the public parser's rules.
      const { priority, maxWaitMs } = parseContainerRequest({ id: containerId, cpu: 1, memory: 1, priority: value.priority, maxWaitMs: value.maxWaitMs }, 'enqueue op');
      return { k: 'enqueue', id: containerId, request, requestKey: shardRequestKey(value, 'enqueue op'), priority, maxWaitMs, spec: specOf(value, 'enqueue op') };
    }
    case 'cancel':
      onlyFields(value, ['k', 'id'], 'cancel op');
      return { k: 'cancel', id: id(value, 'id', 'cancel op') };
    case 'requeue':
      onlyFields(value, ['k', 'id'], 'requeue op');
      return { k: 'requeue', id: id(value, 'id', 'requeue op') };
    case 'hold': {
      onlyFields(value, ['k', 'id', 'request', 'until'], 'hold op');
      const { containerId, request } = placementOf(value, 'hold op');
      const until = value.until;
      if (typeof until !== 'number' || !Number.isInteger(until) || until < MIN_DEADLINE_MS || until > MAX_DEADLINE_MS) {
        throw invalid('hold op: "until" must be a time in Unix milliseconds');
      }
      return { k: 'hold', id: containerId, request, until };
    }
    case 'report':
      onlyFields(value, ['k', 'report', 'deadline'], 'report op');
      if (!isObject(value.report)) throw invalid('report op: "report" must be an object');
      if (typeof value.deadline !== 'number' || !Number.isSafeInteger(value.deadline) || value.deadline < 0) throw invalid('report op: "deadline" must be a whole number of Unix ms (0: none)');
      return { k: 'report', report: parseAgentReport(value.report), deadline: value.deadline };
    case 'release':
      onlyFields(value, ['k', 'id', 'workerId'], 'release op');
      return { k: 'release', id: id(value, 'id', 'release op'), workerId: id(value, 'workerId', 'release op') };
    case 'remove':
      onlyFields(value, ['k', 'workerId'], 'remove op');
      return { k: 'remove', workerId: id(value, 'workerId', 'remove op') };
    case 'register':
      onlyFields(value, ['k', 'worker'], 'register op');
      if (!isObject(value.worker)) throw invalid('register op: "worker" must be an object');
      return { k: 'register', worker: parseWorkerRegistration(value.worker) };
    case 'status': {
      onlyFields(value, ['k', 'workerId', 'action'], 'status op');
      const action = value.action;
      if (action !== 'drain' && action !== 'disable' && action !== 'enable') throw invalid('status op: "action" must be drain, disable or enable');
      return { k: 'status', workerId: id(value, 'workerId', 'status op'), action };
    }
    default:
      throw invalid(`unknown shard op kind ${JSON.stringify(value.k)}`);
  }
}

/** A place or enqueue op's container: its id and what it asks for, checked as a client's submit is. */
function placementOf(value: Record<string, unknown>, where: string): { containerId: string; request: PlacementRequest } {
  if (!isObject(value.request)) throw invalid(`${where}: "request" must be an object`);
  onlyFields(value.request, ['cpu', 'memory', 'gpu', 'gpuCount', 'pool'], `${where} request`);
  const { cpu, memory, gpu, gpuCount, pool } = value.request;
  const parsed = parseContainerRequest({ id: value.id, cpu, memory, gpu, gpuCount, pool }, where);
  return { containerId: parsed.id, request: { cpu: parsed.cpu, memory: parsed.memory, gpu: parsed.gpu, gpuCount: parsed.gpuCount, pool: parsed.pool } };
}

/** The stored command/env JSON: '' or what the public parser accepts, re-serialised from the checked fields. */
function specOf(value: Record<string, unknown>, where: string): string {
  const spec = value.spec;
  if (spec === undefined || spec === '') return '';
  if (typeof spec !== 'string' || spec.length > 2 * MAX_SPEC_BYTES) throw invalid(`${where}: "spec" must be a JSON string`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(spec);
  } catch {
    throw invalid(`${where}: "spec" must be a JSON string`);
  }
  if (!isObject(parsed)) throw invalid(`${where}: "spec" must hold an object`);
  const checked = parseContainerRequest({ id: 'spec', cpu: 1, memory: 1, command: parsed.command, env: parsed.env }, where);
  return specJson(checked);
}

function shardRequestKey(value: Record<string, unknown>, where: string): string {
  const key = value.requestKey;
  if (typeof key !== 'string' || !SHARD_REQUEST_KEY_PATTERN.test(key)) {
    throw invalid(`${where}: "requestKey" must match ${SHARD_REQUEST_KEY_PATTERN.source}`);
  }
  return key;
}

/** The reply to a replica's ops subject: one result per op, and the capacity of each shard it serves that the ops touched. */
export interface ReplicaOpsReply {
  readonly results: readonly ShardOpResult[];
  readonly capacities: readonly ShardCapacity[];
}

/** An op addressed to a shard through its owner's replica subject (`s` is the shard). */
export interface ReceivedReplicaOp {
  readonly shard: number;
  readonly op: ShardOp | InvalidShardOp;
}

/**
 * Check a request to a replica's ops subject: `{"ops":[{"s":shard,"op":op}...]}`, 1 to
 * MAX_SHARD_OPS ops. A malformed frame throws; a malformed op (or shard number) becomes an
 * InvalidShardOp in its place, as in a shard request.
 */
export function parseReplicaOpsRequest(value: unknown, shardCount: number): ReceivedReplicaOp[] {
  if (!isObject(value) || !Array.isArray(value.ops)) throw new Error('replica ops request without an ops array');
  if (value.ops.length === 0 || value.ops.length > MAX_SHARD_OPS) throw new Error(`replica ops request with ${value.ops.length} ops`);
  return value.ops.map((entry: unknown): ReceivedReplicaOp => {
    if (!isObject(entry) || !Number.isInteger(entry.s) || (entry.s as number) < 0 || (entry.s as number) >= shardCount) {
      return { shard: -1, op: { k: 'invalid', message: `"s" must be a shard number below ${shardCount}` } };
    }
    try {
      return { shard: entry.s as number, op: parseShardOp(entry.op) };
    } catch (error) {
      if (error instanceof DroverError) return { shard: entry.s as number, op: { k: 'invalid', message: error.message } };
      throw error;
    }
  });
}

/**
 * Check a received shard request. A malformed frame throws; a malformed op becomes an
 * InvalidShardOp in its place, so the other ops still run and every result keeps its index.
 */
export function parseShardRequest(value: unknown): ReceivedShardRequest {
  if (!isObject(value) || !Array.isArray(value.ops)) throw new Error('shard request without an ops array');
  if (value.ops.length === 0 || value.ops.length > MAX_SHARD_OPS) throw new Error(`shard request with ${value.ops.length} ops`);
  return {
    ops: value.ops.map((op: unknown): ShardOp | InvalidShardOp => {
      try {
        return parseShardOp(op);
      } catch (error) {
        if (error instanceof DroverError) return { k: 'invalid', message: error.message };
        throw error;
      }
    }),
  };
}

/** Groups and frontier points a summary may carry; more is not a summary an owner made. */
const MAX_SUMMARY_GROUPS = 4_096;
const MAX_FRONTIER_POINTS = 64;

function count(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function point(value: unknown): value is CapacityPoint {
  return Array.isArray(value) && value.length === 3 && value.every(count);
}

function nameOrNull(value: unknown): value is string | null {
  return value === null || (typeof value === 'string' && value.length <= 64);
}

/**
 * A capacity summary received on a capacity subject or in a shard reply, checked field by field
 * (anyone on the bus can publish there, and a router's NO_CAPACITY rests on these numbers); null
 * when anything is off.
 */
export function parseShardCapacity(value: unknown): ShardCapacity | null {
  if (!isObject(value) || !count(value.shard) || !count(value.seq) || !count(value.epoch) || !Array.isArray(value.groups)) return null;
  if (value.owner !== null && (typeof value.owner !== 'string' || value.owner.length > 128)) return null;
  if (value.groups.length > MAX_SUMMARY_GROUPS) return null;
  for (const group of value.groups as unknown[]) {
    if (!isObject(group) || !nameOrNull(group.pool) || !nameOrNull(group.gpu)) return null;
    if (!count(group.registered) || !count(group.workers) || !count(group.cpu) || !count(group.memory)) return null;
    if (!count(group.freeCpu) || !count(group.freeMemory)) return null;
    if (typeof group.exact !== 'boolean' || !point(group.max) || !Array.isArray(group.frontier)) return null;
    if (group.frontier.length > MAX_FRONTIER_POINTS || !group.frontier.every(point)) return null;
  }
  // Checked field by field above; fields beyond these are carried along unread.
  const groups = value.groups as CapacityGroup[];
  return { shard: value.shard, owner: value.owner, epoch: value.epoch, seq: value.seq, groups };
}

export const STATUS_ACTION_EVENT = { drain: 'DRAIN', disable: 'DISABLE', enable: 'ENABLE' } as const;
export const STATUS_ACTION_TARGET: Record<StatusAction, WorkerStatus> = { drain: 'draining', disable: 'disabled', enable: 'available' };
