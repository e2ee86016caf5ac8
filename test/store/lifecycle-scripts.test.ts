/**
 * The fenced scripts of the scheduling loop against a real Redis: backlog_commit.lua (queue, drop,
 * end) and commit_batch.lua's container ops (place a queued record, transition, end with a status,
 * requeue, outbox ack). Every refusal is shown to write nothing.
 */
import type { Redis } from 'ioredis';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../src/util/package-root.js';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../../actors/capacity.js';
import { shardOf } from '../../src/shard/shard-map.js';
import type { BacklogOp, DroverStore, PlaceOp } from '../../src/store/store.js';
import { connectRedis, snapshotKeys, storeFor, testPrefix } from '../support/cluster.js';

const redis: Redis = connectRedis();
afterAll(() => redis.quit());

const SHARDS = 8;
/** The worker's shard, and a container id whose home shard is HOME. */
const SHARD = 5;
const HOME = 2;
function idIn(base: string, shard: number): string {
  for (let i = 0; i < 10_000; i += 1) if (shardOf(`${base}-${i}`, SHARDS) === shard) return `${base}-${i}`;
  throw new Error('no id');
}
const W1 = idIn('w', SHARD);
const spec = (id: string): WorkerSpec => ({ id, shard: SHARD, cpu: 2_000, memory: 4_096, gpu: null, gpuCount: 0, pool: null, agent: true });

let store: DroverStore;
let prefix: string;
let epoch: number;
let homeEpoch: number;

beforeEach(async () => {
  prefix = testPrefix('lc');
  store = storeFor(redis, prefix);
  epoch = (await store.acquireLease(SHARD, 'mine', 10_000)).epoch;
  homeEpoch = (await store.acquireLease(HOME, 'mine', 10_000)).epoch;
  await store.registerWorker(epoch, spec(W1), 'available');
});

const queueOp = (containerId: string, requestKey = `k-${containerId}`, extra: Partial<Extract<BacklogOp, { kind: 'queue' }>> = {}): BacklogOp => ({
  kind: 'queue', containerId, requestKey, priority: 3, maxWaitMs: 60_000, cpu: 500, memory: 512, gpu: null, gpuCount: 0, pool: 'p', spec: '{"command":["true"],"env":null}', ...extra,
});
const place = (containerId: string, expectedVersion: number, requestKey = `k-${containerId}`): PlaceOp => ({
  kind: 'place', containerId, workerId: W1, expectedVersion, cpu: 500, memory: 512, gpuCount: 0, deadline: 0, requestKey, priority: 9, maxWaitMs: 5_000, gpu: null, pool: 'p',
});
/** A placement of a container queued by `queueOp`: what a retry of that submit (or its backlog) asks for. */
const placeQueued = (containerId: string, expectedVersion: number, requestKey = `k-${containerId}`): PlaceOp => ({ ...place(containerId, expectedVersion, requestKey), priority: 3 });
const outcomes = async (shard: number, ops: Parameters<DroverStore['commitBacklog']>[2], e = homeEpoch) => {
  const result = await store.commitBacklog(shard, e, ops);
  if (result.fenced) throw new Error('fenced');
  return result.outcomes.map((o) => o.code);
};
const version = async () => (await store.readWorker(SHARD, W1))!.resourceVersion;

describe('backlog_commit', () => {
  it('queues once per request key, refuses another key and a full backlog, and is fenced', async () => {
    const c1 = idIn('c', HOME);
    expect(await outcomes(HOME, [queueOp(c1)])).toEqual(['QUEUED']);
    const record = await store.readContainer(c1);
    expect(record).toMatchObject({ status: 'queued', priority: 3, shard: HOME, pool: 'p', requestKey: `k-${c1}` });
    expect(record!.expiresAt! - record!.queuedAt!).toBe(60_000);
    expect(await redis.zcard(store.keys.backlog(HOME))).toBe(1);
    // The same request again: the same queued request, nothing new.
    const before = await snapshotKeys(redis, prefix);
    expect(await outcomes(HOME, [queueOp(c1)])).toEqual(['QUEUED']);
    expect(await outcomes(HOME, [queueOp(c1, 'other-key')])).toEqual(['QUEUED_BY']);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    // Fenced: a stale epoch writes nothing.
    const stale = await store.commitBacklog(HOME, homeEpoch - 1 || 99, [queueOp(idIn('c2', HOME))]);
    expect(stale).toEqual({ fenced: true, currentEpoch: homeEpoch });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    // Full: a backlog bound of 1 refuses a second container.
    const bounded = storeFor(redis, prefix, 10_000, SHARDS);
    Object.assign(bounded.options as object, { maxQueuedPerShard: 1 });
    const full = await bounded.commitBacklog(HOME, homeEpoch, [queueOp(idIn('c3', HOME))]);
    expect(full.fenced === false && full.outcomes[0]!.code).toBe('FULL');
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('ends a queued container (cancel, expiry) into a tombstone, only while it is queued; drops only what is not queued', async () => {
    const c1 = idIn('e', HOME);
    const c2 = idIn('e2', HOME);
    expect(await outcomes(HOME, [queueOp(c1), queueOp(c2)])).toEqual(['QUEUED', 'QUEUED']);
    expect(await outcomes(HOME, [{ kind: 'drop', containerId: c1 }])).toEqual(['STILL_QUEUED']);
    expect(await outcomes(HOME, [{ kind: 'end', containerId: c1, status: 'released', reason: 'CANCELLED' }])).toEqual(['ENDED_NOW']);
    // The tombstone keeps the whole request: nothing containers.get shows is lost.
    expect(await store.readContainer(c1)).toMatchObject({ status: 'released', reason: 'CANCELLED', workerId: null, placedAt: null, priority: 3, pool: 'p', maxWaitMs: 60_000 });
    expect(await redis.zscore(store.keys.backlog(HOME), c1)).toBeNull();
    const before = await snapshotKeys(redis, prefix);
    expect(await outcomes(HOME, [{ kind: 'end', containerId: c1, status: 'failed', reason: 'EXPIRED' }])).toEqual(['NOT_QUEUED']);
    // An ended id cannot be queued again, nor placed.
    expect(await outcomes(HOME, [queueOp(c1)])).toEqual(['ENDED']);
    const placed = await store.commitBacklog(HOME, homeEpoch, [queueOp(c1, 'k-new')]);
    expect(placed.fenced === false && placed.outcomes[0]).toEqual({ code: 'ENDED', extra: `released k-${c1}`, seq: 0 });
    const refused = await store.commitBatch(SHARD, epoch, [place(c1, await version())]);
    expect(refused.fenced === false && refused.outcomes[0]).toMatchObject({ code: 'NOT_PLACEABLE', extra: `released k-${c1}` });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    // Placed elsewhere: the backlog may drop it.
    const result = await store.commitBatch(SHARD, epoch, [placeQueued(c2, await version())]);
    expect(result.fenced === false && result.outcomes[0]!.code).toBe('PLACED');
    expect(await outcomes(HOME, [{ kind: 'drop', containerId: c2 }])).toEqual(['DROPPED']);
    expect(await redis.zcard(store.keys.backlog(HOME))).toBe(0);
  });

  it('takes the id of a record that is not queued out of the set when an end is refused (no drop needed after it)', async () => {
    const c = idIn('en', HOME);
    expect(await outcomes(HOME, [queueOp(c)])).toEqual(['QUEUED']);
    // Placed elsewhere while its id is still in the home set: an expiry of it is refused and drops the id.
    const result = await store.commitBatch(SHARD, epoch, [placeQueued(c, await version())]);
    expect(result.fenced === false && result.outcomes[0]!.code).toBe('PLACED');
    expect(await redis.zscore(store.keys.backlog(HOME), c)).not.toBeNull();
    const placedRecord = await redis.hgetall(store.keys.container(c));
    expect(await outcomes(HOME, [{ kind: 'end', containerId: c, status: 'failed', reason: 'EXPIRED' }])).toEqual(['NOT_QUEUED']);
    expect(await redis.zscore(store.keys.backlog(HOME), c)).toBeNull();
    // The record itself is untouched.
    expect(await redis.hgetall(store.keys.container(c))).toEqual(placedRecord);
  });

  it('drops an id whose record is a tombstone or gone, keeps a queued one, and refuses a record of the wrong type before writing', async () => {
    const [ended, gone, queued, wrong] = ['d1', 'd2', 'd3', 'd4'].map((base) => idIn(base, HOME)) as [string, string, string, string];
    expect(await outcomes(HOME, [queueOp(ended), queueOp(gone), queueOp(queued)])).toEqual(['QUEUED', 'QUEUED', 'QUEUED']);
    expect(await outcomes(HOME, [{ kind: 'end', containerId: ended, status: 'failed', reason: 'EXPIRED' }])).toEqual(['ENDED_NOW']);
    // As a previous owner may leave it: ids in the set whose records ended or vanished.
    await redis.zadd(store.keys.backlog(HOME), '1', ended);
    await redis.del(store.keys.container(gone));
    const drops = [ended, gone, queued].map((containerId) => ({ kind: 'drop' as const, containerId }));
    expect(await outcomes(HOME, drops)).toEqual(['DROPPED', 'DROPPED', 'STILL_QUEUED']);
    expect(await redis.zrange(store.keys.backlog(HOME), '0', '-1')).toEqual([queued]);
    // A drop beside a queue op in one batch: the queue op still counts the backlog's size.
    expect(await outcomes(HOME, [{ kind: 'drop', containerId: queued }, queueOp(idIn('d5', HOME))])).toEqual(['STILL_QUEUED', 'QUEUED']);
    // More drops than one ZREM takes (500), in one batch with a queue op between two runs of them.
    const vanished = Array.from({ length: 520 }, (_, i) => idIn(`v${i}`, HOME));
    for (const id of vanished) await redis.zadd(store.keys.backlog(HOME), '5', id);
    const mixed = [...vanished.slice(0, 510).map((containerId) => ({ kind: 'drop' as const, containerId })), queueOp(idIn('d6', HOME)), ...vanished.slice(510).map((containerId) => ({ kind: 'drop' as const, containerId }))];
    expect(await outcomes(HOME, mixed)).toEqual([...Array(510).fill('DROPPED'), 'QUEUED', ...Array(10).fill('DROPPED')]);
    expect((await redis.zrange(store.keys.backlog(HOME), '0', '-1')).sort()).toEqual([queued, idIn('d5', HOME), idIn('d6', HOME)].sort());
    await redis.rpush(store.keys.container(wrong), 'not a record');
    // The first drop would remove `ended` from the set: the wrong type after it must stop the batch first.
    await redis.zadd(store.keys.backlog(HOME), '1', ended);
    const before = await snapshotKeys(redis, prefix);
    await expect(store.commitBacklog(HOME, homeEpoch, [{ kind: 'drop', containerId: ended }, { kind: 'drop', containerId: wrong }])).rejects.toThrow(/is a list/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    // Each op is as long as its kind says (a drop is 2 fields, the others 11): ARGV that does not
    // add up, one field too many or too few, is refused whole, before anything is written.
    const script = readFileSync(join(packageRoot(), 'src', 'store', 'lua', 'backlog_commit.lua'), 'utf8');
    const k = store.keys;
    const head = [homeEpoch, HOME, 1_000, 0];
    const d5 = idIn('d5', HOME);
    await expect(redis.eval(script, 3, k.epoch(HOME), k.backlog(HOME), k.container(ended), ...head, 1, 'D', ended, '')).rejects.toThrow(/malformed batch/);
    await expect(redis.eval(script, 4, k.epoch(HOME), k.backlog(HOME), k.container(ended), k.container(d5), ...head, 2, 'D', ended, 'D')).rejects.toThrow(/malformed batch/);
    await expect(redis.eval(script, 4, k.epoch(HOME), k.backlog(HOME), k.container(ended), k.container(d5), ...head, 2, 'D', ended, 'E', d5, '', 'failed', 'EXPIRED', '', '', '', '', ''))
      .rejects.toThrow(/malformed batch/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });
});

describe('commit_batch: the container lifecycle', () => {
  it('places a queued record only with its request key, keeping its queue time and priority', async () => {
    const c1 = idIn('q', HOME);
    await outcomes(HOME, [queueOp(c1)]);
    const queued = await store.readContainer(c1);
    const before = await snapshotKeys(redis, prefix);
    const other = await store.commitBatch(SHARD, epoch, [place(c1, await version(), 'not-its-key')]);
    expect(other.fenced === false && other.outcomes[0]).toMatchObject({ code: 'NOT_PLACEABLE', extra: `queued k-${c1}` });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    // Its own key with another body (a reused key, not a retry): refused, nothing written.
    for (const changed of [{ cpu: 700 }, { priority: 9 }, { pool: null }, { gpuCount: 1 }, { spec: '{"command":["false"],"env":null}' }]) {
      const different = await store.commitBatch(SHARD, epoch, [{ ...placeQueued(c1, await version()), ...changed }]);
      expect(different.fenced === false && different.outcomes[0]).toMatchObject({ code: 'NOT_PLACEABLE', extra: `different k-${c1}` });
    }
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    const own = await store.commitBatch(SHARD, epoch, [placeQueued(c1, await version())]);
    // Placed outside its home shard: its id stays in the home backlog's set for the drop.
    expect(own.fenced === false && own.outcomes[0]).toMatchObject({ code: 'PLACED', extra: '' });
    expect(await redis.zscore(store.keys.backlog(HOME), c1)).not.toBeNull();
    expect(await store.readContainer(c1)).toMatchObject({ status: 'placed', workerId: W1, queuedAt: queued!.queuedAt, priority: 3, spec: '{"command":["true"],"env":null}' });
    // A second attempt (another owner, a stale one) finds it placed.
    const again = await store.commitBatch(SHARD, epoch, [place(c1, await version())]);
    expect(again.fenced === false && again.outcomes[0]).toMatchObject({ code: 'ALREADY_PLACED', extra: `${W1} k-${c1}` });
  });

  it('takes a queued container placed in its home shard out of that backlog set in the same commit', async () => {
    const homeWorker = idIn('hw', HOME);
    await store.registerWorker(homeEpoch, { ...spec(homeWorker), shard: HOME, agent: false }, 'available');
    const homeVersion = async () => (await store.readWorker(HOME, homeWorker))!.resourceVersion;
    const [c1, c2] = [idIn('u', HOME), idIn('u2', HOME)];
    await outcomes(HOME, [queueOp(c1), queueOp(c2)]);
    const fresh = idIn('u3', HOME);
    const placeHome = (id: string, v: number, key = `k-${id}`): PlaceOp => ({ ...placeQueued(id, v, key), workerId: homeWorker });
    const v = await homeVersion();
    const result = await store.commitBatch(HOME, homeEpoch, [placeHome(c1, v), placeHome(c2, v, 'not-its-key'), placeHome(fresh, v)]);
    expect(result.fenced === false && result.outcomes.map((o) => [o.code, o.extra])).toEqual([
      ['PLACED', 'unqueued'],
      ['NOT_PLACEABLE', `queued k-${c2}`],
      // Never queued: nothing to take out.
      ['PLACED', ''],
    ]);
    // Placed and out of the set in one step; the refused one still queued and still in it.
    expect(await store.readContainer(c1)).toMatchObject({ status: 'placed', workerId: homeWorker });
    expect(await redis.zrange(store.keys.backlog(HOME), '0', '-1')).toEqual([c2]);
    // Its worker lost before running it: requeued at home, the id is back in the set at once, with
    // its queue time (not only in the outbox, which its backlog acks without writing when it still
    // holds the entry, as it does after a placement it did not make itself).
    const queuedAt = (await store.readContainer(c1))!.queuedAt!;
    const requeued = await store.commitBatch(HOME, homeEpoch, [{ kind: 'requeue', containerId: c1, workerId: homeWorker, expectedVersion: await homeVersion(), homeShard: HOME }]);
    expect(requeued.fenced === false && requeued.outcomes[0]!.code).toBe('REQUEUED');
    expect(Number(await redis.zscore(store.keys.backlog(HOME), c1))).toBe(queuedAt);
    expect(await store.requeueOutbox(HOME)).toEqual([c1]);
    // A requeue in a shard that is not its home leaves its home set to the outbox's hand-over.
    const away = idIn('u5', SHARD);
    await store.commitBatch(HOME, homeEpoch, [placeHome(away, await homeVersion())]);
    await store.commitBatch(HOME, homeEpoch, [{ kind: 'requeue', containerId: away, workerId: homeWorker, expectedVersion: await homeVersion(), homeShard: SHARD }]);
    expect(await redis.zscore(store.keys.backlog(HOME), away)).toBeNull();
    expect(await redis.zscore(store.keys.backlog(SHARD), away)).toBeNull();
    // A backlog key of the wrong type is refused before anything is written.
    await redis.set(store.keys.backlog(SHARD), 'not a set');
    const before = await snapshotKeys(redis, prefix);
    await expect(store.commitBatch(SHARD, epoch, [place(idIn('u4', HOME), await version())])).rejects.toThrow(/is a string, not a zset/);
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
  });

  it('moves placed -> running -> stopping -> released, refusing steps from the wrong status, writing nothing then', async () => {
    const c1 = idIn('t', HOME);
    await store.commitBatch(SHARD, epoch, [place(c1, await version())]);
    const transition = (from: Array<'placed' | 'running'>, to: 'running' | 'stopping') => ({ kind: 'transition' as const, containerId: c1, workerId: W1, expectedVersion: 0, from, to });
    let result = await store.commitBatch(SHARD, epoch, [transition(['placed'], 'running')]);
    expect(result.fenced === false && result.outcomes[0]!.code).toBe('TRANSITIONED');
    const before = await snapshotKeys(redis, prefix);
    result = await store.commitBatch(SHARD, epoch, [transition(['placed'], 'running')]);
    expect(result.fenced === false && result.outcomes[0]).toMatchObject({ code: 'NOT_IN_STATE', extra: 'running' });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    result = await store.commitBatch(SHARD, epoch, [transition(['placed', 'running'], 'stopping')]);
    expect(result.fenced === false && result.outcomes[0]!.code).toBe('TRANSITIONED');
    const running = await store.readContainer(c1);
    expect(running).toMatchObject({ status: 'stopping' });
    expect(running!.runningAt).not.toBeNull();
    result = await store.commitBatch(SHARD, epoch, [{ kind: 'release', containerId: c1, workerId: W1, expectedVersion: await version(), final: 'released', reason: 'RELEASED', exitCode: 143 }]);
    expect(result.fenced === false && result.outcomes[0]!.code).toBe('RELEASED');
    expect(await store.readContainer(c1)).toMatchObject({ status: 'released', reason: 'RELEASED', exitCode: 143, runningAt: running!.runningAt });
    expect((await store.readWorker(SHARD, W1))!.freeCpu).toBe(2_000);
  });

  it('ends a running container as exited with its exit code, or lost', async () => {
    const c1 = idIn('x', HOME);
    const c2 = idIn('x2', HOME);
    await store.commitBatch(SHARD, epoch, [place(c1, await version()), place(c2, await version())]);
    const v = await version();
    const result = await store.commitBatch(SHARD, epoch, [
      { kind: 'release', containerId: c1, workerId: W1, expectedVersion: v, final: 'exited', exitCode: 3 },
      { kind: 'release', containerId: c2, workerId: W1, expectedVersion: v, final: 'lost', reason: 'WORKER_LOST' },
    ]);
    expect(result.fenced === false && result.outcomes.map((o) => o.code)).toEqual(['RELEASED', 'RELEASED']);
    expect(await store.readContainer(c1)).toMatchObject({ status: 'exited', exitCode: 3, reason: null });
    expect(await store.readContainer(c2)).toMatchObject({ status: 'lost', reason: 'WORKER_LOST', exitCode: null });
  });

  it('requeues a placed container its worker never ran: capacity back, record queued with its priority and constraints, id in the outbox until acked', async () => {
    const c1 = idIn('r', HOME);
    await store.commitBatch(SHARD, epoch, [place(c1, await version())]);
    expect((await store.readWorker(SHARD, W1))!.freeCpu).toBe(1_500);
    const requeue = { kind: 'requeue' as const, containerId: c1, workerId: W1, expectedVersion: await version(), homeShard: HOME };
    let result = await store.commitBatch(SHARD, epoch, [requeue]);
    expect(result.fenced === false && result.outcomes[0]).toMatchObject({ code: 'REQUEUED', extra: '500 512 0' });
    const record = await store.readContainer(c1);
    expect(record).toMatchObject({ status: 'queued', workerId: null, shard: HOME, priority: 9, pool: 'p', requestKey: `k-${c1}` });
    expect(record!.expiresAt! - Date.now()).toBeGreaterThan(3_000);
    expect((await store.readWorker(SHARD, W1))!.freeCpu).toBe(2_000);
    expect(await store.requeueOutbox(SHARD)).toEqual([c1]);
    expect(await redis.sismember(store.keys.workerContainers(SHARD, W1), c1)).toBe(0);
    // A running one is not requeued (it ran: it is lost instead), and writes nothing.
    const c2 = idIn('r2', HOME);
    await store.commitBatch(SHARD, epoch, [place(c2, await version())]);
    await store.commitBatch(SHARD, epoch, [{ kind: 'transition', containerId: c2, workerId: W1, expectedVersion: 0, from: ['placed'], to: 'running' }]);
    const before = await snapshotKeys(redis, prefix);
    result = await store.commitBatch(SHARD, epoch, [{ ...requeue, containerId: c2, expectedVersion: await version() }]);
    expect(result.fenced === false && result.outcomes[0]).toMatchObject({ code: 'NOT_IN_STATE', extra: 'running' });
    expect(await snapshotKeys(redis, prefix)).toEqual(before);
    // Its home backlog takes it again (same key), then the outbox forgets it.
    expect(await outcomes(HOME, [queueOp(c1)])).toEqual(['QUEUED']);
    expect(await redis.zscore(store.keys.backlog(HOME), c1)).not.toBeNull();
    result = await store.commitBatch(SHARD, epoch, [{ kind: 'outbox-ack', containerId: c1, workerId: '', expectedVersion: 0 }]);
    expect(result.fenced === false && result.outcomes[0]!.code).toBe('ACKED');
    expect(await store.requeueOutbox(SHARD)).toEqual([]);
    // Fenced like every op.
    const fenced = await store.commitBatch(SHARD, epoch + 5, [{ kind: 'outbox-ack', containerId: c1, workerId: '', expectedVersion: 0 }]);
    expect(fenced.fenced).toBe(true);
  });
});
