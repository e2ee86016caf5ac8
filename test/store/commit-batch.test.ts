/**
 * The fenced Lua scripts, driven directly against a real Redis: these checks are the safety
 * argument, so each refusal is shown to write nothing.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../../actors/capacity.js';
import { DroverStore, type PlaceOp } from '../../src/store/store.js';
import { connectRedis, snapshotKeys, storeFor, testPrefix } from '../support/cluster.js';

const redis: Redis = connectRedis();
afterAll(() => redis.quit());

const SHARD = 5;
const spec = (id: string, cpu = 2_000, memory = 4_096): WorkerSpec => ({ id, shard: SHARD, cpu, memory, gpu: null, gpuCount: 0, pool: null });

let store: DroverStore;
let prefix: string;
let epoch: number;

beforeEach(async () => {
  prefix = testPrefix('s');
  store = storeFor(redis, prefix);
  await redis.set(store.keys.lease(SHARD), 'mine');
  epoch = await store.takeEpoch(SHARD, 'mine');
});

const place = (containerId: string, workerId: string, expectedVersion: number, cpu = 500, extra: Partial<PlaceOp> = {}): PlaceOp => ({
  kind: 'place', containerId, workerId, expectedVersion, cpu, memory: 512, gpuCount: 0, deadline: 0, nonce: `n-${containerId}`, ...extra,
});

describe('take_epoch', () => {
  it('bumps the epoch only for the lease holder', async () => {
    expect(epoch).toBe(1);
    expect(await store.takeEpoch(SHARD, 'not-mine')).toBe(0);
    expect(await store.currentEpoch(SHARD)).toBe(1);
    expect(await store.takeEpoch(SHARD, 'mine')).toBe(2);
  });
});

describe('register_worker', () => {
  it('creates, is idempotent for the same spec, refuses another spec, and is fenced', async () => {
    const created = await store.registerWorker(epoch, spec('w1'), 'available');
    expect(created.outcome).toBe('created');
    const again = await store.registerWorker(epoch, spec('w1'), 'available');
    expect(again.outcome).toBe('exists');
    const other = await store.registerWorker(epoch, spec('w1', 3_000), 'available');
    expect(other.outcome).toBe('spec-mismatch');
    expect((await store.readWorker(SHARD, 'w1'))?.cpu).toBe(2_000);
    const before = await snapshotKeys(redis, prefix);
    expect(await store.registerWorker(epoch + 1, spec('w2'), 'available')).toEqual({ outcome: 'fenced', currentEpoch: epoch });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });
});

describe('commit_batch', () => {
  beforeEach(async () => {
    await store.registerWorker(epoch, spec('w1'), 'available');
    await store.registerWorker(epoch, spec('w2', 600, 600), 'available');
  });

  it('places, bumps the version, records the container and chains versions within a batch', async () => {
    const result = await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1), place('c2', 'w1', 1), place('c3', 'w2', 1)]);
    expect(result).toEqual({
      fenced: false,
      outcomes: [
        { code: 'PLACED', version: 2, extra: '' },
        { code: 'PLACED', version: 3, extra: '' },
        { code: 'PLACED', version: 2, extra: '' },
      ],
    });
    const w1 = await store.readWorker(SHARD, 'w1');
    expect([w1?.freeCpu, w1?.freeMemory, w1?.resourceVersion]).toEqual([1_000, 3_072, 3]);
    expect((await store.readContainer('c2'))).toMatchObject({ status: 'placed', workerId: 'w1', shard: SHARD, cpu: 500 });
    expect((await store.workerContainerIds(SHARD, 'w1')).sort()).toEqual(['c1', 'c2']);
  });

  it('refuses a stale epoch and writes nothing', async () => {
    const before = await snapshotKeys(redis, prefix);
    await redis.set(store.keys.lease(SHARD), 'theirs');
    const theirs = await store.takeEpoch(SHARD, 'theirs');
    const afterTakeover = await snapshotKeys(redis, prefix);
    expect(await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1)])).toEqual({ fenced: true, currentEpoch: theirs });
    expect(await snapshotKeys(redis, prefix)).toEqual(afterTakeover);
    expect(afterTakeover.size).toBe(before.size);
  });

  it('refuses a stale ResourceVersion, too little capacity, and a duplicate container, writing nothing for them', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1)]);
    const before = await snapshotKeys(redis, prefix);
    const result = await store.commitBatch(SHARD, epoch, [
      place('c2', 'w1', 1), // the worker is at version 2 now
      place('c3', 'w2', 1, 601), // w2 has 600 millicores
      place('c1', 'w2', 1), // c1 is on w1 already
    ]);
    expect(result).toEqual({
      fenced: false,
      outcomes: [
        { code: 'RV_CONFLICT', version: 2, extra: '' },
        { code: 'NO_CAPACITY', version: 1, extra: '' },
        { code: 'ALREADY_PLACED', version: 0, extra: 'w1 n-c1' },
      ],
    });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('places the same container once when it appears twice in one batch', async () => {
    const result = await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1), place('c1', 'w2', 1, 500, { nonce: 'other' })]);
    expect(result.fenced === false && result.outcomes.map((o) => o.code)).toEqual(['PLACED', 'ALREADY_PLACED']);
    expect((await store.readWorker(SHARD, 'w2'))?.freeCpu).toBe(600);
  });

  it('refuses placements past their deadline', async () => {
    const result = await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1, 500, { deadline: Date.now() - 10_000 })]);
    expect(result.fenced === false && result.outcomes[0]?.code).toBe('EXPIRED');
    expect(await store.readContainer('c1')).toBeNull();
  });

  it('releases once: a second release frees nothing', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1)]);
    const first = await store.commitBatch(SHARD, epoch, [{ kind: 'release', containerId: 'c1', workerId: 'w1', expectedVersion: 2 }]);
    expect(first).toEqual({ fenced: false, outcomes: [{ code: 'RELEASED', version: 3, extra: '500 512 0' }] });
    const before = await snapshotKeys(redis, prefix);
    const second = await store.commitBatch(SHARD, epoch, [{ kind: 'release', containerId: 'c1', workerId: 'w1', expectedVersion: 3 }]);
    expect(second.fenced === false && second.outcomes[0]?.code).toBe('ALREADY_RELEASED');
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    const w1 = await store.readWorker(SHARD, 'w1');
    expect([w1?.freeCpu, w1?.freeMemory]).toEqual([2_000, 4_096]);
    expect(await store.workerContainerIds(SHARD, 'w1')).toEqual([]);
  });

  it('refuses placements on a worker that is not available, and records status changes', async () => {
    const drained = await store.commitBatch(SHARD, epoch, [
      { kind: 'status', workerId: 'w1', expectedVersion: 1, status: 'draining' },
      place('c1', 'w1', 1),
    ]);
    expect(drained).toEqual({
      fenced: false,
      outcomes: [
        { code: 'STATUS_SET', version: 2, extra: '' },
        { code: 'NOT_SCHEDULABLE', version: 2, extra: 'draining' },
      ],
    });
  });

  it('appends every committed write to the shard history', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1), place('c2', 'w1', 1, 99_999)]);
    const entries = await redis.xrange(store.keys.history(SHARD), '-', '+');
    const ops = entries.map(([, fields]) => `${fields[1]}:${fields[3]}`);
    expect(ops).toEqual(['register:w1', 'register:w2', 'place:c1']);
  });
});

describe('commit_batch input checks', () => {
  it('refuses a batch with a malformed op before writing any of it', async () => {
    const redis2 = connectRedis();
    try {
      const prefix2 = testPrefix('m');
      const store2 = storeFor(redis2, prefix2);
      await redis2.set(store2.keys.lease(SHARD), 'mine');
      const epoch2 = await store2.takeEpoch(SHARD, 'mine');
      await store2.registerWorker(epoch2, spec('w1'), 'available');
      const before = await snapshotKeys(redis2, prefix2);
      await expect(
        store2.commitBatch(SHARD, epoch2, [place('c1', 'w1', 1), { kind: 'status', workerId: 'w1', expectedVersion: 2, status: 'sleeping' as never }]),
      ).rejects.toThrow(/malformed op 1/);
      expect(await snapshotKeys(redis2, prefix2)).toEqual(before);
    } finally {
      await redis2.quit();
    }
  });

  // The script is the last line of defence: an amount that is not a whole positive number would
  // add capacity to the worker instead of taking it.
  it.each([
    ['negative cpu', { cpu: -5_000 }],
    ['zero cpu', { cpu: 0 }],
    ['fractional cpu', { cpu: 0.5 }],
    ['negative memory', { memory: -1 }],
    ['zero memory', { memory: 0 }],
    ['negative gpuCount', { gpuCount: -1 }],
    ['fractional gpuCount', { gpuCount: 1.5 }],
    ['NaN cpu', { cpu: Number.NaN }],
    ['infinite memory', { memory: Number.POSITIVE_INFINITY }],
  ] as const)('refuses a placement with %s and writes nothing', async (_name, amounts) => {
    await store.registerWorker(epoch, spec('w1'), 'available');
    const before = await snapshotKeys(redis, prefix);
    await expect(store.commitBatch(SHARD, epoch, [place('c1', 'w1', 1, 500, amounts)])).rejects.toThrow(/malformed op 0/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });
});
