/**
 * Retries are safe: a client that lost a reply and retries with the same request key gets the
 * same answer, not ALREADY_PLACED for its own container. And workers can be removed, through their
 * owner's fenced write, once they are drained and empty.
 */
import { headers } from '@nats-io/transport-node';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import { REQUEST_KEY_HEADER } from '../../src/protocol/subjects.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, connectRedis, snapshotKeys, startReplica } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;
let redis: Redis;

beforeAll(async () => {
  replica = await startReplica({ shards: 4 });
  client = await connectClient(replica.config.prefix);
  redis = connectRedis();
  for (let i = 0; i < 4; i += 1) expect((await client.registerWorker({ id: `rk-${i}`, cpu: 4_000, memory: 8_192 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
  await redis.quit();
});

describe('request keys', () => {
  it('answers a retried submit with the same "placed", and a different key with ALREADY_PLACED', async () => {
    const first = await client.submit({ queue: false, id: 'rk-c1', cpu: 100, memory: 100 }, 'key-1');
    expect(first).toMatchObject({ ok: true, status: 'placed' });
    // The retry of a submit whose reply was lost: same id, same key.
    expect(await client.submit({ queue: false, id: 'rk-c1', cpu: 100, memory: 100 }, 'key-1')).toEqual(first);
    const other = await client.submit({ queue: false, id: 'rk-c1', cpu: 100, memory: 100 }, 'key-2');
    expect(other).toMatchObject({ ok: false, error: { code: 'ALREADY_PLACED' }, workerId: (first as { workerId: string }).workerId });
    // Without any key the router makes one up per request: a second submit is a duplicate.
    const raw = await client.nc.request(`${replica.config.prefix}.submit`, JSON.stringify({ id: 'rk-c1', cpu: 100, memory: 100 }));
    expect(raw.json()).toMatchObject({ ok: false, error: { code: 'ALREADY_PLACED' } });
  });

  it('recognises its own placement when the first attempt committed but its answer never came', async () => {
    // Write the placement as a lost first attempt would have (through the owner, with the key),
    // without the client ever hearing about it.
    const shard = [...replica.servedShards()].find((s) => replica.owner(s)!.workerCount > 0)!;
    const owner = replica.owner(shard)!;
    const lost = await owner.execute({
      k: 'place', id: 'rk-lost', requestKey: 'key-lost', deadline: 0, spec: '',
      request: { cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null },
    });
    expect(lost).toMatchObject({ ok: true });
    expect(await client.submit({ queue: false, id: 'rk-lost', cpu: 100, memory: 100 }, 'key-lost')).toMatchObject({ ok: true, status: 'placed', workerId: (lost as { workerId: string }).workerId });
  });

  it('gives one key to a whole batch: a retried batch gets every container back as placed', async () => {
    const batch = Array.from({ length: 5 }, (_, i) => ({ id: `rk-b${i}`, cpu: 100, memory: 100 }));
    const first = await client.submitBatch(batch.map((c) => ({ ...c, queue: false })), 'batch-key');
    expect(first.ok && first.results.every((r) => r.ok)).toBe(true);
    expect(await client.submitBatch(batch.map((c) => ({ ...c, queue: false })), 'batch-key')).toEqual(first);
  });

  it('keeps answering "placed" to the same key after the container was released, and "released" to a retried release', async () => {
    const placed = await client.submit({ queue: false, id: 'rk-r1', cpu: 100, memory: 100 }, 'key-r1');
    expect(placed.ok).toBe(true);
    expect(await client.release('rk-r1', 'release-r1')).toEqual({ ok: true, id: 'rk-r1', status: 'released' });
    expect(await client.release('rk-r1', 'release-r1')).toEqual({ ok: true, id: 'rk-r1', status: 'released' });
    expect(await client.submit({ queue: false, id: 'rk-r1', cpu: 100, memory: 100 }, 'key-r1')).toEqual(placed);
    expect(await client.submit({ queue: false, id: 'rk-r1', cpu: 100, memory: 100 }, 'another')).toMatchObject({ ok: false, error: { code: 'ALREADY_PLACED' } });
    // The tombstone is what Redis keeps: a short string, not the full record.
    expect(await redis.type(replica.store.keys.container('rk-r1'))).toBe('string');
    expect(await client.getContainer('rk-r1')).toMatchObject({ ok: true, container: { id: 'rk-r1', status: 'released', cpu: 100, memory: 100 } });
    const view = await client.getContainer('rk-r1');
    expect(view.ok && Object.keys(view.container).sort()).toEqual(['ageMs', 'cpu', 'endedAt', 'exitCode', 'expiresAt', 'gpuCount', 'id', 'memory', 'placedAt', 'priority', 'queuedAt', 'reason', 'releasedAt', 'runningAt', 'seq', 'shard', 'status', 'workerId']);
  });

  it('answers CONFLICT to the same key with another body: placed, ended and queued records', async () => {
    const body = { id: 'rk-d1', cpu: 500, memory: 100, priority: 2, maxWaitMs: 60_000, command: ['sleep', '1'], env: { B: '2', A: '1' } };
    const placed = await client.submit(body, 'key-d1');
    expect(placed).toMatchObject({ ok: true, status: 'placed' });
    // The same request again (env in another order is the same environment): the same answer.
    expect(await client.submit({ ...body, env: { A: '1', B: '2' } }, 'key-d1')).toEqual(placed);
    const changes: Array<[Record<string, unknown>, RegExp]> = [
      [{ cpu: 700 }, /cpu 500, not 700/],
      [{ memory: 101 }, /memory 100, not 101/],
      [{ priority: 3 }, /priority 2, not 3/],
      [{ maxWaitMs: 1_000 }, /maxWaitMs 60000, not 1000/],
      [{ command: ['sleep', '2'] }, /command\/env differ/],
      [{ env: undefined }, /command\/env differ/],
      [{ gpuCount: 1 }, /gpuCount 0, not 1/],
    ];
    const expectConflicts = async (id: string, key: string, base: Record<string, unknown>) => {
      for (const [change, message] of changes) {
        const reply = await client.submit({ ...base, ...change, id } as typeof body, key);
        expect(reply).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringMatching(message) } });
        expect((reply as { error: { message: string } }).error.message).toMatch(/this request key and another body/);
      }
    };
    await expectConflicts('rk-d1', 'key-d1', body);
    // Ended (a tombstone): the same request is still recognised, another body still refused.
    expect(await client.release('rk-d1')).toEqual({ ok: true, id: 'rk-d1', status: 'released' });
    expect(await client.submit(body, 'key-d1')).toEqual(placed);
    await expectConflicts('rk-d1', 'key-d1', body);
    // Queued (no worker of its pool): a retry is "queued" again, another body CONFLICT.
    const queuedBody = { ...body, id: 'rk-q1', pool: 'nowhere' };
    expect(await client.submit(queuedBody, 'key-q1')).toEqual({ ok: true, status: 'queued', id: 'rk-q1' });
    const before = await snapshotKeys(redis, replica.config.prefix);
    expect(await client.submit(queuedBody, 'key-q1')).toEqual({ ok: true, status: 'queued', id: 'rk-q1' });
    await expectConflicts('rk-q1', 'key-q1', queuedBody);
    expect(await client.submit({ ...queuedBody, pool: 'elsewhere' }, 'key-q1')).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringMatching(/pool "nowhere", not "elsewhere"/) } });
    // Nothing was written by any of them.
    expect(await snapshotKeys(redis, replica.config.prefix)).toEqual(before);
  });

  it('takes the key from the Drover-Request-Key header', async () => {
    const header = headers();
    header.set(REQUEST_KEY_HEADER, 'from-header');
    const body = JSON.stringify({ id: 'rk-h1', cpu: 100, memory: 100 });
    const first = (await client.nc.request(`${replica.config.prefix}.submit`, body, { headers: header, timeout: 5_000 })).json();
    const again = (await client.nc.request(`${replica.config.prefix}.submit`, body, { headers: header, timeout: 5_000 })).json();
    expect(first).toMatchObject({ ok: true });
    expect(again).toEqual(first);
  });
});

describe('worker removal', () => {
  it('removes a drained, empty worker; refuses an available one and one that holds containers', async () => {
    expect((await client.registerWorker({ id: 'rm-1', cpu: 1_000, memory: 1_000, pool: 'rm' })).ok).toBe(true);
    expect(await client.removeWorker('rm-1')).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringMatching(/drain or disable/) } });
    expect((await client.submit({ queue: false, id: 'rm-c1', cpu: 100, memory: 100, pool: 'rm' })).ok).toBe(true);
    expect((await client.drainWorker('rm-1')).ok).toBe(true);
    expect(await client.removeWorker('rm-1')).toMatchObject({ ok: false, error: { code: 'CONFLICT', message: expect.stringMatching(/holds containers/) } });
    expect((await client.release('rm-c1')).ok).toBe(true);
    expect(await client.removeWorker('rm-1')).toEqual({ ok: true, id: 'rm-1', status: 'removed' });
    expect(await client.getWorker('rm-1')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    expect(await client.removeWorker('rm-1')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    // Nothing is left of it in Redis but its history, and it can be registered anew.
    const shard = (await client.registerWorker({ id: 'rm-1', cpu: 2_000, memory: 2_000, pool: 'rm' })) as { ok: true; worker: { shard: number; cpu: number } };
    expect(shard.worker.cpu).toBe(2_000);
  });
});
