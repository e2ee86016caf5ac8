/**
 * A shard's owner, held by the replica that holds the shard's lease: admission of the shard's ops
 * (which worker a placement goes to, whether a release, status change or removal may happen) and
 * the owner's life (open from Redis, drain, close, fenced). The pieces it drives each have a file:
 *   shard-workers.ts  the worker actors and their capacity index
 *   group-commit.ts   the queue of writes and the one fenced commit_batch in flight per shard
 *   recovery.ts       resyncing actors from Redis after a refused or unknown write
 *
 * Flow of a placement: pick the best worker from the actors' local state, RESERVE on its actor
 * (the actor's guard decides), queue the write; the group commit writes it and tells the actor
 * how it ended (PLACEMENT_COMMITTED / PLACEMENT_ABORTED). A placement Redis refused because its
 * worker changed is decided here once more (`redecide`), after the worker's actor resynced.
 */
import type { PlacementRequest, PlacementStrategy, WorkerStatus } from '../../actors/capacity.js';
import type { StatusEventType } from '../../actors/worker-machine.js';
import {
  STATUS_ACTION_EVENT,
  STATUS_ACTION_TARGET,
  type CapacityGroup,
  type ShardOp,
  type ShardOpResult,
  type StatusAction,
  type WorkerView,
} from '../protocol/shard-messages.js';
import type { WorkerRegistration } from '../protocol/validate.js';
import type { ContainerEventPublisher } from '../events/container-events.js';
import type { DroverStore } from '../store/store.js';
import type { Incident } from '../util/incident.js';
import type { Logger } from '../util/log.js';
import { GroupCommit, unavailable, type QueuedPlacement } from './group-commit.js';
import { shardOf } from './shard-map.js';
import { ShardWorkers, type WorkerActor } from './shard-workers.js';
import { DEFAULT_MAX_WAIT_MS } from '../protocol/limits.js';
import { AgentKeepalive } from './agent-keepalive.js';
import { RegistrationQueue } from './registrations.js';

export interface ShardOwnerOptions {
  readonly store: DroverStore;
  readonly shard: number;
  /** The cluster's shard count: an op naming a worker of another shard is refused. */
  readonly shards: number;
  /** The epoch this owner's lease acquisition got; every write quotes it. */
  readonly epoch: number;
  readonly strategy: PlacementStrategy;
  readonly log: Logger;
  /**
   * Failed Redis writes are reported here, shared by every owner of the replica: an outage is
   * one log line when it starts and one when it ends, not one per shard per batch.
   */
  readonly redisWrites: Incident;
  /** Ops waiting for a commit beyond which new ones are refused (back-pressure). */
  readonly maxQueuedOps: number;
  /**
   * Whether the lease is still held as far as this process can tell. Checked before each commit:
   * a replica that knows its lease ran out does not even try (Redis would refuse it anyway).
   */
  readonly leaseHeld: () => boolean;
  /** Called once when Redis refuses this owner's epoch: another replica has the shard. */
  readonly onFenced: (shard: number) => void;
  /**
   * Called after committed changes, synchronously before their replies are released. `grew`: a
   * release, registration or status change may have freed room (the caller publishes at once);
   * otherwise it may coalesce.
   */
  readonly onCapacityChange: (shard: number, grew: boolean) => void;
  /**
   * A registration grew the shard: publish its summary, once for every registration of this turn
   * of the event loop on any shard of the replica, and resolve when it is published. The reply
   * waits for it, so a client told "registered" finds every router already knowing the new room
   * (the publish precedes the reply on the same connection).
   */
  readonly announceGrowth: (shard: number) => Promise<void>;
  /** Placed and released containers are announced here, after Redis has them. */
  readonly events: ContainerEventPublisher;
  /**
   * A container went back to the queue (its worker was lost before running it): hand it to its home
   * shard's backlog, then `ackRequeue` it. Also called at open for what the outbox still holds.
   */
  readonly onRequeued: (containerId: string) => void;
  /** An agent's worker silent for this long takes no placements and its containers are `unknown`. */
  readonly workerTtlMs: number;
  /** An agent's worker silent for this long (plus a margin, see agent-keepalive.ts) is lost. */
  readonly workerLostAfterMs: number;
  /** Tell a worker's agent to report now (an assignment or a stop waits for it). */
  readonly pokeAgent: (workerId: string) => void;
  /** A write Redis refused (a newer epoch, or a worker changed under this replica), for the debug page. */
  readonly onRefusal?: (refusal: WriteRefusal) => void;
}

/** A fenced write Redis refused: `fence` (another replica's epoch is newer) or `version` (the worker changed). */
export interface WriteRefusal {
  readonly kind: 'fence' | 'version';
  readonly shard: number;
  readonly workerId: string | null;
  /** The script's code: FENCED, RV_CONFLICT, NO_CAPACITY, NOT_SCHEDULABLE, WORKER_NOT_FOUND, ... */
  readonly code: string;
  readonly at: number;
}

/** The ops a shard owner serves: its workers' (the backlog's go to the shard's backlog partition). */
export type WorkerShardOp = Exclude<ShardOp, { k: 'enqueue' } | { k: 'cancel' } | { k: 'requeue' }>;

/** Workers one shard holds for starving containers at once. */
const MAX_HOLDS = 16;

/** Whether the worker's free capacity (reservations counted) takes the request now. */
function fitsNow(actor: WorkerActor, request: PlacementRequest): boolean {
  const c = actor.getSnapshot().context;
  return c.freeCpu - c.reservedCpu >= request.cpu && c.freeMemory - c.reservedMemory >= request.memory && c.freeGpuCount - c.reservedGpuCount >= request.gpuCount;
}

/** What a placement stores beyond its resources: for the agent (spec) and for a requeue. */
interface KeptWithPlacement {
  readonly spec: string;
  readonly priority: number;
  readonly maxWaitMs: number;
}

/** Status changes the owner makes itself (never asked for by a client): an agent reports or goes silent. */
const AGENT_ACTIONS = {
  activate: { event: 'ACTIVATE', target: 'available' },
  lose: { event: 'MARK_LOST', target: 'lost' },
  unreachable: { event: 'MARK_UNREACHABLE', target: 'unreachable' },
} as const satisfies Record<string, { event: StatusEventType; target: WorkerStatus }>;

export type ShardOwnerState = 'serving' | 'draining' | 'closed';

export class ShardOwner {
  readonly shard: number;
  readonly epoch: number;
  private readonly workers = new ShardWorkers();
  private readonly commits: GroupCommit;
  private readonly agents: AgentKeepalive;
  private readonly registrations: RegistrationQueue;
  /** Workers held for starving containers (see hold). */
  private readonly holds = new Map<string, { readonly actor: WorkerActor; until: number }>();
  private ownerState: ShardOwnerState = 'serving';
  /** The capacity summary at close, for the "unowned" notice routers may still reason from. */
  private finalCapacity: CapacityGroup[] = [];
  /** Counters for metrics and the benchmark. */
  readonly stats = { batches: 0, committedOps: 0, fenceRefusals: 0, versionConflicts: 0, resyncs: 0 };

  private constructor(private readonly options: ShardOwnerOptions) {
    this.shard = options.shard;
    this.epoch = options.epoch;
    this.commits = new GroupCommit(
      {
        options,
        stats: this.stats,
        closed: () => this.ownerState === 'closed',
        fence: (currentEpoch) => this.fence(currentEpoch),
        redecide: (queued) => this.redecide(queued),
        versionConflict: (workerId, code) => {
          this.stats.versionConflicts += 1;
          options.onRefusal?.({ kind: 'version', shard: this.shard, workerId, code, at: Date.now() });
        },
      },
      this.workers,
    );
    this.registrations = new RegistrationQueue({ store: options.store, shard: this.shard, epoch: this.epoch, maxPending: options.maxQueuedOps });
    this.agents = new AgentKeepalive({
      options,
      workers: this.workers,
      commits: this.commits,
      serving: () => this.ownerState === 'serving',
      setStatus: (workerId, action) => this.setStatus(workerId, AGENT_ACTIONS[action].event, AGENT_ACTIONS[action].target),
    });
  }

  /** Build the shard's actors from Redis. Call only after the epoch bump, so no earlier write is missed. */
  static async open(options: ShardOwnerOptions): Promise<ShardOwner> {
    const owner = new ShardOwner(options);
    for (const record of await options.store.loadShard(options.shard)) owner.workers.add(record);
    // Requeued containers whose home shard may not hold them yet (a previous owner stopped first).
    const outbox = await options.store.requeueOutbox(options.shard);
    owner.agents.start();
    for (const id of outbox) options.onRequeued(id);
    return owner;
  }

  /** The container's home shard holds it again: it leaves this shard's requeue outbox (fenced). */
  ackRequeue(containerId: string): Promise<ShardOpResult> | ShardOpResult {
    if (this.ownerState !== 'serving') return unavailable(`shard ${this.shard} is ${this.ownerState} on this replica`);
    return this.commits.enqueue((resolve) => ({ kind: 'outbox-ack', actor: null, containerId, resolve }));
  }

  get agentStats(): AgentKeepalive['stats'] {
    return this.agents.stats;
  }

  get state(): ShardOwnerState {
    return this.ownerState;
  }

  get workerCount(): number {
    return this.workers.size;
  }

  /** Each worker's spec, status and committed free capacity (read-only; for metrics and the debug page). */
  forEachWorker(visit: (worker: WorkerView) => void): void {
    for (const [, actor] of this.workers.entries()) visit(this.workers.view(actor));
  }

  /** Workers by state, read from the actors' snapshots (no view objects: the debug page asks every 250 ms). */
  countByStatus(): Partial<Record<WorkerStatus, number>> {
    const counts: Partial<Record<WorkerStatus, number>> = {};
    for (const [, actor] of this.workers.entries()) {
      const status = actor.getSnapshot().value as WorkerStatus;
      counts[status] = (counts[status] ?? 0) + 1;
    }
    return counts;
  }

  /** The worker's actor, for the debug page's inspection of one worker (never sent events from there). */
  actorOf(workerId: string): WorkerActor | undefined {
    return this.workers.get(workerId);
  }

  /** Run one op for this shard. Never rejects: every failure is a result the router can act on. */
  execute(op: WorkerShardOp): Promise<ShardOpResult> | ShardOpResult {
    if (this.ownerState !== 'serving') return unavailable(`shard ${this.shard} is ${this.ownerState} on this replica`);
    // Anyone on the bus can publish on a shard subject: an op naming a worker of another shard
    // would otherwise create or change a second record of that machine here.
    const workerId = op.k === 'place' || op.k === 'hold' ? null : op.k === 'register' ? op.worker.id : op.k === 'report' ? op.report.workerId : op.workerId;
    if (workerId !== null) {
      const home = shardOf(workerId, this.options.shards);
      if (home !== this.shard) {
        return { ok: false, code: 'INVALID_REQUEST', message: `worker ${workerId} belongs to shard ${home}, not shard ${this.shard}` };
      }
    }
    // Back-pressure: every kind of write waits in the same queue, so every kind is bounded by it.
    if (op.k !== 'register' && this.commits.size >= this.options.maxQueuedOps) {
      return unavailable(`shard ${this.shard} has ${this.commits.size} writes queued; retry`);
    }
    switch (op.k) {
      case 'place':
        return this.place(op.id, op.request, op.requestKey, op.deadline, { spec: op.spec, priority: op.priority ?? 0, maxWaitMs: op.maxWaitMs ?? DEFAULT_MAX_WAIT_MS });
      case 'release':
        return this.release(op.id, op.workerId);
      case 'status':
        return this.changeStatus(op.workerId, op.action);
      case 'remove':
        return this.remove(op.workerId);
      case 'register':
        return this.register(op.worker);
      case 'report':
        return this.agents.report(op.report, op.deadline);
      case 'hold':
        return this.hold(op.id, op.request, op.until);
    }
  }

  /**
   * Hold a worker for a container that has waited too long in a backlog (starving behind smaller
   * ones that keep taking the room that frees): among available workers whose whole capacity can
   * take it, the one with the most free now. Until `until` (renewed while it waits), nothing but
   * that container is placed there, so the worker empties as its containers end. One worker per
   * container, at most MAX_HOLDS per shard.
   */
  private hold(containerId: string, request: PlacementRequest, until: number): ShardOpResult {
    const now = Date.now();
    this.pruneHolds(now);
    const existing = this.holds.get(containerId);
    if (existing !== undefined && this.workers.get(existing.actor.getSnapshot().context.spec.id) === existing.actor) {
      existing.until = until;
      return { ok: true, held: existing.actor.getSnapshot().context.spec.id, fits: fitsNow(existing.actor, request) };
    }
    if (this.holds.size >= MAX_HOLDS) return { ok: false, code: 'NO_FIT', message: `shard ${this.shard} holds ${this.holds.size} workers already` };
    let best: WorkerActor | null = null;
    let bestFree = -1;
    for (const [, actor] of this.workers.entries()) {
      const { context, value } = actor.getSnapshot();
      const spec = context.spec;
      if (value !== 'available' || this.workers.holderOf(actor) !== undefined) continue;
      if (request.pool !== null && spec.pool !== request.pool) continue;
      if (request.gpuCount > 0 && (spec.gpu === null || (request.gpu !== null && spec.gpu !== request.gpu) || spec.gpuCount < request.gpuCount)) continue;
      if (spec.cpu < request.cpu || spec.memory < request.memory) continue;
      const free = Math.min(context.freeCpu / spec.cpu, context.freeMemory / spec.memory);
      if (free > bestFree) {
        best = actor;
        bestFree = free;
      }
    }
    if (best === null) return { ok: false, code: 'NO_FIT', message: `no worker in shard ${this.shard} can ever take ${containerId}` };
    this.workers.hold(best, containerId);
    this.holds.set(containerId, { actor: best, until });
    return { ok: true, held: best.getSnapshot().context.spec.id, fits: fitsNow(best, request) };
  }

  private pruneHolds(now: number): void {
    for (const [containerId, hold] of this.holds) {
      if (hold.until > now) continue;
      this.holds.delete(containerId);
      if (this.workers.holderOf(hold.actor) === containerId) this.workers.hold(hold.actor, null);
    }
  }

  capacity(): CapacityGroup[] {
    if (this.ownerState === 'closed') return this.finalCapacity;
    return this.workers.summary();
  }

  /** Stop taking ops, let queued and in-flight writes finish, stop the actors. */
  async drain(): Promise<void> {
    if (this.ownerState === 'serving') this.ownerState = 'draining';
    await Promise.all([this.commits.idle(), this.registrations.idle()]);
    this.close();
  }

  /** Stop at once: queued ops are answered UNAVAILABLE; a write already sent is answered by Redis. */
  close(): void {
    if (this.ownerState === 'closed' && this.workers.size === 0) return;
    this.finalCapacity = this.capacity();
    this.ownerState = 'closed';
    this.agents.stop();
    this.registrations.close();
    this.commits.failQueue('shard closed on this replica');
    this.workers.clear();
  }

  private place(containerId: string, request: PlacementRequest, requestKey: string, deadline: number, kept: KeptWithPlacement, redecided = false): ShardOpResult | Promise<ShardOpResult> {
    if (this.holds.size > 0) this.pruneHolds(Date.now());
    const actor = this.workers.choose(request, this.options.strategy, containerId);
    // A held container being placed gives its hold up (if the write fails, its backlog asks again).
    const held = this.holds.get(containerId);
    if (held !== undefined && actor !== null) {
      this.holds.delete(containerId);
      if (this.workers.holderOf(held.actor) === containerId) this.workers.hold(held.actor, null);
    }
    if (actor === null) return { ok: false, code: 'NO_FIT', message: `no worker in shard ${this.shard} fits` };
    const before = actor.getSnapshot().context.reservations;
    this.workers.tell(actor, { type: 'RESERVE', containerId, request });
    // The actor's guard re-checks what chooseWorker checked; disagreement is a bug, not an input error.
    if (actor.getSnapshot().context.reservations !== before + 1) {
      throw new Error(`worker ${actor.getSnapshot().context.spec.id} refused a reservation it was chosen for`);
    }
    return this.commits.enqueue((resolve) => ({ kind: 'place', actor, containerId, request, deadline, requestKey, spec: kept.spec, priority: kept.priority, maxWaitMs: kept.maxWaitMs, redecided, resolve }));
  }

  private release(containerId: string, workerId: string): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.workers.get(workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not in shard ${this.shard}` };
    if (actor.getSnapshot().context.spec.agent === true) return this.stopOnAgent(actor, containerId, workerId);
    return this.commits.enqueue((resolve) => ({ kind: 'release', actor, containerId, resolve }));
  }

  /**
   * A release of a container an agent runs (or is about to): it becomes `stopping` and its agent is
   * told to stop it; its capacity is freed when the agent reports it stopped (or the worker is lost).
   */
  private async stopOnAgent(actor: WorkerActor, containerId: string, workerId: string): Promise<ShardOpResult> {
    const result = await this.commits.enqueue((resolve) => ({ kind: 'transition', actor, containerId, from: ['placed', 'running', 'unknown'], to: 'stopping', resolve }));
    if (result.ok || (result.code === 'CONFLICT' && result.message.includes(' is stopping'))) {
      this.options.pokeAgent(workerId);
      return { ok: true, stopping: true, workerId };
    }
    // Not placed or running on this worker: released already, or elsewhere (the router read it).
    if (result.code === 'CONFLICT') return { ok: false, code: 'NOT_FOUND', message: `container ${containerId} is not running on ${workerId} (${result.message})` };
    return result;
  }

  /**
   * Remove a worker from the shard: only one that takes no placements (drain or disable it first)
   * and holds no container. The actor's view is checked here; commit_batch.lua checks Redis's.
   */
  private remove(workerId: string): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.workers.get(workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not registered` };
    const { context, value } = actor.getSnapshot();
    if (value === 'available') {
      return { ok: false, code: 'CONFLICT', message: `worker ${workerId} is available; drain or disable it before removing it` };
    }
    const spec = context.spec;
    if (context.reservations > 0 || context.freeCpu !== spec.cpu || context.freeMemory !== spec.memory || context.freeGpuCount !== spec.gpuCount) {
      return { ok: false, code: 'CONFLICT', message: `worker ${workerId} still holds containers; release them before removing it` };
    }
    return this.commits.enqueue((resolve) => ({ kind: 'remove', actor, resolve }));
  }

  private changeStatus(workerId: string, action: StatusAction): ShardOpResult | Promise<ShardOpResult> {
    return this.setStatus(workerId, STATUS_ACTION_EVENT[action], STATUS_ACTION_TARGET[action], action);
  }

  /** Move a worker's actor with `eventType` and write the status it leads to (fenced, like every write). */
  private setStatus(workerId: string, eventType: StatusEventType, target: WorkerStatus, verb: string = eventType.toLowerCase()): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.workers.get(workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not registered` };
    const snapshot = actor.getSnapshot();
    if (snapshot.value === target) return { ok: true, worker: this.workers.view(actor) };
    const event = { type: eventType };
    if (!snapshot.can(event)) {
      return { ok: false, code: 'CONFLICT', message: `worker ${workerId} is ${String(snapshot.value)}; it cannot ${verb} from there` };
    }
    this.workers.tell(actor, event);
    return this.commits.enqueue((resolve) => ({ kind: 'status', actor, status: target, resolve }));
  }

  private async register(worker: WorkerRegistration): Promise<ShardOpResult> {
    const spec = { ...worker, shard: this.shard };
    // An agent's worker takes placements once its agent reports (pending until then).
    const outcome = await this.registrations.register(spec, worker.agent ? 'pending' : 'available');
    if (outcome.outcome === 'failed') {
      this.options.redisWrites.fail(outcome.error, { shard: this.shard, worker: worker.id, op: 'register' });
      return unavailable(`registration of ${worker.id} failed in Redis; retry`);
    }
    if (outcome.outcome === 'closed') return unavailable(`shard ${this.shard} closed on this replica`);
    if (outcome.outcome === 'busy') return unavailable(`shard ${this.shard} has too many registrations queued; retry`);
    this.options.redisWrites.ok();
    if (outcome.outcome === 'fenced') {
      this.fence(outcome.currentEpoch);
      return unavailable(`shard ${this.shard} moved to another replica; retry`);
    }
    if (outcome.outcome === 'wrong-shard') {
      // execute() refused this already; reaching here means the two hash functions disagree.
      this.options.log.error({ shard: this.shard, worker: worker.id, home: outcome.shard }, 'register_workers.lua refused the shard');
      return { ok: false, code: 'INVALID_REQUEST', message: `worker ${worker.id} belongs to shard ${outcome.shard}, not shard ${this.shard}` };
    }
    if (outcome.outcome === 'spec-mismatch') {
      const existing = outcome.worker;
      return {
        ok: false,
        code: 'CONFLICT',
        message:
          `worker ${worker.id} is already registered with cpu ${existing.cpu}, memory ${existing.memory}, ` +
          `gpu ${existing.gpu ?? 'none'} x${existing.gpuCount}, pool ${existing.pool ?? 'none'}; a worker's spec cannot change`,
      };
    }
    if (this.ownerState === 'closed') return unavailable(`shard ${this.shard} closed on this replica`);
    const actor = this.workers.get(worker.id) ?? this.workers.add(outcome.worker);
    if (outcome.outcome === 'created') await this.options.announceGrowth(this.shard);
    return { ok: true, worker: this.workers.view(actor) };
  }


  /**
   * A placement Redis refused because the worker had changed under this replica (its version,
   * capacity or status was not what the actor held) is decided once more, now that the actor has
   * resynced from Redis: it goes through the actors' guards and the fenced script again, so this
   * is not a blind retry. Answering the router "try elsewhere" instead would make it skip this
   * shard and could answer NO_CAPACITY while this very shard has room. A second refusal is
   * answered RETRY.
   */
  private redecide(queued: QueuedPlacement): void {
    if (this.ownerState === 'closed') {
      queued.resolve(unavailable(`shard ${this.shard} closed on this replica; retry`));
      return;
    }
    let result: ShardOpResult | Promise<ShardOpResult>;
    try {
      result = this.place(queued.containerId, queued.request, queued.requestKey, queued.deadline, queued, true);
    } catch (error) {
      this.options.log.error({ err: error, shard: this.shard, container: queued.containerId }, 'placement could not be decided again');
      result = { ok: false, code: 'RETRY', message: `shard ${this.shard} could not decide the placement again` };
    }
    void Promise.resolve(result).then(queued.resolve);
  }

  private fence(currentEpoch: number): void {
    if (this.ownerState === 'closed') return;
    this.options.log.warn({ shard: this.shard, epoch: this.epoch, currentEpoch }, 'fenced: another replica owns this shard now');
    this.close();
    this.options.onFenced(this.shard);
  }

}
