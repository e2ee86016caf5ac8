/**
 * A worker a previous owner declared lost but did not finish with (it stopped half-way: the worker
 * says lost, a container of it still says unknown) is finished by the next owner as soon as it
 * opens the shard, not a whole DROVER_WORKER_LOST_AFTER_MS later: its agent fenced itself long ago.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectRedis, eventually, startReplica, storeFor, testPrefix } from '../support/cluster.js';

const SHARDS = 4;
const redis = connectRedis();
let replica: Replica | null = null;

afterAll(async () => {
  await replica?.stop();
  await redis.quit();
});

describe('a lost worker left half-done by its previous owner', () => {
  it('ends its unknown container lost when the next owner opens the shard', async () => {
    const prefix = testPrefix('lw');
    const store = storeFor(redis, prefix, 10_000, SHARDS);
    const workerId = 'lw-worker';
    const shard = shardOf(workerId, SHARDS);
    // The previous owner: a short lease it will not renew.
    const { epoch } = await store.acquireLease(shard, 'previous-owner', 500);
    await store.registerWorker(epoch, { id: workerId, shard, cpu: 1_000, memory: 1_024, gpu: null, gpuCount: 0, pool: null, agent: true }, 'available');
    const commit = async (op: Parameters<typeof store.commitBatch>[2][number]) => {
      const result = await store.commitBatch(shard, epoch, [op]);
      if (result.fenced) throw new Error('fenced');
      return result.outcomes[0]!.code;
    };
    const version = async () => (await store.readWorker(shard, workerId))!.resourceVersion;
    expect(await commit({ kind: 'agent', workerId, expectedVersion: await version(), incarnation: 'gone', silent: false })).toBe('AGENT_RECORDED');
    expect(await commit({ kind: 'place', containerId: 'lw-c', workerId, expectedVersion: await version(), cpu: 500, memory: 256, gpuCount: 0, deadline: 0, requestKey: 'k' })).toBe('PLACED');
    expect(await commit({ kind: 'deliver', containerId: 'lw-c', workerId, expectedVersion: await version(), incarnation: 'gone' })).toBe('DELIVERED');
    expect(await commit({ kind: 'transition', containerId: 'lw-c', workerId, expectedVersion: await version(), from: ['placed'], to: 'unknown' })).toBe('TRANSITIONED');
    // It declared the worker lost, then stopped before ending the container.
    expect(await commit({ kind: 'status', workerId, expectedVersion: await version(), status: 'lost' })).toBe('STATUS_SET');
    await new Promise((resolve) => setTimeout(resolve, 600));

    replica = await startReplica({ prefix, shards: SHARDS, workerTtlMs: 1_000, workerLostAfterMs: 60_000 });
    await eventually(async () => (await store.readContainer('lw-c'))?.status === 'lost', 5_000, 'the unknown container ended lost');
    expect(await store.readContainer('lw-c')).toMatchObject({ status: 'lost', reason: 'WORKER_LOST' });
    expect(await store.readWorker(shard, workerId)).toMatchObject({ status: 'lost', freeCpu: 1_000 });
  });
});
