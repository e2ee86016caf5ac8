/**
 * A router's view of every shard's free capacity, built from the summaries shard owners publish
 * (and piggy-back on replies). It answers one question: which shard should this container try?
 *
 * Choice: power of two choices. Among the shards whose summary says the container fits, take two
 * at random and keep the one with more room for it. Best fit across shards would send every router
 * to the same fullest shard at once, and since routers act on slightly stale views, they would
 * collide there and re-route; two random choices spread concurrent routers apart while still
 * steering away from full shards. Packing (best fit) happens inside the shard, where the owner's
 * actors see exact, serialized capacity.
 */
import type { PlacementRequest } from '../../actors/capacity.js';
import type { CapacityGroup, ShardCapacity } from '../protocol/shard-messages.js';

type Tuple = [number, number, number];

interface ShardEntry {
  owner: string | null;
  epoch: number;
  seq: number;
  receivedAt: number;
  groups: Array<{ pool: string | null; gpu: string | null; workers: number; freeCpu: number; freeMemory: number; top: Tuple[] }>;
}

/**
 * Whether a group's workers could take the request. With `cpuWorkersOnly`, a CPU-only request
 * skips GPU groups: the router's first pass, so GPUs are not stranded behind CPU work while a
 * CPU-only worker elsewhere has room (the same preference placementScore applies within a shard).
 */
function groupMatches(group: { pool: string | null; gpu: string | null }, request: PlacementRequest, cpuWorkersOnly = false): boolean {
  if (request.pool !== null && group.pool !== request.pool) return false;
  if (cpuWorkersOnly && group.gpu !== null) return false;
  if (request.gpuCount > 0) {
    if (group.gpu === null) return false;
    if (request.gpu !== null && group.gpu !== request.gpu) return false;
  }
  return true;
}

function tupleFits(tuple: Tuple, request: PlacementRequest): boolean {
  return tuple[0] >= request.cpu && tuple[1] >= request.memory && tuple[2] >= request.gpuCount;
}

export class CapacityView {
  private readonly shards: Array<ShardEntry | undefined>;

  constructor(
    readonly shardCount: number,
    private readonly random: () => number = Math.random,
  ) {
    this.shards = new Array<ShardEntry | undefined>(shardCount);
  }

  /** Take a summary if it is newer than what the view holds (higher epoch, or same epoch and seq). */
  update(capacity: ShardCapacity, now = Date.now()): boolean {
    if (!Number.isInteger(capacity.shard) || capacity.shard < 0 || capacity.shard >= this.shardCount) return false;
    const current = this.shards[capacity.shard];
    if (current !== undefined) {
      if (capacity.epoch < current.epoch) return false;
      if (capacity.epoch === current.epoch && capacity.seq <= current.seq) return false;
    }
    this.shards[capacity.shard] = {
      owner: capacity.owner,
      epoch: capacity.epoch,
      seq: capacity.seq,
      receivedAt: now,
      groups: capacity.owner === null ? [] : capacity.groups.map((g: CapacityGroup) => ({ ...g, top: g.top.map((t) => [t[0], t[1], t[2]] as Tuple) })),
    };
    return true;
  }

  /** An owner answered "does not fit" or "not here": forget the shard's capacity until its next summary. */
  forget(shard: number, request: PlacementRequest | null): void {
    const entry = this.shards[shard];
    if (entry === undefined) return;
    if (request === null) {
      entry.groups = [];
      return;
    }
    // Remove only what the request needed: tuples that seemed to fit it, in the groups it matches.
    for (const group of entry.groups) {
      if (!groupMatches(group, request)) continue;
      group.top = group.top.filter((t) => !tupleFits(t, request));
    }
  }

  fits(shard: number, request: PlacementRequest, cpuWorkersOnly = false): boolean {
    return this.room(shard, request, cpuWorkersOnly) > 0;
  }

  /** How many containers like `request` the shard's summary suggests it can still take (0: none). */
  room(shard: number, request: PlacementRequest, cpuWorkersOnly = false): number {
    const entry = this.shards[shard];
    if (entry === undefined || entry.owner === null) return 0;
    let room = 0;
    let anyTupleFits = false;
    for (const group of entry.groups) {
      if (!groupMatches(group, request, cpuWorkersOnly)) continue;
      if (!anyTupleFits && group.top.some((t) => tupleFits(t, request))) anyTupleFits = true;
      room += Math.min(group.freeCpu / request.cpu, group.freeMemory / request.memory);
    }
    return anyTupleFits ? Math.max(room, 1) : 0;
  }

  /**
   * Power of two choices among fitting shards not in `exclude`; null when none fits. With `local`
   * (this router's replica id), shards that replica owns are tried first: a placement there needs
   * no NATS hop. Clients reach routers through a queue group, so every replica gets its share of
   * requests and the load still spreads; when local shards are full, all shards are candidates.
   */
  choose(request: PlacementRequest, exclude: ReadonlySet<number>, local: string | null = null): number | null {
    const passes: Array<[boolean, string | null]> = [];
    if (request.gpuCount === 0) {
      if (local !== null) passes.push([true, local]);
      passes.push([true, null]);
    }
    if (local !== null) passes.push([false, local]);
    passes.push([false, null]);
    for (const [cpuWorkersOnly, owner] of passes) {
      const shard = this.chooseAmong(request, exclude, cpuWorkersOnly, owner);
      if (shard !== null) return shard;
    }
    return null;
  }

  private chooseAmong(request: PlacementRequest, exclude: ReadonlySet<number>, cpuWorkersOnly: boolean, owner: string | null): number | null {
    const n = this.shardCount;
    const start = Math.floor(this.random() * n);
    // Walk the shards from a random start and stop at the second that fits: cheap when capacity
    // is plentiful (a few checks), a full scan only when it is scarce.
    let first = -1;
    let second = -1;
    for (let i = 0; i < n && second < 0; i += 1) {
      const shard = (start + i) % n;
      if (exclude.has(shard) || (owner !== null && this.shards[shard]?.owner !== owner) || !this.fits(shard, request, cpuWorkersOnly)) continue;
      if (first < 0) first = shard;
      else second = shard;
    }
    if (first < 0) return null;
    if (second < 0) return first;
    return this.room(second, request, cpuWorkersOnly) > this.room(first, request, cpuWorkersOnly) ? second : first;
  }

  /** Count a forwarded placement against the view now, so the next choice does not herd onto it. */
  consume(shard: number, request: PlacementRequest): void {
    const entry = this.shards[shard];
    if (entry === undefined) return;
    for (const group of entry.groups) {
      if (!groupMatches(group, request)) continue;
      const tuple = group.top.find((t) => tupleFits(t, request));
      if (tuple === undefined) continue;
      tuple[0] -= request.cpu;
      tuple[1] -= request.memory;
      tuple[2] -= request.gpuCount;
      group.freeCpu -= request.cpu;
      group.freeMemory -= request.memory;
      return;
    }
  }
}
