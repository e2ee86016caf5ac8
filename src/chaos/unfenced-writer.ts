/**
 * A deliberately unsafe writer, for proving the chaos checker works: a scheduler process built the
 * seed's way (a shard lease taken with redlock and kept by a timer, then per placement: check the
 * container is not placed, read the worker, take a per-worker lock with a 5 s TTL, re-read and
 * compare the ResourceVersion, then write from the values read), aimed at Drover's own keys, with
 * no epoch check. Nothing in Drover uses it. The checker's test runs it as its own OS process,
 * stops it with SIGSTOP between its checks and its write, longer than its lock and its lease,
 * lets a real replica take the shard and fill the worker, then resumes it: the write it then makes
 * is the double placement and over-commit the checker must report.
 *
 * Run as a process: `node dist/src/chaos/unfenced-writer.js` with the job as JSON in
 * DROVER_UNFENCED_WRITE (see UnfencedWriteJob). It prints one JSON line per step on stdout:
 * {"event":"leased"}, {"event":"checked"} (the test's cue to SIGSTOP it), {"event":"placed"}.
 */
import { Redis } from 'ioredis';
import Redlock from 'redlock';
import { fileURLToPath } from 'node:url';
import { DroverStore } from '../store/store.js';

export interface UnfencedPlacement {
  readonly containerId: string;
  readonly shard: number;
  readonly workerId: string;
  readonly cpu: number;
  readonly memory: number;
}

export interface UnfencedWriteJob {
  readonly redisUrl: string;
  readonly prefix: string;
  readonly placement: UnfencedPlacement;
  /** The shard lease's TTL; it is extended every third of it, as a replica does, while running. */
  readonly leaseTtlMs: number;
  /** How long to wait between the checks and the write (the window in which it is stopped). */
  readonly holdMs: number;
}

/** Same lock settings as the seed: TTL 5 s, one retry. */
const SEED_LOCK_TTL_MS = 5_000;

/** The seed's placement path on Drover's keys: checks, then `beforeWrite`, then the unfenced write. */
async function placeUnfenced(store: DroverStore, placement: UnfencedPlacement, beforeWrite: () => Promise<void>): Promise<string> {
  const { redis, keys } = store;
  const { containerId, shard, workerId, cpu, memory } = placement;
  // Layer 3 of the seed: is the container already scheduled?
  if ((await redis.hget(keys.container(containerId), 'workerId')) !== null) throw new Error(`${containerId} is already placed`);
  const workerKey = keys.worker(shard, workerId);
  const seen = await redis.hgetall(workerKey);
  const redlock = new Redlock([redis], { retryCount: 1, retryDelay: 100 });
  redlock.on('error', () => undefined);
  const lock = await redlock.acquire([`${workerKey}:seed-lock`], SEED_LOCK_TTL_MS);
  // Layer 1: compare the ResourceVersion under the lock.
  const fresh = await redis.hgetall(workerKey);
  if (fresh.resourceVersion !== seen.resourceVersion) throw new Error('resource version changed');
  const freeCpu = Number(fresh.freeCpu) - cpu;
  const freeMemory = Number(fresh.freeMemory) - memory;
  if (freeCpu < 0 || freeMemory < 0) throw new Error('does not fit');
  // The pause: GC, SIGSTOP, a slow network. The lock and the shard lease expire meanwhile.
  await beforeWrite();
  const version = Number(fresh.resourceVersion) + 1;
  await redis.hset(workerKey, 'freeCpu', freeCpu, 'freeMemory', freeMemory, 'resourceVersion', version);
  await redis.hset(keys.container(containerId), 'status', 'placed', 'workerId', workerId, 'shard', shard, 'cpu', cpu, 'memory', memory, 'gpuCount', 0, 'placedAt', Date.now(), 'nonce', 'unfenced');
  await redis.sadd(keys.workerContainers(shard, workerId), containerId);
  await redis.xadd(keys.history(shard), '*', 'op', 'place', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory, 'gpuCount', 0, 'version', version, 'epoch', 'unfenced');
  await lock.release().catch(() => undefined); // long expired
  return workerId;
}

function say(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

/** The process: hold the shard's lease like a (seed-style) replica, then place once, unfenced. */
async function runUnfencedWriter(job: UnfencedWriteJob): Promise<void> {
  const redis = new Redis(job.redisUrl, { maxRetriesPerRequest: 2 });
  const store = new DroverStore(redis, { prefix: job.prefix, shards: 1 /* it registers no worker */, historyCap: 0, releasedRetentionSeconds: 0 });
  const redlock = new Redlock([redis], { retryCount: 20, retryDelay: 100 });
  redlock.on('error', () => undefined);
  let lease = await redlock.acquire([store.keys.lease(job.placement.shard)], job.leaseTtlMs);
  // Kept alive by a timer, as a replica keeps its leases: while the process is stopped, it is not.
  const keeper = setInterval(() => {
    lease.extend(job.leaseTtlMs).then((extended) => (lease = extended), () => undefined);
  }, Math.floor(job.leaseTtlMs / 3));
  say({ event: 'leased', shard: job.placement.shard });
  try {
    const workerId = await placeUnfenced(store, job.placement, async () => {
      say({ event: 'checked' });
      await new Promise((resolve) => setTimeout(resolve, job.holdMs));
    });
    say({ event: 'placed', containerId: job.placement.containerId, workerId });
  } finally {
    clearInterval(keeper);
    await lease.release().catch(() => undefined);
    redis.disconnect();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const raw = process.env.DROVER_UNFENCED_WRITE;
  if (raw === undefined) {
    process.stderr.write('DROVER_UNFENCED_WRITE (a JSON job) is required\n');
    process.exit(2);
  }
  runUnfencedWriter(JSON.parse(raw) as UnfencedWriteJob).then(
    () => process.exit(0),
    (error: unknown) => {
      say({ event: 'failed', message: (error as Error).message });
      process.exit(1);
    },
  );
}
