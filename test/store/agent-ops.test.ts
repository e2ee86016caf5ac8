/**
 * commit_batch.lua's ops for agents against a real Redis: D (a placed container's assignment is
 * delivered to the worker's recorded agent incarnation; a delivered one can no longer be requeued),
 * A (one live agent incarnation per worker), and transitions to and from `unknown`. Every refusal
 * is shown to write nothing.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../../actors/capacity.js';
import type { BatchOp, DroverStore, PlaceOp } from '../../src/store/store.js';
import { connectRedis, snapshotKeys, storeFor, testPrefix } from '../support/cluster.js';

const redis: Redis = connectRedis();
afterAll(() => redis.quit());

const SHARD = 3;
const W = 'agent-worker';
const spec: WorkerSpec = { id: W, shard: SHARD, cpu: 2_000, memory: 4_096, gpu: null, gpuCount: 0, pool: null, agent: true };
let store: DroverStore;
let prefix: string;
let epoch: number;

beforeEach(async () => {
  prefix = testPrefix('ao');
  store = storeFor(redis, prefix);
  epoch = (await store.acquireLease(SHARD, 'mine', 10_000)).epoch;
  await store.registerWorker(epoch, spec, 'available');
});

const version = async () => (await store.readWorker(SHARD, W))!.resourceVersion;
const place = (containerId: string, expectedVersion: number): PlaceOp => ({
  kind: 'place', containerId, workerId: W, expectedVersion, cpu: 500, memory: 512, gpuCount: 0, deadline: 0, requestKey: `k-${containerId}`,
});
async function commit(...ops: BatchOp[]): Promise<Array<[string, string]>> {
  const result = await store.commitBatch(SHARD, epoch, ops);
  if (result.fenced) throw new Error('fenced');
  return result.outcomes.map((o) => [o.code, o.extra]);
}
const agent = async (incarnation: string, silent = false) => commit({ kind: 'agent', workerId: W, expectedVersion: await version(), incarnation, silent });
const deliver = async (containerId: string, incarnation: string) => commit({ kind: 'deliver', containerId, workerId: W, expectedVersion: await version(), incarnation });
const requeue = async (containerId: string) => commit({ kind: 'requeue', containerId, workerId: W, expectedVersion: await version(), homeShard: 1 });

describe('commit_batch agent ops', () => {
  it('A: records the first incarnation, keeps it, and refuses another while the worker holds containers, silent or not', async () => {
    expect(await agent('inc-1')).toEqual([['AGENT_RECORDED', '']]);
    expect(await redis.hget(store.keys.worker(SHARD, W), 'incarnation')).toBe('inc-1');
    expect(await agent('inc-1')).toEqual([['AGENT_RECORDED', 'inc-1']]);
    expect(await commit(place('c1', await version()))).toEqual([['PLACED', '']]);
    const before = await snapshotKeys(redis, prefix);
    expect(await agent('inc-2')).toEqual([['AGENT_CONFLICT', 'inc-1']]);
    expect(await agent('inc-2', true)).toEqual([['AGENT_CONFLICT', 'inc-1']]);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('A: another incarnation takes a worker that holds nothing once the recorded one is silent, or a lost worker', async () => {
    expect(await agent('inc-1')).toEqual([['AGENT_RECORDED', '']]);
    expect(await agent('inc-2')).toEqual([['AGENT_CONFLICT', 'inc-1']]);
    expect(await agent('inc-2', true)).toEqual([['AGENT_RECORDED', 'inc-1']]);
    expect(await commit(place('c1', await version()))).toEqual([['PLACED', '']]);
    expect(await commit({ kind: 'status', workerId: W, expectedVersion: await version(), status: 'lost' })).toEqual([['STATUS_SET', '']]);
    expect(await agent('inc-3')).toEqual([['AGENT_RECORDED', 'inc-2']]);
  });

  it('D: marks a placed container delivered only to the recorded incarnation; a delivered one is never requeued', async () => {
    expect(await agent('inc-1')).toEqual([['AGENT_RECORDED', '']]);
    expect(await commit(place('c1', await version()), place('c2', await version()))).toEqual([['PLACED', ''], ['PLACED', '']]);
    const before = await snapshotKeys(redis, prefix);
    expect(await deliver('c1', 'inc-other')).toEqual([['NOT_IN_STATE', 'incarnation']]);
    expect(await deliver('missing', 'inc-1')).toEqual([['NOT_IN_STATE', 'none']]);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    expect(await deliver('c1', 'inc-1')).toEqual([['DELIVERED', '']]);
    expect((await store.readContainer('c1'))!.deliveredAt).toBeGreaterThan(0);
    // Its agent may have started it: Redis refuses to put it back in the queue.
    const delivered = await snapshotKeys(redis, prefix);
    expect(await requeue('c1')).toEqual([['NOT_IN_STATE', 'delivered']]);
    expect(await snapshotKeys(redis, prefix)).toEqual(delivered);
    // The undelivered one goes back to the queue.
    expect((await requeue('c2'))[0]![0]).toBe('REQUEUED');
    expect(await store.readContainer('c2')).toMatchObject({ status: 'queued', workerId: null });
  });

  it('T: placed or running to unknown and back to running (keeping when it first ran), unknown to stopping; never to an unknown status', async () => {
    expect(await agent('inc-1')).toEqual([['AGENT_RECORDED', '']]);
    expect(await commit(place('c1', await version()))).toEqual([['PLACED', '']]);
    const v = await version();
    const transition = (from: Array<'placed' | 'running' | 'unknown'>, to: 'running' | 'stopping' | 'unknown') =>
      commit({ kind: 'transition', containerId: 'c1', workerId: W, expectedVersion: v, from, to });
    expect(await transition(['placed'], 'running')).toEqual([['TRANSITIONED', 'running']]);
    const runningAt = (await store.readContainer('c1'))!.runningAt;
    expect(await transition(['placed', 'running'], 'unknown')).toEqual([['TRANSITIONED', 'unknown']]);
    expect((await store.readContainer('c1'))!.status).toBe('unknown');
    expect(await transition(['placed'], 'running')).toEqual([['NOT_IN_STATE', 'unknown']]);
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(await transition(['unknown'], 'running')).toEqual([['TRANSITIONED', 'running']]);
    expect((await store.readContainer('c1'))!.runningAt).toBe(runningAt);
    expect(await transition(['running'], 'unknown')).toEqual([['TRANSITIONED', 'unknown']]);
    expect(await transition(['placed', 'running', 'unknown'], 'stopping')).toEqual([['TRANSITIONED', 'stopping']]);
    // A transition to a status the script does not allow fails the whole batch before any write.
    await expect(store.commitBatch(SHARD, epoch, [{ kind: 'transition', containerId: 'c1', workerId: W, expectedVersion: v, from: ['stopping' as 'placed'], to: 'running' }]))
      .rejects.toThrow(/malformed op/);
  });
});
