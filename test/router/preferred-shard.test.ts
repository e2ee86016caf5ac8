/**
 * A preferred shard (the backlog passes the shard that placed a shape's last container): under
 * best-fit the router asks it first while its summary says the request may fit there, and
 * otherwise chooses as always; under spread the preference is ignored. Against real replicas:
 * one per strategy, each owning every shard, with one worker in each of four shards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 8;
/** Four shards with one worker each, and one without any. */
const WORKER_SHARDS = [1, 3, 5, 6];
const EMPTY_SHARD = 2;

function idIn(base: string, shard: number): string {
  for (let i = 0; i < 10_000; i += 1) if (shardOf(`${base}-${i}`, SHARDS) === shard) return `${base}-${i}`;
  throw new Error('no id');
}

interface Setup {
  replica: Replica;
  client: DroverClient;
}
const setups: Setup[] = [];

async function setUp(strategy: 'best-fit' | 'spread'): Promise<Setup> {
  const prefix = testPrefix(`pref-${strategy}`);
  const replica = await startReplica({ prefix, shards: SHARDS, replicaId: `pref-${strategy}`, strategy });
  await eventually(() => replica.servedShards().length === SHARDS, 10_000, 'every shard owned');
  const client = await connectClient(prefix);
  const reply = await client.registerWorkers(WORKER_SHARDS.map((shard) => ({ id: idIn('w', shard), cpu: 10_000, memory: 10_000, pool: 'pref' })));
  if (!reply.ok) throw new Error(reply.error.message);
  const request = { cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: 'pref' };
  await eventually(() => WORKER_SHARDS.every((shard) => replica.router.view.mayFit(shard, request)), 5_000, 'the view knows every worker');
  const setup = { replica, client };
  setups.push(setup);
  return setup;
}

/** Place `count` containers through the replica's router with `prefer`; the shards they landed in. */
async function placeWith(replica: Replica, base: string, count: number, prefer: number | null): Promise<number[]> {
  const shards: number[] = [];
  for (let i = 0; i < count; i += 1) {
    const reply = await replica.router.place({ id: `${base}-${i}`, cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: 'pref' }, null, `key-${base}-${i}`, '', prefer);
    if (!reply.ok) throw new Error(`${base}-${i}: ${reply.error.code} ${reply.error.message}`);
    shards.push(shardOf(reply.workerId, SHARDS));
  }
  return shards;
}

afterAll(async () => {
  for (const { replica, client } of setups) {
    await client.close();
    await replica.stop();
  }
});

describe('a preferred shard', () => {
  let bestFit: Setup;
  let spread: Setup;
  beforeAll(async () => {
    bestFit = await setUp('best-fit');
    spread = await setUp('spread');
  });

  it('under best-fit, is asked first while it may fit, and every placement lands there', async () => {
    const before = bestFit.replica.router.stats.preferredPlaced;
    expect(await placeWith(bestFit.replica, 'bf', 20, WORKER_SHARDS[2]!)).toEqual(Array(20).fill(WORKER_SHARDS[2]));
    expect(bestFit.replica.router.stats.preferredPlaced - before).toBe(20);
    // Without a preference the router spreads by its own choice (two random shards, the emptier).
    expect(new Set(await placeWith(bestFit.replica, 'bf-none', 20, null)).size).toBeGreaterThan(1);
  });

  it('under best-fit, is passed over when its summary says nothing fits there (no worker of the pool)', async () => {
    const before = bestFit.replica.router.stats.preferredPlaced;
    const shards = await placeWith(bestFit.replica, 'bf-empty', 10, EMPTY_SHARD);
    expect(shards.every((shard) => WORKER_SHARDS.includes(shard))).toBe(true);
    expect(bestFit.replica.router.stats.preferredPlaced).toBe(before);
    // A shard number outside the cluster is no preference at all.
    expect(bestFit.replica.router.view.mayFit(SHARDS + 3, { cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: 'pref' })).toBe(false);
  });

  it('under spread, is ignored: placements still spread over the shards', async () => {
    const shards = await placeWith(spread.replica, 'sp', 20, WORKER_SHARDS[2]!);
    expect(new Set(shards).size).toBeGreaterThan(1);
    expect(spread.replica.router.stats.preferredPlaced).toBe(0);
  });
});
