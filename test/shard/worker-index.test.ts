/**
 * The owner's column index must choose exactly the worker the pure rules (chooseWorker in
 * actors/capacity.ts) choose, for random fleets and requests, under both strategies.
 */
import { describe, expect, it } from 'vitest';
import { createActor } from 'xstate';
import { chooseWorker, type PlacementRequest, type WorkerRecord } from '../../actors/capacity.js';
import { availability, workerMachine } from '../../actors/worker-machine.js';
import { seededRandom } from '../../src/chaos/load.js';
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
});
