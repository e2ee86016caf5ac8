/**
 * Strict parsing of public requests. Each parser takes the raw bytes of a NATS message and either
 * returns a typed request or throws DroverError('INVALID_REQUEST') whose message names the field
 * and what is wrong with it. Unknown fields are refused too: a typo such as "memroy" must not be
 * silently ignored and place a container with no memory limit.
 */
import type { PlacementRequest } from '../../actors/capacity.js';
import { DroverError } from './errors.js';
import {
  DEFAULT_MAX_WAIT_MS,
  ENV_NAME_PATTERN,
  ID_PATTERN,
  MAX_ARG_LENGTH,
  MAX_BATCH_SUBMIT,
  MAX_COMMAND_ARGS,
  MAX_ENV_ENTRIES,
  MAX_MAX_WAIT_MS,
  MAX_PRIORITY,
  MAX_SPEC_BYTES,
  MIN_PRIORITY,
  MAX_CONTAINER_CPU,
  MAX_CONTAINER_MEMORY,
  MAX_GPU_COUNT,
  MAX_LIST_PAGE,
  MAX_PAYLOAD_BYTES,
  MAX_WORKER_CPU,
  MAX_WORKER_MEMORY,
  NAME_PATTERN,
} from './limits.js';

export interface WorkerRegistration {
  readonly id: string;
  readonly cpu: number;
  readonly memory: number;
  readonly gpu: string | null;
  readonly gpuCount: number;
  readonly pool: string | null;
  /** Registered by a worker agent (`drover agent`): it heartbeats, runs containers, can be lost. */
  readonly agent: boolean;
}

/** What a worker's agent says about one container it runs or ran. */
export interface AgentContainerReport {
  readonly id: string;
  readonly status: 'running' | 'exited';
  readonly exitCode: number | null;
  /** Exited because the agent fenced itself (no report completed for too long) and stopped it. */
  readonly fenced: boolean;
}

/** An agent's heartbeat: every container it runs or ran and has not been told to forget. */
export interface AgentReport {
  readonly workerId: string;
  readonly containers: readonly AgentContainerReport[];
  /**
   * The agent's incarnation: a token kept in its state directory, the same across restarts of one
   * agent on one machine and different for any other agent. One worker has one live incarnation.
   */
  readonly incarnation: string;
  /** Rises with every report of the incarnation (across restarts): an older report is refused. */
  readonly seq: number;
}

/** Highest report sequence number (a safe integer; an agent reporting every 100 ms never gets there). */
export const MAX_REPORT_SEQ = Number.MAX_SAFE_INTEGER;

export interface ContainerRequest extends PlacementRequest {
  readonly id: string;
}

/** What a worker agent runs for the container; stored with it as JSON. */
export interface ContainerSpec {
  readonly command: readonly string[] | null;
  readonly env: Readonly<Record<string, string>> | null;
}

/** A submitted container: what to place, and how long and in what order it may wait for room. */
export interface SubmitRequest extends ContainerRequest, ContainerSpec {
  /** Higher is placed first among queued requests. */
  readonly priority: number;
  /** How long it may wait in the backlog before it fails with EXPIRED. */
  readonly maxWaitMs: number;
  /** false: answer NO_CAPACITY at once instead of queueing. */
  readonly queue: boolean;
}

export interface IdRequest {
  readonly id: string;
}

export interface ListRequest {
  readonly cursor: string | null;
  readonly limit: number;
}

type Json = Record<string, unknown>;

export function invalid(message: string): DroverError {
  return new DroverError('INVALID_REQUEST', message);
}

/** Decode a payload into a JSON object, enforcing the size limit before parsing. */
export function decodeObject(data: Uint8Array): Json {
  if (data.byteLength > MAX_PAYLOAD_BYTES) {
    throw invalid(`payload is ${data.byteLength} bytes; the limit is ${MAX_PAYLOAD_BYTES}`);
  }
  if (data.byteLength === 0) throw invalid('payload is empty; expected a JSON object');
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
  } catch (error) {
    throw invalid(`payload is not valid JSON: ${(error as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid('payload must be a JSON object');
  }
  return value as Json;
}

export function onlyFields(body: Json, allowed: readonly string[], where = 'request'): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) throw invalid(`unknown field "${key}" in ${where}; allowed: ${allowed.join(', ')}`);
  }
}

export function id(body: Json, field: string, where: string): string {
  const value = body[field];
  if (value === undefined) throw invalid(`${where}: "${field}" is required`);
  if (typeof value !== 'string') throw invalid(`${where}: "${field}" must be a string`);
  if (!ID_PATTERN.test(value)) {
    throw invalid(`${where}: "${field}" must match ${ID_PATTERN.source} (letters, digits, _ and -, at most 128; no dots, * or >)`);
  }
  return value;
}

function integer(body: Json, field: string, where: string, min: number, max: number, fallback?: number): number {
  const value = body[field];
  if (value === undefined || value === null) {
    if (fallback !== undefined) return fallback;
    throw invalid(`${where}: "${field}" is required`);
  }
  if (typeof value !== 'number' || Number.isNaN(value)) throw invalid(`${where}: "${field}" must be a number`);
  if (!Number.isInteger(value)) throw invalid(`${where}: "${field}" must be a whole number (CPU in millicores, memory in MiB)`);
  if (value < min || value > max) throw invalid(`${where}: "${field}" must be between ${min} and ${max}; got ${value}`);
  return value;
}

function name(body: Json, field: string, where: string): string | null {
  const value = body[field];
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') throw invalid(`${where}: "${field}" must be a string`);
  if (!NAME_PATTERN.test(value)) throw invalid(`${where}: "${field}" must match ${NAME_PATTERN.source}`);
  return value;
}

const WORKER_FIELDS = ['id', 'cpu', 'memory', 'gpu', 'gpuCount', 'pool', 'agent'] as const;

export function parseWorkerRegistration(body: Json): WorkerRegistration {
  const where = 'worker';
  onlyFields(body, WORKER_FIELDS, where);
  const gpu = name(body, 'gpu', where);
  const gpuCount = integer(body, 'gpuCount', where, 0, MAX_GPU_COUNT, gpu === null ? 0 : undefined);
  if (gpu !== null && gpuCount === 0) throw invalid('worker: a worker with a "gpu" type needs "gpuCount" of at least 1');
  if (gpu === null && gpuCount > 0) throw invalid('worker: "gpuCount" above 0 needs a "gpu" type');
  const agent = body.agent;
  if (agent !== undefined && agent !== null && typeof agent !== 'boolean') throw invalid('worker: "agent" must be true or false');
  return {
    agent: agent === true,
    id: id(body, 'id', where),
    cpu: integer(body, 'cpu', where, 1, MAX_WORKER_CPU),
    memory: integer(body, 'memory', where, 1, MAX_WORKER_MEMORY),
    gpu,
    gpuCount,
    pool: name(body, 'pool', where),
  };
}

const CONTAINER_FIELDS = ['id', 'cpu', 'memory', 'gpu', 'gpuCount', 'pool', 'priority', 'maxWaitMs', 'queue', 'command', 'env'] as const;

export function parseContainerRequest(body: Json, where = 'container'): SubmitRequest {
  onlyFields(body, CONTAINER_FIELDS, where);
  const gpu = name(body, 'gpu', where);
  // A GPU type alone means one GPU of that type; a count alone means GPUs of any type.
  const gpuCount = integer(body, 'gpuCount', where, gpu === null ? 0 : 1, MAX_GPU_COUNT, gpu === null ? 0 : 1);
  const queue = body.queue;
  if (queue !== undefined && queue !== null && typeof queue !== 'boolean') throw invalid(`${where}: "queue" must be true or false`);
  const spec = parseSpec(body, where);
  return {
    id: id(body, 'id', where),
    cpu: integer(body, 'cpu', where, 1, MAX_CONTAINER_CPU),
    memory: integer(body, 'memory', where, 1, MAX_CONTAINER_MEMORY),
    gpu,
    gpuCount,
    pool: name(body, 'pool', where),
    priority: integer(body, 'priority', where, MIN_PRIORITY, MAX_PRIORITY, 0),
    maxWaitMs: integer(body, 'maxWaitMs', where, 1, MAX_MAX_WAIT_MS, DEFAULT_MAX_WAIT_MS),
    queue: queue !== false,
    ...spec,
  };
}

/** A string a process can take as an argument or environment value: bounded, no NUL. */
function processString(value: unknown, what: string): string {
  if (typeof value !== 'string') throw invalid(`${what} must be a string`);
  if (value.length > MAX_ARG_LENGTH) throw invalid(`${what} is ${value.length} characters; the limit is ${MAX_ARG_LENGTH}`);
  if (value.includes('\0')) throw invalid(`${what} must not contain a NUL character`);
  return value;
}

function parseSpec(body: Json, where: string): ContainerSpec {
  let command: string[] | null = null;
  if (body.command !== undefined && body.command !== null) {
    const raw = body.command;
    if (!Array.isArray(raw) || raw.length === 0 || raw.length > MAX_COMMAND_ARGS) {
      throw invalid(`${where}: "command" must be an array of 1 to ${MAX_COMMAND_ARGS} strings (the program, then its arguments)`);
    }
    command = raw.map((arg, index) => processString(arg, `${where}: command[${index}]`));
    if (command[0] === '') throw invalid(`${where}: command[0] (the program) must not be empty`);
  }
  let env: Record<string, string> | null = null;
  if (body.env !== undefined && body.env !== null) {
    const raw = body.env;
    if (typeof raw !== 'object' || Array.isArray(raw)) throw invalid(`${where}: "env" must be an object of names to strings`);
    const entries = Object.entries(raw as Json);
    if (entries.length > MAX_ENV_ENTRIES) throw invalid(`${where}: "env" has ${entries.length} entries; the limit is ${MAX_ENV_ENTRIES}`);
    env = {};
    // Sorted by name: the stored JSON (and its digest, kept in an ended container's tombstone) is
    // then the same for the same environment however a client orders it.
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [key, value] of entries) {
      if (!ENV_NAME_PATTERN.test(key)) throw invalid(`${where}: env name "${key.slice(0, 40)}" must match ${ENV_NAME_PATTERN.source}`);
      env[key] = processString(value, `${where}: env.${key}`);
    }
  }
  const bytes = Buffer.byteLength(JSON.stringify({ command, env }));
  if (bytes > MAX_SPEC_BYTES) throw invalid(`${where}: "command" and "env" take ${bytes} bytes together; the limit is ${MAX_SPEC_BYTES}`);
  return { command, env };
}

/** The JSON stored with a container for its agent, or '' when it has neither command nor env. */
export function specJson(spec: ContainerSpec): string {
  return spec.command === null && spec.env === null ? '' : JSON.stringify({ command: spec.command, env: spec.env });
}

/** Containers one agent report may list (an agent runs at most this many at once). */
export const MAX_AGENT_CONTAINERS = 1_000;

export function parseAgentReport(body: Json): AgentReport {
  onlyFields(body, ['workerId', 'containers', 'incarnation', 'seq'], 'report');
  const list = body.containers;
  if (!Array.isArray(list) || list.length > MAX_AGENT_CONTAINERS) {
    throw invalid(`report: "containers" must be an array of at most ${MAX_AGENT_CONTAINERS} entries`);
  }
  const seen = new Set<string>();
  const containers = list.map((item, index): AgentContainerReport => {
    const where = `report: containers[${index}]`;
    if (item === null || typeof item !== 'object' || Array.isArray(item)) throw invalid(`${where} must be an object`);
    const entry = item as Json;
    onlyFields(entry, ['id', 'status', 'exitCode', 'fenced'], where);
    const containerId = id(entry, 'id', where);
    if (seen.has(containerId)) throw invalid(`${where}: id "${containerId}" appears twice`);
    seen.add(containerId);
    const status = entry.status;
    if (status !== 'running' && status !== 'exited') throw invalid(`${where}: "status" must be running or exited`);
    const exitCode = status === 'exited' ? integer(entry, 'exitCode', where, -255, 255) : null;
    if (status === 'running' && entry.exitCode !== undefined && entry.exitCode !== null) throw invalid(`${where}: a running container has no "exitCode"`);
    const fenced = entry.fenced;
    if (fenced !== undefined && fenced !== null && typeof fenced !== 'boolean') throw invalid(`${where}: "fenced" must be true or false`);
    if (fenced === true && status !== 'exited') throw invalid(`${where}: only an exited container can be "fenced"`);
    return { id: containerId, status, exitCode, fenced: fenced === true };
  });
  return {
    workerId: id(body, 'workerId', 'report'),
    containers,
    incarnation: id(body, 'incarnation', 'report'),
    seq: integer(body, 'seq', 'report', 1, MAX_REPORT_SEQ),
  };
}

/**
 * A batch request: `field` holds 1 to MAX_BATCH_SUBMIT objects, each parsed by `parseItem` (its
 * errors prefixed with its place in the batch), their ids distinct.
 */
function parseBatch<T extends { readonly id: string }>(body: Json, field: string, noun: string, parseItem: (item: Json, where: string) => T): T[] {
  onlyFields(body, [field]);
  const list = body[field];
  if (!Array.isArray(list)) throw invalid(`"${field}" must be an array of ${noun}s`);
  if (list.length === 0 || list.length > MAX_BATCH_SUBMIT) {
    throw invalid(`"${field}" must hold 1 to ${MAX_BATCH_SUBMIT} ${noun}s; got ${list.length}`);
  }
  const seen = new Set<string>();
  return list.map((item, index) => {
    const where = `${field}[${index}]`;
    if (item === null || typeof item !== 'object' || Array.isArray(item)) throw invalid(`${where} must be an object`);
    const parsed = parseItem(item as Json, where);
    if (seen.has(parsed.id)) throw invalid(`${where}: id "${parsed.id}" appears twice in the batch`);
    seen.add(parsed.id);
    return parsed;
  });
}

/** Workers in one drover.workers.register.batch request. */
export function parseWorkerBatch(body: Json): WorkerRegistration[] {
  return parseBatch(body, 'workers', 'worker registration', (item, where) => {
    try {
      return parseWorkerRegistration(item);
    } catch (error) {
      throw invalid(`${where}: ${(error as Error).message.replace(/^worker: /, '')}`);
    }
  });
}

export function parseContainerBatch(body: Json): SubmitRequest[] {
  return parseBatch(body, 'containers', 'container request', (item, where) => parseContainerRequest(item, where));
}

export function parseIdRequest(body: Json): IdRequest {
  onlyFields(body, ['id']);
  return { id: id(body, 'id', 'request') };
}

/** `drover.backlog` takes no parameters: its body is the empty object `{}`. */
export function parseBacklogRequest(body: Json): void {
  const [field] = Object.keys(body);
  if (field !== undefined) throw invalid(`unknown field "${field}" in request; drover.backlog takes an empty object {}`);
}

/**
 * `drover.status` takes no parameters either: an empty payload or `{}`. Every replica answers it
 * (no router in between), so each checks the body itself.
 */
export function parseStatusRequest(data: Uint8Array): void {
  if (data.byteLength === 0) return;
  const [field] = Object.keys(decodeObject(data));
  if (field !== undefined) throw invalid(`unknown field "${field}" in request; drover.status takes an empty payload or {}`);
}

export function parseListRequest(body: Json): ListRequest {
  onlyFields(body, ['cursor', 'limit']);
  const cursor = body.cursor;
  if (cursor !== undefined && cursor !== null && (typeof cursor !== 'string' || !/^\d{1,4}:\d{1,9}$/.test(cursor))) {
    throw invalid('"cursor" must be a cursor returned by a previous page');
  }
  return { cursor: (cursor as string | undefined) ?? null, limit: integer(body, 'limit', 'request', 1, MAX_LIST_PAGE, 100) };
}
