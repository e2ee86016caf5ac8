/**
 * What the debug page and the metrics say about hand-overs and refusals, from real events: a
 * second replica joins and the first hands half its shards over (the page shows each shard's
 * last hand-over, the metrics count hand-overs with their duration and lease acquisitions), and
 * a worker changed in Redis behind its owner makes Redis refuse a placement (the page lists the
 * version refusal with its shard, worker and code).
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, connectRedis, eventually, startReplica, storeFor, testPrefix } from '../support/cluster.js';

const SHARDS = 4;
let redis: Redis;
let first: Replica;
let second: Replica | null = null;
let client: DroverClient;
let prefix: string;

beforeAll(async () => {
  redis = connectRedis();
  prefix = testPrefix('hov');
  first = await startReplica({ prefix, shards: SHARDS, httpPort: 0, replicaId: 'hov-first' });
  client = await connectClient(prefix);
});

afterAll(async () => {
  await client.close();
  await second?.stop();
  await first.stop();
  await redis.quit();
});

const getJson = async (replica: Replica, path: string): Promise<any> => (await fetch(`http://127.0.0.1:${replica.httpAddress()!.port}${path}`)).json();
const metric = async (replica: Replica, pattern: RegExp): Promise<number> => {
  const text = await (await fetch(`http://127.0.0.1:${replica.httpAddress()!.port}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? Number.NaN);
};

describe('hand-overs and refusals on the page and in the metrics', () => {
  it('lists a version refusal with its shard, worker and code', async () => {
    expect((await client.registerWorker({ id: 'hov-lone', cpu: 1_000, memory: 1_000, pool: 'hov' })).ok).toBe(true);
    await redis.hincrby(storeFor(redis, prefix).keys.worker(shardOf('hov-lone', SHARDS), 'hov-lone'), 'resourceVersion', 1);
    expect(await client.submit({ queue: false, id: 'hov-c1', cpu: 500, memory: 500, pool: 'hov' })).toMatchObject({ ok: true, status: 'placed' });
    await eventually(async () => (await getJson(first, '/debug/snapshot')).refusals.length > 0, 3_000, 'refusal shown');
    const snapshot = await getJson(first, '/debug/snapshot');
    expect(snapshot.refusals[0]).toMatchObject({ kind: 'version', shard: shardOf('hov-lone', SHARDS), workerId: 'hov-lone', code: 'RV_CONFLICT' });
    expect(await metric(first, /^drover_version_conflicts_total\{replica="hov-first"\} (\d+)/m)).toBe(1);
  });

  it('shows each shard\'s last hand-over and counts hand-overs with their duration', async () => {
    const before = await getJson(first, '/debug/snapshot');
    expect(before.shards).toHaveLength(SHARDS);
    for (const shard of before.shards) expect(shard.lastHandOver).toMatchObject({ kind: 'acquired', epoch: shard.epoch });
    expect(await metric(first, /^drover_lease_acquisitions_total\{replica="hov-first"\} (\d+)/m)).toBe(SHARDS);

    second = await startReplica({ prefix, shards: SHARDS, httpPort: 0, replicaId: 'hov-second' });
    await eventually(() => first.servedShards().length + second!.servedShards().length === SHARDS && second!.servedShards().length > 0, 15_000, 'balanced');
    const given = SHARDS - first.servedShards().length;
    expect(given).toBeGreaterThan(0);

    // The page's snapshot is at most 250 ms old, and a hand-over is recorded once its lease is
    // released, just after the shard leaves the served set: wait for the page to say it.
    const handedOverShards = async () => {
      const snapshot = await getJson(first, '/debug/snapshot');
      return snapshot.handOvers.filter((h: { kind: string }) => h.kind === 'handed-over');
    };
    await eventually(async () => (await handedOverShards()).length === given, 5_000, 'hand-overs on the page');
    const handedOver = await handedOverShards();
    expect(handedOver.map((h: { shard: number }) => h.shard).sort()).toEqual(second.servedShards());
    for (const handOver of handedOver) expect(handOver.durationMs).toBeGreaterThanOrEqual(0);
    expect(await metric(first, /^drover_handovers_total\{replica="hov-first"\} (\d+)/m)).toBe(given);
    expect(await metric(first, /^drover_handover_duration_seconds_count\{replica="hov-first"\} (\d+)/m)).toBe(given);
    expect(await metric(first, /^drover_shards_owned\{replica="hov-first"\} (\d+)/m)).toBe(SHARDS - given);

    const taken = await getJson(second, '/debug/snapshot');
    for (const shard of taken.shards) expect(shard.lastHandOver).toMatchObject({ kind: 'acquired', epoch: shard.epoch });
    expect(taken.shards.every((s: { epoch: number }) => s.epoch >= 2)).toBe(true);

    // The cluster view from either replica shows both, with the ownership each reports.
    const cluster = await getJson(second, '/debug/cluster');
    const owned = Object.fromEntries(cluster.replicas.map((r: { replicaId: string; shards: number[] }) => [r.replicaId, r.shards]));
    expect(owned).toEqual({ 'hov-first': first.servedShards(), 'hov-second': second.servedShards() });
  });
});
