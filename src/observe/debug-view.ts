/**
 * What a replica's debug page shows, kept cheap enough to leave on at 10,000 workers:
 *
 * - A snapshot of counts (shards, workers by state, backlog depth, rates, recent refusals and
 *   hand-overs), built only when someone asks or a page is open, and pushed to open pages at
 *   most every PUSH_INTERVAL_MS (coalesced: one push however many changes happened).
 * - One watched worker or container per page. Inspection is attached only to what is watched:
 *   a worker actor gets an XState inspection observer while at least one page watches it and
 *   loses it when the last one leaves; a container's events are subscribed on NATS the same way.
 *   Each watch keeps its last MAX_WATCH_EVENTS events.
 */
import type { Actor, AnyStateMachine, Subscription } from 'xstate';
import { WORKER_STATUSES, type WorkerStatus } from '../../actors/capacity.js';
import type { ContainerStatus } from '../../actors/container-machine.js';
import type { WorkerContext } from '../../actors/worker-machine.js';
import type { ContainerView } from '../protocol/container-view.js';
import type { WriteRefusal } from '../shard/shard-owner.js';

export const PUSH_INTERVAL_MS = 250;
export const MAX_WATCH_EVENTS = 50;
const MAX_REFUSALS = 50;
const MAX_HAND_OVERS = 50;
/** Watches one replica keeps at once (each page watches at most one thing). */
export const MAX_WATCHES = 64;
/** How often the page's backlog depth by queue is recounted (it walks every queued entry). */
const DEPTH_EVERY_MS = 1_000;
/** Placement rate: the placed counter sampled every second over this many seconds. */
const RATE_WINDOW_S = 5;

/** More watches than MAX_WATCHES at once (answered 503). */
export class WatchLimitError extends Error {}

export interface ShardFacts {
  readonly shard: number;
  readonly epoch: number;
  readonly leaseExpiresAt: number | null;
  readonly workers: Partial<Record<WorkerStatus, number>>;
  readonly queued: number;
}

export interface HandOver {
  readonly shard: number;
  /** acquired: this replica took the shard; handed-over: gave it up gracefully; dropped: lost it (lease, fence, link). */
  readonly kind: 'acquired' | 'handed-over' | 'dropped';
  readonly at: number;
  readonly epoch: number;
  readonly durationMs?: number;
  readonly reason?: string;
}

/** What the debug view reads from its replica. */
export interface DebugSource {
  readonly replicaId: string;
  readonly prefix: string;
  readonly shardCount: number;
  /** The same report `drover status` prints, so the two always agree. */
  status(): Record<string, unknown> & { readonly router: { placed: number }; readonly workers: number; readonly shards: readonly number[] };
  /** Containers placed through this replica's router so far (sampled every second for the rate). */
  placed(): number;
  shards(): ShardFacts[];
  backlogDepth(): { active: number; backoff: number; unschedulable: number; inFlight: number };
  containerEventsByStatus(): Partial<Record<ContainerStatus, number>>;
  /** The worker's actor when this replica owns its shard; otherwise which replica does. */
  findWorker(id: string): { readonly shard: number; readonly actor: Actor<AnyStateMachine> | null; readonly ownerReplica: string | null };
  readContainer(id: string): Promise<ContainerView | null>;
  /** Deliver the container's published events until the returned function is called. */
  subscribeContainer(id: string, onEvent: (event: Record<string, unknown>) => void): () => void;
}

export interface WatchedEvent {
  readonly at: number;
  readonly type: string;
  readonly detail: Record<string, unknown>;
  /** The state after it (worker: the actor's state; container: the status it announced). */
  readonly state: string | null;
}

export interface WatchView {
  readonly kind: 'worker' | 'container';
  readonly id: string;
  readonly found: boolean;
  /** Where it lives when this replica does not own it, so the page can link there. */
  readonly shard: number | null;
  readonly ownerReplica: string | null;
  readonly state: string | null;
  readonly context: Record<string, unknown> | null;
  readonly events: readonly WatchedEvent[];
  readonly message?: string;
}

interface Watch {
  readonly kind: 'worker' | 'container';
  readonly id: string;
  watchers: number;
  view: WatchView;
  events: WatchedEvent[];
  /** Counts changes; each page's stream remembers the last version it sent (pages share a watch). */
  version: number;
  /** The actor inspected now (a worker watch follows its worker to a new actor after a reload or re-registration). */
  actor: Actor<AnyStateMachine> | null;
  stop: () => void;
}

export class DebugView {
  private readonly refusals: WriteRefusal[] = [];
  private readonly handOvers: HandOver[] = [];
  private readonly lastHandOver = new Map<number, HandOver>();
  private readonly placedSamples: Array<{ at: number; placed: number }> = [];
  private readonly watches = new Map<string, Watch>();
  private sampler: NodeJS.Timeout | null = null;
  private cached: { at: number; snapshot: Record<string, unknown>; json: string } | null = null;
  private depth: { at: number; value: ReturnType<DebugSource['backlogDepth']> } | null = null;

  constructor(private readonly source: DebugSource) {}

  start(): void {
    this.sampler ??= setInterval(() => this.samplePlaced(), 1_000);
    this.sampler.unref();
    this.samplePlaced();
  }

  stop(): void {
    if (this.sampler !== null) clearInterval(this.sampler);
    this.sampler = null;
    for (const watch of this.watches.values()) watch.stop();
    this.watches.clear();
  }

  recordRefusal(refusal: WriteRefusal): void {
    this.refusals.push(refusal);
    if (this.refusals.length > MAX_REFUSALS) this.refusals.shift();
  }

  recordHandOver(handOver: HandOver): void {
    this.handOvers.push(handOver);
    if (this.handOvers.length > MAX_HAND_OVERS) this.handOvers.shift();
    this.lastHandOver.set(handOver.shard, handOver);
  }

  private samplePlaced(): void {
    this.placedSamples.push({ at: Date.now(), placed: this.source.placed() });
    if (this.placedSamples.length > RATE_WINDOW_S + 1) this.placedSamples.shift();
  }

  private placementRate(): number {
    const first = this.placedSamples[0];
    const last = this.placedSamples[this.placedSamples.length - 1];
    if (first === undefined || last === undefined || last.at <= first.at) return 0;
    return Math.round(((last.placed - first.placed) * 1_000) / (last.at - first.at));
  }

  /**
   * The snapshot, made at most once per PUSH_INTERVAL_MS however many pages are open (each page's
   * stream asks every PUSH_INTERVAL_MS; they share one).
   */
  snapshot(now = Date.now()): Record<string, unknown> {
    return this.cachedSnapshot(now).snapshot;
  }

  /** The same snapshot as JSON, serialized once for every page that is sent it. */
  snapshotJson(now = Date.now()): string {
    return this.cachedSnapshot(now).json;
  }

  private cachedSnapshot(now: number): { snapshot: Record<string, unknown>; json: string } {
    if (this.cached === null || now - this.cached.at >= PUSH_INTERVAL_MS) {
      const snapshot = this.makeSnapshot(now);
      this.cached = { at: now, snapshot, json: JSON.stringify(snapshot) };
    }
    return this.cached;
  }

  /** The backlog's depth by queue walks every queued entry: at most once a second for the page. */
  private backlogDepth(now: number): ReturnType<DebugSource['backlogDepth']> {
    if (this.depth === null || now - this.depth.at >= DEPTH_EVERY_MS) this.depth = { at: now, value: this.source.backlogDepth() };
    return this.depth.value;
  }

  private makeSnapshot(now: number): Record<string, unknown> {
    const status = this.source.status();
    const shards = this.source.shards().map((facts) => ({
      ...facts,
      leaseExpiresInMs: facts.leaseExpiresAt === null ? null : Math.max(0, facts.leaseExpiresAt - now),
      lastHandOver: this.lastHandOver.get(facts.shard) ?? null,
    }));
    const workerStates: Record<string, number> = Object.fromEntries(WORKER_STATUSES.map((s) => [s, 0]));
    for (const shard of shards) for (const [state, count] of Object.entries(shard.workers)) workerStates[state] = (workerStates[state] ?? 0) + (count ?? 0);
    const depth = this.backlogDepth(now);
    return {
      source: `replica ${this.source.replicaId}`,
      replicaId: this.source.replicaId,
      prefix: this.source.prefix,
      shardCount: this.source.shardCount,
      at: now,
      status,
      shards,
      workerStates,
      containerStates: {
        queued: depth.active + depth.backoff + depth.unschedulable + depth.inFlight,
        published: this.source.containerEventsByStatus(),
      },
      backlog: depth,
      placementsPerSecond: this.placementRate(),
      refusals: [...this.refusals].reverse(),
      handOvers: [...this.handOvers].reverse().slice(0, 20),
      watches: this.watches.size,
    };
  }

  /** Start (or join) watching one worker or container; returns the watch key, or an error message. */
  async watch(kind: 'worker' | 'container', id: string): Promise<string> {
    const key = `${kind}:${id}`;
    const existing = this.watches.get(key);
    if (existing !== undefined) {
      existing.watchers += 1;
      return key;
    }
    if (this.watches.size >= MAX_WATCHES) throw new WatchLimitError(`this replica already serves ${MAX_WATCHES} watches; close a page`);
    const watch: Watch = { kind, id, watchers: 1, view: emptyView(kind, id), events: [], version: 1, actor: null, stop: () => undefined };
    this.watches.set(key, watch);
    if (kind === 'worker') this.watchWorker(watch);
    else await this.watchContainer(watch);
    return key;
  }

  unwatch(key: string): void {
    const watch = this.watches.get(key);
    if (watch === undefined) return;
    watch.watchers -= 1;
    if (watch.watchers > 0) return;
    watch.stop();
    this.watches.delete(key);
  }

  /**
   * The watch's view and version if it changed after `sinceVersion` (each page's stream keeps its
   * own), or null. A worker watch first checks its worker still has the same actor here.
   */
  changedSince(key: string, sinceVersion: number): { view: WatchView; version: number } | null {
    const watch = this.watches.get(key);
    if (watch === undefined) return null;
    if (watch.kind === 'worker') this.followWorker(watch);
    if (watch.version <= sinceVersion) return null;
    return { view: this.viewOf(watch), version: watch.version };
  }

  viewOf(watch: Watch): WatchView {
    return { ...watch.view, events: [...watch.events].reverse() };
  }

  current(key: string): WatchView | null {
    const watch = this.watches.get(key);
    if (watch === undefined) return null;
    if (watch.kind === 'worker') this.followWorker(watch);
    return this.viewOf(watch);
  }

  private remember(watch: Watch, event: WatchedEvent): void {
    watch.events.push(event);
    if (watch.events.length > MAX_WATCH_EVENTS) watch.events.shift();
    watch.version += 1;
  }

  /** Attach to the worker's current actor, if it changed (shard reloaded, handed over, worker re-registered). */
  private followWorker(watch: Watch): void {
    const found = this.source.findWorker(watch.id);
    if (found.actor === watch.actor && (found.actor !== null || watch.view.ownerReplica === found.ownerReplica)) return;
    watch.stop();
    watch.stop = () => undefined;
    watch.actor = null;
    this.watchWorker(watch);
  }

  private watchWorker(watch: Watch): void {
    const found = this.source.findWorker(watch.id);
    watch.actor = found.actor;
    if (found.actor === null) {
      watch.version += 1;
      watch.view = {
        ...emptyView('worker', watch.id),
        shard: found.shard,
        ownerReplica: found.ownerReplica,
        message: found.ownerReplica === null
          ? `worker ${watch.id} would be in shard ${found.shard}, which no replica announces right now`
          : found.ownerReplica === this.source.replicaId
            ? `worker ${watch.id} is not registered (its shard ${found.shard} is owned here)`
            : `worker ${watch.id} is in shard ${found.shard}, owned by replica ${found.ownerReplica}: watch it on that replica's page`,
      };
      return;
    }
    const actor = found.actor;
    const show = () => {
      const snapshot = actor.getSnapshot() as { value: unknown; context: WorkerContext };
      watch.view = {
        kind: 'worker',
        id: watch.id,
        found: true,
        shard: found.shard,
        ownerReplica: this.source.replicaId,
        state: String(snapshot.value),
        context: contextView(snapshot.context),
        events: [],
      };
      watch.version += 1;
    };
    show();
    // Inspection is attached to this one actor's system while it is watched, and only then.
    const subscription: Subscription = actor.system.inspect((inspection) => {
      if (inspection.type !== '@xstate.snapshot' || inspection.actorRef !== actor) return;
      const event = inspection.event;
      if (event.type.startsWith('xstate.')) return;
      show();
      const { type, ...detail } = event;
      this.remember(watch, { at: Date.now(), type, detail: eventDetail(detail), state: watch.view.state });
    });
    watch.stop = () => subscription.unsubscribe();
  }

  private async watchContainer(watch: Watch): Promise<void> {
    const refresh = async () => {
      const view = await this.source.readContainer(watch.id).catch(() => null);
      watch.view = view === null
        ? { ...emptyView('container', watch.id), message: `container ${watch.id} is not known (or Redis did not answer)` }
        : { kind: 'container', id: watch.id, found: true, shard: null, ownerReplica: null, state: view.status, context: view as unknown as Record<string, unknown>, events: [] };
      watch.version += 1;
    };
    // Subscribe first, then read the record: an event between the two is not missed.
    const unsubscribe = this.source.subscribeContainer(watch.id, (event) => {
      const { id: _id, status, ...detail } = event;
      this.remember(watch, { at: typeof event.at === 'number' ? event.at : Date.now(), type: String(status), detail, state: String(status) });
      void refresh();
    });
    watch.stop = unsubscribe;
    await refresh();
  }
}

function emptyView(kind: 'worker' | 'container', id: string): WatchView {
  return { kind, id, found: false, shard: null, ownerReplica: null, state: null, context: null, events: [] };
}

function contextView(context: WorkerContext): Record<string, unknown> {
  const { restoredStatus: _restored, ...rest } = context;
  return rest as unknown as Record<string, unknown>;
}

/** An event's payload as shown: nested objects kept, but bounded (a SYNCED record is small). */
function eventDetail(detail: Record<string, unknown>): Record<string, unknown> {
  const text = JSON.stringify(detail);
  return text.length <= 2_000 ? detail : { truncated: `${text.slice(0, 2_000)}…` };
}
