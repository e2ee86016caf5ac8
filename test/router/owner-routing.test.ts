/**
 * Ops grouped by owner replica: a router sends a turn's ops for every shard a replica owns in one
 * request to that replica's ops subject. Checked against two real replicas: a registration batch
 * travels in a few grouped requests and every worker lands in its shard; an op sent to a replica
 * that does not serve its shard (a stale owner) is answered notServed and goes on the shard's own
 * subject; an owner whose subject has no responder is skipped the same way; nothing is lost.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import { Subjects } from '../../src/protocol/subjects.js';
import type { ShardOpResult } from '../../src/protocol/shard-messages.js';
import type { Replica } from '../../src/replica/replica.js';
import { ShardClient } from '../../src/router/shard-client.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 8;
let a: Replica;
let b: Replica;
let client: DroverClient;
let prefix: string;

beforeAll(async () => {
  prefix = testPrefix('own');
  a = await startReplica({ prefix, shards: SHARDS, replicaId: 'own-a' });
  b = await startReplica({ prefix, shards: SHARDS, replicaId: 'own-b' });
  await eventually(() => a.servedShards().length + b.servedShards().length === SHARDS && a.servedShards().length > 0 && b.servedShards().length > 0, 15_000, 'balanced');
  // Each router has heard every shard's owner.
  await eventually(() => [...Array(SHARDS).keys()].every((shard) => a.router.view.ownerOf(shard) !== null && b.router.view.ownerOf(shard) !== null), 5_000, 'owners known');
  client = await connectClient(prefix);
});

afterAll(async () => {
  await client.close();
  await b.stop();
  await a.stop();
});

describe('ops grouped by owner replica', () => {
  it('registers a batch through a few grouped requests, every worker in its shard', async () => {
    const before = { a: { ...a.router.shardClient.stats }, b: { ...b.router.shardClient.stats } };
    const workers = Array.from({ length: 200 }, (_, i) => ({ id: `own-w${i}`, cpu: 1_000, memory: 1_024 }));
    const reply = await client.registerWorkers(workers);
    expect(reply.ok).toBe(true);
    if (!reply.ok) return;
    expect(reply.results.every((result) => result.ok)).toBe(true);
    // Whichever router took the batch sent the other replica's shards' ops in grouped requests.
    const delta = (now: typeof before.a, then: typeof before.a) => ({ ownerRequests: now.ownerRequests - then.ownerRequests, ops: now.ops - then.ops, notServed: now.notServed - then.notServed });
    const sent = [delta(a.router.shardClient.stats, before.a), delta(b.router.shardClient.stats, before.b)];
    const total = sent.reduce((sum, d) => ({ ownerRequests: sum.ownerRequests + d.ownerRequests, ops: sum.ops + d.ops, notServed: sum.notServed + d.notServed }), { ownerRequests: 0, ops: 0, notServed: 0 });
    expect(total.ownerRequests).toBeGreaterThan(0);
    expect(total.ops / total.ownerRequests).toBeGreaterThan(10);
    expect(total.notServed).toBe(0);
    for (const worker of workers.slice(0, 20)) {
      const got = await client.getWorker(worker.id);
      expect(got).toMatchObject({ ok: true, worker: { id: worker.id, shard: shardOf(worker.id, SHARDS) } });
    }
  });

  it('sends an op a stale owner does not serve on the shard subject instead', async () => {
    const shard = b.servedShards()[0]!;
    const workerId = [...Array(1_000).keys()].map((i) => `own-stale-${i}`).find((id) => shardOf(id, SHARDS) === shard)!;
    // A view that wrongly names replica a as the owner of b's shard.
    const shardClient = new ShardClient({ nc: client.nc, subjects: new Subjects(prefix), timeoutMs: 5_000, onCapacity: () => undefined, ownerOf: () => 'own-a' });
    const result: ShardOpResult = await shardClient.send(shard, { k: 'register', worker: { id: workerId, cpu: 500, memory: 500, gpu: null, gpuCount: 0, pool: null, agent: false } });
    expect(result).toMatchObject({ ok: true, worker: { id: workerId, shard } });
    expect(shardClient.stats).toMatchObject({ ownerRequests: 1, notServed: 1 });
    expect(b.owner(shard)?.actorOf(workerId)).toBeDefined();
    expect(a.owner(shard)).toBeNull();
  });

  it('skips an owner whose subject has no responder (a replica that is gone)', async () => {
    const shard = a.servedShards()[0]!;
    const workerId = [...Array(1_000).keys()].map((i) => `own-ghost-${i}`).find((id) => shardOf(id, SHARDS) === shard)!;
    const shardClient = new ShardClient({ nc: client.nc, subjects: new Subjects(prefix), timeoutMs: 5_000, onCapacity: () => undefined, ownerOf: () => 'own-ghost' });
    const result = await shardClient.send(shard, { k: 'register', worker: { id: workerId, cpu: 500, memory: 500, gpu: null, gpuCount: 0, pool: null, agent: false } });
    expect(result).toMatchObject({ ok: true, worker: { id: workerId } });
    expect(shardClient.stats).toMatchObject({ ownerRequests: 1, noResponders: 1 });
    expect(a.owner(shard)?.actorOf(workerId)).toBeDefined();
  });

  it('splits a turn\'s ops into requests under the server\'s payload limit (commands of up to 16 KiB each)', async () => {
    const shards = new Set(b.servedShards());
    const ids = [...Array(5_000).keys()].map((i) => `own-big-${i}`).filter((id) => shards.has(shardOf(id, SHARDS))).slice(0, 120);
    const spec = JSON.stringify({ command: ['sh', '-c', 'x'.repeat(4_000), 'y'.repeat(4_000), 'z'.repeat(4_000)], env: null });
    const shardClient = new ShardClient({ nc: client.nc, subjects: new Subjects(prefix), timeoutMs: 10_000, onCapacity: () => undefined, ownerOf: () => 'own-b' });
    // All in one turn: about 1.5 MB of ops for one owner, over the 1 MB the server takes in one message.
    const results = await Promise.all(ids.map((id) => shardClient.send(shardOf(id, SHARDS), {
      k: 'place', id, request: { cpu: 10, memory: 10, gpu: null, gpuCount: 0, pool: null }, requestKey: 'own.big', deadline: Date.now() + 10_000, spec, priority: 0, maxWaitMs: 60_000,
    })));
    expect(results.filter((result) => !result.ok)).toEqual([]);
    expect(shardClient.stats.ownerRequests).toBeGreaterThanOrEqual(3);
    expect(shardClient.stats.ops).toBe(ids.length);
    const placed = await client.getContainer(ids[0]!);
    expect(placed).toMatchObject({ ok: true, container: { id: ids[0], status: 'placed' } });
  });

  it('answers UNAVAILABLE (outcome unknown) for a malformed result entry, and still answers every other op', async () => {
    const fake = client.nc.subscribe(`${prefix}.ops.replica.own-fake`, {
      callback: (_error, msg) => {
        msg.respond(JSON.stringify({ results: [null, { ok: true, workerId: 'w' }], capacities: [] }));
      },
    });
    await client.nc.flush();
    try {
      const shardClient = new ShardClient({ nc: client.nc, subjects: new Subjects(prefix), timeoutMs: 5_000, onCapacity: () => undefined, ownerOf: () => 'own-fake' });
      const op = (id: string) => ({ k: 'place' as const, id, request: { cpu: 1, memory: 1, gpu: null, gpuCount: 0, pool: null }, requestKey: 'own.fake', deadline: Date.now() + 5_000, spec: '', priority: 0, maxWaitMs: 1_000 });
      const results = await Promise.all([shardClient.send(0, op('own-f1')), shardClient.send(1, op('own-f2'))]);
      expect(results[0]).toMatchObject({ ok: false, code: 'UNAVAILABLE', unknown: true });
      expect(results[1]).toEqual({ ok: true, workerId: 'w' });
    } finally {
      fake.unsubscribe();
    }
  });
});
