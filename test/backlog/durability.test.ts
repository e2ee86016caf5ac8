/**
 * A queued request outlives the replica that queued it: its home shard's next owner loads the
 * backlog from Redis and places it, once. Here the first replica is stopped after queueing (its
 * shards, backlogs included, go to the second). Then Redis itself is SIGKILLed and restarted from
 * its append-only file with requests queued.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Subscription } from '@nats-io/transport-node';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { startRedis } from '../../infra/servers.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 8;
const COUNT = 40;
let client: DroverClient | null = null;
let survivor: Replica | null = null;

afterAll(async () => {
  await client?.close();
  await survivor?.stop();
});

describe('backlog durability', () => {
  it('places every queued request exactly once after the replica that queued it is gone', async () => {
    const prefix = testPrefix('bd');
    const first = await startReplica({ prefix, shards: SHARDS, replicaId: 'bd-1' });
    client = await connectClient(prefix);
    const events: ContainerEvent[] = [];
    const subscription: Subscription = client.nc.subscribe(`${prefix}.events.containers.>`, {
      callback: (error, msg) => {
        if (!error) events.push(msg.json<ContainerEvent>());
      },
    });
    const ids = Array.from({ length: COUNT }, (_, i) => `dur-${i}`);
    for (const id of ids) expect(await client.submit({ id, cpu: 100, memory: 100 })).toMatchObject({ ok: true, status: 'queued' });
    survivor = await startReplica({ prefix, shards: SHARDS, replicaId: 'bd-2' });
    await first.stop();
    await eventually(() => survivor!.servedShards().length === SHARDS, 10_000, 'the survivor owns every shard');
    expect(survivor.stats().backlog.queued).toBe(COUNT);
    // Room for all of them, on two workers.
    for (const worker of ['dur-w1', 'dur-w2']) expect(await client.registerWorker({ id: worker, cpu: 2_000, memory: 2_000 })).toMatchObject({ ok: true });
    await eventually(async () => {
      const statuses = await Promise.all(ids.map(async (id) => {
        const reply = await client!.getContainer(id);
        return reply.ok ? reply.container.status : 'unknown';
      }));
      return statuses.every((s) => s === 'placed');
    }, 10_000, 'every queued container placed');
    await client.nc.flush();
    const placedEvents = events.filter((e) => e.status === 'placed');
    expect(new Set(placedEvents.map((e) => e.id)).size).toBe(COUNT);
    expect(placedEvents).toHaveLength(COUNT);
    // Nothing is left in any backlog, and the workers hold exactly what was placed.
    const workers = await Promise.all(['dur-w1', 'dur-w2'].map((id) => client!.getWorker(id)));
    const used = workers.reduce((sum, reply) => sum + (reply.ok ? reply.worker.cpu - reply.worker.freeCpu : 0), 0);
    expect(used).toBe(COUNT * 100);
    expect(survivor.stats().backlog.queued).toBe(0);
    subscription.unsubscribe();
  });
});

describe('backlog durability across a Redis restart', () => {
  it('keeps every queued request through a SIGKILL of Redis (append-only file, fsync always) and places each once after', async () => {
    const redis = await startRedis({ persistent: true });
    const prefix = testPrefix('br');
    let replica: Replica | null = null;
    let restartClient: DroverClient | null = null;
    try {
      replica = await startReplica({ prefix, shards: SHARDS, replicaId: 'br-1', redisUrl: redis.url, leaseTtlMs: 2_000 });
      restartClient = await connectClient(prefix);
      const ids = Array.from({ length: 30 }, (_, i) => `redis-restart-${i}`);
      for (const id of ids) expect(await restartClient.submit({ id, cpu: 100, memory: 100 })).toMatchObject({ ok: true, status: 'queued' });
      // Redis dies the hard way and comes back from its append-only file.
      await redis.restart();
      // The replica notices (its links and leases) and serves again; then room appears.
      await eventually(async () => {
        const reply = await restartClient!.registerWorker({ id: 'br-w1', cpu: 10_000, memory: 10_000 });
        return reply.ok;
      }, 20_000, 'registration after the Redis restart');
      await eventually(async () => {
        const statuses = await Promise.all(ids.map(async (id) => {
          const reply = await restartClient!.getContainer(id);
          return reply.ok ? reply.container.status : 'unknown';
        }));
        return statuses.every((s) => s === 'placed');
      }, 20_000, 'every queued container placed after the restart');
      const worker = await restartClient.getWorker('br-w1');
      expect(worker.ok && worker.worker.cpu - worker.worker.freeCpu).toBe(30 * 100);
    } finally {
      await restartClient?.close();
      await replica?.stop();
      await redis.stop();
    }
  });
});
