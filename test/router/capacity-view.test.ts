/**
 * The router's capacity view, without servers: summaries prove "no" only when they can, stale and
 * unreachable shards are not trusted, and the choice among fitting shards is uniform.
 */
import { describe, expect, it } from 'vitest';
import { placementRefusal, type PlacementRequest, type WorkerAvailability, type WorkerSpec } from '../../actors/capacity.js';
import { seededRandom } from '../../src/chaos/load.js';
import type { CapacityPoint, ShardCapacity } from '../../src/protocol/shard-messages.js';
import { parseShardCapacity } from '../../src/protocol/shard-messages.js';
import { CapacityView, STALE_AFTER_MS } from '../../src/router/capacity-view.js';
import { FRONTIER_MAX, frontierOf, summarizeCapacity } from '../../src/shard/capacity-summary.js';

const request = (cpu: number, memory: number, extra: Partial<PlacementRequest> = {}): PlacementRequest => ({
  cpu, memory, gpu: null, gpuCount: 0, pool: null, ...extra,
});

function worker(id: string, free: CapacityPoint, extra: Partial<WorkerSpec> = {}, status: WorkerAvailability['status'] = 'available'): WorkerAvailability {
  const spec: WorkerSpec = { id, shard: 0, cpu: 100_000, memory: 1_000_000, gpu: null, gpuCount: 0, pool: null, ...extra };
  return { spec, status, freeCpu: free[0], freeMemory: free[1], freeGpuCount: free[2] };
}

let seq = 0;
function summary(shard: number, workers: WorkerAvailability[], owner: string | null = 'r1', epoch = 1): ShardCapacity {
  seq += 1;
  return { shard, owner, epoch, seq, groups: summarizeCapacity(workers) };
}

describe('capacity summaries', () => {
  it('keep the whole Pareto frontier, so a request fits the group iff a frontier point covers it', () => {
    const random = seededRandom(7);
    for (let round = 0; round < 300; round += 1) {
      const points = Array.from({ length: 1 + Math.floor(random() * 12) }, (): CapacityPoint => [
        Math.floor(random() * 10) * 1_000, Math.floor(random() * 10) * 1_024, Math.floor(random() * 3),
      ]);
      const frontier = frontierOf(points);
      for (let i = 0; i < 20; i += 1) {
        const want: CapacityPoint = [Math.floor(random() * 10) * 1_000 + 1, Math.floor(random() * 10) * 1_024 + 1, Math.floor(random() * 3)];
        const fitsSome = points.some((p) => p[0] >= want[0] && p[1] >= want[1] && p[2] >= want[2]);
        const fitsFrontier = frontier.some((p) => p[0] >= want[0] && p[1] >= want[1] && p[2] >= want[2]);
        expect(fitsFrontier).toBe(fitsSome);
      }
    }
  });

  it('count registered workers of every status, and mark a frontier cut short as inexact', () => {
    // Anti-correlated: every worker is on the frontier.
    const many = Array.from({ length: FRONTIER_MAX + 4 }, (_, i) => worker(`w${i}`, [(i + 1) * 1_000, (FRONTIER_MAX + 5 - i) * 1_024, 0]));
    const [group] = summarizeCapacity([...many, worker('off', [1, 1, 0], {}, 'disabled')]);
    expect(group).toMatchObject({ registered: FRONTIER_MAX + 5, workers: FRONTIER_MAX + 4, exact: false });
    expect(group!.frontier).toHaveLength(FRONTIER_MAX);
    expect(group!.max).toEqual([(FRONTIER_MAX + 4) * 1_000, (FRONTIER_MAX + 5) * 1_024, 0]);
  });

  it('are refused by the parser when malformed (a router must not reason from made-up numbers)', () => {
    const good = summary(0, [worker('a', [1_000, 1_000, 0])]);
    expect(parseShardCapacity(JSON.parse(JSON.stringify(good)))).toEqual(good);
    expect(parseShardCapacity({ ...good, groups: [{ ...good.groups[0], frontier: [[1, 2]] }] })).toBeNull();
    expect(parseShardCapacity({ ...good, groups: [{ ...good.groups[0], exact: 'yes' }] })).toBeNull();
    expect(parseShardCapacity({ ...good, groups: [{ ...good.groups[0], workers: -1 }] })).toBeNull();
    expect(parseShardCapacity({ ...good, epoch: 'x' })).toBeNull();
  });
});

describe('capacity view', () => {
  it('answers the two reproductions from the issue: a balanced worker among lopsided ones, a small GPU worker among full ones', () => {
    const view = new CapacityView(2);
    view.update(summary(0, [
      ...Array.from({ length: 6 }, (_, i) => worker(`cpu-heavy-${i}`, [60_000 - i, 2_000, 0])),
      ...Array.from({ length: 6 }, (_, i) => worker(`mem-heavy-${i}`, [1_000, 250_000 - i, 0])),
      worker('balanced', [8_000, 32_000, 0]),
    ]));
    view.update(summary(1, [
      ...Array.from({ length: 8 }, (_, i) => worker(`gpu-big-${i}`, [64_000, 500_000, 0], { gpu: 'a100', gpuCount: 8 })),
      worker('gpu-small', [4_000, 16_000, 2], { gpu: 'a100', gpuCount: 2 }),
    ]));
    expect(view.tier(0, request(4_000, 16_000))).toBe('likely');
    expect(view.choose(request(4_000, 16_000), new Set())).toBe(0);
    expect(view.tier(1, request(1_000, 1_000, { gpuCount: 1 }))).toBe('likely');
    expect(view.choose(request(1_000, 1_000, { gpuCount: 1 }), new Set())).toBe(1);
    // And a request nothing fits is proven so, shard by shard.
    expect(view.unproven(request(9_000, 33_000, { gpuCount: 1 }), new Set())).toEqual([]);
  });

  it('never proves "no" for what fits a worker the cut-short frontier dropped: it asks instead', () => {
    const view = new CapacityView(1);
    const many = Array.from({ length: 40 }, (_, i) => worker(`w${i}`, [(i + 1) * 1_000, (41 - i) * 1_024, 0]));
    view.update(summary(0, many));
    const random = seededRandom(3);
    for (let i = 0; i < 500; i += 1) {
      const want = request(1 + Math.floor(random() * 41_000), 1 + Math.floor(random() * 41 * 1_024));
      const fits = many.some((w) => placementRefusal(w, want) === null);
      if (fits) expect(view.tier(0, want)).not.toBe('none');
      if (view.tier(0, want) === 'none') expect(fits).toBe(false);
    }
  });

  it('does not trust a summary older than a few seconds, nor choose a shard whose owner did not answer', () => {
    let now = 1_000_000;
    const view = new CapacityView(3, seededRandom(1), () => now);
    for (const shard of [0, 1, 2]) view.update(summary(shard, [worker(`w${shard}`, [1_000, 1_000, 0])]));
    const small = request(100, 100);
    const big = request(5_000, 100);
    expect(view.unproven(big, new Set())).toEqual([]); // every summary proves it
    view.markUnreachable(1);
    for (let i = 0; i < 50; i += 1) expect(view.choose(small, new Set())).not.toBe(1);
    // Unreachable is not a proof of anything: the shard still counts as one that may fit.
    expect(view.unproven(small, new Set([0, 2]))).toEqual([1]);
    // Its owner republishes: chosen again.
    view.update(summary(1, [worker('w1', [1_000, 1_000, 0])]));
    expect(new Set(Array.from({ length: 50 }, () => view.choose(small, new Set())))).toContain(1);
    // An unchanged summary republished (owners do it every second) keeps the shard fresh.
    const unchanged = summary(2, [worker('w2', [1_000, 1_000, 0])]);
    view.update(unchanged);
    now += STALE_AFTER_MS - 500;
    view.update(unchanged);
    now += 1_000;
    expect(view.tier(2, big)).toBe('none');
    expect(view.tier(0, big)).toBe('unknown');
    // Silence: after STALE_AFTER_MS no summary proves anything.
    now += STALE_AFTER_MS + 1;
    expect(view.tier(0, big)).toBe('unknown');
    expect(view.unproven(big, new Set())).toEqual([0, 1, 2]);
  });

  it('chooses from the view as it is at each call (a tier found in one call is not reused in the next)', () => {
    const view = new CapacityView(8, seededRandom(3));
    // Scarce: one shard of eight fits, so each call scans every shard.
    for (let shard = 0; shard < 8; shard += 1) view.update(summary(shard, [worker(`w${shard}`, shard === 5 ? [4_000, 4_000, 0] : [100, 100, 0])]));
    const one = request(1_000, 1_000);
    expect(view.choose(one, new Set())).toBe(5);
    // Same request, the view changed between calls: shard 5 is full now, shard 2 has room.
    view.update(summary(5, [worker('w5', [100, 100, 0])]));
    view.update(summary(2, [worker('w2', [4_000, 4_000, 0])]));
    expect(view.choose(one, new Set())).toBe(2);
    // And this router's own placements count at the next call: four fill shard 2's only point.
    for (let i = 0; i < 4; i += 1) view.consume(2, one);
    expect(view.tier(2, one)).not.toBe('likely');
    expect(view.choose(one, new Set([0, 1, 3, 4, 5, 6, 7]))).toBe(2); // possible: still asked, never proven full
    view.update(summary(2, [worker('w2', [100, 100, 0])]));
    expect(view.choose(one, new Set())).toBeNull();
  });

  it('does not send to a shard that has no owner, but keeps its last summary as proof', () => {
    const view = new CapacityView(2);
    view.update(summary(0, [worker('a', [1_000, 1_000, 0])]));
    view.update(summary(1, [worker('b', [8_000, 8_000, 0])], null));
    expect(view.choose(request(4_000, 4_000), new Set())).toBeNull();
    expect(view.unproven(request(4_000, 4_000), new Set())).toEqual([1]);
    expect(view.unproven(request(9_000, 9_000), new Set())).toEqual([]);
  });

  it('draws two shards uniformly among those that fit (power of two choices), so every shard gets its share', () => {
    const shards = 16;
    const view = new CapacityView(shards, seededRandom(11));
    // Only shards 0, 3, 6, ... fit at all, and their room alternates: small, big, small, ...
    // Walking from a random start to the next two that fit would pair every small shard with a
    // big neighbour and never choose it; two random draws pair two small ones now and then.
    const fitting = [0, 3, 6, 9, 12, 15];
    for (let shard = 0; shard < shards; shard += 1) {
      const index = fitting.indexOf(shard);
      const free: CapacityPoint = index < 0 ? [50, 50, 0] : index % 2 === 0 ? [2_000, 2_000, 0] : [9_000, 9_000, 0];
      view.update(summary(shard, [worker(`w${shard}`, free)]));
    }
    const counts = new Array<number>(shards).fill(0);
    for (let i = 0; i < 6_000; i += 1) counts[view.choose(request(100, 100), new Set())!]! += 1;
    for (let shard = 0; shard < shards; shard += 1) {
      if (!fitting.includes(shard)) expect(counts[shard]).toBe(0);
      // A small shard wins only against another small one: 3 of 15 pairs, half of the time.
      else expect(counts[shard], counts.join(', ')).toBeGreaterThan(6_000 / 15 / 2 / 2);
    }
  });

  it('counts the fleet of the kind asked for, to say why nothing fits', () => {
    const view = new CapacityView(2);
    view.update(summary(0, [worker('a', [1_000, 1_000, 0], { pool: 'batch' }), worker('b', [1_000, 1_000, 0], { pool: 'batch' }, 'draining')]));
    view.update(summary(1, [worker('c', [1_000, 1_000, 1], { gpu: 'a100', gpuCount: 1 })]));
    expect(view.fleet(request(1, 1, { pool: 'batch' }))).toEqual({ registered: 2, available: 1, unknownShards: 0 });
    expect(view.fleet(request(1, 1, { pool: 'nope' }))).toEqual({ registered: 0, available: 0, unknownShards: 0 });
    expect(view.fleet(request(1, 1, { gpu: 'h100', gpuCount: 1 }))).toEqual({ registered: 0, available: 0, unknownShards: 0 });
    expect(view.fleet(request(1, 1, { gpuCount: 1 }))).toEqual({ registered: 1, available: 1, unknownShards: 0 });
  });

  it('calls a preferred shard fit only while its summarized room, less what this router sent there since, holds the request', () => {
    const view = new CapacityView(3);
    // Shard 0: four alike workers with room for 4 containers each (16 in all); shard 1: none of pool p.
    view.update(summary(0, Array.from({ length: 4 }, (_, i) => worker(`w${i}`, [4_000, 4_096, 0], { pool: 'p' }))));
    view.update(summary(1, [worker('other', [64_000, 65_536, 0], { pool: 'q' })]));
    const one = request(1_000, 1_024, { pool: 'p' });
    for (let sent = 0; sent < 16; sent += 1) {
      expect(view.mayFit(0, one)).toBe(true);
      view.consume(0, one);
    }
    // The frontier point alone would still say "possible" (the summary's best worker has room); the
    // room counted over the whole group is spent, so the preference goes elsewhere.
    expect(view.tier(0, one)).toBe('possible');
    expect(view.mayFit(0, one)).toBe(false);
    // A fresh summary counts from zero again.
    view.update(summary(0, Array.from({ length: 4 }, (_, i) => worker(`w${i}`, [4_000, 4_096, 0], { pool: 'p' }))));
    expect(view.mayFit(0, one)).toBe(true);
    // Not for a shard whose summary says nothing fits, has no summary, or is out of range.
    expect(view.mayFit(1, one)).toBe(false);
    expect(view.mayFit(2, one)).toBe(false);
    expect(view.mayFit(7, one)).toBe(false);
    // Nor for one whose owner stopped answering.
    view.markUnreachable(0);
    expect(view.mayFit(0, one)).toBe(false);
  });
});
