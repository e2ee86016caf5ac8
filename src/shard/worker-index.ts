/**
 * A column-wise copy of a shard's worker actors' capacity, for choosing a worker fast.
 *
 * Choosing a worker scans every worker of the shard for every placement (best fit needs them all).
 * Reading each actor's snapshot and context objects for that is the single biggest cost at 10,000
 * workers, so the owner keeps this index: numbers in typed arrays, refreshed from the actor's
 * snapshot after every event the owner sends it (the owner is the only sender). The actor stays
 * the authority: its RESERVE guard re-checks whatever the index chose, and the owner asserts the
 * two agree. The rules are the same as `placementRefusal` and `placementScore` in
 * actors/capacity.ts; test/shard/worker-index.test.ts checks both pick the same worker.
 */
import type { PlacementRequest, PlacementStrategy, WorkerAvailability, WorkerSpec, WorkerStatus } from '../../actors/capacity.js';
import type { Actor } from 'xstate';
import type { CapacityGroup } from '../protocol/shard-messages.js';
import { addToCapacityGroup, finishCapacityGroups, newCapacityGroup, type GroupAccumulator } from './capacity-summary.js';
import type { workerMachine } from '../../actors/worker-machine.js';

type WorkerActor = Actor<typeof workerMachine>;

const INITIAL_CAPACITY = 64;
const NO_NAME = 0;
/** Distinct pool and GPU type names one shard's index can number (summary group keys pack two). */
const MAX_NAMES = 2 ** 26;

export class WorkerIndex {
  private size = 0;
  private capacity = INITIAL_CAPACITY;
  private actors: WorkerActor[] = [];
  /** Each slot's spec (fixed at registration), so summaries need not read the actors' snapshots. */
  private specs: WorkerSpec[] = [];
  private readonly slotOf = new Map<WorkerActor, number>();
  private available = new Uint8Array(INITIAL_CAPACITY);
  private freeCpu = new Float64Array(INITIAL_CAPACITY);
  private freeMemory = new Float64Array(INITIAL_CAPACITY);
  private freeGpu = new Float64Array(INITIAL_CAPACITY);
  private totalCpu = new Float64Array(INITIAL_CAPACITY);
  private totalMemory = new Float64Array(INITIAL_CAPACITY);
  /** Pools and GPU types as small numbers (0: none), so the scan compares integers. */
  private pool = new Int32Array(INITIAL_CAPACITY);
  private gpu = new Int32Array(INITIAL_CAPACITY);
  private readonly names = new Map<string, number>();
  /** Workers held for one waiting container (see ShardOwner.hold): nothing else is placed there. */
  private readonly heldFor = new Map<WorkerActor, string>();

  get count(): number {
    return this.size;
  }

  private nameId(name: string | null): number {
    if (name === null) return NO_NAME;
    let id = this.names.get(name);
    if (id === undefined) {
      id = this.names.size + 1;
      // A shard would need tens of millions of workers to get here; refuse rather than mix groups.
      if (id >= MAX_NAMES) throw new Error(`worker index: more than ${MAX_NAMES - 1} distinct pools and GPU types in one shard`);
      this.names.set(name, id);
    }
    return id;
  }

  private grow(): void {
    this.capacity *= 2;
    const grow = <T extends Float64Array | Int32Array | Uint8Array>(old: T, make: (n: number) => T): T => {
      const next = make(this.capacity);
      next.set(old);
      return next;
    };
    this.available = grow(this.available, (n) => new Uint8Array(n));
    this.freeCpu = grow(this.freeCpu, (n) => new Float64Array(n));
    this.freeMemory = grow(this.freeMemory, (n) => new Float64Array(n));
    this.freeGpu = grow(this.freeGpu, (n) => new Float64Array(n));
    this.totalCpu = grow(this.totalCpu, (n) => new Float64Array(n));
    this.totalMemory = grow(this.totalMemory, (n) => new Float64Array(n));
    this.pool = grow(this.pool, (n) => new Int32Array(n));
    this.gpu = grow(this.gpu, (n) => new Int32Array(n));
  }

  add(actor: WorkerActor): void {
    if (this.slotOf.has(actor)) return;
    if (this.size === this.capacity) this.grow();
    const slot = this.size;
    this.size += 1;
    this.actors[slot] = actor;
    this.slotOf.set(actor, slot);
    const spec = actor.getSnapshot().context.spec;
    this.specs[slot] = spec;
    this.totalCpu[slot] = spec.cpu;
    this.totalMemory[slot] = spec.memory;
    this.pool[slot] = this.nameId(spec.pool);
    this.gpu[slot] = this.nameId(spec.gpu);
    this.refresh(actor);
  }

  /** Remove by moving the last slot into the hole (order does not matter to the scan). */
  remove(actor: WorkerActor): void {
    const slot = this.slotOf.get(actor);
    if (slot === undefined) return;
    const last = this.size - 1;
    const moved = this.actors[last]!;
    this.actors[slot] = moved;
    this.specs[slot] = this.specs[last]!;
    this.available[slot] = this.available[last]!;
    this.freeCpu[slot] = this.freeCpu[last]!;
    this.freeMemory[slot] = this.freeMemory[last]!;
    this.freeGpu[slot] = this.freeGpu[last]!;
    this.totalCpu[slot] = this.totalCpu[last]!;
    this.totalMemory[slot] = this.totalMemory[last]!;
    this.pool[slot] = this.pool[last]!;
    this.gpu[slot] = this.gpu[last]!;
    this.slotOf.set(moved, slot);
    this.slotOf.delete(actor);
    this.heldFor.delete(actor);
    this.actors.length = last;
    this.specs.length = last;
    this.size = last;
  }

  clear(): void {
    this.heldFor.clear();
    this.size = 0;
    this.actors = [];
    this.specs = [];
    this.slotOf.clear();
  }

  /** Copy the actor's current availability (committed free minus reservations) into the columns. */
  refresh(actor: WorkerActor): void {
    const slot = this.slotOf.get(actor);
    if (slot === undefined) return;
    const { context, value } = actor.getSnapshot();
    this.available[slot] = value === 'available' ? 1 : 0;
    this.freeCpu[slot] = context.freeCpu - context.reservedCpu;
    this.freeMemory[slot] = context.freeMemory - context.reservedMemory;
    this.freeGpu[slot] = context.freeGpuCount - context.reservedGpuCount;
  }

  /**
   * The best worker for the request, or null: the same filter as placementRefusal and the same
   * score as placementScore (ties go to the lowest slot).
   */
  /** Keep every placement but `containerId`'s off this worker (null: take the hold away). */
  hold(actor: WorkerActor, containerId: string | null): void {
    if (containerId === null) this.heldFor.delete(actor);
    else if (this.slotOf.has(actor)) this.heldFor.set(actor, containerId);
  }

  holderOf(actor: WorkerActor): string | undefined {
    return this.heldFor.get(actor);
  }

  choose(request: PlacementRequest, strategy: PlacementStrategy, containerId: string | null = null): WorkerActor | null {
    const wantPool = request.pool === null ? -1 : (this.names.get(request.pool) ?? -2);
    const wantGpu = request.gpu === null ? -1 : (this.names.get(request.gpu) ?? -2);
    if (wantPool === -2 || (request.gpuCount > 0 && wantGpu === -2)) return null;
    const { cpu, memory, gpuCount } = request;
    const bestFit = strategy === 'best-fit';
    let best = -1;
    let bestScore = Number.POSITIVE_INFINITY;
    for (let slot = 0; slot < this.size; slot += 1) {
      if (this.available[slot] === 0) continue;
      if (wantPool !== -1 && this.pool[slot] !== wantPool) continue;
      const workerGpu = this.gpu[slot]!;
      if (gpuCount > 0) {
        if (workerGpu === NO_NAME) continue;
        if (wantGpu !== -1 && workerGpu !== wantGpu) continue;
        if (this.freeGpu[slot]! < gpuCount) continue;
      }
      const freeCpu = this.freeCpu[slot]!;
      const freeMemory = this.freeMemory[slot]!;
      if (freeCpu < cpu || freeMemory < memory) continue;
      if (this.heldFor.size > 0) {
        const holder = this.heldFor.get(this.actors[slot]!);
        if (holder !== undefined && holder !== containerId) continue;
      }
      const left = (freeCpu - cpu) / this.totalCpu[slot]! + (freeMemory - memory) / this.totalMemory[slot]!;
      const score = (gpuCount === 0 && workerGpu !== NO_NAME ? 2 : 0) + (bestFit ? left : 2 - left);
      if (score < bestScore) {
        best = slot;
        bestScore = score;
      }
    }
    return best < 0 ? null : this.actors[best]!;
  }

  /**
   * The shard's capacity summary (see capacity-summary.ts), straight from the columns: no object
   * per worker and integer group keys. A shard owner summarizes after every commit and for every
   * router that asks, over all of its workers (156 each at 10,000 workers in 64 shards), so this
   * loop is on the placement path; summarizeCapacity over the actors' availability gives the same
   * result (test/shard/worker-index.test.ts).
   */
  summarize(): CapacityGroup[] {
    const groups = new Map<number, GroupAccumulator>();
    for (let slot = 0; slot < this.size; slot += 1) {
      // One number per (pool, GPU type): ids stay below MAX_NAMES (nameId), so the key is exact.
      const key = this.pool[slot]! * MAX_NAMES + this.gpu[slot]!;
      let group = groups.get(key);
      if (group === undefined) {
        const spec = this.specs[slot]!;
        group = newCapacityGroup(spec.pool, spec.gpu);
        groups.set(key, group);
      }
      addToCapacityGroup(group, this.available[slot] === 1, this.totalCpu[slot]!, this.totalMemory[slot]!, this.freeCpu[slot]!, this.freeMemory[slot]!, this.freeGpu[slot]!);
    }
    return finishCapacityGroups(groups.values());
  }
}
