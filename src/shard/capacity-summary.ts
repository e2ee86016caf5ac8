/**
 * Summarises a shard's capacity for routers, per (pool, GPU type) group of its workers: how many
 * are registered and how many take placements, their total free CPU and memory, and the frontier
 * of the available workers' free [cpu, memory, gpus]: the points no other worker beats in every
 * dimension (the Pareto frontier, or skyline).
 *
 * The frontier is what makes a router's "no" true. A container fits some worker of the group if and
 * only if some frontier point covers it, so while the frontier is whole (`exact`), a router can
 * answer NO_CAPACITY for the shard without asking its owner, and be right. A frontier longer than
 * FRONTIER_MAX is cut to that many points and marked inexact: a container no kept point covers may
 * still fit, and the router asks the owner (whose actors see every worker) before saying no.
 * `max` (the largest free amount in each dimension, over the group's available workers) still
 * proves "no" for anything larger. Stale or lossy data costs a round trip, never a wrong answer.
 */
import type { WorkerAvailability } from '../../actors/capacity.js';
import type { CapacityGroup, CapacityPoint } from '../protocol/shard-messages.js';

/** Frontier points kept per group (each is three numbers on the wire). */
export const FRONTIER_MAX = 16;

export interface GroupAccumulator {
  pool: string | null;
  gpu: string | null;
  registered: number;
  workers: number;
  cpu: number;
  memory: number;
  freeCpu: number;
  freeMemory: number;
  /** The frontier of the workers seen so far. */
  frontier: CapacityPoint[];
}

/**
 * Add a worker's free capacity to a frontier: nothing changes if a kept point covers it in every
 * dimension; otherwise it joins and the points it covers leave. A few comparisons per worker, as a
 * shard's frontier is short (and no array is made for a worker that does not join it).
 */
function addToFrontier(frontier: CapacityPoint[], cpu: number, memory: number, gpus: number): void {
  for (const k of frontier) if (k[0] >= cpu && k[1] >= memory && k[2] >= gpus) return;
  let kept = 0;
  for (const k of frontier) if (!(cpu >= k[0] && memory >= k[1] && gpus >= k[2])) frontier[kept++] = k;
  frontier.length = kept;
  frontier.push([cpu, memory, gpus]);
}

/** The points of `points` that no other point covers in every dimension (duplicates kept once). */
export function frontierOf(points: readonly CapacityPoint[]): CapacityPoint[] {
  const frontier: CapacityPoint[] = [];
  for (const [cpu, memory, gpus] of points) addToFrontier(frontier, cpu, memory, gpus);
  return frontier;
}

/** Keep at most FRONTIER_MAX points spread along the frontier (by CPU). */
function thin(frontier: CapacityPoint[]): CapacityPoint[] {
  if (frontier.length <= FRONTIER_MAX) return frontier;
  frontier.sort((a, b) => b[0] - a[0] || b[1] - a[1] || b[2] - a[2]);
  const step = (frontier.length - 1) / (FRONTIER_MAX - 1);
  return Array.from({ length: FRONTIER_MAX }, (_, i) => frontier[Math.round(i * step)]!);
}

/** One (pool, GPU type) group's running totals, filled a worker at a time (see `summarizeCapacity`). */
export function newCapacityGroup(pool: string | null, gpu: string | null): GroupAccumulator {
  return { pool, gpu, registered: 0, workers: 0, cpu: 0, memory: 0, freeCpu: 0, freeMemory: 0, frontier: [] };
}

/** Count one worker of the group: every worker is registered; only an available one adds capacity. */
export function addToCapacityGroup(
  group: GroupAccumulator,
  available: boolean,
  cpu: number,
  memory: number,
  freeCpu: number,
  freeMemory: number,
  freeGpuCount: number,
): void {
  group.registered += 1;
  if (!available) return;
  group.workers += 1;
  group.cpu += cpu;
  group.memory += memory;
  group.freeCpu += freeCpu;
  group.freeMemory += freeMemory;
  addToFrontier(group.frontier, freeCpu, freeMemory, freeGpuCount);
}

/** The groups' summaries, in the order the groups were made. */
export function finishCapacityGroups(groups: Iterable<GroupAccumulator>): CapacityGroup[] {
  const summaries: CapacityGroup[] = [];
  for (const g of groups) {
    const frontier = g.frontier;
    const max: CapacityPoint = [0, 0, 0];
    for (const [cpu, memory, gpus] of frontier) {
      if (cpu > max[0]) max[0] = cpu;
      if (memory > max[1]) max[1] = memory;
      if (gpus > max[2]) max[2] = gpus;
    }
    summaries.push({
      pool: g.pool,
      gpu: g.gpu,
      registered: g.registered,
      workers: g.workers,
      cpu: g.cpu,
      memory: g.memory,
      freeCpu: g.freeCpu,
      freeMemory: g.freeMemory,
      frontier: thin(frontier),
      exact: frontier.length <= FRONTIER_MAX,
      max,
    });
  }
  return summaries;
}

/**
 * `workers`: every worker of the shard, whatever its status (the counts say which exist at all).
 * The shard owner summarizes from its worker index's columns instead (WorkerIndex.summarize, the
 * same accumulation without an object per worker); this form is the reference its test compares to.
 */
export function summarizeCapacity(workers: Iterable<WorkerAvailability>): CapacityGroup[] {
  const groups = new Map<string, GroupAccumulator>();
  for (const worker of workers) {
    const key = `${worker.spec.pool ?? ''}\u0000${worker.spec.gpu ?? ''}`;
    let group = groups.get(key);
    if (group === undefined) {
      group = newCapacityGroup(worker.spec.pool, worker.spec.gpu);
      groups.set(key, group);
    }
    addToCapacityGroup(group, worker.status === 'available', worker.spec.cpu, worker.spec.memory, worker.freeCpu, worker.freeMemory, worker.freeGpuCount);
  }
  return finishCapacityGroups(groups.values());
}
