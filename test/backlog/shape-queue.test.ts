/**
 * One shape's queue in the backlog scheduler: a binary heap by priority (higher first), then queue
 * time (older first), then id. Random interleavings of pushes, pops, removals and compactions
 * must give exactly the order a sort gives, skipping what was removed.
 */
import { describe, expect, it } from 'vitest';
import type { QueuedEntry } from '../../src/backlog/backlog-partition.js';
import { Shape } from '../../src/backlog/backlog-scheduler.js';
import { seededRandom } from '../../src/chaos/load.js';

const REQUEST = { cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null };

function entry(id: string, priority: number, queuedAt: number): QueuedEntry {
  return { id, shard: 0, requestKey: `k-${id}`, priority, queuedAt, expiresAt: queuedAt + 60_000, request: REQUEST, attempting: false, ending: false, gone: false, settled: [] };
}

/** The order the scheduler promises. */
function byOrder(a: QueuedEntry, b: QueuedEntry): number {
  return b.priority - a.priority || a.queuedAt - b.queuedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

describe('a shape queue', () => {
  it('pops in priority, then age, then id order under random pushes, pops, removals and compactions', () => {
    const random = seededRandom(21);
    let popped = 0;
    for (let round = 0; round < 30; round += 1) {
      const shape = new Shape('s', REQUEST);
      const live: QueuedEntry[] = [];
      let next = 0;
      for (let step = 0; step < 2_000; step += 1) {
        const action = random();
        if (action < 0.55) {
          // Mostly in order (a queue filling up), sometimes older or of another priority (a requeue, a hand-over).
          const e = entry(`c${next}`, random() < 0.8 ? 0 : Math.floor(random() * 5) - 2, random() < 0.8 ? 1_000 + next : Math.floor(random() * 1_000 + next));
          next += 1;
          shape.push(e);
          live.push(e);
        } else if (action < 0.85) {
          live.sort(byOrder);
          const expected = live.shift() ?? null;
          const head = shape.head();
          expect(head).toBe(expected);
          if (head !== null) {
            expect(shape.pop()).toBe(head);
            popped += 1;
          }
        } else if (action < 0.98 && live.length > 0) {
          // Removed elsewhere (placed by another attempt, cancelled, expired): skipped when it surfaces.
          const gone = live.splice(Math.floor(random() * live.length), 1)[0]!;
          gone.gone = true;
        } else {
          shape.compact();
          expect(shape.heap.length).toBe(live.length);
        }
      }
      live.sort(byOrder);
      // As the pump takes them: head() skips removed entries, then pop() takes that head.
      for (const expected of live) {
        expect(shape.head()).toBe(expected);
        expect(shape.pop()).toBe(expected);
        popped += 1;
      }
      expect(shape.head()).toBeNull();
    }
    expect(popped).toBeGreaterThan(20_000);
  });
});
