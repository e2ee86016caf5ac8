/**
 * The seed's scheduler, as the benchmark's baseline: the shared-state optimistic design Drover
 * replaces (../shared/seed/000_838cec96a140a38b.txt, an audit of an existing serverless GPU
 * platform's scheduler). It runs against the same Redis as Drover, in its own keys.
 *
 * Per request, up to 5 attempts. Each attempt reads every worker afresh (no cache: the seed's
 * workerCacheDuration = 0), keeps those with room, and tries them in order; for each it takes the
 * worker's lock (TTL 5 s, one retry after 100 ms), re-reads the worker, compares its
 * ResourceVersion with the one the attempt read, checks the capacity, writes the new capacity and
 * version, and unlocks. A failed lock, a changed version or a worker that no longer fits is a
 * conflict, and the attempt moves on to the next worker. Before each attempt it checks that the
 * container is not already scheduled (the seed's "layer 3"). 250 requests run at once (the
 * seed's maxConcurrentScheduling).
 *
 * Two details the audit does not spell out. The lock's one retry waits 100 ms: the audit's
 * `Acquire(..., TtlS: 5, Retries: 1)` is the platform's lock wrapper, which (in its public source)
 * retries with redislock's ExponentialBackoff(100 ms, TTL), whose first wait is the 100 ms minimum.
 * The audit's schedulingTimeoutPerWorker (250 ms) is not modelled: one worker's lock, retry,
 * re-read and write take about 100 ms at most here, so the timeout would not fire.
 *
 * The worker order is the same for every request (all workers are equally available and of equal
 * priority, so the seed's scoring leaves them in the order read; we sort by id). That order is
 * what makes concurrent requests collide, which is where the seed's 20-26 conflicts per
 * placement came from.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';

export const SEED_MAX_ATTEMPTS = 5;
export const SEED_CONCURRENCY = 250;
export const SEED_LOCK_TTL_MS = 5_000;
export const SEED_LOCK_RETRY_DELAY_MS = 100;

const RELEASE_LOCK = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

interface SeedWorker {
  readonly id: string;
  readonly freeCpu: number;
  readonly freeMemory: number;
  readonly resourceVersion: number;
}

export interface SeedOutcome {
  readonly placed: boolean;
  readonly workerId: string | null;
  readonly conflicts: number;
  readonly attempts: number;
  readonly reason: 'placed' | 'already-scheduled' | 'no-capacity' | 'retries-exhausted';
}

export class SeedScheduler {
  private readonly workersKey: string;
  readonly stats = { placed: 0, conflicts: 0, lockFailures: 0, versionConflicts: 0, capacityConflicts: 0, workerReads: 0 };

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    this.workersKey = `${prefix}:workers`;
  }

  private workerKey(id: string): string {
    return `${this.prefix}:worker:${id}`;
  }

  async addWorkers(workers: ReadonlyArray<{ id: string; cpu: number; memory: number }>): Promise<void> {
    const pipeline = this.redis.pipeline();
    for (const w of workers) {
      pipeline.hset(this.workerKey(w.id), 'freeCpu', w.cpu, 'freeMemory', w.memory, 'resourceVersion', 0);
      pipeline.sadd(this.workersKey, w.id);
    }
    await pipeline.exec();
  }

  /** GetAllWorkersLockFree: every worker, read without locks. */
  private async readAllWorkers(): Promise<SeedWorker[]> {
    const ids = (await this.redis.smembers(this.workersKey)).sort();
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hmget(this.workerKey(id), 'freeCpu', 'freeMemory', 'resourceVersion');
    const replies = (await pipeline.exec()) ?? [];
    this.stats.workerReads += ids.length;
    return ids.map((id, i) => {
      const [freeCpu, freeMemory, version] = (replies[i]?.[1] ?? []) as string[];
      return { id, freeCpu: Number(freeCpu), freeMemory: Number(freeMemory), resourceVersion: Number(version) };
    });
  }

  private async lock(key: string, token: string): Promise<boolean> {
    for (let attempt = 0; attempt < 2; attempt += 1) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, SEED_LOCK_RETRY_DELAY_MS));
      if ((await this.redis.set(key, token, 'PX', SEED_LOCK_TTL_MS, 'NX')) === 'OK') return true;
    }
    return false;
  }

  /** UpdateWorkerCapacity(worker, request, RemoveCapacity): lock, re-read, compare, write, unlock. */
  private async updateWorkerCapacity(worker: SeedWorker, cpu: number, memory: number): Promise<'ok' | 'lock' | 'version' | 'capacity'> {
    const key = this.workerKey(worker.id);
    const lockKey = `${key}:lock`;
    const token = randomBytes(8).toString('hex');
    if (!(await this.lock(lockKey, token))) return 'lock';
    try {
      const [freeCpu, freeMemory, version] = await this.redis.hmget(key, 'freeCpu', 'freeMemory', 'resourceVersion');
      if (Number(version) !== worker.resourceVersion) return 'version';
      const nextCpu = Number(freeCpu) - cpu;
      const nextMemory = Number(freeMemory) - memory;
      if (nextCpu < 0 || nextMemory < 0) return 'capacity';
      await this.redis.hset(key, 'freeCpu', nextCpu, 'freeMemory', nextMemory, 'resourceVersion', worker.resourceVersion + 1);
      return 'ok';
    } finally {
      await this.redis.eval(RELEASE_LOCK, 1, lockKey, token);
    }
  }

  async schedule(containerId: string, cpu: number, memory: number): Promise<SeedOutcome> {
    const containerKey = `${this.prefix}:container:${containerId}`;
    let conflicts = 0;
    for (let attempt = 1; attempt <= SEED_MAX_ATTEMPTS; attempt += 1) {
      if ((await this.redis.exists(containerKey)) === 1) {
        return { placed: false, workerId: null, conflicts, attempts: attempt, reason: 'already-scheduled' };
      }
      const candidates = (await this.readAllWorkers()).filter((w) => w.freeCpu >= cpu && w.freeMemory >= memory);
      if (candidates.length === 0) return { placed: false, workerId: null, conflicts, attempts: attempt, reason: 'no-capacity' };
      for (const worker of candidates) {
        const result = await this.updateWorkerCapacity(worker, cpu, memory);
        if (result === 'ok') {
          await this.redis.set(containerKey, worker.id);
          this.stats.placed += 1;
          this.stats.conflicts += conflicts;
          return { placed: true, workerId: worker.id, conflicts, attempts: attempt, reason: 'placed' };
        }
        conflicts += 1;
        if (result === 'lock') this.stats.lockFailures += 1;
        else if (result === 'version') this.stats.versionConflicts += 1;
        else this.stats.capacityConflicts += 1;
      }
    }
    this.stats.conflicts += conflicts;
    return { placed: false, workerId: null, conflicts, attempts: SEED_MAX_ATTEMPTS, reason: 'retries-exhausted' };
  }
}
