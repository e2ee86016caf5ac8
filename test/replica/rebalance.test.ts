/**
 * Several replicas in one process (the chaos suite does the same with OS processes): shards spread
 * evenly, a joining replica takes its share gracefully, a leaving one hands its shards over, and
 * placements keep working across each change.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 12;
const prefix = testPrefix('rb');
const replicas: Replica[] = [];
let client: DroverClient;

const start = async (id: string) => {
  const replica = await startReplica({ prefix, shards: SHARDS, leaseTtlMs: 2_000, replicaId: id });
  replicas.push(replica);
  return replica;
};

/** Every shard served by exactly one of `live`, each holding its fair share. */
const balanced = (live: Replica[]) => {
  const counts = live.map((r) => r.servedShards().length);
  const all = live.flatMap((r) => r.servedShards());
  return (
    all.length === SHARDS &&
    new Set(all).size === SHARDS &&
    Math.max(...counts) - Math.min(...counts) <= 1
  );
};

beforeAll(async () => {
  await start('r-a');
  client = await connectClient(prefix);
  for (let i = 0; i < 30; i += 1) expect((await client.registerWorker({ id: `w${i}`, cpu: 10_000, memory: 10_000 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await Promise.all(replicas.map((r) => r.stop()));
});

let sequence = 0;
const placeSome = async (n: number) => {
  const replies = await Promise.all(Array.from({ length: n }, () => client.submit({ id: `c${sequence++}`, cpu: 10, memory: 10 })));
  return replies.filter((r) => r.ok).length;
};

describe('rebalancing', () => {
  it('spreads shards over replicas as they join, and places throughout', async () => {
    expect(replicas[0]!.servedShards().length).toBe(SHARDS);
    await start('r-b');
    await start('r-c');
    await eventually(() => balanced(replicas), 10_000, 'three replicas balanced');
    expect(replicas.map((r) => r.servedShards().length)).toEqual([4, 4, 4]);
    expect(await placeSome(200)).toBe(200);
    // Every replica's view of the members agrees.
    for (const r of replicas) expect(r.membership.members).toEqual(['r-a', 'r-b', 'r-c']);
  });

  it('moves only the joiner\'s share when a fourth replica joins', async () => {
    const before = new Map(replicas.flatMap((r) => r.servedShards().map((s) => [s, r.config.replicaId] as const)));
    const inFlight = placeSome(300);
    const joiner = await start('r-d');
    await eventually(() => balanced(replicas), 10_000, 'four replicas balanced');
    expect(await inFlight).toBe(300);
    const after = new Map(replicas.flatMap((r) => r.servedShards().map((s) => [s, r.config.replicaId] as const)));
    const moved = [...after].filter(([shard, owner]) => before.get(shard) !== owner);
    expect(joiner.servedShards().length).toBe(3);
    // The bounded-load hash may move a little more than the joiner's share, never a reshuffle.
    expect(moved.length).toBeLessThanOrEqual(6);
  });

  it('hands shards over when a replica leaves, losing no placement', async () => {
    const leaving = replicas.shift()!;
    const inFlight = placeSome(300);
    await leaving.stop();
    await eventually(() => balanced(replicas), 10_000, 'three replicas balanced again');
    expect(await inFlight).toBe(300);
    expect(await placeSome(100)).toBe(100);
    const stats = replicas.map((r) => r.stats().owners.fenceRefusals);
    expect(stats).toEqual([0, 0, 0]);
  });
});
