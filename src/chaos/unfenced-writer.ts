/**
 * A deliberately unsafe write path, for proving the checker works: the seed's lock-plus-version
 * approach (check the container is not placed, read the worker, take a per-worker lock with a 5 s
 * TTL, re-read and compare the ResourceVersion, then write from the values read) aimed at Drover's
 * own keys, with no epoch check. Nothing in Drover uses it; the chaos tests run it from a writer
 * that "pauses" between its checks and its write, longer than its lock and lease, and show the
 * checker reports the double placement or over-commit that follows.
 */
import Redlock from 'redlock';
import type { DroverStore } from '../store/store.js';

export interface UnfencedPlacement {
  readonly containerId: string;
  readonly shard: number;
  readonly workerId: string;
  readonly cpu: number;
  readonly memory: number;
}

/** Same lock settings as the seed: TTL 5 s, one retry. */
const SEED_LOCK_TTL_MS = 5_000;

export async function placeUnfenced(store: DroverStore, placement: UnfencedPlacement, pause: () => Promise<void>): Promise<string> {
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
  await pause();
  const version = Number(fresh.resourceVersion) + 1;
  await redis.hset(workerKey, 'freeCpu', freeCpu, 'freeMemory', freeMemory, 'resourceVersion', version);
  await redis.hset(keys.container(containerId), 'status', 'placed', 'workerId', workerId, 'shard', shard, 'cpu', cpu, 'memory', memory, 'gpuCount', 0, 'placedAt', Date.now(), 'nonce', 'unfenced');
  await redis.sadd(keys.workerContainers(shard, workerId), containerId);
  await redis.xadd(keys.history(shard), '*', 'op', 'place', 'container', containerId, 'worker', workerId, 'cpu', cpu, 'memory', memory, 'gpuCount', 0, 'version', version, 'epoch', 'unfenced');
  await lock.release().catch(() => undefined); // long expired
  return workerId;
}
