/**
 * The backlog against real Redis and NATS, two replicas (so home shards and worker shards are on
 * different replicas as often as not): what fits nowhere is queued, durably, and placed when room
 * appears (a registration, a release, an enable), highest priority first, without head-of-line
 * blocking; it expires, it can be cancelled, it is bounded; every status change is an event.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Subscription } from '@nats-io/transport-node';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, connectRedis, eventually, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 8;
const replicas: Replica[] = [];
let client: DroverClient;
let prefix: string;
let subscription: Subscription;
const events: ContainerEvent[] = [];

beforeAll(async () => {
  prefix = testPrefix('bl');
  replicas.push(await startReplica({ prefix, shards: SHARDS, replicaId: 'bl-1', backlogMax: 64 }));
  replicas.push(await startReplica({ prefix, shards: SHARDS, replicaId: 'bl-2', backlogMax: 64 }));
  await eventually(() => replicas.every((r) => r.servedShards().length === SHARDS / 2), 10_000, 'both replicas own their half');
  client = await connectClient(prefix);
  // Subscribed before anything is submitted, as the contract says a client may.
  subscription = client.nc.subscribe(`${prefix}.events.containers.>`, {
    callback: (error, msg) => {
      if (!error) events.push(msg.json<ContainerEvent>());
    },
  });
  await client.nc.flush();
});

afterAll(async () => {
  subscription.unsubscribe();
  await client.close();
  await Promise.all(replicas.map((r) => r.stop()));
});

/**
 * Ids "<base>-<n>" that share one home shard, so one replica's scheduler orders them: order is
 * promised within a replica's backlog (across replicas, attempts race; see the README).
 */
function sameHome(base: string, names: readonly string[]): Record<string, string> {
  const ids: Record<string, string> = {};
  const home = shardOf(`${base}-0`, SHARDS);
  let n = 0;
  for (const name of names) {
    while (shardOf(`${base}-${n}`, SHARDS) !== home) n += 1;
    ids[name] = `${base}-${n}`;
    n += 1;
  }
  return ids;
}

const statusesOf = (id: string) => events.filter((e) => e.id === id).map((e) => e.status);

async function status(id: string): Promise<string> {
  const reply = await client.getContainer(id);
  if (!reply.ok) throw new Error(`get ${id}: ${reply.error.message}`);
  return reply.container.status;
}

async function register(id: string, cpu: number, memory: number, pool: string): Promise<void> {
  const reply = await client.registerWorker({ id, cpu, memory, pool });
  if (!reply.ok) throw new Error(`register ${id}: ${reply.error.message}`);
}

async function submit(spec: Parameters<DroverClient['submit']>[0]): Promise<string> {
  const reply = await client.submit(spec);
  if (!reply.ok) throw new Error(`submit ${spec.id}: ${reply.error.code} ${reply.error.message}`);
  return reply.status;
}

describe('the backlog', () => {
  it('queues what fits nowhere, shows it queued with its age, and places it when a worker registers', async () => {
    expect(await submit({ id: 'q-1', cpu: 500, memory: 500, pool: 'reg', priority: 3, command: ['sleep', '1'], env: { A: '1' } })).toBe('queued');
    const queued = await client.getContainer('q-1');
    expect(queued).toMatchObject({ ok: true, container: { id: 'q-1', status: 'queued', workerId: null, priority: 3, placedAt: null } });
    expect(queued.ok && queued.container.ageMs).toBeGreaterThanOrEqual(0);
    expect(queued.ok && queued.container.expiresAt! - queued.container.queuedAt!).toBe(3_600_000);
    // queue: false keeps the immediate answer.
    expect(await client.submit({ id: 'q-now', cpu: 500, memory: 500, pool: 'reg', queue: false })).toMatchObject({ ok: false, error: { code: 'NO_CAPACITY' } });
    // A retry of the same submit (same request key) is the same queued request.
    await register('reg-w1', 1_000, 1_000, 'reg');
    await eventually(async () => (await status('q-1')) === 'placed', 5_000, 'q-1 placed after the registration');
    const placed = await client.getContainer('q-1');
    expect(placed).toMatchObject({ ok: true, container: { status: 'placed', workerId: 'reg-w1', ageMs: null } });
    expect(placed.ok && placed.container.placedAt! >= placed.container.queuedAt!).toBe(true);
    await eventually(() => statusesOf('q-1').length === 2, 2_000, 'q-1 events');
    expect(statusesOf('q-1')).toEqual(['queued', 'placed']);
    expect(events.find((e) => e.id === 'q-1' && e.status === 'placed')).toMatchObject({ workerId: 'reg-w1' });
  });

  it('a retried submit with the same request key is the same request; another key is refused', async () => {
    const key = `retry-${Date.now()}`;
    const first = await client.submit({ id: 'q-retry', cpu: 100, memory: 100, pool: 'nowhere' }, key);
    const again = await client.submit({ id: 'q-retry', cpu: 100, memory: 100, pool: 'nowhere' }, key);
    expect(first).toEqual({ ok: true, status: 'queued', id: 'q-retry' });
    expect(again).toEqual(first);
    expect(await client.submit({ id: 'q-retry', cpu: 100, memory: 100, pool: 'nowhere' })).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
    expect(statusesOf('q-retry')).toEqual(['queued']);
  });

  it('wakes on a release, highest priority first, then oldest', async () => {
    const id = sameHome('prio', ['low', 'old', 'new']);
    await register('prio-w1', 1_000, 1_000, 'prio');
    expect(await submit({ id: 'prio-hold', cpu: 1_000, memory: 1_000, pool: 'prio' })).toBe('placed');
    expect(await submit({ id: id.low!, cpu: 1_000, memory: 1_000, pool: 'prio', priority: 0 })).toBe('queued');
    expect(await submit({ id: id.old!, cpu: 1_000, memory: 1_000, pool: 'prio', priority: 5 })).toBe('queued');
    expect(await submit({ id: id.new!, cpu: 1_000, memory: 1_000, pool: 'prio', priority: 5 })).toBe('queued');
    const waiting = [id.low!, id.old!, id.new!];
    const order: string[] = [];
    for (const [round, holder] of ['prio-hold', id.old!, id.new!].entries()) {
      expect(await client.release(holder)).toMatchObject({ ok: true, status: 'released' });
      await eventually(async () => {
        for (const w of waiting) if (!order.includes(w) && (await status(w)) === 'placed') order.push(w);
        return order.length === round + 1;
      }, 5_000, `a waiting container placed after ${holder} was released`);
    }
    expect(order).toEqual([id.old, id.new, id.low]);
  });

  it('does not let a large request that does not fit hold back smaller ones that do', async () => {
    const id = sameHome('hol', ['big', 'small']);
    await register('hol-w1', 1_000, 1_000, 'hol');
    expect(await submit({ id: 'hol-fill', cpu: 600, memory: 600, pool: 'hol' })).toBe('placed');
    // Queued first and at a higher priority, but 800 does not fit in the 400 left.
    expect(await submit({ id: id.big!, cpu: 800, memory: 800, pool: 'hol', priority: 9 })).toBe('queued');
    expect(await submit({ id: 'hol-small', cpu: 300, memory: 300, pool: 'hol' })).toBe('placed');
    // In the same home shard as the big one: the same scheduler holds both.
    expect(shardOf(id.big!, SHARDS)).toBe(shardOf(id.small!, SHARDS));
    expect(await submit({ id: id.small!, cpu: 200, memory: 200, pool: 'hol' })).toBe('queued');
    // Room for the queued small one appears (not enough for the big one): the small one goes.
    expect(await client.release('hol-small')).toMatchObject({ ok: true });
    await eventually(async () => (await status(id.small!)) === 'placed', 5_000, 'the small one placed past the big one');
    expect(await status(id.big!)).toBe('queued');
    expect(await client.release('hol-fill')).toMatchObject({ ok: true });
    await eventually(async () => (await status(id.big!)) === 'placed', 5_000, 'the big one placed once room appeared');
  });

  it('wakes on an enable', async () => {
    await register('en-w1', 1_000, 1_000, 'en');
    expect(await client.drainWorker('en-w1')).toMatchObject({ ok: true });
    expect(await submit({ id: 'en-1', cpu: 100, memory: 100, pool: 'en' })).toBe('queued');
    expect(await client.enableWorker('en-w1')).toMatchObject({ ok: true });
    await eventually(async () => (await status('en-1')) === 'placed', 5_000, 'placed after the enable');
  });

  it('fails a request whose maxWaitMs passed with EXPIRED, and never places it', async () => {
    expect(await submit({ id: 'exp-1', cpu: 100, memory: 100, pool: 'exp', maxWaitMs: 200 })).toBe('queued');
    await eventually(async () => (await status('exp-1')) === 'failed', 5_000, 'exp-1 failed');
    expect(await client.getContainer('exp-1')).toMatchObject({ ok: true, container: { status: 'failed', reason: 'EXPIRED', workerId: null, placedAt: null } });
    await register('exp-w1', 1_000, 1_000, 'exp');
    await eventually(() => statusesOf('exp-1').length === 2, 2_000, 'exp-1 events');
    expect(statusesOf('exp-1')).toEqual(['queued', 'failed']);
    expect(events.find((e) => e.id === 'exp-1' && e.status === 'failed')).toMatchObject({ reason: 'EXPIRED' });
    // A retried submit of an ended id is refused: ids are not reused.
    expect(await client.submit({ id: 'exp-1', cpu: 100, memory: 100, pool: 'exp' })).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
  });

  it('cancels a queued request on release: it is never placed, even when room appears', async () => {
    expect(await submit({ id: 'can-1', cpu: 100, memory: 100, pool: 'can' })).toBe('queued');
    expect(await client.release('can-1')).toEqual({ ok: true, id: 'can-1', status: 'released' });
    expect(await client.getContainer('can-1')).toMatchObject({ ok: true, container: { status: 'released', reason: 'CANCELLED', workerId: null } });
    await register('can-w1', 1_000, 1_000, 'can');
    expect(await client.release('can-1')).toEqual({ ok: true, id: 'can-1', status: 'released' });
    await eventually(() => statusesOf('can-1').length === 2, 2_000, 'can-1 events');
    expect(statusesOf('can-1')).toEqual(['queued', 'released']);
    expect(await status('can-1')).toBe('released');
  });

  it('places queued containers in their home shard first, whose commit takes them out of the Redis set', async () => {
    // One queued container per home shard; then one worker per shard, registered in one batch.
    const ids = Array.from({ length: SHARDS }, (_, shard) => {
      for (let n = 0; ; n += 1) if (shardOf(`hf-${shard}-${n}`, SHARDS) === shard) return `hf-${shard}-${n}`;
    });
    for (const id of ids) expect(await submit({ id, cpu: 400, memory: 400, pool: 'hf' })).toBe('queued');
    const unqueuedBefore = replicas.reduce((sum, r) => sum + r.stats().backlog.unqueued, 0);
    const workers = Array.from({ length: SHARDS }, (_, shard) => {
      for (let n = 0; ; n += 1) if (shardOf(`hfw-${n}`, SHARDS) === shard) return { id: `hfw-${n}`, cpu: 1_000, memory: 1_000, pool: 'hf' };
    });
    const registered = await client.registerWorkers(workers);
    expect(registered.ok).toBe(true);
    await eventually(async () => (await Promise.all(ids.map(status))).every((s) => s === 'placed'), 5_000, 'every hf container placed');
    // Every placement in the home shard (the replica owning the backlog owns that shard: the
    // attempt ran in process) came back 'unqueued'; any placed elsewhere was dropped by its backlog.
    const placedAtHome = (await Promise.all(ids.map((id) => client.getContainer(id)))).filter(
      (reply, i) => reply.ok && reply.container.workerId !== null && shardOf(reply.container.workerId, SHARDS) === shardOf(ids[i]!, SHARDS),
    ).length;
    expect(placedAtHome).toBeGreaterThan(0);
    expect(replicas.reduce((sum, r) => sum + r.stats().backlog.unqueued, 0) - unqueuedBefore).toBe(placedAtHome);
    const redis = connectRedis();
    try {
      await eventually(async () => {
        for (let shard = 0; shard < SHARDS; shard += 1) {
          const left = await redis.zrange(`{${prefix}:s${shard}}:backlog`, '0', '-1');
          if (left.some((id) => id.startsWith('hf-'))) return false;
        }
        return true;
      }, 3_000, 'no hf id left in any backlog set');
    } finally {
      await redis.quit();
    }
  });

  it('is bounded: a full home shard answers BACKLOG_FULL and writes nothing', async () => {
    // backlogMax 64 over 8 shards: 8 per home shard. Queue until one shard is full.
    let full = null;
    for (let i = 0; i < 200 && full === null; i += 1) {
      const reply = await client.submit({ id: `full-${i}`, cpu: 100, memory: 100, pool: 'full' });
      if (!reply.ok) full = reply;
    }
    expect(full).toMatchObject({ ok: false, error: { code: 'BACKLOG_FULL' } });
    const report = await client.backlog();
    expect(report.ok).toBe(true);
    if (!report.ok) return;
    expect(report.missingShards).toEqual([]);
    expect(report.pools.find((p) => p.pool === 'full')?.depth).toBeGreaterThanOrEqual(8);
    expect(report.replicas.map((r) => r.replicaId)).toEqual(['bl-1', 'bl-2']);
  });
});
