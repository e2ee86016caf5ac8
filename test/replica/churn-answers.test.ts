/**
 * Under churn near full capacity, with no fault at all, a placement is answered "placed" or a true
 * NO_CAPACITY, and hardly ever UNAVAILABLE. (A router that concluded "nothing fits" while a release
 * elsewhere freed room used to answer UNAVAILABLE for almost half of its refusals: the freed shard
 * had not been asked. It now asks it.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const replicas: Replica[] = [];
let client: DroverClient;

beforeAll(async () => {
  const prefix = testPrefix('ch');
  for (const id of ['ch-1', 'ch-2', 'ch-3']) replicas.push(await startReplica({ prefix, shards: 32, leaseTtlMs: 2_000, replicaId: id }));
  await eventually(() => replicas.every((r) => r.servedShards().length >= 10), 10_000, 'balanced');
  client = await connectClient(prefix);
  for (let i = 0; i < 20; i += 1) expect((await client.registerWorker({ id: `ch-w${i}`, cpu: 4_000, memory: 8_192 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await Promise.all(replicas.map((r) => r.stop()));
});

describe('answers under churn', () => {
  it('refuses with NO_CAPACITY, not UNAVAILABLE, when the cluster is full and releases keep freeing room', async () => {
    const counts = { placed: 0, NO_CAPACITY: 0, UNAVAILABLE: 0, other: 0 };
    const held: string[] = [];
    let next = 0;
    const end = Date.now() + 5_000;
    await Promise.all(Array.from({ length: 32 }, async () => {
      while (Date.now() < end) {
        if (held.length > 0 && (next % 9) < 4) {
          const id = held.splice((next * 7919) % held.length, 1)[0]!;
          next += 1;
          expect((await client.release(id)).ok).toBe(true);
          continue;
        }
        const i = next++;
        const reply = await client.submit({ queue: false, id: `ch-c${i}`, cpu: [100, 250, 500, 1_000][i % 4]!, memory: [128, 512, 1_024, 2_048][i % 4]! });
        if (reply.ok) {
          counts.placed += 1;
          held.push(`ch-c${i}`);
        } else if (reply.error.code === 'NO_CAPACITY' || reply.error.code === 'UNAVAILABLE') counts[reply.error.code] += 1;
        else counts.other += 1;
      }
    }));
    // The fleet fills up and stays nearly full: both answers happen.
    expect(counts.placed, JSON.stringify(counts)).toBeGreaterThan(300);
    expect(counts.NO_CAPACITY, JSON.stringify(counts)).toBeGreaterThan(20);
    expect(counts.other, JSON.stringify(counts)).toBe(0);
    expect(counts.UNAVAILABLE, JSON.stringify(counts)).toBeLessThan(0.1 * (counts.NO_CAPACITY + counts.UNAVAILABLE));
  }, 30_000);
});
