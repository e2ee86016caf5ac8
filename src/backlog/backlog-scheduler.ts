/**
 * The backlog scheduler: decides which queued containers of this replica's backlog partitions to
 * try to place, and when. One per replica, over every partition it holds.
 *
 * Order. Queued containers are grouped by shape (cpu, memory, GPU type and count, pool): within a
 * shape, all are alike, so the first one that does not fit means none fits. Each shape keeps its
 * containers in a heap by priority (higher first), then queue time, then id. The scheduler always
 * tries next the best head among the shapes that are awake, so priority then age decides across
 * shapes too, while a shape that does not fit sleeps and holds nobody back (no head-of-line
 * blocking: a large request that fits nowhere does not stop smaller ones that fit).
 *
 * Wake-up, event-driven. Every capacity summary a router takes (a release, an exit, a registration,
 * an enable, a lost worker's freed capacity: every growth is published at once by its shard's
 * owner) wakes exactly the sleeping shapes that summary says may fit. Missed wake-ups are guarded
 * twice: a shape goes to sleep only if no summary arrived while its last attempt was in flight
 * (the view's version did not move), and a newly queued container is tried at once if the view
 * already shows room for it. A slow sweep (every SAFETY_SWEEP_MS) wakes any shape the view says may
 * fit, in case a summary was lost; it is the safety net, not the mechanism.
 *
 * No spinning. A shape is attempted again only when capacity that may fit it appeared: after an
 * attempt that found no room, it sleeps unless a summary that may fit it (a growth for this shape,
 * counted in `Shape.growth`, not any summary at all) arrived while the attempt was in flight. And a
 * shape has at most `Shape.window` attempts in flight: as many as the view shows room for (free
 * CPU and memory of the shards that may fit it, divided by its size: a fleet that registers opens it
 * at once), one more after each placement (so a drain doubles its attempts every round trip, up to
 * MAX_ATTEMPTS_IN_FLIGHT), half as many after each "no room" that no growth for it came with. So a full cluster with thousands queued makes about one attempt per
 * shape per room that appears, instead of hundreds in flight against shards known full.
 *
 * Attempts go through this replica's router, exactly like a client's submit, with the request key
 * that queued the container: commit_batch.lua places a queued container only with that key and
 * only while it is queued, so however many owners (or stale owners) try, it is placed once.
 */
import type { PlacementRequest } from '../../actors/capacity.js';
import type { CapacityView } from '../router/capacity-view.js';
import type { Logger } from '../util/log.js';
import type { BacklogPartition, QueuedEntry, QueueRequest, QueueResult } from './backlog-partition.js';
import type { BacklogReport } from './backlog-report.js';

/**
 * Placement attempts of queued containers in flight at once, per replica. More in flight makes
 * bigger group commits (fewer Redis scripts per placement) but slows registrations that compete
 * with them: in `npm run bench -- backlog`, 512 drained a little faster than 256, 1,024 slower.
 */
export const MAX_ATTEMPTS_IN_FLIGHT = 512;
/** Distinct shapes of queued containers; beyond this, entries still queue but share the sweep. */
const SAFETY_SWEEP_MS = 5_000;
const EXPIRY_SWEEP_MS = 1_000;
/**
 * Expiries being written per partition at most. A mass expiry is written in scripts of at most
 * this many ends each, one per partition at a time, so Redis answers everything else (the link
 * monitors' pings, placements, lease renewals) between them: in `npm run bench -- backlog`,
 * 100,000 ends sent 1,000 to a script from every partition at once kept Redis busy long enough for
 * every replica to count its Redis link as cut and step out. While expired entries wait for this
 * room, the sweep runs again after EXPIRY_CATCH_UP_MS instead of a second.
 */
const MAX_EXPIRIES_IN_FLIGHT = 250;
const EXPIRY_CATCH_UP_MS = 100;
/** A shape whose attempt found shards unavailable retries after this, doubling up to the max. */
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 5_000;
/** A cancel or a requeue waits for an attempt in flight, then looks again; this many times at most. */
const MAX_ATTEMPT_WAITS = 4;
/** Holds are renewed (and checked for room) this often, and live this long unless renewed. */
const HOLD_RENEW_MS = 1_000;
const HOLD_TTL_MS = 5_000;
/** Starving requests holding (or asking for) a worker at once, per replica. */
const MAX_HOLDS = 32;
/** Shards asked for a hold per request per round, when it holds none yet. */
const HOLD_SHARDS_PER_ROUND = 4;
/** Heap entries the safety sweep rebuilds at most per run (a rebuild is O(n log n)). */
const MAX_COMPACTED_PER_SWEEP = 50_000;

export type AttemptOutcome =
  /**
   * `shard`: the worker's shard, which the shape's next attempts prefer (see Shape.preferShard).
   * `unqueued`: the placement's commit also took the id out of the home backlog's Redis set.
   */
  | { readonly outcome: 'placed'; readonly workerId: string; readonly shard?: number; readonly unqueued?: boolean }
  /** Proven: no worker has room now (the shape sleeps until capacity grows). */
  | { readonly outcome: 'no-room' }
  /** Could not be decided now (owners unavailable): try again after a backoff. */
  | { readonly outcome: 'unavailable' }
  /** The record is not this entry's to place (placed by another request, or ended): forget it. */
  | { readonly outcome: 'not-ours'; readonly message: string };

export interface BacklogSchedulerOptions {
  readonly view: CapacityView;
  readonly replicaId: string;
  /** Place the entry through the router; `prefer`: a shard to ask first if it may fit there, or null. */
  readonly attempt: (entry: QueuedEntry, prefer: number | null) => Promise<AttemptOutcome>;
  /** A request waiting longer than this gets a worker held for it (see `holds`). */
  readonly holdAfterMs: number;
  /** Ask shard `shard` to hold a worker for the entry until `until`: the worker, and whether it fits now; null if it cannot. */
  readonly hold: (entry: QueuedEntry, shard: number, until: number) => Promise<{ held: string; fits: boolean } | null>;
  /** Place the entry in shard `shard` (where a worker is held for it). */
  readonly placeOn: (entry: QueuedEntry, shard: number) => Promise<AttemptOutcome>;
  readonly log: Logger;
  readonly maxAttemptsInFlight?: number;
}

/** Queued containers of one shape, best first. */
export class Shape {
  readonly heap: QueuedEntry[] = [];
  asleep = false;
  /** The view's version when a check last found no room: until it moves, the answer is the same. */
  checkedAtVersion = -1;
  /** The view's version when a check last found room (the pump asks before every attempt). */
  fitsAtVersion = -1;
  /**
   * The shard that placed this shape's last container: its next attempts ask it first while the
   * view says they may fit there (under best-fit; see Router.place). Alike containers then fill
   * one shard's workers in turn, and its owner writes them in large group commits instead of a
   * few per shard across every shard.
   */
  preferShard: number | null = null;
  /** Unix ms before which a shape that met unavailable owners is not tried again. */
  retryAt = 0;
  backoffMs = RETRY_FIRST_MS;
  /** Attempts of this shape in flight, and how many it may have (see "No spinning" above). */
  inFlight = 0;
  window = 1;
  /** Summaries taken that may fit this shape (room for it appeared somewhere, or is still there). */
  growth = 0;
  /** The view's version when its room was last read into the window. */
  roomAtVersion = -1;
  constructor(
    readonly key: string,
    readonly request: PlacementRequest,
  ) {}

  // The sifts move a hole and write the moving entry once at its place (no swaps): the pump pops
  // one entry per attempt from heaps of tens of thousands.
  push(entry: QueuedEntry): void {
    const heap = this.heap;
    let i = heap.length;
    heap.push(entry);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const above = heap[parent]!;
      if (!before(entry, above)) break;
      heap[i] = above;
      i = parent;
    }
    heap[i] = entry;
  }

  /** The best entry still queued and not being attempted (removed entries are dropped here). */
  head(): QueuedEntry | null {
    while (this.heap.length > 0 && this.heap[0]!.gone) this.pop();
    return this.heap[0] ?? null;
  }

  pop(): QueuedEntry | null {
    const heap = this.heap;
    const top = heap[0];
    if (top === undefined) return null;
    const last = heap.pop()!;
    const size = heap.length;
    if (size === 0) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= size) break;
      const right = left + 1;
      const child = right < size && before(heap[right]!, heap[left]!) ? right : left;
      const below = heap[child]!;
      if (!before(below, last)) break;
      heap[i] = below;
      i = child;
    }
    heap[i] = last;
    return top;
  }

  /** Drop removed entries (after a partition closed, or many cancels). */
  compact(): void {
    const live = this.heap.filter((entry) => !entry.gone);
    this.heap.length = 0;
    for (const entry of live) this.push(entry);
  }
}

/** Priority (higher first), then queue time (older first), then id. */
function before(a: QueuedEntry, b: QueuedEntry): boolean {
  if (a.priority !== b.priority) return a.priority > b.priority;
  if (a.queuedAt !== b.queuedAt) return a.queuedAt < b.queuedAt;
  return a.id < b.id;
}

export function shapeKey(request: PlacementRequest): string {
  return `${request.cpu}/${request.memory}/${request.gpu ?? ''}/${request.gpuCount}/${request.pool ?? ''}`;
}

export interface BacklogStats {
  attempts: number;
  placed: number;
  /** Placements in the container's home shard, whose commit also took it out of the backlog's Redis set. */
  unqueued: number;
  noRoom: number;
  unavailable: number;
  notOurs: number;
  expired: number;
  /** Expiries whose write was refused or of unknown outcome (the partition closed, Redis did not answer): tried again at the next sweep. */
  expiryUnwritten: number;
  /** Sweeps that left expired entries for later (their partitions had MAX_EXPIRIES_IN_FLIGHT being written). */
  expiryCatchUps: number;
  cancelled: number;
  wakes: number;
  holds: number;
  heldPlacements: number;
}

export class BacklogScheduler {
  private readonly partitions = new Map<number, BacklogPartition>();
  private readonly shapes = new Map<string, Shape>();
  private readonly awake = new Set<Shape>();
  private inFlight = 0;
  private pumpScheduled = false;
  private stopped = false;
  private timers: NodeJS.Timeout[] = [];
  private retryTimer: NodeJS.Timeout | null = null;
  private retryTimerAt = 0;
  private expiryCatchUp: NodeJS.Timeout | null = null;
  private readonly maxInFlight: number;
  readonly stats: BacklogStats = { attempts: 0, placed: 0, unqueued: 0, noRoom: 0, unavailable: 0, notOurs: 0, expired: 0, expiryUnwritten: 0, expiryCatchUps: 0, cancelled: 0, wakes: 0, holds: 0, heldPlacements: 0 };

  constructor(private readonly options: BacklogSchedulerOptions) {
    this.maxInFlight = options.maxAttemptsInFlight ?? MAX_ATTEMPTS_IN_FLIGHT;
    // Every summary the view takes is a possible wake-up (see capacityChanged).
    options.view.onUpdate((shard) => this.capacityChanged(shard));
  }

  start(): void {
    this.timers.push(
      setInterval(() => this.expire(), EXPIRY_SWEEP_MS),
      setInterval(() => this.safetySweep(), SAFETY_SWEEP_MS),
      setInterval(() => this.renewHolds(), HOLD_RENEW_MS),
    );
    for (const timer of this.timers) timer.unref();
  }

  stop(): void {
    this.stopped = true;
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    if (this.expiryCatchUp !== null) clearTimeout(this.expiryCatchUp);
  }

  /** A partition this replica now holds: its entries join the shapes and are tried if they may fit. */
  add(partition: BacklogPartition): void {
    this.partitions.set(partition.shard, partition);
    // What its reconciliation finds queued in Redis and held nowhere is tried like a new entry.
    partition.onAdopted = (entry) => {
      if (this.partitions.get(partition.shard) === partition) this.queued(entry);
    };
    for (const entry of partition.entries.values()) this.enqueue(entry, false);
    for (const shape of this.shapes.values()) this.wakeIfFits(shape);
    this.schedulePump();
  }

  /** The partition was closed (hand-over, lease lost, fenced): its entries are gone from the shapes. */
  remove(shard: number): void {
    // Its entries are marked gone (the partition closed): the heaps skip them when they come up,
    // and the sweep compacts them away in bounded steps. Compacting every heap here would stall
    // the event loop for a hand-over of many shards with a deep backlog (lease renewals with it).
    this.partitions.delete(shard);
  }

  partition(shard: number): BacklogPartition | null {
    return this.partitions.get(shard) ?? null;
  }

  /** A container was just queued (durable): try it now if the view shows room, else it sleeps with its shape. */
  queued(entry: QueuedEntry): void {
    this.enqueue(entry, true);
  }

  /**
   * A capacity summary was taken for `shard` (the view tells the scheduler of each): each shape it
   * may fit counts a growth (an attempt of it that finds no room stays awake only if one came
   * meanwhile), and the sleeping ones wake.
   */
  capacityChanged(shard: number): void {
    const view = this.options.view;
    let woke = false;
    for (const shape of this.shapes.values()) {
      const tier = view.tier(shard, shape.request);
      if (tier !== 'likely' && tier !== 'possible') continue;
      shape.growth += 1;
      if (shape.asleep) {
        this.wake(shape);
        woke = true;
      }
    }
    if (woke) this.schedulePump();
  }

  /**
   * Hold again a container whose worker was lost before running it (its worker's shard wrote its
   * record back to queued, same request key). The backlog may still hold the entry that placed it
   * the first time, with that attempt still in flight: its answer ("placed") is about the
   * placement the requeue undid, and would forget the entry as the requeue is told "already
   * queued", leaving the record queued in Redis and in nobody's memory (seen once in a long chaos
   * run: a container stuck queued). So an attempt in flight is waited for, and the container is
   * queued again once it ends (backlog_commit then finds the record queued, or placed again).
   */
  async requeued(shard: number, request: QueueRequest, requestKey: string): Promise<QueueResult> {
    for (let wait = 0; wait <= MAX_ATTEMPT_WAITS; wait += 1) {
      const partition = this.partitions.get(shard);
      if (partition === undefined || partition.isClosed) return { outcome: 'unavailable', message: `the backlog of shard ${shard} is not held here` };
      const result = await partition.queue(request, requestKey);
      if (result.outcome !== 'queued') return result;
      if (result.created) {
        this.queued(result.entry);
        return result;
      }
      if (!result.entry.attempting) return result;
      await new Promise<void>((resolve) => result.entry.settled.push(resolve));
    }
    return { outcome: 'unavailable', message: `container ${request.id} is still being attempted; retry` };
  }

  /**
   * Cancel a queued container (a client's release): waits for an attempt in flight to end first,
   * so the cancel and a placement never both win. 'not-queued': it is not (or no longer) in this
   * backlog; the caller reads its record.
   */
  async cancel(shard: number, id: string): Promise<'cancelled' | 'not-queued' | 'unavailable'> {
    let settled = false;
    for (let wait = 0; wait <= MAX_ATTEMPT_WAITS; wait += 1) {
      const partition = this.partitions.get(shard);
      if (partition === undefined || partition.isClosed) return 'unavailable';
      const entry = partition.entries.get(id);
      if (entry === undefined) {
        if (settled) return 'not-queued';
        // Not held here: Redis may still say queued in this shard (a queue whose reply was lost,
        // a requeue not yet handed over). Settle the id from Redis once (held if it is queued),
        // so a queued container can always be cancelled by its home shard's owner.
        settled = true;
        try {
          await partition.settle([id]);
        } catch {
          return 'unavailable';
        }
        continue;
      }
      if (entry.attempting) {
        await new Promise<void>((resolve) => entry.settled.push(resolve));
        continue;
      }
      const result = await partition.end(entry, 'CANCELLED');
      if (result === 'cancelled') this.stats.cancelled += 1;
      return result;
    }
    return 'unavailable';
  }

  /**
   * How many queued containers are in each state of the scheduling queue (for the metrics):
   * `active` (their shape may fit and is being tried), `backoff` (their shard owners did not answer;
   * retried later), `unschedulable` (asleep until capacity appears) and `in_flight` (an attempt is
   * running). One pass over the shapes' heaps, skipping entries already removed.
   */
  depthByQueue(now = Date.now()): { active: number; backoff: number; unschedulable: number; inFlight: number } {
    const depth = { active: 0, backoff: 0, unschedulable: 0, inFlight: this.inFlight };
    for (const shape of this.shapes.values()) {
      let live = 0;
      for (const entry of shape.heap) if (!entry.gone) live += 1;
      if (shape.asleep) depth.unschedulable += live;
      else if (shape.retryAt > now) depth.backoff += live;
      else depth.active += live;
    }
    return depth;
  }

  /** Depth by pool and by shape, and the oldest queued container, of the partitions held here. */
  describe(now = Date.now()): BacklogReport {
    const byPool = new Map<string, { depth: number; oldestQueuedAt: number }>();
    const byShape = new Map<string, { request: PlacementRequest; depth: number; oldestQueuedAt: number }>();
    let depth = 0;
    let oldest = Number.POSITIVE_INFINITY;
    for (const partition of this.partitions.values()) {
      for (const entry of partition.entries.values()) {
        depth += 1;
        oldest = Math.min(oldest, entry.queuedAt);
        const pool = entry.request.pool ?? '';
        const p = byPool.get(pool) ?? { depth: 0, oldestQueuedAt: entry.queuedAt };
        p.depth += 1;
        p.oldestQueuedAt = Math.min(p.oldestQueuedAt, entry.queuedAt);
        byPool.set(pool, p);
        const key = shapeKey(entry.request);
        const s = byShape.get(key) ?? { request: entry.request, depth: 0, oldestQueuedAt: entry.queuedAt };
        s.depth += 1;
        s.oldestQueuedAt = Math.min(s.oldestQueuedAt, entry.queuedAt);
        byShape.set(key, s);
      }
    }
    return {
      replicaId: this.options.replicaId,
      shards: [...this.partitions.keys()].sort((a, b) => a - b),
      depth,
      oldestAgeMs: depth === 0 ? null : now - oldest,
      pools: [...byPool].map(([pool, p]) => ({ pool: pool === '' ? null : pool, depth: p.depth, oldestAgeMs: now - p.oldestQueuedAt })),
      shapes: [...byShape.values()]
        .sort((a, b) => b.depth - a.depth)
        .slice(0, MAX_REPORTED_SHAPES)
        .map((s) => ({ ...s.request, depth: s.depth, oldestAgeMs: now - s.oldestQueuedAt })),
      attemptsInFlight: this.inFlight,
    };
  }

  /** Into its shape's heap (a new, sleeping shape if none holds its kind): the shape. */
  private enqueue(entry: QueuedEntry, tryNow: boolean): Shape {
    const key = shapeKey(entry.request);
    let shape = this.shapes.get(key);
    if (shape === undefined) {
      shape = new Shape(key, entry.request);
      shape.asleep = true;
      this.shapes.set(key, shape);
    }
    shape.push(entry);
    if (tryNow && this.wakeIfFits(shape)) this.schedulePump();
    return shape;
  }

  private dropShape(key: string, shape: Shape): void {
    // Only this shape: a newer one of the same key may have replaced it (an entry requeued after
    // its shape was dropped), and must stay where the wake-ups and the sweep find it.
    if (this.shapes.get(key) === shape) this.shapes.delete(key);
    this.awake.delete(shape);
  }

  /** Wake the shape if the view says its containers may fit now; whether it is awake. */
  private wakeIfFits(shape: Shape): boolean {
    if (!shape.asleep) return true;
    const view = this.options.view;
    // Queueing many requests of a shape while nothing fits: one check per change of the view.
    if (shape.checkedAtVersion === view.version) return false;
    if (view.choose(shape.request, NONE, this.options.replicaId) === null) {
      shape.checkedAtVersion = view.version;
      return false;
    }
    this.wake(shape);
    return true;
  }

  private wake(shape: Shape): void {
    if (!shape.asleep) return;
    shape.asleep = false;
    this.awake.add(shape);
    this.stats.wakes += 1;
  }

  private sleep(shape: Shape): void {
    shape.asleep = true;
    this.awake.delete(shape);
  }

  private schedulePump(): void {
    if (this.pumpScheduled || this.stopped) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Start attempts, best head first among the awake shapes, up to the in-flight bound. */
  private pump(): void {
    const now = Date.now();
    while (this.inFlight < this.maxInFlight && this.awake.size > 0) {
      let best: Shape | null = null;
      let bestHead: QueuedEntry | null = null;
      for (const shape of this.awake) {
        if (shape.retryAt > now) {
          // Its backoff has not run out: a timer brings the pump back then (a timer may fire a
          // millisecond before Date.now() says it is due, so it is armed from here, every time).
          this.armRetry(shape.retryAt);
          continue;
        }
        // The room the view shows for it opens the window that far at once (a fleet registering);
        // asked once per version of the view.
        if (shape.roomAtVersion !== this.options.view.version) {
          shape.roomAtVersion = this.options.view.version;
          if (shape.inFlight >= shape.window) shape.window = Math.max(shape.window, this.options.view.roomFor(shape.request, this.maxInFlight));
        }
        if (shape.inFlight >= shape.window) continue;
        const head = shape.head();
        if (head === null) {
          this.dropShape(shape.key, shape);
          continue;
        }
        // Its end (expiry, cancel) is being written: the shape waits for it (a round trip).
        if (head.ending) continue;
        if (bestHead === null || before(head, bestHead)) {
          best = shape;
          bestHead = head;
        }
      }
      if (best === null || bestHead === null) return;
      // The view proves nothing fits this shape: sleep until a summary says otherwise. Asked once
      // per version of the view, not once per attempt (the attempt's own choice asks again anyway).
      const view = this.options.view;
      if (best.fitsAtVersion !== view.version) {
        if (view.choose(best.request, NONE, this.options.replicaId) === null) {
          this.sleep(best);
          continue;
        }
        best.fitsAtVersion = view.version;
      }
      best.pop();
      void this.run(best, bestHead);
    }
  }

  private async run(shape: Shape, entry: QueuedEntry, heldIn: number | null = null): Promise<void> {
    entry.attempting = true;
    this.inFlight += 1;
    shape.inFlight += 1;
    this.stats.attempts += 1;
    const versionBefore = this.options.view.version;
    const growthBefore = shape.growth;
    let result: AttemptOutcome;
    try {
      result = heldIn === null ? await this.options.attempt(entry, this.preferredShard(shape, entry)) : await this.options.placeOn(entry, heldIn);
      if (heldIn !== null && result.outcome === 'placed') this.stats.heldPlacements += 1;
    } catch (error) {
      this.options.log.error({ err: error, container: entry.id }, 'backlog placement attempt failed');
      result = { outcome: 'unavailable' };
    }
    entry.attempting = false;
    this.inFlight -= 1;
    shape.inFlight -= 1;
    const partition = this.partitions.get(entry.shard);
    switch (result.outcome) {
      case 'placed':
        this.stats.placed += 1;
        if (result.unqueued === true) this.stats.unqueued += 1;
        shape.backoffMs = RETRY_FIRST_MS;
        // One more in flight per placement: the window doubles every round trip while room lasts.
        shape.window = Math.min(this.maxInFlight, shape.window + 1);
        if (result.shard !== undefined) shape.preferShard = result.shard;
        if (partition !== undefined && !entry.gone) partition.forget(entry, result.unqueued === true);
        break;
      case 'not-ours':
        this.stats.notOurs += 1;
        this.options.log.warn({ container: entry.id, reason: result.message }, 'queued container is not this request\'s to place; forgotten');
        if (partition !== undefined && !entry.gone) partition.forget(entry);
        break;
      case 'no-room': {
        this.stats.noRoom += 1;
        // Null: the entry is gone (its partition closed meanwhile).
        const holder = this.requeue(shape, entry);
        if (holder === null) break;
        // Room that may fit this shape may have appeared while the attempt was concluding (a
        // summary came that may fit it, and its wake-up found the shape awake): stay awake, with
        // the same window, if so (a fleet registering keeps growing); the pump asks the view
        // before the next attempt. Any other summary (a shard filling up, another shape's room)
        // is no reason to try again: the room ran out, so the shape sleeps with half its window.
        // A shape made anew meanwhile (its heap had emptied) has no count of its own yet: any
        // summary counts for it.
        const grew = holder === shape ? shape.growth !== growthBefore : this.options.view.version !== versionBefore;
        if (grew) {
          this.wake(holder);
        } else {
          holder.window = Math.max(1, Math.floor(holder.window / 2));
          this.sleep(holder);
        }
        break;
      }
      case 'unavailable': {
        this.stats.unavailable += 1;
        // Null: the entry is gone (its partition closed meanwhile); nothing to retry.
        const holder = this.requeue(shape, entry);
        if (holder === null) break;
        holder.retryAt = Date.now() + shape.backoffMs;
        holder.backoffMs = Math.min(RETRY_MAX_MS, shape.backoffMs * 2);
        this.wake(holder);
        this.armRetry(holder.retryAt);
        break;
      }
    }
    const settled = entry.settled.splice(0);
    for (const resolve of settled) resolve();
    this.schedulePump();
  }

  /**
   * The shard an attempt asks first: the entry's home shard while the view says it may fit there,
   * else the shard that placed the shape's last container. This replica owns the home shard (its
   * backlog and its workers go with one lease), so a placement there runs in this process, with no
   * NATS round trip, and its commit also takes the id out of the home backlog's Redis set, with no
   * drop to write after it (in `npm run bench -- backlog` this made the drain cheaper by about a
   * tenth of its CPU; see README). Like Shape.preferShard, the router uses it under best-fit only.
   */
  private preferredShard(shape: Shape, entry: QueuedEntry): number | null {
    return this.options.view.mayFit(entry.shard, entry.request) ? entry.shard : shape.preferShard;
  }

  /** Back into its shape's heap after an attempt that did not place it: the shape now holding it (a new one if its shape was dropped meanwhile), or null if it is gone. */
  private requeue(shape: Shape, entry: QueuedEntry): Shape | null {
    if (entry.gone) return null;
    if (this.shapes.get(shape.key) !== shape) return this.enqueue(entry, false);
    shape.push(entry);
    return shape;
  }

  /** Bring the pump back at `at` (one timer, for the earliest retry asked for). */
  private armRetry(at: number): void {
    if (this.stopped || (this.retryTimer !== null && this.retryTimerAt <= at)) return;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimerAt = at;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.schedulePump();
    }, Math.max(10, at - Date.now() + 1));
    this.retryTimer.unref();
  }

  /**
   * Starvation. A request that does not fit while smaller ones keep taking the room that frees
   * could wait forever. One that has waited longer than `holdAfterMs` (the oldest, best-priority
   * head of a shape that does not fit) gets a worker held for it: its shard's owner places nothing
   * else there, so the worker empties as its containers end, and the request is placed there when
   * it fits (checked at every renewal). At most MAX_HOLDS per replica; a hold lapses HOLD_TTL_MS
   * after its last renewal (the request was placed, cancelled, or this replica went away).
   */
  private renewHolds(): void {
    if (this.stopped) return;
    const now = Date.now();
    const starving: Array<{ shape: Shape; entry: QueuedEntry }> = [];
    for (const shape of this.shapes.values()) {
      const head = shape.head();
      if (head !== null && !head.attempting && now - head.queuedAt >= this.options.holdAfterMs) starving.push({ shape, entry: head });
    }
    starving.sort((a, b) => (before(a.entry, b.entry) ? -1 : 1));
    for (const { shape, entry } of starving.slice(0, MAX_HOLDS)) void this.holdFor(shape, entry, now);
  }

  private async holdFor(shape: Shape, entry: QueuedEntry, now: number): Promise<void> {
    if (entry.holding === true) return;
    entry.holding = true;
    try {
      const candidates = entry.holdShard !== undefined
        ? [entry.holdShard]
        : shuffle(this.options.view.shardsWithWorkersFor(entry.request)).slice(0, HOLD_SHARDS_PER_ROUND);
      for (const shard of candidates) {
        const held = await this.options.hold(entry, shard, now + HOLD_TTL_MS);
        if (held === null) {
          if (entry.holdShard === shard) delete entry.holdShard;
          continue;
        }
        if (entry.holdShard !== shard) this.stats.holds += 1;
        entry.holdShard = shard;
        // Room on the held worker: place it there now (not through the router's choice).
        if (held.fits && !entry.gone && !entry.attempting && shape.head() === entry) {
          shape.pop();
          void this.run(shape, entry, shard);
        }
        return;
      }
    } finally {
      entry.holding = false;
    }
  }

  /**
   * Fail every queued container whose maxWaitMs has passed: not while an attempt of it is in flight,
   * not again while its end is being written, and no more per partition than its write bound and
   * MAX_EXPIRIES_IN_FLIGHT have room for (the rest EXPIRY_CATCH_UP_MS later). So a mass expiry is
   * one end write per entry, however slow Redis answers, in small scripts.
   */
  private expire(): void {
    if (this.stopped) return;
    const now = Date.now();
    let waiting = false;
    for (const partition of this.partitions.values()) {
      let room = Math.min(partition.writeRoom, MAX_EXPIRIES_IN_FLIGHT - partition.endsInFlight);
      for (const entry of partition.entries.values()) {
        if (entry.expiresAt > now || entry.attempting || entry.ending || entry.gone) continue;
        if (room <= 0) {
          waiting = true;
          break;
        }
        room -= 1;
        void partition.end(entry, 'EXPIRED').then((result) => {
          if (result === 'cancelled') this.stats.expired += 1;
          else if (result === 'unavailable') this.stats.expiryUnwritten += 1;
          // A head that was ending held its shape back (see pump).
          this.schedulePump();
        });
      }
    }
    // Expired entries wait for room: look again soon, not in a second (one timer at a time).
    if (waiting) this.stats.expiryCatchUps += 1;
    if (waiting && this.expiryCatchUp === null) {
      this.expiryCatchUp = setTimeout(() => {
        this.expiryCatchUp = null;
        this.expire();
      }, EXPIRY_CATCH_UP_MS);
      this.expiryCatchUp.unref();
    }
  }

  /** The safety net: wake every shape the view says may fit, and drop removed entries. */
  private safetySweep(): void {
    // Compaction is bounded per sweep (entries of closed partitions, cancels and expiries linger
    // in the heaps until then); the shapes are visited in turn across sweeps.
    let compacted = 0;
    for (const [key, shape] of this.shapes) {
      if (compacted < MAX_COMPACTED_PER_SWEEP && shape.heap.length > 0 && shape.heap.some((entry) => entry.gone)) {
        compacted += shape.heap.length;
        shape.compact();
      }
      if (shape.heap.length === 0 && shape.asleep) {
        this.dropShape(key, shape);
        continue;
      }
      // Summaries age and owners stop answering without the view's version moving: look afresh.
      shape.checkedAtVersion = -1;
      this.wakeIfFits(shape);
    }
    this.schedulePump();
  }
}

const NONE: ReadonlySet<number> = new Set();

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}
/** Shapes listed in a backlog report (the deepest first). */
const MAX_REPORTED_SHAPES = 50;
