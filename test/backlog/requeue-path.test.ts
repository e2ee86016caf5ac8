/**
 * Nothing waits forever: a requeued container (its worker lost before running it) is held by a
 * live owner that can place, expire and cancel it, wherever along the requeue path the replica
 * that was doing it died.
 *
 * The requeue path: (1) the worker's shard writes the record back to queued and the id into its
 * requeue outbox (commit_batch op Q); (2) the home shard's backlog takes it (backlog_commit queue:
 * the id into the home set); (3) the worker's shard acks it (commit_batch op O: out of the outbox).
 * Each case leaves Redis as a replica killed after step 1, 2 or 3 leaves it: the writes are made
 * with the real scripts under that replica's epochs, and its leases run out without a release (it
 * never speaks again). Then a fresh replica takes the shards. A fourth case is a live replica
 * whose queue write landed but whose reply it never read (the same as a reply lost on the link).
 *
 * In each case three requeued containers must end as asked: one expires (its maxWaitMs runs out),
 * one is cancelled by a client's release, one is placed when a worker registers; and nothing is
 * left in the home set or the outbox. Before the fix, case 1 left them queued forever (the outbox
 * was handed over only while the shard was served, and a shard is not served while it opens), and
 * a release answered UNAVAILABLE.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../../actors/capacity.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import type { BacklogOp, DroverStore } from '../../src/store/store.js';
import { connectClient, connectRedis, delay, eventually, startReplica, storeFor, testPrefix } from '../support/cluster.js';

const redis = connectRedis();
afterAll(() => redis.quit());

const SHARDS = 4;
/** The lost worker's shard, and the home shard of the containers it held. */
const WORKER_SHARD = 1;
const HOME = 2;
/** The killed replica's leases: short, and never released. */
const DEAD_LEASE_MS = 400;

function idIn(base: string, shard: number): string {
  for (let i = 0; i < 10_000; i += 1) if (shardOf(`${base}-${i}`, SHARDS) === shard) return `${base}-${i}`;
  throw new Error('no id');
}

let replica: Replica | null = null;
let client: DroverClient | null = null;
afterEach(async () => {
  await client?.close();
  await replica?.stop();
  client = null;
  replica = null;
});

type Step = 'requeued' | 'taken' | 'acked';

interface Containers {
  readonly toExpire: string;
  readonly toCancel: string;
  readonly toPlace: string;
}

const version = async (store: DroverStore, workerId: string) => (await store.readWorker(WORKER_SHARD, workerId))!.resourceVersion;

/**
 * A replica that placed three containers on a worker of WORKER_SHARD, lost the worker (it is
 * disabled, so nothing lands on it again), and died after `step` of their requeue.
 */
async function killedAt(store: DroverStore, label: string, step: Step): Promise<Containers> {
  const epoch = (await store.acquireLease(WORKER_SHARD, 'killed', DEAD_LEASE_MS)).epoch;
  const homeEpoch = (await store.acquireLease(HOME, 'killed', DEAD_LEASE_MS)).epoch;
  const workerId = idIn(`${label}-w`, WORKER_SHARD);
  const spec: WorkerSpec = { id: workerId, shard: WORKER_SHARD, cpu: 4_000, memory: 4_096, gpu: null, gpuCount: 0, pool: null };
  await store.registerWorker(epoch, spec, 'available');
  const containers: Containers = { toExpire: idIn(`${label}-x`, HOME), toCancel: idIn(`${label}-c`, HOME), toPlace: idIn(`${label}-p`, HOME) };
  // The one to expire waits 3 s in all from its requeue; the others an hour.
  const maxWait = (id: string) => (id === containers.toExpire ? 3_000 : 3_600_000);
  for (const id of Object.values(containers)) {
    const placed = await store.commitBatch(WORKER_SHARD, epoch, [{
      kind: 'place', containerId: id, workerId, expectedVersion: await version(store, workerId), cpu: 1_000, memory: 1_024, gpuCount: 0,
      deadline: 0, requestKey: `k-${id}`, priority: 0, maxWaitMs: maxWait(id), gpu: null, pool: null,
    }]);
    expect(placed.fenced === false && placed.outcomes[0]!.code).toBe('PLACED');
  }
  const disabled = await store.commitBatch(WORKER_SHARD, epoch, [{ kind: 'status', workerId, expectedVersion: await version(store, workerId), status: 'disabled' }]);
  expect(disabled.fenced === false && disabled.outcomes[0]!.code).toBe('STATUS_SET');
  // Step 1: back to queued, into the outbox.
  for (const id of Object.values(containers)) {
    const requeued = await store.commitBatch(WORKER_SHARD, epoch, [{ kind: 'requeue', containerId: id, homeShard: HOME, workerId, expectedVersion: await version(store, workerId) }]);
    expect(requeued.fenced === false && requeued.outcomes[0]!.code).toBe('REQUEUED');
  }
  if (step === 'requeued') return containers;
  // Step 2: the home backlog takes them (the same key: only the id goes into the set).
  const taken = await store.commitBacklog(HOME, homeEpoch, Object.values(containers).map((id) => queueOp(id, maxWait(id))));
  expect(taken.fenced === false && taken.outcomes.map((o) => o.code)).toEqual(['QUEUED', 'QUEUED', 'QUEUED']);
  if (step === 'taken') return containers;
  // Step 3: acked, out of the outbox.
  const acked = await store.commitBatch(WORKER_SHARD, epoch, Object.values(containers).map((id) => ({ kind: 'outbox-ack' as const, containerId: id, workerId: '' as const, expectedVersion: 0 as const })));
  expect(acked.fenced === false && acked.outcomes.map((o) => o.code)).toEqual(['ACKED', 'ACKED', 'ACKED']);
  return containers;
}

function queueOp(id: string, maxWaitMs: number): BacklogOp {
  return { kind: 'queue', containerId: id, requestKey: `k-${id}`, priority: 0, maxWaitMs, cpu: 1_000, memory: 1_024, gpu: null, gpuCount: 0, pool: null, spec: '' };
}

/** Each of the three ends as asked, through the live replica, and nothing is left behind in Redis. */
async function endsAsAsked(store: DroverStore, prefix: string, containers: Containers): Promise<void> {
  client = await connectClient(prefix);
  const status = async (id: string) => {
    const reply = await client!.getContainer(id);
    return reply.ok ? `${reply.container.status}${reply.container.reason !== null && reply.container.reason !== undefined ? `/${reply.container.reason}` : ''}` : 'unknown';
  };
  // Cancelled by a client's release (its home shard's owner holds it, or settles it from Redis).
  await eventually(async () => {
    const reply = await client!.release(containers.toCancel);
    return reply.ok && reply.status === 'released';
  }, 10_000, `${containers.toCancel} cancelled`);
  expect(await status(containers.toCancel)).toBe('released/CANCELLED');
  // Expired when its time ran out, without anyone asking.
  await eventually(async () => (await status(containers.toExpire)) === 'failed/EXPIRED', 15_000, `${containers.toExpire} expired`);
  // Placed when room appears.
  expect(await status(containers.toPlace)).toBe('queued');
  expect(await client.registerWorker({ id: idIn('room', 3), cpu: 2_000, memory: 2_048 })).toMatchObject({ ok: true });
  await eventually(async () => (await status(containers.toPlace)) === 'placed', 10_000, `${containers.toPlace} placed`);
  // Nothing left: not in the home set, not in the outbox.
  await eventually(async () => (await redis.zcard(store.keys.backlog(HOME))) === 0, 10_000, 'the home set empty');
  await eventually(async () => (await store.requeueOutbox(WORKER_SHARD)).length === 0, 10_000, 'the outbox empty');
}

describe('the requeue path, with the replica doing it killed at each step', () => {
  for (const step of ['requeued', 'taken', 'acked'] as const) {
    it(`a replica killed after the requeue was ${step}: the next owner holds every container`, async () => {
      const prefix = testPrefix(`rp${step[0]}`);
      const store = storeFor(redis, prefix, 0, SHARDS);
      const containers = await killedAt(store, `rp${step[0]}`, step);
      await delay(DEAD_LEASE_MS + 100);
      replica = await startReplica({ prefix, shards: SHARDS, replicaId: `rp-${step}` });
      await eventually(() => replica!.servedShards().length === SHARDS, 10_000, 'the new replica owns every shard');
      await endsAsAsked(store, prefix, containers);
    }, 60_000);
  }

  it('a live owner whose queue write landed but whose reply was lost holds the container anyway', async () => {
    const prefix = testPrefix('rpl');
    const store = storeFor(redis, prefix, 0, SHARDS);
    replica = await startReplica({ prefix, shards: SHARDS, replicaId: 'rp-live', backlogReconcileMs: 1_000 });
    await eventually(() => replica!.servedShards().length === SHARDS, 10_000, 'the replica owns every shard');
    const epoch = replica.leases.epochOf(HOME)!;
    const containers: Containers = { toExpire: idIn('rpl-x', HOME), toCancel: idIn('rpl-c', HOME), toPlace: idIn('rpl-p', HOME) };
    // The replica's own write, under its epoch; the replica never reads the reply.
    const landed = await store.commitBacklog(HOME, epoch, Object.values(containers).map((id) => queueOp(id, id === containers.toExpire ? 2_000 : 3_600_000)));
    expect(landed.fenced === false && landed.outcomes.map((o) => o.code)).toEqual(['QUEUED', 'QUEUED', 'QUEUED']);
    expect(replica.backlog.partition(HOME)!.entries.size).toBe(0);
    // A release at once (before any reconciliation): the cancel settles its id from Redis itself.
    client = await connectClient(prefix);
    expect(await client.release(containers.toCancel)).toMatchObject({ ok: true, status: 'released' });
    await client.close();
    client = null;
    // The other two are found by the partition's reconciliation.
    await endsAsAsked(store, prefix, containers);
  }, 60_000);
});
