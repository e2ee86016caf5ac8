/**
 * Every kind of write waits in its shard's one queue, bounded by DROVER_MAX_QUEUED_OPS: releases
 * and status changes are refused with UNAVAILABLE past it, like placements, instead of piling up.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { ShardOpResult } from '../../src/protocol/shard-messages.js';
import type { WorkerShardOp } from '../../src/shard/shard-owner.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, startReplica } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;

beforeAll(async () => {
  replica = await startReplica({ shards: 1, maxQueuedOpsPerShard: 4 });
  client = await connectClient(replica.config.prefix);
  expect((await client.registerWorker({ id: 'bp-1', cpu: 100_000, memory: 100_000 })).ok).toBe(true);
  for (let i = 0; i < 30; i += 1) expect((await client.submit({ id: `bp-c${i}`, cpu: 10, memory: 10 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
});

async function burst(ops: WorkerShardOp[]): Promise<ShardOpResult[]> {
  const owner = replica.owner(0)!;
  // All in one turn of the event loop: the owner queues them behind the batch in flight.
  return Promise.all(ops.map((op) => owner.execute(op)));
}

describe('back-pressure', () => {
  it('refuses releases past the queue bound, and the refused ones succeed when retried', async () => {
    const ops: WorkerShardOp[] = Array.from({ length: 30 }, (_, i) => ({ k: 'release', id: `bp-c${i}`, workerId: 'bp-1' }));
    const results = await burst(ops);
    const refused = results.filter((r) => !r.ok);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect(r).toMatchObject({ ok: false, code: 'UNAVAILABLE', message: expect.stringMatching(/writes queued/) });
    expect(results.filter((r) => r.ok).length).toBeGreaterThanOrEqual(4);
    // Nothing was lost: the refused ones were not written, and a retry releases them.
    for (let i = 0; i < 30; i += 1) {
      if (!results[i]!.ok) expect((await client.release(`bp-c${i}`)).ok).toBe(true);
    }
    expect((await client.getWorker('bp-1'))).toMatchObject({ ok: true, worker: { freeCpu: 100_000, freeMemory: 100_000 } });
  });

  it('refuses status changes past the queue bound too', async () => {
    const ops: WorkerShardOp[] = Array.from({ length: 12 }, (_, i) => ({ k: 'status', workerId: 'bp-1', action: i % 2 === 0 ? 'drain' : 'enable' }));
    const results = await burst(ops);
    expect(results.some((r) => !r.ok && r.code === 'UNAVAILABLE' && /writes queued/.test(r.message))).toBe(true);
  });
});
