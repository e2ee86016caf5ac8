/**
 * A worker changed in Redis behind its owner's back (an operator's edit, a write this replica's
 * actor has not seen): the fenced script refuses the placement, the owner resyncs the actor from
 * Redis and decides the placement once more. The answer must be what Redis now says, never a
 * NO_CAPACITY made up from a stale view, and never a write past the worker's real capacity.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, connectRedis, startReplica, storeFor, testPrefix } from '../support/cluster.js';

const SHARDS = 4;
let redis: Redis;
let replica: Replica;
let client: DroverClient;
let prefix: string;

beforeAll(async () => {
  redis = connectRedis();
  prefix = testPrefix('cw');
  replica = await startReplica({ prefix, shards: SHARDS });
  client = await connectClient(prefix);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
  await redis.quit();
});

const workerKey = (id: string) => storeFor(redis, prefix).keys.worker(shardOf(id, SHARDS), id);

describe('a worker changed behind its owner', () => {
  it('places on it after a resync when only its version moved', async () => {
    // The only worker of its pool, so a NO_CAPACITY would be a false answer.
    expect((await client.registerWorker({ id: 'lone', cpu: 1_000, memory: 1_000, pool: 'solo' })).ok).toBe(true);
    const bumped = await redis.hincrby(workerKey('lone'), 'resourceVersion', 1);
    const conflictsBefore = replica.stats().owners.versionConflicts;

    const reply = await client.submit({ queue: false, id: 'after-bump', cpu: 500, memory: 500, pool: 'solo' });

    expect(reply).toMatchObject({ ok: true, status: 'placed', workerId: 'lone' });
    expect(replica.stats().owners.versionConflicts).toBe(conflictsBefore + 1);
    expect(await redis.hmget(workerKey('lone'), 'freeCpu', 'resourceVersion')).toEqual(['500', String(bumped + 1)]);
  });

  it('answers NO_CAPACITY, writing nothing, when Redis says the worker really is full', async () => {
    expect((await client.registerWorker({ id: 'shrunk', cpu: 1_000, memory: 1_000, pool: 'tight' })).ok).toBe(true);
    // Someone took 900 millicores without telling the owner's actor.
    await redis.hset(workerKey('shrunk'), 'freeCpu', 100);
    await redis.hincrby(workerKey('shrunk'), 'resourceVersion', 1);
    const before = await redis.hgetall(workerKey('shrunk'));

    const reply = await client.submit({ queue: false, id: 'too-big-now', cpu: 500, memory: 500, pool: 'tight' });

    expect(reply).toMatchObject({ ok: false, error: { code: 'NO_CAPACITY' } });
    expect(await redis.hgetall(workerKey('shrunk'))).toEqual(before);
    expect(await client.getContainer('too-big-now')).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    // The actor now holds Redis's view: a container that fits the real remainder is placed.
    expect(await client.submit({ queue: false, id: 'fits-now', cpu: 100, memory: 100, pool: 'tight' })).toMatchObject({ ok: true, workerId: 'shrunk' });
  });
});
