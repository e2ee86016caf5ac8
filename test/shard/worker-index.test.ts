/**
 * The owner's column index must choose exactly the worker the pure rules (chooseWorker in
 * actors/capacity.ts) choose, for random fleets and requests, under both strategies.
 */
import { describe, expect, it } from 'vitest';
import { createActor } from 'xstate';
import { chooseWorker, type PlacementRequest, type WorkerRecord } from '../../actors/capacity.js';
import { availability, workerMachine } from '../../actors/worker-machine.js';
import { seededRandom } from '../../src/chaos/load.js';
import type { CapacityGroup } from '../../src/protocol/shard-messages.js';
import { summarizeCapacity } from '../../src/shard/capacity-summary.js';
import { WorkerIndex } from '../../src/shard/worker-index.js';

const pick = <T>(random: () => number, list: readonly T[]): T => list[Math.floor(random() * list.length)]!;

function randomFleet(random: () => number, size: number): WorkerRecord[] {
  return Array.from({ length: size }, (_, i) => {
    const cpu = pick(random, [2_000, 4_000, 16_000]);
    const memory = pick(random, [4_096, 8_192, 65_536]);
    const gpu = random() < 0.3 ? pick(random, ['a100', 'h100']) : null;
    const gpuCount = gpu === null ? 0 : pick(random, [1, 2, 4]);
    return {
      id: `w${i}`, shard: 0, cpu, memory, gpu, gpuCount, pool: random() < 0.5 ? null : pick(random, ['p1', 'p2']),
      freeCpu: Math.floor(random() * cpu), freeMemory: Math.floor(random() * memory), freeGpuCount: Math.floor(random() * (gpuCount + 1)),
      status: random() < 0.85 ? 'available' : pick(random, ['draining', 'disabled', 'pending', 'lost'] as const), resourceVersion: 1,
    };
  });
}

function randomRequest(random: () => number): PlacementRequest {
  const gpuCount = random() < 0.25 ? pick(random, [1, 2]) : 0;
  return {
    cpu: pick(random, [100, 500, 1_000, 3_000]),
    memory: pick(random, [128, 1_024, 6_000]),
    gpu: gpuCount > 0 && random() < 0.5 ? pick(random, ['a100', 'h100', 'v100']) : null,
    gpuCount,
    pool: random() < 0.3 ? pick(random, ['p1', 'p2', 'p3']) : null,
  };
}

const normalized = (groups: readonly CapacityGroup[]): CapacityGroup[] =>
  groups
    .map((group) => ({ ...group, frontier: [...group.frontier].sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]) }))
    .sort((a, b) => `${a.pool}/${a.gpu}`.localeCompare(`${b.pool}/${b.gpu}`));

describe('WorkerIndex', () => {
  it.each(['best-fit', 'spread'] as const)('chooses what chooseWorker chooses (%s), as reservations change', (strategy) => {
    const random = seededRandom(strategy === 'best-fit' ? 11 : 12);
    let compared = 0;
    let found = 0;
    for (let round = 0; round < 40; round += 1) {
      const actors = randomFleet(random, 1 + Math.floor(random() * 60)).map((record) => createActor(workerMachine, { input: record }).start());
      const index = new WorkerIndex();
      for (const actor of actors) index.add(actor);
      for (let step = 0; step < 50; step += 1) {
        const request = randomRequest(random);
        const expected = chooseWorker(actors.map((a) => ({ actor: a, ...availability(a.getSnapshot().context, a.getSnapshot().value as never) })), request, strategy);
        const chosen = index.choose(request, strategy);
        expect(chosen).toBe(expected?.actor ?? null);
        compared += 1;
        if (chosen !== null) {
          found += 1;
          chosen.send({ type: 'RESERVE', containerId: `c${step}`, request });
          index.refresh(chosen);
        }
        if (random() < 0.1 && actors.length > 1) {
          const gone = actors.splice(Math.floor(random() * actors.length), 1)[0]!;
          index.remove(gone);
        }
      }
    }
    expect(compared).toBe(2_000);
    expect(found).toBeGreaterThan(300);
  });

  it('summarizes exactly what summarizeCapacity makes of the actors, as reservations and removals change them', () => {
    const random = seededRandom(13);
    let groups = 0;
    let inexact = 0;
    for (let round = 0; round < 40; round += 1) {
      // Up to 200 workers, so some groups' frontiers outgrow FRONTIER_MAX and are thinned.
      const fleet = randomFleet(random, 1 + Math.floor(random() * 200));
      // Every fourth round adds 40 workers that are all on one frontier (more CPU, less memory), so
      // the frontier outgrows FRONTIER_MAX and is thinned.
      if (round % 4 === 0) {
        for (let i = 0; i < 40; i += 1) {
          fleet.push({ id: `edge${i}`, shard: 0, cpu: 16_000, memory: 65_536, gpu: null, gpuCount: 0, pool: null, freeCpu: 400 * i, freeMemory: 65_536 - 1_600 * i, freeGpuCount: 0, status: 'available', resourceVersion: 1 });
        }
      }
      const actors = fleet.map((record) => createActor(workerMachine, { input: record }).start());
      const index = new WorkerIndex();
      for (const actor of actors) index.add(actor);
      for (let step = 0; step < 20; step += 1) {
        // As a summary sees a worker: committed free minus what is reserved and not yet written.
        const reference = summarizeCapacity(actors.map((a) => availability(a.getSnapshot().context, a.getSnapshot().value as never)));
        const summary = index.summarize();
        // Groups and frontiers are sets: the index visits workers in its own slot order.
        expect(normalized(summary)).toEqual(normalized(reference));
        groups += summary.length;
        inexact += summary.filter((group) => !group.exact).length;
        const request = randomRequest(random);
        const chosen = index.choose(request, 'best-fit');
        if (chosen !== null) {
          chosen.send({ type: 'RESERVE', containerId: `c${step}`, request });
          index.refresh(chosen);
        }
        if (random() < 0.2 && actors.length > 1) index.remove(actors.splice(Math.floor(random() * actors.length), 1)[0]!);
      }
    }
    expect(groups).toBeGreaterThan(2_000);
    expect(inexact).toBeGreaterThan(0);
  });
});
