/**
 * A requeue that lands while the backlog's first attempt at the same container is still in
 * flight (against a real Redis, with the attempt held open by the test). The attempt's answer
 * ("placed") is about the placement the requeue undid; the container must still be held, in
 * memory and in Redis, and tried again. Before the fix the requeue was told "already queued" by
 * the entry about to be forgotten, and the container stayed queued in Redis with nobody holding it
 * (a long chaos run found one: `stuck: ... Redis has it queued`).
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { PlacementRequest } from '../../actors/capacity.js';
import type { QueuedEntry } from '../../src/backlog/backlog-partition.js';
import { BacklogScheduler, type AttemptOutcome } from '../../src/backlog/backlog-scheduler.js';
import { CapacityView } from '../../src/router/capacity-view.js';
import { summarizeCapacity } from '../../src/shard/capacity-summary.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectRedis, eventually } from '../support/cluster.js';
import { openPartition } from './partition-fixture.js';

const redis = connectRedis();
afterAll(() => redis.quit());

const SHARDS = 8;
const HOME = 3;

describe('a requeue during an attempt in flight', () => {
  it('holds the container again once the attempt ends, instead of losing it to the stale answer', async () => {
    const { store, partition, log } = await openPartition(redis, 'rq', SHARDS, HOME);
    // The view says shard 0 has room, so the scheduler tries the container at once.
    const view = new CapacityView(SHARDS);
    view.update({
      shard: 0, owner: 'me', epoch: 1, seq: 1,
      groups: summarizeCapacity([{ spec: { id: 'w', shard: 0, cpu: 8_000, memory: 8_192, gpu: null, gpuCount: 0, pool: null }, status: 'available', freeCpu: 8_000, freeMemory: 8_192, freeGpuCount: 0 }]),
    });
    // Each attempt waits until the test answers it.
    const attempts: Array<{ entry: QueuedEntry; answer: (outcome: AttemptOutcome) => void }> = [];
    const scheduler = new BacklogScheduler({
      view, replicaId: 'me', log, holdAfterMs: 3_600_000,
      attempt: (entry) => new Promise((answer) => attempts.push({ entry, answer })),
      hold: async () => null,
      placeOn: async () => ({ outcome: 'unavailable' }),
    });
    scheduler.add(partition);

    let id = '';
    for (let i = 0; id === ''; i += 1) if (shardOf(`job-${i}`, SHARDS) === HOME) id = `job-${i}`;
    const request: PlacementRequest = { cpu: 1_000, memory: 1_024, gpu: null, gpuCount: 0, pool: null };
    const queued = await partition.queue({ id, ...request, priority: 0, maxWaitMs: 600_000, spec: '' }, 'key-1');
    if (queued.outcome !== 'queued') throw new Error(`not queued: ${queued.outcome}`);
    scheduler.queued(queued.entry);
    await eventually(() => attempts.length === 1, 2_000, 'the first attempt');

    // Meanwhile its worker is lost and its record is queued again (by the worker's shard), and the
    // requeue reaches the home backlog while the first attempt is still out.
    const requeue = scheduler.requeued(HOME, { id, ...request, priority: 0, maxWaitMs: 600_000, spec: '' }, 'key-1');
    let requeueSettled = false;
    void requeue.then(() => {
      requeueSettled = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(requeueSettled).toBe(false); // it waits for the attempt
    attempts[0]!.answer({ outcome: 'placed', workerId: 'w', shard: 0 });
    const result = await requeue;
    expect(result.outcome).toBe('queued');

    // Held again: in memory, in the Redis set, and tried again.
    expect(partition.entries.has(id)).toBe(true);
    expect(await redis.zscore(store.keys.backlog(HOME), id)).not.toBeNull();
    await eventually(() => attempts.length === 2, 2_000, 'a second attempt');
    expect(attempts[1]!.entry.id).toBe(id);
    attempts[1]!.answer({ outcome: 'placed', workerId: 'w', shard: 0 });
    scheduler.stop();
    partition.close();
  });
});
