/**
 * Fencing: a replica that lost its lease (here: its lease loop stopped, as in a long pause) still
 * believes it owns its shards. When another replica takes them (bumping the epoch), the old
 * owner's next write is refused by Redis itself, nothing changes, and the old owner stops serving.
 */
import type { Redis } from 'ioredis';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, connectRedis, delay, eventually, snapshotKeys, startReplica, testPrefix } from '../support/cluster.js';

let redis: Redis;
let client: DroverClient;
const replicas: Replica[] = [];
let prefix: string;
const SHARDS = 4;
const TTL = 1_000;

beforeEach(async () => {
  redis = connectRedis();
  prefix = testPrefix('f');
  replicas.push(await startReplica({ prefix, shards: SHARDS, leaseTtlMs: TTL, replicaId: 'old-owner' }));
  client = await connectClient(prefix);
});

afterEach(async () => {
  await client.close();
  await Promise.all(replicas.splice(0).map((r) => r.stop()));
  await redis.quit();
});

const place = (id: string) => ({ k: 'place' as const, id, request: { cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null }, requestKey: id, deadline: 0, spec: '' });

describe('fencing', () => {
  it("refuses a paused owner's write after another replica took the shard", async () => {
    const old = replicas[0]!;
    expect((await client.registerWorker({ id: 'w1', cpu: 1_000, memory: 1_000 })).ok).toBe(true);
    const shard = shardOf('w1', SHARDS);
    const oldOwner = old.owner(shard)!;
    const oldEpoch = oldOwner.epoch;

    // The old owner freezes (a long GC pause, SIGSTOP, a partition): no heartbeats, no extensions ...
    await old.membership.stop();
    await old.leases.stop();
    await delay(TTL + 300);
    // ... and a new replica takes every shard, bumping each epoch.
    const next = await startReplica({ prefix, shards: SHARDS, leaseTtlMs: TTL, replicaId: 'new-owner' });
    replicas.push(next);
    expect(next.servedShards()).toContain(shard);
    expect(next.owner(shard)!.epoch).toBe(oldEpoch + 1);

    const before = await snapshotKeys(redis, prefix);
    // The old owner still thinks it owns the shard; its actor reserves and writes with the old epoch.
    // Its local lease check would stop it now, so let the pause fall between that check and the
    // write (the worst case): only Redis can refuse it.
    vi.spyOn(old.leases, 'holds').mockReturnValue(true);
    expect(old.servedShards()).toContain(shard);
    const result = await oldOwner.execute(place('late-write'));
    expect(result).toMatchObject({ ok: false, code: 'UNAVAILABLE' });
    expect(oldOwner.stats.fenceRefusals).toBe(1);
    // Redis refused it: not one key changed, the container does not exist.
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    expect(await redis.exists(next.store.keys.container('late-write'))).toBe(0);
    // The old owner stopped serving the shard at once, and ops sent to it now are refused locally.
    expect(old.servedShards()).not.toContain(shard);
    expect(oldOwner.state).toBe('closed');
    expect(await oldOwner.execute(place('later-still'))).toMatchObject({ ok: false, code: 'UNAVAILABLE' });

    // The new owner serves the worker normally.
    const placed = await client.submit({ id: 'fresh', cpu: 100, memory: 100 });
    expect(placed).toMatchObject({ ok: true, workerId: 'w1' });
    const w1 = await client.getWorker('w1');
    expect(w1.ok && w1.worker.freeCpu).toBe(900);
  });

  it('stops writing a shard as soon as a lease extension fails', async () => {
    const old = replicas[0]!;
    await client.registerWorker({ id: 'w2', cpu: 1_000, memory: 1_000 });
    const shard = shardOf('w2', SHARDS);
    // Someone else holds the lease now (its key was replaced, as after expiry and re-acquisition).
    await redis.set(old.store.keys.lease(shard), 'someone-else', 'PX', 60_000);
    await old.leases.tick();
    expect(old.servedShards()).not.toContain(shard);
    expect(old.leases.stats.extendFailures).toBeGreaterThanOrEqual(1);
    // Nobody serves the shard (the other holder is not a replica): clients get UNAVAILABLE, not a hang.
    await eventually(async () => {
      const reply = await client.drainWorker('w2');
      return reply.ok === false && reply.error.code === 'UNAVAILABLE';
    }, 10_000, 'UNAVAILABLE for the unserved shard');
  });
});
