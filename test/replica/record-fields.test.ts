/**
 * No status write loses a field it does not change: every field of `containers.get` is read after
 * each transition and compared, whole, with the reading before it plus what the transition
 * changes. The paths: submit -> placed -> running -> stopping -> released (a worker agent, played
 * here through the public report subject); placed -> exited; queued -> failed (EXPIRED); queued ->
 * released (CANCELLED); queued -> placed -> released; running -> unknown -> running -> unknown ->
 * lost (a silent agent). And a worker that is only `pending` is named in NO_CAPACITY's answer.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ContainerInfo, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, connectRedis, delay, eventually, startReplica } from '../support/cluster.js';

const SHARDS = 4;
let replica: Replica;
let client: DroverClient;
let redis: Redis;
let agentShard: number;
/** The played agent's incarnation, and its report sequence (each report's is higher). */
const INCARNATION = 'rf-incarnation';
let seq = 0;
const report = (containers: Parameters<DroverClient['report']>[1]) => client.report('rf-agent', containers, INCARNATION, (seq += 1));

beforeAll(async () => {
  // The agent is played by the test: a long TTL keeps its worker from being lost between reports.
  replica = await startReplica({ shards: SHARDS, workerTtlMs: 60_000 });
  client = await connectClient(replica.config.prefix);
  redis = connectRedis();
});

afterAll(async () => {
  await client.close();
  await replica.stop();
  await redis.quit();
});

async function read(id: string): Promise<ContainerInfo> {
  const reply = await client.getContainer(id);
  if (!reply.ok) throw new Error(`containers.get ${id}: ${reply.error.code} ${reply.error.message}`);
  return reply.container;
}

/**
 * The record after a transition: exactly the one before it with `changes`, nothing else different,
 * and its seq one higher (one status write).
 */
async function expectTransition(id: string, before: ContainerInfo, changes: Partial<ContainerInfo>): Promise<ContainerInfo> {
  const after = await read(id);
  expect(after).toEqual({ ...before, seq: before.seq + 1, ...changes });
  return after;
}

const stamp = expect.any(Number);

describe('every field of a container survives each status write', () => {
  it('names pending workers when NO_CAPACITY is the answer, then takes the agent worker at its first report', async () => {
    expect((await client.registerWorker({ id: 'rf-agent', cpu: 4_000, memory: 4_096, pool: 'rf', agent: true })).ok).toBe(true);
    const refused = await client.submit({ queue: false, id: 'rf-none', cpu: 100, memory: 100, pool: 'rf' });
    expect(refused).toMatchObject({ ok: false, error: { code: 'NO_CAPACITY', message: expect.stringMatching(/all 1 workers of pool rf are pending, unreachable, draining, disabled or lost/) } });
    // NO_CAPACITY writes nothing: the id is still free.
    expect(await client.getContainer('rf-none')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    expect(await report([])).toMatchObject({ ok: true });
    const worker = await client.getWorker('rf-agent');
    expect(worker.ok && worker.worker.status).toBe('available');
    agentShard = worker.ok ? worker.worker.shard : -1;
    await delay(60);
  });

  it('submit -> placed -> running -> stopping -> released', async () => {
    const submit = { id: 'rf-a', cpu: 500, memory: 256, pool: 'rf', priority: 9, maxWaitMs: 120_000, command: ['sleep', '60'], env: { B: '2', A: '1' } };
    expect(await client.submit(submit)).toEqual({ ok: true, status: 'placed', id: 'rf-a', workerId: 'rf-agent' });
    const placed = await read('rf-a');
    expect(placed).toEqual({
      id: 'rf-a', status: 'placed', workerId: 'rf-agent', shard: agentShard, cpu: 500, memory: 256, gpuCount: 0, priority: 9,
      // Never queued: placed at once.
      queuedAt: null, placedAt: stamp, runningAt: null, endedAt: null, exitCode: null, releasedAt: null, reason: null, ageMs: null, expiresAt: null, seq: 1,
    });
    expect(await report([{ id: 'rf-a', status: 'running' }])).toMatchObject({ ok: true });
    const running = await expectTransition('rf-a', placed, { status: 'running', runningAt: stamp });
    expect(running.runningAt).toBeGreaterThanOrEqual(placed.placedAt!);
    expect(await client.release('rf-a')).toEqual({ ok: true, id: 'rf-a', status: 'stopping' });
    const stopping = await expectTransition('rf-a', running, { status: 'stopping' });
    // The agent stopped it and no longer lists it: released, and the record is a tombstone now.
    expect(await report([])).toMatchObject({ ok: true });
    const released = await expectTransition('rf-a', stopping, { status: 'released', endedAt: stamp, releasedAt: stamp, reason: 'RELEASED' });
    expect(released.releasedAt).toBe(released.endedAt);
    expect(await redis.type(replica.store.keys.container('rf-a'))).toBe('string');
    // Releasing again answers the final status.
    expect(await client.release('rf-a')).toEqual({ ok: true, id: 'rf-a', status: 'released' });
  });

  it('placed -> exited, with its exit code', async () => {
    expect(await client.submit({ id: 'rf-b', cpu: 300, memory: 128, pool: 'rf', priority: -7 })).toMatchObject({ ok: true, status: 'placed' });
    const placed = await read('rf-b');
    expect(placed).toMatchObject({ status: 'placed', priority: -7, queuedAt: null, placedAt: stamp });
    expect(await report([{ id: 'rf-b', status: 'exited', exitCode: 3 }])).toMatchObject({ ok: true });
    await expectTransition('rf-b', placed, { status: 'exited', endedAt: stamp, exitCode: 3 });
    expect(await client.release('rf-b')).toEqual({ ok: true, id: 'rf-b', status: 'exited' });
  });

  it('queued -> failed (EXPIRED)', async () => {
    expect(await client.submit({ id: 'rf-c', cpu: 100, memory: 100, pool: 'rf-empty', priority: 5, maxWaitMs: 300 })).toEqual({ ok: true, status: 'queued', id: 'rf-c' });
    const queued = await read('rf-c');
    expect(queued).toEqual({
      id: 'rf-c', status: 'queued', workerId: null, shard: shardOf('rf-c', SHARDS), cpu: 100, memory: 100, gpuCount: 0, priority: 5,
      queuedAt: stamp, placedAt: null, runningAt: null, endedAt: null, exitCode: null, releasedAt: null, reason: null, ageMs: stamp, expiresAt: queued.queuedAt! + 300, seq: 1,
    });
    await eventually(async () => (await read('rf-c')).status === 'failed', 10_000, 'rf-c expired');
    const failed = await expectTransition('rf-c', queued, { status: 'failed', endedAt: stamp, reason: 'EXPIRED', ageMs: null, expiresAt: null });
    expect(failed.endedAt).toBeGreaterThanOrEqual(queued.expiresAt!);
    expect(await client.release('rf-c')).toEqual({ ok: true, id: 'rf-c', status: 'failed' });
  });

  it('queued -> released (CANCELLED)', async () => {
    expect(await client.submit({ id: 'rf-d', cpu: 100, memory: 100, pool: 'rf-empty', priority: -3, gpuCount: 2 })).toMatchObject({ ok: true, status: 'queued' });
    const queued = await read('rf-d');
    expect(queued).toMatchObject({ status: 'queued', priority: -3, gpuCount: 2, queuedAt: stamp, expiresAt: queued.queuedAt! + 3_600_000 });
    expect(await client.release('rf-d')).toEqual({ ok: true, id: 'rf-d', status: 'released' });
    await expectTransition('rf-d', queued, { status: 'released', endedAt: stamp, releasedAt: stamp, reason: 'CANCELLED', ageMs: null, expiresAt: null });
  });

  it('queued -> placed -> released keeps its queue time', async () => {
    expect(await client.submit({ id: 'rf-e', cpu: 200, memory: 200, pool: 'rf-late', priority: 4 })).toMatchObject({ ok: true, status: 'queued' });
    const queued = await read('rf-e');
    expect((await client.registerWorker({ id: 'rf-late-w', cpu: 1_000, memory: 1_000, pool: 'rf-late' })).ok).toBe(true);
    await eventually(async () => (await read('rf-e')).status === 'placed', 10_000, 'rf-e placed by its backlog');
    const worker = await client.getWorker('rf-late-w');
    const placed = await expectTransition('rf-e', queued, {
      status: 'placed', workerId: 'rf-late-w', shard: worker.ok ? worker.worker.shard : -1, placedAt: stamp, ageMs: null, expiresAt: null,
    });
    expect(placed.queuedAt).toBe(queued.queuedAt);
    expect(await client.release('rf-e')).toEqual({ ok: true, id: 'rf-e', status: 'released' });
    await expectTransition('rf-e', placed, { status: 'released', endedAt: stamp, releasedAt: stamp, reason: 'RELEASED' });
  });
});

describe('every field survives a silent agent: running -> unknown -> running -> unknown -> lost', () => {
  const TTL_MS = 600;
  let other: Replica;
  let otherClient: DroverClient;
  let otherSeq = 0;
  const otherReport = (containers: Parameters<DroverClient['report']>[1]) => otherClient.report('rf-silent', containers, 'rf-silent-incarnation', (otherSeq += 1));

  beforeAll(async () => {
    other = await startReplica({ shards: SHARDS, workerTtlMs: TTL_MS, workerLostAfterMs: 3 * TTL_MS });
    otherClient = await connectClient(other.config.prefix);
  });

  afterAll(async () => {
    await otherClient.close();
    await other.stop();
  });

  const readOther = async (id: string): Promise<ContainerInfo> => {
    const reply = await otherClient.getContainer(id);
    if (!reply.ok) throw new Error(`containers.get ${id}: ${reply.error.code}`);
    return reply.container;
  };

  it('keeps every field while its worker goes silent, comes back, and is lost', async () => {
    expect((await otherClient.registerWorker({ id: 'rf-silent', cpu: 2_000, memory: 2_048, pool: 'silent', agent: true })).ok).toBe(true);
    expect(await otherReport([])).toMatchObject({ ok: true });
    await delay(60);
    expect(await otherClient.submit({ id: 'rf-s', cpu: 400, memory: 400, pool: 'silent', priority: 11, maxWaitMs: 90_000 })).toMatchObject({ ok: true, status: 'placed' });
    const placed = await readOther('rf-s');
    expect(placed).toMatchObject({ status: 'placed', priority: 11, queuedAt: null, workerId: 'rf-silent' });
    // The agent takes the assignment and runs it.
    await otherReport([]);
    expect(await otherReport([{ id: 'rf-s', status: 'running' }])).toMatchObject({ ok: true });
    const running = await readOther('rf-s');
    expect(running).toEqual({ ...placed, status: 'running', runningAt: stamp, seq: 2 });
    // Silent past the TTL: unknown, nothing else changes.
    await eventually(async () => (await readOther('rf-s')).status === 'unknown', 10_000, 'rf-s unknown');
    const unknown = await readOther('rf-s');
    expect(unknown).toEqual({ ...running, status: 'unknown', seq: 3 });
    // Back, still running it: running again, with its first runningAt.
    expect(await otherReport([{ id: 'rf-s', status: 'running' }])).toMatchObject({ ok: true });
    await eventually(async () => (await readOther('rf-s')).status === 'running', 10_000, 'rf-s running again');
    expect(await readOther('rf-s')).toEqual({ ...running, seq: 4 });
    // Silent for good: unknown, then lost after workerLostAfterMs.
    await eventually(async () => (await readOther('rf-s')).status === 'lost', 15_000, 'rf-s lost');
    // running (4) -> unknown (5) -> lost (6)
    expect(await readOther('rf-s')).toEqual({ ...running, status: 'lost', endedAt: stamp, reason: 'WORKER_LOST', seq: 6 });
  });
});
