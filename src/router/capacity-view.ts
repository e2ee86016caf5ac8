/**
 * A router's view of every shard's capacity, built from the summaries shard owners publish (and
 * piggy-back on replies). It answers two questions: which shard should this container try next,
 * and is a "no" proven?
 *
 * Each shard is, for a request, in one of four tiers:
 *   likely    a worker in its summary covers the request (after this router's own recent
 *             placements there are counted against the summary);
 *   possible  the summary does not prove it cannot fit: its frontier covers the request (only
 *             this router's own placements made it look full), or the frontier was cut short and
 *             the group's maxima still allow it;
 *   unknown   no trustworthy summary: none yet, or older than STALE_AFTER_MS;
 *   none      the summary proves no worker of the shard fits (see capacity-summary.ts).
 * A shard whose owner did not answer (no responders, UNAVAILABLE) is left out of the choice until a
 * newer summary arrives, but still counts for the proof.
 *
 * Choice: power of two choices within the best tier: two shards drawn at random among those that
 * fit, and the one with the larger share of its capacity free wins. Best fit across shards would send every
 * router to the same fullest shard at once (routers act on slightly stale views, so they would
 * collide there and re-route); two random choices spread concurrent routers apart while steering
 * away from full shards. Packing happens inside the shard, where the actors see exact capacity.
 */
import type { PlacementRequest } from '../../actors/capacity.js';
import type { CapacityGroup, CapacityPoint, ShardCapacity } from '../protocol/shard-messages.js';

/** Owners republish every second; a summary this old is not trusted (its owner may be gone). */
export const STALE_AFTER_MS = 3_000;

export type Tier = 'likely' | 'possible' | 'unknown' | 'none';

/**
 * A group of a shard as this router's own recent placements there left it: its frontier and free
 * totals with those placements subtracted (for ranking only; the received summary stays as it came,
 * for the proofs). Made on the first such placement: most summaries are replaced before one.
 */
interface Adjusted {
  readonly working: CapacityPoint[];
  freeCpu: number;
  freeMemory: number;
}

interface ShardEntry {
  readonly owner: string | null;
  readonly epoch: number;
  readonly seq: number;
  receivedAt: number;
  readonly groups: readonly CapacityGroup[];
  /** Per group, what this router's placements left of it; null or a gap: nothing yet. */
  adjusted: Array<Adjusted | undefined> | null;
  /** Its owner did not answer since this summary: do not choose it again until the next one. */
  unreachable: boolean;
  /** CPU and memory this router has asked the shard for since this summary, every attempt counted. */
  sentCpu: number;
  sentMemory: number;
}

/** How many shards of a kind exist, for saying why nothing fits. */
export interface FleetCounts {
  /** Workers registered of the pool / GPU type asked for, in any status. */
  readonly registered: number;
  /** Of those, workers that take placements. */
  readonly available: number;
  /** Shards without a trustworthy summary (their workers are not counted). */
  readonly unknownShards: number;
}

/**
 * Whether a group's workers could take the request. With `cpuWorkersOnly`, a CPU-only request
 * skips GPU groups: the router's first pass, so GPUs are not stranded behind CPU work while a
 * CPU-only worker elsewhere has room (the same preference placementScore applies within a shard).
 */
export function groupMatches(group: { pool: string | null; gpu: string | null }, request: PlacementRequest, cpuWorkersOnly = false): boolean {
  if (request.pool !== null && group.pool !== request.pool) return false;
  if (cpuWorkersOnly && group.gpu !== null) return false;
  if (request.gpuCount > 0) {
    if (group.gpu === null) return false;
    if (request.gpu !== null && group.gpu !== request.gpu) return false;
  }
  return true;
}

function covers(point: CapacityPoint, request: PlacementRequest): boolean {
  return point[0] >= request.cpu && point[1] >= request.memory && point[2] >= request.gpuCount;
}

const TIER_RANK: Record<Tier, number> = { likely: 0, possible: 1, unknown: 2, none: 3 };

/**
 * Random draws tried before scanning every shard. Drawing uniformly and keeping the shards that
 * fit gives each fitting shard the same chance as a full scan would, at a few checks instead of
 * one per shard while capacity is plentiful; when it is scarce, the scan finds the few that fit.
 */
const RANDOM_DRAWS = 8;
const CPU_FIRST: readonly boolean[] = [true, false];
const ANY_GROUP: readonly boolean[] = [false];
const TIERS: readonly Tier[] = ['likely', 'possible', 'unknown', 'none'];

export class CapacityView {
  private readonly shards: Array<ShardEntry | undefined>;
  /** Shards per owner, rebuilt when an owner changes (for the "this replica's shards first" pass). */
  private byOwner: Map<string, number[]> | null = null;
  /** Counts the summaries taken: whoever concluded "no room" can tell whether anything changed since. */
  version = 0;
  private readonly listeners: Array<(shard: number) => void> = [];
  /**
   * Each shard's tier for the request of the `choose` call under way, by [cpuWorkersOnly, any
   * group]: a shard's tier is computed once per call instead of once per tier and pass tried.
   * When capacity is scarce (a fleet still registering, shards filling up) a call scans every
   * shard for up to nine (tier, pass, pool) combinations, and the scans were a tenth of a
   * replica's time in the backlog benchmark's drain. `memoCall` stamps the entries of this call.
   */
  private readonly memoTier: [Uint8Array, Uint8Array];
  private readonly memoStamp: [Uint32Array, Uint32Array];
  private memoCall = 0;

  constructor(
    readonly shardCount: number,
    private readonly random: () => number = Math.random,
    private readonly clock: () => number = Date.now,
  ) {
    this.shards = new Array<ShardEntry | undefined>(shardCount);
    this.memoTier = [new Uint8Array(shardCount), new Uint8Array(shardCount)];
    this.memoStamp = [new Uint32Array(shardCount), new Uint32Array(shardCount)];
  }

  /** Take a summary if it is newer than what the view holds (higher epoch, or same epoch and seq). */
  update(capacity: ShardCapacity): boolean {
    if (!Number.isInteger(capacity.shard) || capacity.shard < 0 || capacity.shard >= this.shardCount) return false;
    const current = this.shards[capacity.shard];
    if (current !== undefined) {
      if (capacity.epoch < current.epoch) return false;
      if (capacity.epoch === current.epoch && capacity.seq <= current.seq) {
        // The owner republished the summary it had already sent (once a second, unchanged): the
        // summary is as fresh as this message, and its owner is answering.
        if (capacity.seq === current.seq && capacity.owner === current.owner) {
          current.receivedAt = this.clock();
          current.unreachable = false;
        }
        return false;
      }
    }
    if (current?.owner !== capacity.owner) this.byOwner = null;
    this.shards[capacity.shard] = {
      owner: capacity.owner,
      epoch: capacity.epoch,
      seq: capacity.seq,
      receivedAt: this.clock(),
      unreachable: false,
      groups: capacity.groups,
      adjusted: null,
      sentCpu: 0,
      sentMemory: 0,
    };
    this.version += 1;
    for (const listener of this.listeners) listener(capacity.shard);
    return true;
  }

  /** Shards whose last summary has workers of the request's pool and GPU type (in any status). */
  shardsWithWorkersFor(request: PlacementRequest): number[] {
    const shards: number[] = [];
    this.shards.forEach((entry, shard) => {
      if (entry !== undefined && entry.owner !== null && entry.groups.some((group) => group.registered > 0 && groupMatches(group, request))) shards.push(shard);
    });
    return shards;
  }

  /** The replica whose summary last said it owns the shard, or null (none yet, or handed over). */
  ownerOf(shard: number): string | null {
    return this.shards[shard]?.owner ?? null;
  }

  /** Called after every summary taken (the backlog wakes the queued containers it may fit). */
  onUpdate(listener: (shard: number) => void): void {
    this.listeners.push(listener);
  }

  private shardsOwnedBy(owner: string): readonly number[] {
    if (this.byOwner === null) {
      this.byOwner = new Map();
      this.shards.forEach((entry, shard) => {
        if (entry?.owner == null) return;
        let list = this.byOwner!.get(entry.owner);
        if (list === undefined) this.byOwner!.set(entry.owner, (list = []));
        list.push(shard);
      });
    }
    return this.byOwner.get(owner) ?? [];
  }

  /** The shard's owner did not answer (no responders, UNAVAILABLE): skip it until it republishes. */
  markUnreachable(shard: number): void {
    const entry = this.shards[shard];
    if (entry !== undefined) entry.unreachable = true;
  }

  /** An owner answered "does not fit": this request's fitting points are not there after all. */
  forget(shard: number, request: PlacementRequest): void {
    const entry = this.shards[shard];
    if (entry === undefined) return;
    entry.groups.forEach((group, index) => {
      if (!groupMatches(group, request)) return;
      const adjusted = this.adjust(entry, index);
      const kept = adjusted.working.filter((p) => !covers(p, request));
      adjusted.working.length = 0;
      adjusted.working.push(...kept);
    });
  }

  /** The group's adjustments, made from the received summary on first use. */
  private adjust(entry: ShardEntry, index: number): Adjusted {
    entry.adjusted ??= [];
    let adjusted = entry.adjusted[index];
    if (adjusted === undefined) {
      const group = entry.groups[index]!;
      adjusted = { working: group.frontier.map((p) => [p[0], p[1], p[2]] as CapacityPoint), freeCpu: group.freeCpu, freeMemory: group.freeMemory };
      entry.adjusted[index] = adjusted;
    }
    return adjusted;
  }

  /** Which tier the shard is in for this request (see the module comment). */
  tier(shard: number, request: PlacementRequest, cpuWorkersOnly = false, now = this.clock()): Tier {
    const entry = this.shards[shard];
    if (entry === undefined || now - entry.receivedAt > STALE_AFTER_MS) return 'unknown';
    let tier: Tier = 'none';
    const groups = entry.groups;
    for (let index = 0; index < groups.length; index += 1) {
      const group = groups[index]!;
      if (!groupMatches(group, request, cpuWorkersOnly)) continue;
      const frontier = group.frontier;
      const working = entry.adjusted?.[index]?.working ?? frontier;
      for (const point of working) if (covers(point, request)) return 'likely';
      if (tier === 'possible') continue;
      for (const point of frontier) {
        if (covers(point, request)) {
          tier = 'possible';
          break;
        }
      }
      if (!group.exact && covers(group.max, request)) tier = 'possible';
    }
    return tier;
  }

  /**
   * The share of the matching workers' capacity still free (the lower of CPU and memory), for
   * ranking two candidate shards: the emptier one in proportion to its size wins, so shards fill
   * at the same pace whatever their number of workers.
   */
  freeShare(shard: number, request: PlacementRequest, cpuWorkersOnly = false): number {
    const entry = this.shards[shard];
    if (entry === undefined) return 0;
    let cpu = 0;
    let memory = 0;
    let freeCpu = 0;
    let freeMemory = 0;
    const groups = entry.groups;
    for (let index = 0; index < groups.length; index += 1) {
      const group = groups[index]!;
      if (!groupMatches(group, request, cpuWorkersOnly)) continue;
      const adjusted = entry.adjusted?.[index];
      cpu += group.cpu;
      memory += group.memory;
      freeCpu += Math.max(0, adjusted?.freeCpu ?? group.freeCpu);
      freeMemory += Math.max(0, adjusted?.freeMemory ?? group.freeMemory);
    }
    return cpu === 0 || memory === 0 ? 0 : Math.min(freeCpu / cpu, freeMemory / memory);
  }

  /**
   * The next shard to try, or null when no shard outside `exclude` may fit. Tiers are tried best
   * first; within one, CPU-only requests try CPU-only groups first, and with `local` (this router's
   * replica id) shards that replica owns come first (a placement there needs no NATS hop; clients
   * reach routers through a queue group, so the load still spreads over the replicas).
   */
  choose(request: PlacementRequest, exclude: ReadonlySet<number>, local: string | null = null): number | null {
    const now = this.clock();
    // A new call: every memoized tier is stale (0 is never a call's stamp).
    this.memoCall = this.memoCall === 0xffffffff ? 1 : this.memoCall + 1;
    if (this.memoCall === 1) {
      this.memoStamp[0].fill(0);
      this.memoStamp[1].fill(0);
    }
    const passes = request.gpuCount === 0 ? CPU_FIRST : ANY_GROUP;
    for (const tier of ['likely', 'possible'] as const) {
      for (const cpuWorkersOnly of passes) {
        if (local !== null) {
          const shard = this.chooseAmong(request, exclude, tier, cpuWorkersOnly, this.shardsOwnedBy(local), now);
          if (shard !== null) return shard;
        }
        const shard = this.chooseAmong(request, exclude, tier, cpuWorkersOnly, null, now);
        if (shard !== null) return shard;
      }
    }
    // An unknown shard is unknown for every group.
    return this.chooseAmong(request, exclude, 'unknown', false, null, now);
  }

  /**
   * Whether the shard may be asked now (known owner, answering, fresh summary) and its summary
   * says the request may fit: the test a preferred shard must pass before it is asked first.
   */
  mayFit(shard: number, request: PlacementRequest): boolean {
    if (!Number.isInteger(shard) || shard < 0 || shard >= this.shardCount) return false;
    const entry = this.shards[shard];
    if (entry === undefined || entry.unreachable || entry.owner === null) return false;
    const tier = this.tier(shard, request);
    if (tier !== 'likely' && tier !== 'possible') return false;
    // And the room the summary counted, less what this router has sent there since, still holds
    // the request: attempts in flight beyond the shard's room would only come back "does not fit".
    for (const group of entry.groups) {
      if (groupMatches(group, request) && group.freeCpu - entry.sentCpu >= request.cpu && group.freeMemory - entry.sentMemory >= request.memory) return true;
    }
    return false;
  }

  /**
   * About how many of the request the shards that may be asked now have room for, at most `limit`:
   * over the fresh summaries whose tier is likely or possible, each matching group's free CPU and
   * memory divided by the request's (for a GPU request, the frontier points that cover it). An
   * upper bound where free room is scattered in pieces, exact where it is whole; the backlog sizes
   * a shape's attempts in flight by it (see backlog-scheduler.ts, "No spinning").
   */
  roomFor(request: PlacementRequest, limit: number): number {
    const now = this.clock();
    let room = 0;
    for (let shard = 0; shard < this.shardCount && room < limit; shard += 1) {
      const entry = this.shards[shard];
      if (entry === undefined || entry.unreachable || entry.owner === null || now - entry.receivedAt > STALE_AFTER_MS) continue;
      const tier = this.tier(shard, request, false, now);
      if (tier !== 'likely' && tier !== 'possible') continue;
      for (const group of entry.groups) {
        if (!groupMatches(group, request)) continue;
        if (request.gpuCount > 0) {
          for (const point of group.frontier) if (covers(point, request)) room += 1;
          continue;
        }
        room += Math.max(0, Math.min(Math.floor(group.freeCpu / Math.max(1, request.cpu)), Math.floor(group.freeMemory / Math.max(1, request.memory))));
      }
    }
    return Math.min(room, limit);
  }

  /** Whether the shard may be asked now and is in `tier` for the request. */
  private eligible(shard: number, request: PlacementRequest, exclude: ReadonlySet<number>, tier: Tier, cpuWorkersOnly: boolean, now: number): boolean {
    if (exclude.has(shard)) return false;
    const entry = this.shards[shard];
    if (entry !== undefined && (entry.unreachable || entry.owner === null)) return false;
    return this.memoizedTier(shard, request, cpuWorkersOnly, now) === tier;
  }

  /** tier(), computed once per shard and pass within one choose call (see memoTier). */
  private memoizedTier(shard: number, request: PlacementRequest, cpuWorkersOnly: boolean, now: number): Tier {
    const pass = cpuWorkersOnly ? 0 : 1;
    if (this.memoStamp[pass][shard] === this.memoCall) return TIERS[this.memoTier[pass][shard]!]!;
    const tier = this.tier(shard, request, cpuWorkersOnly, now);
    this.memoStamp[pass][shard] = this.memoCall;
    this.memoTier[pass][shard] = TIER_RANK[tier];
    return tier;
  }

  /**
   * Power of two choices among the shards of one tier, drawn from `pool` (null: every shard):
   * a few random draws first, then, if they did not find two, a scan keeping a uniform random pair.
   */
  private chooseAmong(
    request: PlacementRequest,
    exclude: ReadonlySet<number>,
    tier: Tier,
    cpuWorkersOnly: boolean,
    pool: readonly number[] | null,
    now: number,
  ): number | null {
    const size = pool === null ? this.shardCount : pool.length;
    if (size === 0) return null;
    let first = -1;
    let second = -1;
    for (let draw = 0; draw < RANDOM_DRAWS && second < 0; draw += 1) {
      const index = Math.floor(this.random() * size);
      const shard = pool === null ? index : pool[index]!;
      if (shard === first || !this.eligible(shard, request, exclude, tier, cpuWorkersOnly, now)) continue;
      if (first < 0) first = shard;
      else second = shard;
    }
    if (second < 0) {
      first = -1;
      let seen = 0;
      for (let index = 0; index < size; index += 1) {
        const shard = pool === null ? index : pool[index]!;
        if (!this.eligible(shard, request, exclude, tier, cpuWorkersOnly, now)) continue;
        seen += 1;
        // Keep a uniform random pair of the candidates seen so far.
        if (seen === 1) first = shard;
        else if (seen === 2) second = shard;
        else {
          const pick = Math.floor(this.random() * seen);
          if (pick === 0) first = shard;
          else if (pick === 1) second = shard;
        }
      }
      if (first < 0) return null;
      if (second < 0) return first;
      if (this.random() < 0.5) [first, second] = [second, first];
    }
    return this.freeShare(second, request, cpuWorkersOnly) > this.freeShare(first, request, cpuWorkersOnly) ? second : first;
  }

  /**
   * Shards outside `asked` whose summary does not prove the request cannot fit. A router may only
   * answer NO_CAPACITY when this is empty: every other shard was asked, or is proven full.
   */
  unproven(request: PlacementRequest, asked: ReadonlySet<number>): number[] {
    const left: number[] = [];
    for (let shard = 0; shard < this.shardCount; shard += 1) {
      if (asked.has(shard)) continue;
      if (TIER_RANK[this.tier(shard, request)] < TIER_RANK.none) left.push(shard);
    }
    return left;
  }

  /** Workers of the kind asked for across every shard with a fresh summary, for NO_CAPACITY's reason. */
  fleet(request: PlacementRequest): FleetCounts {
    let registered = 0;
    let available = 0;
    let unknownShards = 0;
    const now = this.clock();
    for (const entry of this.shards) {
      if (entry === undefined || now - entry.receivedAt > STALE_AFTER_MS) {
        unknownShards += 1;
        continue;
      }
      for (const group of entry.groups) {
        if (!groupMatches(group, request)) continue;
        registered += group.registered;
        available += group.workers;
      }
    }
    return { registered, available, unknownShards };
  }

  /** Count a forwarded placement against the view now, so the next choice does not herd onto it. */
  consume(shard: number, request: PlacementRequest): void {
    const entry = this.shards[shard];
    if (entry === undefined) return;
    entry.sentCpu += request.cpu;
    entry.sentMemory += request.memory;
    const groups = entry.groups;
    for (let index = 0; index < groups.length; index += 1) {
      const group = groups[index]!;
      if (!groupMatches(group, request)) continue;
      const at = (entry.adjusted?.[index]?.working ?? group.frontier).findIndex((p) => covers(p, request));
      if (at < 0) continue;
      // Copied on first write: the received frontier stays as it came, for the proofs.
      const adjusted = this.adjust(entry, index);
      const point = adjusted.working[at]!;
      point[0] -= request.cpu;
      point[1] -= request.memory;
      point[2] -= request.gpuCount;
      adjusted.freeCpu -= request.cpu;
      adjusted.freeMemory -= request.memory;
      return;
    }
  }
}
