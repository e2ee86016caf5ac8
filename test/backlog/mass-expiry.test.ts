/**
 * Bounded expiry work: many queued containers expiring together behind a slow Redis link (here
 * 700 ms each way through a TCP fault proxy, so every end write is still in flight at the next
 * expiry sweep). Each entry is ended once: no end written twice, no drop written after a refused
 * end, and the writes waiting in the partition never exceed its bound, whatever their kind.
 *
 * Before the fix the sweep re-issued the end of every entry still in flight each second, each
 * duplicate answer added a drop, and neither counted against maxQueuedOps (the issue saw 201,000
 * writes waiting for 20,000 expiries).
 */
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { BacklogPartition } from '../../src/backlog/backlog-partition.js';
import { BacklogScheduler } from '../../src/backlog/backlog-scheduler.js';
import { startFaultProxy } from '../../src/chaos/fault-proxy.js';
import { CapacityView } from '../../src/router/capacity-view.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { Incident } from '../../src/util/incident.js';
import { silentLogger } from '../../src/util/log.js';
import { eventually, redisUrl, storeFor, testPrefix } from '../support/cluster.js';

const SHARDS = 8;
const HOME = 4;
const COUNT = 300;
const BOUND = 100;
const LATENCY_MS = 700;

const proxy = await startFaultProxy({ targetPort: Number(new URL(redisUrl()).port) });
const redis = new Redis(proxy.url('redis'), { maxRetriesPerRequest: 2 });
afterAll(async () => {
  await redis.quit();
  await proxy.close();
});

describe('a mass expiry behind a slow Redis link', () => {
  it('ends each entry once, writes no drop after it, and keeps its writes within the bound', async () => {
    const store = storeFor(redis, testPrefix('mx'), 0, SHARDS);
    const { epoch } = await store.acquireLease(HOME, 'me', 120_000);
    const log = silentLogger();
    const partition = await BacklogPartition.open({
      store, shard: HOME, epoch, log, redisWrites: new Incident(log, 'test writes'), leaseHeld: () => true,
      onFenced: () => undefined, events: { publish: () => undefined }, maxQueuedOps: BOUND,
    });
    const ids: string[] = [];
    for (let i = 0; ids.length < COUNT; i += 1) if (shardOf(`mx-${i}`, SHARDS) === HOME) ids.push(`mx-${i}`);
    // Queued within the bound (a chunk at a time), all expiring 1.5 s from now.
    for (let start = 0; start < COUNT; start += BOUND) {
      const results = await Promise.all(ids.slice(start, start + BOUND).map((id) =>
        partition.queue({ id, cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null, priority: 0, maxWaitMs: 1_500, spec: '' }, `k-${id}`)));
      expect(results.every((result) => result.outcome === 'queued')).toBe(true);
    }
    expect(partition.stats.written.queue).toBe(COUNT);
    // Nothing fits anywhere (an empty view): the scheduler only expires.
    const scheduler = new BacklogScheduler({
      view: new CapacityView(SHARDS), replicaId: 'me', log, holdAfterMs: 3_600_000,
      attempt: async () => ({ outcome: 'no-room' }), hold: async () => null, placeOn: async () => ({ outcome: 'unavailable' }),
    });
    scheduler.add(partition);
    proxy.setLatency(LATENCY_MS);
    scheduler.start();
    let peak = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, partition.pendingWrites);
    }, 10);
    try {
      await eventually(() => partition.entries.size === 0, 30_000, 'every entry ended');
    } finally {
      clearInterval(sampler);
      scheduler.stop();
    }
    proxy.setLatency(0);
    expect(scheduler.stats.expired).toBe(COUNT);
    expect(partition.stats.written.end).toBe(COUNT);
    expect(partition.stats.written.drop).toBe(0);
    expect(peak).toBeLessThanOrEqual(BOUND);
    expect(peak).toBeGreaterThan(0);
    const records = await store.readContainers(ids);
    expect(records.every((record) => record?.status === 'failed' && record.reason === 'EXPIRED')).toBe(true);
    expect(await redis.zcard(store.keys.backlog(HOME))).toBe(0);
    partition.close();
  }, 60_000);
});
