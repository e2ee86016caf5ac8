/**
 * Summarises a shard's free capacity for routers: per (pool, GPU type) group, the number of
 * available workers, their total free CPU and memory, and the free capacity of a few of the
 * largest workers. A router can tell from it, without a round trip, whether a container may fit
 * anywhere in the shard; a stale or lossy summary only costs a re-route, never a wrong placement.
 */
import type { WorkerAvailability } from '../../actors/capacity.js';
import type { CapacityGroup } from '../protocol/shard-messages.js';

/** Workers kept per group and per ordering (largest free CPU, largest free memory). */
const TOP_PER_ORDER = 4;

type Entry = readonly [number, number, number];

function keepTop(list: Entry[], entry: Entry, index: 0 | 1): void {
  if (list.length < TOP_PER_ORDER) {
    list.push(entry);
  } else {
    let smallest = 0;
    for (let i = 1; i < list.length; i += 1) if (list[i]![index] < list[smallest]![index]) smallest = i;
    if (list[smallest]![index] >= entry[index]) return;
    list[smallest] = entry;
  }
}

interface GroupAccumulator {
  pool: string | null;
  gpu: string | null;
  workers: number;
  freeCpu: number;
  freeMemory: number;
  byCpu: Entry[];
  byMemory: Entry[];
}

export function summarizeCapacity(workers: Iterable<WorkerAvailability>): CapacityGroup[] {
  const groups = new Map<string, GroupAccumulator>();
  for (const worker of workers) {
    if (worker.status !== 'available') continue;
    const key = `${worker.spec.pool ?? ''}\u0000${worker.spec.gpu ?? ''}`;
    let group = groups.get(key);
    if (group === undefined) {
      group = { pool: worker.spec.pool, gpu: worker.spec.gpu, workers: 0, freeCpu: 0, freeMemory: 0, byCpu: [], byMemory: [] };
      groups.set(key, group);
    }
    const entry: Entry = [worker.freeCpu, worker.freeMemory, worker.freeGpuCount];
    group.workers += 1;
    group.freeCpu += worker.freeCpu;
    group.freeMemory += worker.freeMemory;
    keepTop(group.byCpu, entry, 0);
    keepTop(group.byMemory, entry, 1);
  }
  return [...groups.values()].map((g) => ({
    pool: g.pool,
    gpu: g.gpu,
    workers: g.workers,
    freeCpu: g.freeCpu,
    freeMemory: g.freeMemory,
    top: [...new Set([...g.byCpu, ...g.byMemory])],
  }));
}
