/**
 * A definite "no" must be true. Two replicas (two routers, shards split between them), real Redis
 * and NATS: NO_CAPACITY only when no available worker fits, never because a router's summary was
 * lossy, stale or missing; routing spreads placements over every shard; and NO_CAPACITY says why.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { placementRefusal, type PlacementRequest, type WorkerAvailability, type WorkerSpec } from '../../actors/capacity.js';
import { seededRandom } from '../../src/chaos/load.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, delay, eventually, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 8;
const replicas: Replica[] = [];
let client: DroverClient;

beforeAll(async () => {
  const prefix = testPrefix('ta');
  replicas.push(await startReplica({ prefix, shards: SHARDS, replicaId: 'ta-1' }));
  replicas.push(await startReplica({ prefix, shards: SHARDS, replicaId: 'ta-2' }));
  await eventually(() => replicas.every((r) => r.servedShards().length === SHARDS / 2), 10_000, 'both replicas own their half');
  client = await connectClient(prefix);
});

afterAll(async () => {
  await client.close();
  await Promise.all(replicas.map((r) => r.stop()));
});

/** Worker ids "<base>-<n>" whose shard is `shard`. */
function idsInShard(base: string, shard: number, count: number): string[] {
  const ids: string[] = [];
  for (let n = 0; ids.length < count; n += 1) if (shardOf(`${base}-${n}`, SHARDS) === shard) ids.push(`${base}-${n}`);
  return ids;
}

async function register(id: string, cpu: number, memory: number, extra: { gpu?: string; gpuCount?: number; pool?: string } = {}): Promise<void> {
  const reply = await client.registerWorker({ id, cpu, memory, ...extra });
  if (!reply.ok) throw new Error(`register ${id}: ${reply.error.message}`);
}

const code = (reply: { ok: boolean; error?: { code: string } }) => (reply.ok ? 'placed' : reply.error!.code);

describe('NO_CAPACITY is true', () => {
  it('places on a balanced worker hidden among lopsided ones (reproduction from the issue)', async () => {
    const ids = idsInShard('lopsided', 3, 13);
    for (const id of ids.slice(0, 6)) await register(id, 64_000, 2_048, { pool: 'repro-a' });
    for (const id of ids.slice(6, 12)) await register(id, 1_000, 262_144, { pool: 'repro-a' });
    await register(ids[12]!, 8_000, 32_000, { pool: 'repro-a' });
    const reply = await client.submit({ queue: false, id: 'repro-a-1', cpu: 4_000, memory: 16_000, pool: 'repro-a' });
    expect(reply).toMatchObject({ ok: true, workerId: ids[12] });
  });

  it('places a one-GPU container on the small GPU worker when the big ones are full (reproduction from the issue)', async () => {
    const ids = idsInShard('gpus', 5, 9);
    for (const id of ids.slice(0, 8)) await register(id, 64_000, 500_000, { gpu: 'a100', gpuCount: 8, pool: 'repro-b' });
    await register(ids[8]!, 4_000, 16_000, { gpu: 'a100', gpuCount: 2, pool: 'repro-b' });
    // Fill every GPU of the big workers (8 containers of 8 GPUs: nothing else fits 8).
    for (let i = 0; i < 8; i += 1) {
      expect(code(await client.submit({ queue: false, id: `repro-b-full-${i}`, cpu: 100, memory: 100, gpu: 'a100', gpuCount: 8, pool: 'repro-b' }))).toBe('placed');
    }
    const reply = await client.submit({ queue: false, id: 'repro-b-1', cpu: 1_000, memory: 1_000, gpu: 'a100', gpuCount: 1, pool: 'repro-b' });
    expect(reply).toMatchObject({ ok: true, workerId: ids[8] });
  });

  it('answers exactly what the pure worker choice says, for random heterogeneous fleets (property test)', async () => {
    const random = seededRandom(20261128);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
    let requests = 0;
    let placed = 0;
    for (let fleet = 0; fleet < 24; fleet += 1) {
      const pool = `fleet-${fleet}`;
      const model = new Map<string, { spec: WorkerSpec; status: WorkerAvailability['status']; free: [number, number, number] }>();
      // Some fleets crowd one shard with anti-correlated workers, so its frontier is cut short.
      const crowded = fleet % 4 === 3;
      const size = crowded ? 24 : 1 + Math.floor(random() * 14);
      const ids = crowded ? idsInShard(pool, fleet % SHARDS, size) : Array.from({ length: size }, (_, i) => `${pool}-w${i}`);
      for (const [i, id] of ids.entries()) {
        const cpu = crowded ? (i + 1) * 1_000 : pick([1_000, 4_000, 8_000, 32_000, 64_000]);
        const memory = crowded ? (size + 1 - i) * 1_024 : pick([1_024, 4_096, 16_384, 65_536, 262_144]);
        const gpu = !crowded && random() < 0.3 ? pick(['a100', 'h100']) : null;
        const gpuCount = gpu === null ? 0 : pick([1, 2, 4]);
        await register(id, cpu, memory, { pool, ...(gpu === null ? {} : { gpu, gpuCount }) });
        const spec: WorkerSpec = { id, shard: shardOf(id, SHARDS), cpu, memory, gpu, gpuCount, pool };
        let status: WorkerAvailability['status'] = 'available';
        const roll = random();
        if (roll < 0.1) {
          expect((await client.drainWorker(id)).ok).toBe(true);
          status = 'draining';
        } else if (roll < 0.15) {
          expect((await client.disableWorker(id)).ok).toBe(true);
          status = 'disabled';
        }
        model.set(id, { spec, status, free: [cpu, memory, gpuCount] });
      }
      for (let r = 0; r < 25; r += 1) {
        const gpuCount = random() < 0.2 ? pick([1, 2]) : 0;
        const request: PlacementRequest = {
          cpu: pick([250, 1_000, 4_000, 16_000, 48_000]),
          memory: pick([512, 2_048, 8_192, 32_768, 131_072]),
          gpu: gpuCount > 0 && random() < 0.5 ? pick(['a100', 'h100']) : null,
          gpuCount,
          pool,
        };
        const fits = [...model.values()].some((w) =>
          placementRefusal({ spec: w.spec, status: w.status, freeCpu: w.free[0], freeMemory: w.free[1], freeGpuCount: w.free[2] }, request) === null);
        const id = `${pool}-c${r}`;
        const reply = await client.submit({ queue: false, id, cpu: request.cpu, memory: request.memory, pool, ...(request.gpu === null ? {} : { gpu: request.gpu }), ...(gpuCount > 0 ? { gpuCount } : {}) });
        requests += 1;
        const context = `${id} ${JSON.stringify(request)} -> ${JSON.stringify(reply)}`;
        if (fits) {
          expect(code(reply), context).toBe('placed');
          const worker = model.get((reply as { workerId: string }).workerId)!;
          expect(placementRefusal({ spec: worker.spec, status: worker.status, freeCpu: worker.free[0], freeMemory: worker.free[1], freeGpuCount: worker.free[2] }, request), context).toBeNull();
          worker.free = [worker.free[0] - request.cpu, worker.free[1] - request.memory, worker.free[2] - request.gpuCount];
          placed += 1;
        } else {
          expect(code(reply), context).toBe('NO_CAPACITY');
        }
      }
    }
    // The fleets are sized so that both answers happen often.
    expect(placed).toBeGreaterThan(requests / 5);
    expect(placed).toBeLessThan((requests * 4) / 5);
  }, 120_000);

  it('answers UNAVAILABLE, not NO_CAPACITY, when the only shard with room has no owner', async () => {
    const [id] = idsInShard('orphan', 6, 1);
    await register(id!, 2_000, 2_000, { pool: 'orphaned' });
    expect(code(await client.submit({ queue: false, id: 'orphan-0', cpu: 100, memory: 100, pool: 'orphaned' }))).toBe('placed');
    const holder = replicas.find((r) => r.servedShards().includes(6))!;
    // The holder stops renewing and drops the shard (as on a lost lease); nobody else may take it
    // yet (the holder is still a member and the lease has not expired).
    await holder.leases.stop();
    (holder as unknown as { dropShard(shard: number, reason: string): void }).dropShard(6, 'test');
    await delay(50);
    const reply = await client.submit({ queue: false, id: 'orphan-1', cpu: 100, memory: 100, pool: 'orphaned' });
    expect(code(reply)).toBe('UNAVAILABLE');
    // A container that provably fits nowhere, not even in the orphaned shard's last summary, is still a true "no".
    expect(code(await client.submit({ queue: false, id: 'orphan-2', cpu: 5_000, memory: 100, pool: 'orphaned' }))).toBe('NO_CAPACITY');
    // Back to normal: the holder takes its own lease again (same lease value) and serves the shard.
    holder.leases.forget(6);
    holder.leases.start();
    await eventually(() => holder.servedShards().includes(6), 10_000, 'shard 6 served again');
  });
});

describe('NO_CAPACITY says why', () => {
  it('tells a missing kind of worker from unavailable ones and from full ones', async () => {
    await register('why-1', 1_000, 1_000, { pool: 'why' });
    await register('why-gpu', 1_000, 1_000, { pool: 'why-gpu', gpu: 'a100', gpuCount: 1 });
    const none = await client.submit({ queue: false, id: 'why-c1', cpu: 100, memory: 100, pool: 'no-such-pool' });
    expect(none.ok === false && none.error.message).toMatch(/no worker of pool no-such-pool is registered/);
    const noType = await client.submit({ queue: false, id: 'why-c2', cpu: 100, memory: 100, pool: 'why-gpu', gpu: 'h100' });
    expect(noType.ok === false && noType.error.message).toMatch(/no worker of pool why-gpu with GPU type h100 is registered/);
    const full = await client.submit({ queue: false, id: 'why-c3', cpu: 2_000, memory: 100, pool: 'why' });
    expect(full.ok === false && full.error.message).toMatch(/all 1 available workers of pool why are too full/);
    expect((await client.drainWorker('why-1')).ok).toBe(true);
    await delay(50);
    const drained = await client.submit({ queue: false, id: 'why-c4', cpu: 100, memory: 100, pool: 'why' });
    expect(drained.ok === false && drained.error.code).toBe('NO_CAPACITY');
    expect(drained.ok === false && drained.error.message).toMatch(/all 1 workers of pool why are pending, unreachable, draining, disabled or lost/);
  });
});

describe('routing', () => {
  it('gives every shard its share when every worker is the same (shards hold one or three)', async () => {
    // Hashing never spreads workers evenly: some shards hold more. Walking from a random start to
    // the next two fitting shards starved a shard whose neighbours had more room; two shards
    // drawn at random give each one placements in proportion to its room.
    const perShard = new Map<number, string[]>();
    for (let shard = 0; shard < SHARDS; shard += 1) {
      perShard.set(shard, idsInShard('fair', shard, shard % 2 === 0 ? 1 : 3));
      for (const id of perShard.get(shard)!) await register(id, 64_000, 262_144, { pool: 'fair' });
    }
    // Single submits, 32 in flight: the queue group spreads them over both routers, and each
    // router spreads its share over the shards (its own first: no NATS hop for those).
    const total = 2_400;
    let next = 0;
    const lane = async () => {
      while (next < total) {
        const i = next++;
        expect(code(await client.submit({ queue: false, id: `fair-c${i}`, cpu: 100, memory: 100, pool: 'fair' }))).toBe('placed');
      }
    };
    await Promise.all(Array.from({ length: 32 }, lane));
    const counts: number[] = [];
    for (const ids of perShard.values()) {
      let used = 0;
      for (const id of ids) {
        const reply = await client.getWorker(id);
        if (reply.ok) used += (reply.worker.cpu - reply.worker.freeCpu) / 100;
      }
      counts.push(used);
    }
    expect(counts.reduce((a, b) => a + b, 0)).toBe(total);
    const workers = [...perShard.values()].reduce((sum, ids) => sum + ids.length, 0);
    [...perShard.values()].forEach((ids, shard) => {
      const share = (total * ids.length) / workers;
      expect(counts[shard], `placements per shard ${counts.join(', ')}`).toBeGreaterThan(share / 2);
    });
  });

  it('lets a client that was told "released" place into the freed room through any router at once', async () => {
    // One worker, exactly one container's room: the next submit fits only after the release.
    const [id] = idsInShard('freed', 2, 1);
    await register(id!, 1_000, 1_000, { pool: 'freed' });
    for (let i = 0; i < 30; i += 1) {
      expect(code(await client.submit({ queue: false, id: `freed-${i}`, cpu: 1_000, memory: 1_000, pool: 'freed' }))).toBe('placed');
      expect((await client.release(`freed-${i}`)).ok).toBe(true);
    }
  });
});
