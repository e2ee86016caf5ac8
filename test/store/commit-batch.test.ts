/**
 * The fenced Lua scripts, driven directly against a real Redis: these checks are the safety
 * argument, so each refusal is shown to write nothing.
 */
import type { Redis } from 'ioredis';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../src/util/package-root.js';
import { Redis as RedisClient } from 'ioredis';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../../actors/capacity.js';
import { DroverStore, type PlaceOp, type ReleaseOp } from '../../src/store/store.js';
import { startRedis } from '../../infra/servers.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectRedis, snapshotKeys, storeFor, testPrefix } from '../support/cluster.js';

const redis: Redis = connectRedis();
const readScript = (): string => readFileSync(join(packageRoot(), 'src', 'store', 'lua', 'register_workers.lua'), 'utf8');
afterAll(() => redis.quit());

const SHARD = 5;
const SHARDS = 8;

/** The first id "<base>", "<base>-1", "<base>-2", ... that hashes to SHARD (register_workers checks it). */
function inShard(base: string, shard = SHARD): string {
  for (let i = 0; i < 10_000; i += 1) {
    const id = i === 0 ? base : `${base}-${i}`;
    if (shardOf(id, SHARDS) === shard) return id;
  }
  throw new Error(`no id for shard ${shard}`);
}
const W1 = inShard('w1');
const W2 = inShard('w2');
const spec = (id: string, cpu = 2_000, memory = 4_096): WorkerSpec => ({ id, shard: SHARD, cpu, memory, gpu: null, gpuCount: 0, pool: null });

let store: DroverStore;
let prefix: string;
let epoch: number;

beforeEach(async () => {
  prefix = testPrefix('s');
  store = storeFor(redis, prefix);
  epoch = (await store.acquireLease(SHARD, 'mine', 10_000)).epoch;
});

const place = (containerId: string, workerId: string, expectedVersion: number, cpu = 500, extra: Partial<PlaceOp> = {}): PlaceOp => ({
  kind: 'place', containerId, workerId, expectedVersion, cpu, memory: 512, gpuCount: 0, deadline: 0, requestKey: `k-${containerId}`, ...extra,
});
const release = (containerId: string, workerId: string, expectedVersion: number): ReleaseOp => ({
  kind: 'release', containerId, workerId, expectedVersion,
});

describe('acquire_lease', () => {
  it('takes a free lease and bumps the epoch, again for the same value, never over another value', async () => {
    expect(epoch).toBe(1);
    expect(await redis.get(store.keys.lease(SHARD))).toBe('mine');
    expect(await redis.pttl(store.keys.lease(SHARD))).toBeGreaterThan(9_000);
    // Idempotent for the holder: a retry of an acquisition whose reply was lost takes it again.
    expect((await store.acquireLease(SHARD, 'mine', 10_000)).epoch).toBe(2);
    const before = await snapshotKeys(redis, prefix);
    const refused = await store.acquireLease(SHARD, 'theirs', 10_000);
    expect(refused.epoch).toBe(0);
    expect(refused.heldForMs).toBeGreaterThan(9_000);
    expect(await store.currentEpoch(SHARD)).toBe(2);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    expect(await redis.get(store.keys.lease(SHARD))).toBe('mine');
    // Once it is free, anyone may take it.
    await redis.del(store.keys.lease(SHARD));
    expect((await store.acquireLease(SHARD, 'theirs', 10_000)).epoch).toBe(3);
  });
});

describe('register_workers', () => {
  it('creates, is idempotent for the same spec, refuses another spec, and is fenced', async () => {
    const created = await store.registerWorker(epoch, spec(W1), 'available');
    expect(created.outcome).toBe('created');
    // CREATED sends nothing back: the record the caller builds must be exactly what Redis holds.
    if (created.outcome !== 'created') throw new Error('not created');
    expect(created.worker).toEqual(await store.readWorker(SHARD, W1));
    const byAgent = await store.registerWorker(epoch, { ...spec(W2), gpu: 'a100', gpuCount: 2, pool: 'gpu', agent: true }, 'pending');
    if (byAgent.outcome !== 'created') throw new Error('not created');
    expect(byAgent.worker).toEqual(await store.readWorker(SHARD, W2));
    expect(byAgent.worker).toMatchObject({ agent: true, status: 'pending', gpu: 'a100', freeGpuCount: 2, pool: 'gpu', resourceVersion: 1 });
    await redis.del(store.keys.worker(SHARD, W2));
    await redis.srem(store.keys.shardWorkers(SHARD), W2);
    const again = await store.registerWorker(epoch, spec(W1), 'available');
    expect(again.outcome).toBe('exists');
    const other = await store.registerWorker(epoch, spec(W1, 3_000), 'available');
    expect(other.outcome).toBe('spec-mismatch');
    expect((await store.readWorker(SHARD, W1))?.cpu).toBe(2_000);
    const before = await snapshotKeys(redis, prefix);
    expect(await store.registerWorker(epoch + 1, spec(W2), 'available')).toEqual({ outcome: 'fenced', currentEpoch: epoch });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('refuses a worker whose id hashes to another shard, writing nothing', async () => {
    const stranger = inShard('elsewhere', 2);
    const before = await snapshotKeys(redis, prefix);
    expect(await store.registerWorker(epoch, spec(stranger), 'available')).toEqual({ outcome: 'wrong-shard', shard: 2 });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('computes the same shard as shardOf for many ids', async () => {
    // The Lua FNV-1a must agree with the TypeScript one for every id, or registrations would be refused.
    const ids = Array.from({ length: 300 }, (_, i) => `node-${i}_${'x'.repeat(i % 40)}-${(i * 7919).toString(36)}`);
    for (const id of ids) {
      const outcome = await store.registerWorker(epoch, spec(id), 'available');
      expect(outcome.outcome === 'wrong-shard' ? outcome.shard : SHARD).toBe(shardOf(id, SHARDS));
    }
  });

  it('registers many in one call, each on its own terms and in order (the same id twice: the second finds the first)', async () => {
    await store.registerWorker(epoch, spec(W2), 'available');
    const W3 = inShard('w3');
    const stranger = inShard('elsewhere', 2);
    const result = await store.registerWorkers(epoch, SHARD, [
      { spec: spec(W1), status: 'available' },
      { spec: { ...spec(stranger), shard: SHARD }, status: 'available' },
      { spec: spec(W2), status: 'available' },
      { spec: spec(W3, 1_000), status: 'pending' },
      { spec: spec(W3, 1_000), status: 'pending' },
      { spec: spec(W1, 9_000), status: 'available' },
    ]);
    if (result.fenced) throw new Error('fenced');
    expect(result.outcomes.map((o) => o.outcome)).toEqual(['created', 'wrong-shard', 'exists', 'created', 'exists', 'spec-mismatch']);
    for (const outcome of result.outcomes) {
      if (outcome.outcome === 'created') expect(outcome.worker).toEqual(await store.readWorker(SHARD, outcome.worker.id));
    }
    expect(await store.readWorker(SHARD, stranger)).toBeNull();
    expect((await redis.smembers(store.keys.shardWorkers(SHARD))).sort()).toEqual([W1, W2, W3].sort());
    expect((await store.readWorker(SHARD, W1))?.cpu).toBe(2_000);
  });

  it('refuses the whole call, writing nothing, when any worker key holds another type', async () => {
    const W3 = inShard('w3');
    await redis.set(store.keys.worker(SHARD, W3), 'not a hash');
    const before = await snapshotKeys(redis, prefix);
    // W3 comes last: a script that checked types as it went would have written W1 and W2 first.
    await expect(store.registerWorkers(epoch, SHARD, [
      { spec: spec(W1), status: 'available' },
      { spec: spec(W2), status: 'available' },
      { spec: spec(W3), status: 'available' },
    ])).rejects.toThrow(/register_workers: .* is a string/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('refuses a call whose KEYS do not match its worker count, and more than 200 workers, writing nothing', async () => {
    const before = await snapshotKeys(redis, prefix);
    const k = store.keys;
    const args = [epoch, 0, SHARD, SHARDS, 2, W1, 2_000, 4_096, '', 0, '', 'available', ''];
    await expect(redis.eval(readScript(), 4, k.epoch(SHARD), k.shardWorkers(SHARD), k.history(SHARD), k.worker(SHARD, W1), ...args))
      .rejects.toThrow(/do not match the worker count/);
    await expect(store.registerWorkers(epoch, SHARD, Array.from({ length: 201 }, (_, i) => ({ spec: spec(`x${i}`), status: 'available' as const }))))
      .rejects.toThrow(/1\.\.200/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });
});

describe('commit_batch', () => {
  beforeEach(async () => {
    await store.registerWorker(epoch, spec(W1), 'available');
    await store.registerWorker(epoch, spec(W2, 600, 600), 'available');
  });

  it('places, bumps the version, records the container and chains versions within a batch', async () => {
    const result = await store.commitBatch(SHARD, epoch, [place('c1', W1, 1), place('c2', W1, 1), place('c3', W2, 1)]);
    expect(result).toEqual({
      fenced: false,
      outcomes: [
        { code: 'PLACED', version: 2, extra: '', seq: 1 },
        { code: 'PLACED', version: 3, extra: '', seq: 1 },
        { code: 'PLACED', version: 2, extra: '', seq: 1 },
      ],
    });
    const w1 = await store.readWorker(SHARD, W1);
    expect([w1?.freeCpu, w1?.freeMemory, w1?.resourceVersion]).toEqual([1_000, 3_072, 3]);
    expect(await store.readContainer('c2')).toMatchObject({ status: 'placed', workerId: W1, shard: SHARD, cpu: 500, requestKey: 'k-c2' });
    expect((await store.workerContainerIds(SHARD, W1)).sort()).toEqual(['c1', 'c2']);
  });

  it('refuses a stale epoch and writes nothing', async () => {
    const before = await snapshotKeys(redis, prefix);
    await redis.del(store.keys.lease(SHARD));
    const theirs = (await store.acquireLease(SHARD, 'theirs', 10_000)).epoch;
    const afterTakeover = await snapshotKeys(redis, prefix);
    expect(await store.commitBatch(SHARD, epoch, [place('c1', W1, 1)])).toEqual({ fenced: true, currentEpoch: theirs });
    expect(await snapshotKeys(redis, prefix)).toEqual(afterTakeover);
    expect(afterTakeover.size).toBe(before.size);
  });

  it('refuses a stale ResourceVersion, too little capacity, and a duplicate container, writing nothing for them', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', W1, 1)]);
    const before = await snapshotKeys(redis, prefix);
    const result = await store.commitBatch(SHARD, epoch, [
      place('c2', W1, 1), // the worker is at version 2 now
      place('c3', W2, 1, 601), // W2 has 600 millicores
      place('c1', W2, 1), // c1 is on W1 already
    ]);
    expect(result).toEqual({
      fenced: false,
      outcomes: [
        { code: 'RV_CONFLICT', version: 2, extra: '', seq: 0 },
        { code: 'NO_CAPACITY', version: 1, extra: '', seq: 0 },
        { code: 'ALREADY_PLACED', version: 0, extra: `${W1} k-c1`, seq: 0 },
      ],
    });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('places the same container once when it appears twice in one batch', async () => {
    const result = await store.commitBatch(SHARD, epoch, [place('c1', W1, 1), place('c1', W2, 1, 500, { requestKey: 'other' })]);
    expect(result.fenced === false && result.outcomes.map((o) => o.code)).toEqual(['PLACED', 'ALREADY_PLACED']);
    expect((await store.readWorker(SHARD, W2))?.freeCpu).toBe(600);
  });

  it('refuses placements past their deadline', async () => {
    const result = await store.commitBatch(SHARD, epoch, [place('c1', W1, 1, 500, { deadline: Date.now() - 10_000 })]);
    expect(result.fenced === false && result.outcomes[0]?.code).toBe('EXPIRED');
    expect(await store.readContainer('c1')).toBeNull();
  });

  it('releases once into a tombstone: a second release frees nothing, the id stays taken', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', W1, 1)]);
    const first = await store.commitBatch(SHARD, epoch, [release('c1', W1, 2)]);
    expect(first).toEqual({ fenced: false, outcomes: [{ code: 'RELEASED', version: 3, extra: '500 512 0', seq: 2 }] });
    // The record is now a small string, with every field the contract shows.
    expect(await redis.type(store.keys.container('c1'))).toBe('string');
    expect(await store.readContainer('c1')).toMatchObject({
      status: 'released', workerId: W1, shard: SHARD, cpu: 500, memory: 512, gpuCount: 0, requestKey: 'k-c1',
    });
    const before = await snapshotKeys(redis, prefix);
    const second = await store.commitBatch(SHARD, epoch, [release('c1', W1, 3)]);
    expect(second).toEqual({ fenced: false, outcomes: [{ code: 'ALREADY_RELEASED', version: 0, extra: W1, seq: 0 }] });
    // A released id cannot be placed again while its tombstone lives; the placing key is reported.
    const again = await store.commitBatch(SHARD, epoch, [place('c1', W2, 1, 100, { requestKey: 'someone-else' })]);
    expect(again).toEqual({ fenced: false, outcomes: [{ code: 'ALREADY_PLACED', version: 0, extra: `${W1} k-c1`, seq: 0 }] });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    const w1 = await store.readWorker(SHARD, W1);
    expect([w1?.freeCpu, w1?.freeMemory]).toEqual([2_000, 4_096]);
    expect(await store.workerContainerIds(SHARD, W1)).toEqual([]);
  });

  it('keeps a tombstone for the retention only, and a released container costs less than a live one', async () => {
    const short = new DroverStore(redis, { prefix, shards: SHARDS, historyCap: 10_000, releasedRetentionSeconds: 60 });
    await short.commitBatch(SHARD, epoch, [place('kept', W1, 1), place('gone', W1, 1)]);
    const live = Number(await redis.memory('USAGE', store.keys.container('kept')));
    await short.commitBatch(SHARD, epoch, [release('gone', W1, 3)]);
    const ttl = await redis.ttl(store.keys.container('gone'));
    expect(ttl).toBeGreaterThan(55);
    expect(ttl).toBeLessThanOrEqual(60);
    const tombstone = Number(await redis.memory('USAGE', store.keys.container('gone')));
    // The README documents these sizes (ids and keys of this length); they must not creep up.
    expect(tombstone).toBeLessThan(live);
    expect(tombstone).toBeLessThanOrEqual(200);
    expect(live).toBeLessThanOrEqual(300);
  });

  it('refuses placements on a worker that is not available, and records status changes', async () => {
    const drained = await store.commitBatch(SHARD, epoch, [
      { kind: 'status', workerId: W1, expectedVersion: 1, status: 'draining' },
      place('c1', W1, 1),
    ]);
    expect(drained).toEqual({
      fenced: false,
      outcomes: [
        { code: 'STATUS_SET', version: 2, extra: '', seq: 0 },
        { code: 'NOT_SCHEDULABLE', version: 2, extra: 'draining', seq: 0 },
      ],
    });
  });

  it('removes a worker only when it takes no placements and holds no container', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', W1, 1)]);
    const before = await snapshotKeys(redis, prefix);
    const refused = await store.commitBatch(SHARD, epoch, [
      { kind: 'remove', workerId: W2, expectedVersion: 1 }, // available
    ]);
    expect(refused).toEqual({ fenced: false, outcomes: [{ code: 'NOT_REMOVABLE', version: 1, extra: 'status available', seq: 0 }] });
    const busy = await store.commitBatch(SHARD, epoch, [
      { kind: 'status', workerId: W1, expectedVersion: 2, status: 'disabled' },
      { kind: 'remove', workerId: W1, expectedVersion: 2 },
    ]);
    expect(busy.fenced === false && busy.outcomes[1]).toEqual({ code: 'NOT_REMOVABLE', version: 3, extra: 'containers 1', seq: 0 });
    expect(before.size).toBeGreaterThan(0);
    // Released in the same batch as the removal: the removal sees the batch's own release.
    const removed = await store.commitBatch(SHARD, epoch, [release('c1', W1, 3), { kind: 'remove', workerId: W1, expectedVersion: 3 }, place('c2', W1, 3)]);
    expect(removed.fenced === false && removed.outcomes.map((o) => o.code)).toEqual(['RELEASED', 'REMOVED', 'WORKER_NOT_FOUND']);
    expect(await store.readWorker(SHARD, W1)).toBeNull();
    expect(await redis.exists(store.keys.workerContainers(SHARD, W1))).toBe(0);
    expect(await store.listShardWorkerIds(SHARD)).toEqual([W2]);
    const ops = (await redis.xrange(store.keys.history(SHARD), '-', '+')).map(([, fields]) => fields[1]);
    expect(ops.slice(-2)).toEqual(['release', 'remove']);
  });

  it('appends every committed write to the shard history', async () => {
    await store.commitBatch(SHARD, epoch, [place('c1', W1, 1), place('c2', W1, 1, 99_999)]);
    const entries = await redis.xrange(store.keys.history(SHARD), '-', '+');
    const ops = entries.map(([, fields]) => `${fields[1]}:${fields[3]}`);
    expect(ops).toEqual([`register:${W1}`, `register:${W2}`, 'place:c1']);
  });

  it('adds one to the seq per status write, also within one batch; the tombstone keeps it, an older tombstone reads 0', async () => {
    const transition = (to: 'running' | 'stopping' | 'unknown', from: Array<'placed' | 'running' | 'unknown'>) =>
      ({ kind: 'transition' as const, containerId: 'c1', workerId: W1, expectedVersion: 2, from, to });
    const result = await store.commitBatch(SHARD, epoch, [place('c1', W1, 1), transition('running', ['placed']), transition('unknown', ['running'])]);
    expect(result.fenced === false && result.outcomes.map((o) => [o.code, o.seq])).toEqual([['PLACED', 1], ['TRANSITIONED', 2], ['TRANSITIONED', 3]]);
    expect((await store.readContainer('c1'))?.seq).toBe(3);
    // A refused op changes nothing and answers 0; D (delivered) changes no status.
    const refused = await store.commitBatch(SHARD, epoch, [transition('running', ['placed'])]);
    expect(refused.fenced === false && refused.outcomes[0]).toMatchObject({ code: 'NOT_IN_STATE', seq: 0 });
    const ended = await store.commitBatch(SHARD, epoch, [release('c1', W1, 2)]);
    expect(ended.fenced === false && ended.outcomes[0]).toMatchObject({ code: 'RELEASED', seq: 4 });
    const tombstone = (await redis.get(store.keys.container('c1')))!;
    expect(tombstone.split(' ')).toHaveLength(19);
    expect(tombstone.endsWith(' 4')).toBe(true);
    expect(await store.readContainer('c1')).toMatchObject({ status: 'released', seq: 4 });
    // Written before seq was kept: 18 fields, read as seq 0 with everything else intact.
    await redis.set(store.keys.container('c1'), tombstone.split(' ').slice(0, 18).join(' '));
    expect(await store.readContainer('c1')).toMatchObject({ status: 'released', seq: 0, cpu: 500 });
  });

  it('writes nothing at all when a key it would write turns out to be of the wrong type', async () => {
    // Op 0 is a good placement; op 1's container-set key has been overwritten with a string. A
    // script that wrote as it went would leave c1 recorded without its capacity taken.
    await redis.set(store.keys.workerContainers(SHARD, W2), 'not a set');
    const before = await snapshotKeys(redis, prefix);
    await expect(store.commitBatch(SHARD, epoch, [place('c1', W1, 1), place('c2', W2, 1, 100)])).rejects.toThrow(/not a set|WRONGTYPE/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });
});

describe('commit_batch input checks', () => {
  it('refuses a batch with a malformed op before writing any of it', async () => {
    const redis2 = connectRedis();
    try {
      const prefix2 = testPrefix('m');
      const store2 = storeFor(redis2, prefix2);
      const epoch2 = (await store2.acquireLease(SHARD, 'mine', 10_000)).epoch;
      await store2.registerWorker(epoch2, spec(W1), 'available');
      const before = await snapshotKeys(redis2, prefix2);
      await expect(
        store2.commitBatch(SHARD, epoch2, [place('c1', W1, 1), { kind: 'status', workerId: W1, expectedVersion: 2, status: 'sleeping' as never }]),
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
    ['a request key with a space', { requestKey: 'a b' }],
    ['an empty request key', { requestKey: '' }],
  ] as const)('refuses a placement with %s and writes nothing', async (_name, amounts) => {
    await store.registerWorker(epoch, spec(W1), 'available');
    const before = await snapshotKeys(redis, prefix);
    await expect(store.commitBatch(SHARD, epoch, [place('c1', W1, 1, 500, amounts)])).rejects.toThrow(/malformed op 0/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });
});

describe('at maxmemory', () => {
  it('refuses a whole batch up front, while leases and heartbeats keep working', async () => {
    // A private server: filling the shared one would break every other test file.
    const server = await startRedis();
    const full = new RedisClient(server.url, { maxRetriesPerRequest: 1 });
    try {
      const local = new DroverStore(full, { prefix: 'oom', shards: SHARDS, historyCap: 1_000, releasedRetentionSeconds: 0 });
      const localEpoch = (await local.acquireLease(SHARD, 'mine', 10_000)).epoch;
      await local.registerWorker(localEpoch, spec(W1), 'available');
      const used = Number(/used_memory:(\d+)/.exec(await full.info('memory'))![1]);
      await full.config('SET', 'maxmemory', String(used + 64 * 1024));
      // Fill up to the limit with unrelated data.
      for (let i = 0; i < 10_000; i += 1) {
        try {
          await full.set(`filler:${i}`, 'x'.repeat(1_000));
        } catch {
          break;
        }
      }
      await expect(local.commitBatch(SHARD, localEpoch, [place('c1', W1, 1)])).rejects.toThrow(/OOM/);
      expect(await full.exists(local.keys.container('c1'))).toBe(0);
      // Ownership and membership use allow-oom scripts: a full Redis does not orphan every shard.
      expect((await local.heartbeat('r1', 'i1', 5_000)).duplicate).toBe(false);
      expect((await local.acquireLease(SHARD, 'mine', 10_000)).epoch).toBe(localEpoch + 1);
    } finally {
      full.disconnect();
      await server.stop();
    }
  });
});
