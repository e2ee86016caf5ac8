/**
 * A backlog partition's reconciliation against a real Redis: memory and the home set are made to
 * disagree behind the partition's back, in each of the ways a lost reply or a crash leaves them,
 * and the periodic reconciliation (here every 200 ms) makes them agree with the records again:
 *   - a queued record in the set that no entry holds is adopted (and handed to the scheduler);
 *   - an entry whose record is queued but whose id left the set is put back in the set;
 *   - an entry whose record is no longer queued is forgotten, and an id in the set whose record is
 *     not queued is dropped from it.
 */
import type { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { BacklogPartition, type QueuedEntry } from '../../src/backlog/backlog-partition.js';
import { shardOf } from '../../src/shard/shard-map.js';
import type { BacklogOp } from '../../src/store/store.js';
import { Incident } from '../../src/util/incident.js';
import { silentLogger } from '../../src/util/log.js';
import { connectRedis, eventually, storeFor, testPrefix } from '../support/cluster.js';

const redis: Redis = connectRedis();
afterAll(() => redis.quit());

const SHARDS = 8;
const HOME = 6;

function idsIn(base: string, count: number): string[] {
  const ids: string[] = [];
  for (let i = 0; ids.length < count; i += 1) if (shardOf(`${base}-${i}`, SHARDS) === HOME) ids.push(`${base}-${i}`);
  return ids;
}

const queueOp = (id: string): BacklogOp => ({
  kind: 'queue', containerId: id, requestKey: `k-${id}`, priority: 0, maxWaitMs: 600_000, cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null, spec: '',
});

describe('backlog reconciliation', () => {
  it('adopts, restores, forgets and drops until memory and the set agree with the records', async () => {
    const store = storeFor(redis, testPrefix('rc'), 0, SHARDS);
    const { epoch } = await store.acquireLease(HOME, 'me', 60_000);
    const log = silentLogger();
    const partition = await BacklogPartition.open({
      store, shard: HOME, epoch, log, redisWrites: new Incident(log, 'test writes'), leaseHeld: () => true,
      onFenced: () => undefined, events: { publish: () => undefined }, maxQueuedOps: 1_000, reconcileEveryMs: 200,
    });
    const adopted: QueuedEntry[] = [];
    partition.onAdopted = (entry) => adopted.push(entry);
    const [unheld, unlisted, ended, placedInSet] = idsIn('rc', 4) as [string, string, string, string];

    // Held in memory: `unlisted` and `ended`.
    for (const id of [unlisted, ended]) {
      const result = await partition.queue({ id, cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null, priority: 0, maxWaitMs: 600_000, spec: '' }, `k-${id}`);
      expect(result.outcome).toBe('queued');
    }
    // Behind its back, under its own epoch (replies it never read), and by hand where no script would:
    const landed = await store.commitBacklog(HOME, epoch, [queueOp(unheld), queueOp(placedInSet)]);
    expect(landed.fenced === false && landed.outcomes.map((o) => o.code)).toEqual(['QUEUED', 'QUEUED']);
    await redis.zrem(store.keys.backlog(HOME), unlisted);
    const endedNow = await store.commitBacklog(HOME, epoch, [{ kind: 'end', containerId: ended, status: 'failed', reason: 'EXPIRED' }]);
    expect(endedNow.fenced === false && endedNow.outcomes[0]!.code).toBe('ENDED_NOW');
    await redis.hset(store.keys.container(placedInSet), 'status', 'placed', 'workerId', 'w-elsewhere');

    await eventually(async () => {
      const members = await redis.zrange(store.keys.backlog(HOME), '0', '-1');
      return partition.entries.has(unheld) && !partition.entries.has(ended) && members.sort().join(' ') === [unheld, unlisted].sort().join(' ');
    }, 5_000, 'memory and the set agreeing with the records');
    expect(adopted.map((entry) => entry.id)).toEqual([unheld]);
    expect([...partition.entries.keys()].sort()).toEqual([unheld, unlisted].sort());
    expect(partition.stats.reconcile).toMatchObject({ adopted: 1, restored: 1 });
    expect(partition.stats.reconcile.forgotten).toBe(1);
    partition.close();
  });
});
