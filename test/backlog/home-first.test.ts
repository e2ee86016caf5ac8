/**
 * The backlog places a queued container in its home shard first (against a real Redis, with the
 * attempts answered by the test): the replica that holds the backlog owns that shard, so the
 * attempt runs in process, and the placement's commit takes the id out of the backlog's Redis set
 * (commit_batch.lua answers 'unqueued'), leaving no drop to write. A container placed elsewhere is
 * dropped from the set by the backlog as before.
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
const OTHER = 0;
const REQUEST: PlacementRequest = { cpu: 1_000, memory: 1_024, gpu: null, gpuCount: 0, pool: null };

/** A summary of one worker in `shard` with `free` millicores (and as many MiB) free of 8,000. */
function summary(shard: number, free: number, seq: number) {
  return {
    shard, owner: 'me', epoch: 1, seq,
    groups: summarizeCapacity([{ spec: { id: `w${shard}`, shard, cpu: 8_000, memory: 8_192, gpu: null, gpuCount: 0, pool: null }, status: 'available', freeCpu: free, freeMemory: free, freeGpuCount: 0 }]),
  };
}

describe('home shard first', () => {
  it('asks the home shard first while it may fit, and writes no drop for a placement that left the set itself', async () => {
    const { store, partition, log } = await openPartition(redis, 'hf', SHARDS, HOME);
    const view = new CapacityView(SHARDS);
    view.update(summary(OTHER, 8_000, 1));
    view.update(summary(HOME, 8_000, 2));
    const attempts: Array<{ entry: QueuedEntry; prefer: number | null; answer: (outcome: AttemptOutcome) => void }> = [];
    const scheduler = new BacklogScheduler({
      view, replicaId: 'me', log, holdAfterMs: 3_600_000,
      attempt: (entry, prefer) => new Promise((answer) => attempts.push({ entry, prefer, answer })),
      hold: async () => null,
      placeOn: async () => ({ outcome: 'unavailable' }),
    });
    scheduler.add(partition);
    const ids: string[] = [];
    for (let i = 0; ids.length < 5; i += 1) if (shardOf(`job-${i}`, SHARDS) === HOME) ids.push(`job-${i}`);
    const queue = async (id: string) => {
      const queued = await partition.queue({ id, ...REQUEST, priority: 0, maxWaitMs: 600_000, spec: '' }, `key-${id}`);
      if (queued.outcome !== 'queued') throw new Error(`not queued: ${queued.outcome}`);
      scheduler.queued(queued.entry);
    };
    const inSet = async (id: string) => (await redis.zscore(store.keys.backlog(HOME), id)) !== null;
    /** Longer than the backlog's drop delay (100 ms), so a drop that was due has been written. */
    const afterDrops = () => new Promise((resolve) => setTimeout(resolve, 400));

    // Room at home: the home shard is asked first. Its commit took the id out of the set (as
    // commit_batch does when it answers 'unqueued'): the backlog writes nothing after it. Here the
    // test writes the record placed but leaves the id in the set, so a drop written anyway (the
    // record says placed: it would succeed) would show as the id leaving the set.
    await queue(ids[0]!);
    await eventually(() => attempts.length === 1, 2_000, 'the first attempt');
    expect(attempts[0]!.prefer).toBe(HOME);
    await redis.hset(store.keys.container(ids[0]!), 'status', 'placed', 'workerId', `w${HOME}`);
    attempts[0]!.answer({ outcome: 'placed', workerId: `w${HOME}`, shard: HOME, unqueued: true });
    await eventually(() => !partition.entries.has(ids[0]!), 2_000, 'the first entry forgotten');
    await afterDrops();
    expect(await inSet(ids[0]!)).toBe(true);

    // No room at home any more; the other shard has room and places the next one.
    view.update(summary(HOME, 0, 3));
    await queue(ids[1]!);
    await eventually(() => attempts.length === 2, 2_000, 'the second attempt');
    expect(attempts[1]!.prefer).not.toBe(HOME);
    // Placed in the other shard: its record says placed (written here as the other shard's commit
    // would), and the backlog drops the id from the set itself.
    await redis.hset(store.keys.container(ids[1]!), 'status', 'placed', 'workerId', `w${OTHER}`);
    attempts[1]!.answer({ outcome: 'placed', workerId: `w${OTHER}`, shard: OTHER });
    await eventually(async () => !(await inSet(ids[1]!)), 2_000, 'the drop of the container placed elsewhere');

    // Home has no room: it is not asked first. (Its shape emptied and was dropped, so there is no
    // shard that placed its last container either: the router chooses.)
    await queue(ids[2]!);
    await eventually(() => attempts.length === 3, 2_000, 'the third attempt');
    expect(attempts[2]!.prefer).toBeNull();
    // Room at home again: asked first again.
    view.update(summary(HOME, 8_000, 4));
    attempts[2]!.answer({ outcome: 'no-room' });
    await eventually(() => attempts.length === 4, 2_000, 'the retry');
    expect(attempts[3]!.prefer).toBe(HOME);
    attempts[3]!.answer({ outcome: 'placed', workerId: `w${HOME}`, shard: HOME, unqueued: true });
    await eventually(() => !partition.entries.has(ids[2]!), 2_000, 'the third entry forgotten');

    // An attempt answered "unavailable" is tried again after its backoff (250 ms), also when its
    // shape emptied and was dropped while it was out (another attempt's end ran the pump): it must
    // not wait for the 5 s safety sweep. A new shape has one attempt out at a time; a placement
    // lets one more out (its window), and the pump that starts it finds the heap empty and drops
    // the shape while that attempt is out.
    await queue(ids[3]!);
    await queue(ids[4]!);
    await eventually(() => attempts.length === 5, 2_000, 'the first attempt of two');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(attempts).toHaveLength(5);
    attempts[4]!.answer({ outcome: 'placed', workerId: `w${HOME}`, shard: HOME, unqueued: true });
    await eventually(() => attempts.length === 6, 2_000, 'the second attempt, after the first placed');
    const unavailable = attempts[5]!;
    await new Promise((resolve) => setTimeout(resolve, 50));
    unavailable.answer({ outcome: 'unavailable' });
    await eventually(() => attempts.length === 7, 2_000, 'the retry after the backoff');
    expect(attempts[6]!.entry.id).toBe(unavailable.entry.id);
    attempts[6]!.answer({ outcome: 'placed', workerId: `w${HOME}`, shard: HOME, unqueued: true });
    scheduler.stop();
    partition.close();
  });
});
