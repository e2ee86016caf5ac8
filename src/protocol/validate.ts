/**
 * Strict parsing of public requests. Each parser takes the raw bytes of a NATS message and either
 * returns a typed request or throws DroverError('INVALID_REQUEST') whose message names the field
 * and what is wrong with it. Unknown fields are refused too: a typo such as "memroy" must not be
 * silently ignored and place a container with no memory limit.
 */
import type { PlacementRequest } from '../../actors/capacity.js';
import { DroverError } from './errors.js';
import {
  ID_PATTERN,
  MAX_BATCH_SUBMIT,
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
}

export interface ContainerRequest extends PlacementRequest {
  readonly id: string;
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

const WORKER_FIELDS = ['id', 'cpu', 'memory', 'gpu', 'gpuCount', 'pool'] as const;

export function parseWorkerRegistration(body: Json): WorkerRegistration {
  const where = 'worker';
  onlyFields(body, WORKER_FIELDS, where);
  const gpu = name(body, 'gpu', where);
  const gpuCount = integer(body, 'gpuCount', where, 0, MAX_GPU_COUNT, gpu === null ? 0 : undefined);
  if (gpu !== null && gpuCount === 0) throw invalid('worker: a worker with a "gpu" type needs "gpuCount" of at least 1');
  if (gpu === null && gpuCount > 0) throw invalid('worker: "gpuCount" above 0 needs a "gpu" type');
  return {
    id: id(body, 'id', where),
    cpu: integer(body, 'cpu', where, 1, MAX_WORKER_CPU),
    memory: integer(body, 'memory', where, 1, MAX_WORKER_MEMORY),
    gpu,
    gpuCount,
    pool: name(body, 'pool', where),
  };
}

const CONTAINER_FIELDS = ['id', 'cpu', 'memory', 'gpu', 'gpuCount', 'pool'] as const;

export function parseContainerRequest(body: Json, where = 'container'): ContainerRequest {
  onlyFields(body, CONTAINER_FIELDS, where);
  const gpu = name(body, 'gpu', where);
  // A GPU type alone means one GPU of that type; a count alone means GPUs of any type.
  const gpuCount = integer(body, 'gpuCount', where, gpu === null ? 0 : 1, MAX_GPU_COUNT, gpu === null ? 0 : 1);
  return {
    id: id(body, 'id', where),
    cpu: integer(body, 'cpu', where, 1, MAX_CONTAINER_CPU),
    memory: integer(body, 'memory', where, 1, MAX_CONTAINER_MEMORY),
    gpu,
    gpuCount,
    pool: name(body, 'pool', where),
  };
}

export function parseContainerBatch(body: Json): ContainerRequest[] {
  onlyFields(body, ['containers']);
  const list = body.containers;
  if (!Array.isArray(list)) throw invalid('"containers" must be an array of container requests');
  if (list.length === 0 || list.length > MAX_BATCH_SUBMIT) {
    throw invalid(`"containers" must hold 1 to ${MAX_BATCH_SUBMIT} requests; got ${list.length}`);
  }
  const seen = new Set<string>();
  return list.map((item, index) => {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) throw invalid(`containers[${index}] must be an object`);
    const request = parseContainerRequest(item as Json, `containers[${index}]`);
    if (seen.has(request.id)) throw invalid(`containers[${index}]: id "${request.id}" appears twice in the batch`);
    seen.add(request.id);
    return request;
  });
}

export function parseIdRequest(body: Json): IdRequest {
  onlyFields(body, ['id']);
  return { id: id(body, 'id', 'request') };
}

export function parseListRequest(body: Json): ListRequest {
  onlyFields(body, ['cursor', 'limit']);
  const cursor = body.cursor;
  if (cursor !== undefined && cursor !== null && (typeof cursor !== 'string' || !/^\d{1,4}:\d{1,9}$/.test(cursor))) {
    throw invalid('"cursor" must be a cursor returned by a previous page');
  }
  return { cursor: (cursor as string | undefined) ?? null, limit: integer(body, 'limit', 'request', 1, MAX_LIST_PAGE, 100) };
}
