/**
 * One replica, real Redis and NATS: the public contract end to end, exact accounting after random
 * work, concurrency on small workers, and duplicate container ids.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { auditAccounting } from '../../src/audit/accounting.js';
import { DEADLINE_HEADER } from '../../src/protocol/subjects.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, connectRedis, delay, startReplica } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;
let redis: Redis;

beforeAll(async () => {
  replica = await startReplica({ shards: 16 });
  client = await connectClient(replica.config.prefix);
  redis = connectRedis();
});

afterAll(async () => {
  await client.close();
  await replica.stop();
  await redis.quit();
});

/** Capacity summaries are coalesced for a few ms; give the router a moment after registering. */
const settle = () => delay(60);

describe('public contract', () => {
  it('registers, gets, places, reads, releases and drains', async () => {
    const registered = await client.registerWorker({ id: 'gpu-1', cpu: 8_000, memory: 16_384, gpu: 'a100', gpuCount: 2, pool: 'train' });
    expect(registered).toEqual({
      ok: true,
      worker: {
        id: 'gpu-1', shard: expect.any(Number), cpu: 8_000, memory: 16_384, freeCpu: 8_000, freeMemory: 16_384,
        gpu: 'a100', gpuCount: 2, freeGpuCount: 2, pool: 'train', status: 'available', resourceVersion: 1, agent: false,
      },
    });
    // Same spec again: idempotent, nothing changes.
    expect(await client.registerWorker({ id: 'gpu-1', cpu: 8_000, memory: 16_384, gpu: 'a100', gpuCount: 2, pool: 'train' })).toEqual(registered);
    const changed = await client.registerWorker({ id: 'gpu-1', cpu: 9_000, memory: 16_384, gpu: 'a100', gpuCount: 2, pool: 'train' });
    expect(changed.ok === false && changed.error.code).toBe('CONFLICT');
    await client.registerWorker({ id: 'cpu-1', cpu: 4_000, memory: 8_192 });
    await settle();

    const placed = await client.submit({ queue: false, id: 'job-1', cpu: 1_000, memory: 2_048, gpu: 'a100', gpuCount: 2 });
    expect(placed).toEqual({ ok: true, status: 'placed', id: 'job-1', workerId: 'gpu-1' });
    const moreGpu = await client.submit({ queue: false, id: 'job-2', cpu: 100, memory: 100, gpu: 'a100' });
    expect(moreGpu.ok === false && moreGpu.error.code).toBe('NO_CAPACITY');
    const pooled = await client.submit({ queue: false, id: 'job-3', cpu: 100, memory: 100, pool: 'train' });
    expect(pooled.ok && pooled.status === 'placed' && pooled.workerId).toBe('gpu-1');
    const cpuOnly = await client.submit({ queue: false, id: 'job-4', cpu: 100, memory: 100 });
    expect(cpuOnly.ok && cpuOnly.status === 'placed' && cpuOnly.workerId).toBe('cpu-1');

    const job = await client.getContainer('job-1');
    expect(job).toMatchObject({ ok: true, container: { id: 'job-1', status: 'placed', workerId: 'gpu-1', releasedAt: null } });
    // Exactly the contract's fields: nothing internal leaks into the reply.
    expect(Object.keys((job as { container: object }).container).sort()).toEqual(
      ['ageMs', 'cpu', 'endedAt', 'exitCode', 'expiresAt', 'gpuCount', 'id', 'memory', 'placedAt', 'priority', 'queuedAt', 'reason', 'releasedAt', 'runningAt', 'seq', 'shard', 'status', 'workerId'],
    );
    const worker = await client.getWorker('gpu-1');
    expect(worker.ok && [worker.worker.freeCpu, worker.worker.freeGpuCount, worker.worker.resourceVersion]).toEqual([6_900, 0, 3]);

    expect(await client.release('job-1')).toEqual({ ok: true, id: 'job-1', status: 'released' });
    expect(await client.release('job-1')).toEqual({ ok: true, id: 'job-1', status: 'released' });
    const after = await client.getWorker('gpu-1');
    expect(after.ok && [after.worker.freeCpu, after.worker.freeGpuCount, after.worker.resourceVersion]).toEqual([7_900, 2, 4]);
    expect(await client.getContainer('job-1')).toMatchObject({ ok: true, container: { status: 'released', workerId: 'gpu-1' } });
    const again = await client.submit({ queue: false, id: 'job-1', cpu: 1, memory: 1 });
    expect(again).toMatchObject({ ok: false, error: { code: 'ALREADY_PLACED' }, workerId: 'gpu-1' });

    const drained = await client.drainWorker('cpu-1');
    expect(drained.ok && drained.worker.status).toBe('draining');
    await settle();
    const refused = await client.submit({ queue: false, id: 'job-5', cpu: 100, memory: 100, pool: undefined });
    expect(refused.ok && refused.status === 'placed' && refused.workerId).toBe('gpu-1'); // not the draining worker
    const enabled = await client.enableWorker('cpu-1');
    expect(enabled.ok && enabled.worker.status).toBe('available');
    const disabled = await client.disableWorker('cpu-1');
    expect(disabled.ok && disabled.worker.status).toBe('disabled');
    const drainDisabled = await client.drainWorker('cpu-1');
    expect(drainDisabled.ok === false && drainDisabled.error.code).toBe('CONFLICT');

    expect(await client.getWorker('nope')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    expect(await client.drainWorker('nope')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    expect(await client.release('nope')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    expect(await client.getContainer('nope')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });

    const listed = await client.allWorkers();
    expect(listed.map((w) => w.id).sort()).toEqual(['cpu-1', 'gpu-1']);
  });
});

describe('batch registration', () => {
  it('registers each worker of a batch as a single registration would, each with its own answer', async () => {
    const workers = Array.from({ length: 40 }, (_, i) => ({ id: `rb-${i}`, cpu: 1_000 + i, memory: 2_048, pool: 'rb' }));
    const reply = await client.registerWorkers(workers);
    expect(reply.ok).toBe(true);
    if (!reply.ok) return;
    expect(reply.results).toHaveLength(40);
    reply.results.forEach((result, i) => expect(result).toMatchObject({ ok: true, worker: { id: `rb-${i}`, cpu: 1_000 + i, status: 'available' } }));
    // Again, with one spec changed: the same answers (idempotent), and CONFLICT for the changed one.
    const again = await client.registerWorkers(workers.map((w, i) => (i === 7 ? { ...w, cpu: 1 } : w)));
    expect(again.ok && again.results.filter((r) => r.ok)).toHaveLength(39);
    expect(again.ok && again.results[7]).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
    expect(await client.getWorker('rb-39')).toMatchObject({ ok: true, worker: { cpu: 1_039 } });
    // Capacity is known to every router as soon as the reply is in: a submit fits at once.
    expect(await client.submit({ id: 'rb-c1', cpu: 1_039, memory: 2_048, pool: 'rb', queue: false })).toMatchObject({ ok: true, workerId: 'rb-39' });
  });
});

describe('accounting and concurrency', () => {
  it('keeps free capacity exactly equal to total minus live placements after random work', async () => {
    const workers = Array.from({ length: 12 }, (_, i) => ({ id: `acct-${i}`, cpu: 3_000 + 500 * i, memory: 6_000 + 700 * i }));
    for (const w of workers) expect((await client.registerWorker(w)).ok).toBe(true);
    await settle();
    let seed = 42;
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
    const live: string[] = [];
    // The test's own record of what holds what, independent of anything Drover keeps.
    const holding = new Map<string, { workerId: string; cpu: number; memory: number }>();
    let placed = 0;
    let released = 0;
    for (let round = 0; round < 20; round += 1) {
      const submits = Array.from({ length: 25 }, (_, i) => ({ id: `acct-c-${round}-${i}`, cpu: 100 + Math.floor(random() * 900), memory: 128 + Math.floor(random() * 1_500) }));
      const replies = await Promise.all(submits.map((s) => client.submit(s)));
      replies.forEach((reply, i) => {
        if (reply.ok) {
          placed += 1;
          live.push(submits[i]!.id);
          if (reply.status !== 'placed') throw new Error('queued with queue: false');
          holding.set(submits[i]!.id, { workerId: reply.workerId, cpu: submits[i]!.cpu, memory: submits[i]!.memory });
        } else expect(reply.error.code).toBe('NO_CAPACITY');
      });
      const toRelease = live.splice(0, Math.floor(live.length * random() * 0.6));
      const releases = await Promise.all(toRelease.map((id) => client.release(id)));
      for (const r of releases) expect(r.ok).toBe(true);
      for (const id of toRelease) holding.delete(id);
      released += toRelease.length;
    }
    expect(placed).toBeGreaterThan(200);
    expect(released).toBeGreaterThan(50);
    const audit = await auditAccounting(replica.store, replica.config.shards);
    expect(audit.violations).toEqual([]);
    expect(audit.livePlacements).toBeGreaterThanOrEqual(live.length);
    // Each worker, as the contract reports it, against the test's own record of the replies.
    for (const w of workers) {
      const mine = [...holding.values()].filter((h) => h.workerId === w.id);
      const reply = await client.getWorker(w.id);
      expect(reply).toMatchObject({
        ok: true,
        worker: {
          freeCpu: w.cpu - mine.reduce((sum, h) => sum + h.cpu, 0),
          freeMemory: w.memory - mine.reduce((sum, h) => sum + h.memory, 0),
        },
      });
    }
    for (const [id, h] of holding) {
      expect(await client.getContainer(id)).toMatchObject({ ok: true, container: { status: 'placed', workerId: h.workerId } });
    }
  });

  it('never over-commits a few small workers under 500 concurrent submits', async () => {
    const small = Array.from({ length: 4 }, (_, i) => ({ id: `small-${i}`, cpu: 1_000, memory: 1_000, pool: 'tiny' }));
    for (const w of small) await client.registerWorker(w);
    await settle();
    // Each worker fits exactly 10 of these; 40 can be placed, 460 must be refused.
    const replies = await Promise.all(
      Array.from({ length: 500 }, (_, i) => client.submit({ queue: false, id: `burst-${i}`, cpu: 100, memory: 100, pool: 'tiny' })),
    );
    const placed = replies.filter((r) => r.ok);
    const refused = replies.filter((r) => !r.ok);
    expect(placed.length).toBe(40);
    for (const r of refused) expect(r.ok === false && r.error.code).toBe('NO_CAPACITY');
    const perWorker = new Map<string, number>();
    for (const r of placed) if (r.ok && r.status === 'placed') perWorker.set(r.workerId, (perWorker.get(r.workerId) ?? 0) + 1);
    expect([...perWorker.values()]).toEqual([10, 10, 10, 10]);
    for (const w of small) {
      const reply = await client.getWorker(w.id);
      expect(reply.ok && [reply.worker.freeCpu, reply.worker.freeMemory]).toEqual([0, 0]);
    }
    expect((await auditAccounting(replica.store, replica.config.shards)).violations).toEqual([]);
  });

  it('places one container id exactly once when it is submitted 50 times at once', async () => {
    await client.registerWorker({ id: 'dup-w', cpu: 100_000, memory: 100_000, pool: 'dup' });
    await settle();
    const replies = await Promise.all(Array.from({ length: 50 }, () => client.submit({ queue: false, id: 'dup-c', cpu: 100, memory: 100, pool: 'dup' })));
    const placed = replies.filter((r) => r.ok);
    expect(placed.length).toBe(1);
    const duplicates = replies.filter((r) => !r.ok);
    expect(duplicates.length).toBe(49);
    for (const r of duplicates) expect(r).toMatchObject({ ok: false, error: { code: 'ALREADY_PLACED' }, workerId: 'dup-w' });
    const worker = await client.getWorker('dup-w');
    expect(worker.ok && worker.worker.freeCpu).toBe(100_000 - 100);
    expect(await redis.scard(replica.store.keys.workerContainers(worker.ok ? worker.worker.shard : -1, 'dup-w'))).toBe(1);
  });

  it('does not act on a request whose client deadline has passed, and says so with both clocks', async () => {
    await client.registerWorker({ id: 'late-w', cpu: 1_000, memory: 1_000, pool: 'late' });
    await settle();
    const expired = headers();
    const deadline = Date.now() - 1;
    expired.set(DEADLINE_HEADER, String(deadline));
    const late = await client.nc.request(`${replica.config.prefix}.submit`, JSON.stringify({ id: 'late-c', cpu: 100, memory: 100, pool: 'late' }), {
      timeout: 5_000,
      headers: expired,
    });
    const reply = late.json<{ ok: boolean; error: { code: string; message: string }; deadline: number; replicaTime: number }>();
    expect(reply).toMatchObject({ ok: false, error: { code: 'DEADLINE_EXCEEDED' }, deadline });
    expect(reply.replicaTime).toBeGreaterThan(deadline);
    expect(reply.error.message).toContain(String(deadline));
    expect(await redis.exists(replica.store.keys.container('late-c'))).toBe(0);
    // The same request with time left is served.
    expect(await client.submit({ queue: false, id: 'late-c', cpu: 100, memory: 100, pool: 'late' })).toMatchObject({ ok: true, workerId: 'late-w' });
  });

  it('neither places nor queues a submit whose deadline passes while it is being routed', async () => {
    // The router's own entry point, past the check at the door: as if the deadline passed while
    // this request waited for its turn. Room exists; queueing would be the fallback.
    const request = { id: 'late-r', cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: 'late', priority: 0, maxWaitMs: 60_000, queue: true, command: null, env: null };
    const deadline = Date.now() - 1;
    const reply = await replica.router.submit(request, deadline, 'late-key');
    expect(reply).toMatchObject({ ok: false, error: { code: 'DEADLINE_EXCEEDED', message: expect.stringMatching(/nothing was done/) }, deadline });
    expect(await redis.exists(replica.store.keys.container('late-r'))).toBe(0);
  });

  it('a batch submit places each container and answers per container', async () => {
    await client.registerWorker({ id: 'batch-w', cpu: 10_000, memory: 10_000, pool: 'batch' });
    await settle();
    const reply = await client.submitBatch(Array.from({ length: 120 }, (_, i) => ({ id: `batch-${i}`, cpu: 100, memory: 100, pool: 'batch', queue: false })));
    expect(reply.ok).toBe(true);
    const results = reply.ok ? reply.results : [];
    expect(results.filter((r) => r.ok).length).toBe(100);
    expect(results.filter((r) => !r.ok && r.error.code === 'NO_CAPACITY').length).toBe(20);
  });
});
