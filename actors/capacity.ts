/**
 * Pure capacity logic shared by the worker actor, the shard owner and the router.
 * No I/O, no clocks: everything here is a function of its arguments, so the same
 * rules hold in the actor's guards, in worker selection and in tests.
 */

/** Worker lifecycle states. The worker actor's top-level states carry the same names. */
export const WORKER_STATUSES = ['pending', 'available', 'unreachable', 'draining', 'disabled', 'lost'] as const;
export type WorkerStatus = (typeof WORKER_STATUSES)[number];

export function isWorkerStatus(value: unknown): value is WorkerStatus {
  return typeof value === 'string' && (WORKER_STATUSES as readonly string[]).includes(value);
}

/** What a worker machine is: fixed at registration. CPU in millicores, memory in MiB. */
export interface WorkerSpec {
  /** Registered by a worker agent: it heartbeats, runs the containers, and is lost when silent. */
  readonly agent?: boolean;
  readonly id: string;
  readonly shard: number;
  readonly cpu: number;
  readonly memory: number;
  /** GPU type (for example "a100"), or null for a worker without GPUs. */
  readonly gpu: string | null;
  readonly gpuCount: number;
  readonly pool: string | null;
}

/** A worker as Redis (the source of truth) stores it: spec, committed free capacity, status, version. */
export interface WorkerRecord extends WorkerSpec {
  readonly freeCpu: number;
  readonly freeMemory: number;
  readonly freeGpuCount: number;
  readonly status: WorkerStatus;
  readonly resourceVersion: number;
}

/** What one container asks for. gpuCount is 0 for a CPU-only container. */
export interface PlacementRequest {
  readonly cpu: number;
  readonly memory: number;
  /** A GPU type the container needs, or null for "any type" (when gpuCount > 0) or none. */
  readonly gpu: string | null;
  readonly gpuCount: number;
  /** Restricts the placement to workers of this pool; null means any pool. */
  readonly pool: string | null;
}

/** Only a request's placement fields, from anything that carries them (a submit, a record, an entry). */
export function placementOf(request: PlacementRequest): PlacementRequest {
  return { cpu: request.cpu, memory: request.memory, gpu: request.gpu, gpuCount: request.gpuCount, pool: request.pool };
}

/** The capacity a worker can still promise right now: committed free minus in-flight reservations. */
export interface WorkerAvailability {
  readonly spec: WorkerSpec;
  readonly status: WorkerStatus;
  readonly freeCpu: number;
  readonly freeMemory: number;
  readonly freeGpuCount: number;
}

export type PlacementRefusal =
  | 'not-available'
  | 'wrong-pool'
  | 'wrong-gpu'
  | 'not-enough-cpu'
  | 'not-enough-memory'
  | 'not-enough-gpu';

/** Why `worker` cannot take `request` now, or null when it can. */
export function placementRefusal(worker: WorkerAvailability, request: PlacementRequest): PlacementRefusal | null {
  if (worker.status !== 'available') return 'not-available';
  if (request.pool !== null && worker.spec.pool !== request.pool) return 'wrong-pool';
  if (request.gpuCount > 0) {
    if (worker.spec.gpu === null) return 'wrong-gpu';
    if (request.gpu !== null && worker.spec.gpu !== request.gpu) return 'wrong-gpu';
    if (worker.freeGpuCount < request.gpuCount) return 'not-enough-gpu';
  }
  if (worker.freeCpu < request.cpu) return 'not-enough-cpu';
  if (worker.freeMemory < request.memory) return 'not-enough-memory';
  return null;
}

export type PlacementStrategy = 'best-fit' | 'spread';

/**
 * Lower is better. Best fit packs: the worker left with the least free capacity (as a fraction of
 * its size) wins, which keeps large workers whole for large containers. Spread does the opposite.
 * A CPU-only container is steered away from GPU workers (+2 is more than any fraction sum), so GPUs
 * are not stranded behind CPU work while a CPU-only worker has room.
 */
export function placementScore(worker: WorkerAvailability, request: PlacementRequest, strategy: PlacementStrategy): number {
  const spec = worker.spec;
  const cpuLeft = (worker.freeCpu - request.cpu) / spec.cpu;
  const memoryLeft = (worker.freeMemory - request.memory) / spec.memory;
  const gpuPenalty = request.gpuCount === 0 && spec.gpu !== null ? 2 : 0;
  const left = cpuLeft + memoryLeft;
  return gpuPenalty + (strategy === 'best-fit' ? left : 2 - left);
}

/** The best worker for `request` among `workers`, or null when none fits. Ties go to the first seen. */
export function chooseWorker<W extends WorkerAvailability>(
  workers: Iterable<W>,
  request: PlacementRequest,
  strategy: PlacementStrategy,
): W | null {
  let best: W | null = null;
  let bestScore = Number.POSITIVE_INFINITY;
  for (const worker of workers) {
    if (placementRefusal(worker, request) !== null) continue;
    const score = placementScore(worker, request, strategy);
    if (score < bestScore) {
      best = worker;
      bestScore = score;
    }
  }
  return best;
}
