/**
 * A shard's owner: the worker actors of one shard, held by the replica that holds the shard's
 * lease, and the group commit that writes their changes to Redis.
 *
 * Flow of a placement: pick the best worker from the actors' local state, RESERVE on its actor
 * (the actor's guard decides), queue the write; one fenced `commit_batch` per shard is in flight at
 * a time, carrying every op queued meanwhile; its per-op outcome is told back to the actors
 * (PLACEMENT_COMMITTED / PLACEMENT_ABORTED). With one batch in flight, each op can quote its
 * worker's exact ResourceVersion, so a conflict only ever means someone else wrote the worker.
 *
 * A refused write is never retried blindly: an epoch refusal means another replica owns the shard
 * (this owner closes at once); a version or capacity refusal means the actor's view was wrong (the
 * actor is resynced from Redis and the placement decided once more from that; a second refusal
 * tells the router to try elsewhere).
 */
import { createActor, type Actor } from 'xstate';
import type { PlacementRequest, PlacementStrategy, WorkerRecord, WorkerStatus } from '../../actors/capacity.js';
import { workerMachine, type StatusEventType, type WorkerEvent } from '../../actors/worker-machine.js';
import {
  STATUS_ACTION_EVENT,
  STATUS_ACTION_TARGET,
  workerView,
  type CapacityGroup,
  type ShardOp,
  type ShardOpResult,
  type StatusAction,
  type WorkerView,
} from '../protocol/shard-messages.js';
import type { WorkerRegistration } from '../protocol/validate.js';
import type { ContainerEventPublisher } from '../events/container-events.js';
import { MAX_BATCH_OPS, type BatchOp, type DroverStore, type OpOutcome } from '../store/store.js';
import type { Incident } from '../util/incident.js';
import type { Logger } from '../util/log.js';
import { summarizeCapacity } from './capacity-summary.js';
import { shardOf } from './shard-map.js';
import { WorkerIndex } from './worker-index.js';

type WorkerActor = Actor<typeof workerMachine>;

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
  /** Placed and released containers are announced here, after Redis has them. */
  readonly events: ContainerEventPublisher;
}

/** The ops a shard owner serves: its workers' (the backlog's go to the shard's backlog partition). */
export type WorkerShardOp = Exclude<ShardOp, { k: 'enqueue' } | { k: 'cancel' }>;

interface QueuedPlacement {
  readonly kind: 'place';
  readonly actor: WorkerActor;
  readonly containerId: string;
  /** What it asks for; its cpu, memory and gpuCount are the resources reserved on `actor`. */
  readonly request: PlacementRequest;
  readonly deadline: number;
  readonly requestKey: string;
  /** Command and environment JSON for the worker's agent, or ''. */
  readonly spec: string;
  /** Already decided once more after Redis refused its first worker (at most one such retry). */
  readonly redecided: boolean;
  readonly resolve: (result: ShardOpResult) => void;
}

type QueuedOp =
  | QueuedPlacement
  | { readonly kind: 'release'; readonly actor: WorkerActor; readonly containerId: string; readonly resolve: (result: ShardOpResult) => void }
  | { readonly kind: 'status'; readonly actor: WorkerActor; readonly status: WorkerStatus; readonly resolve: (result: ShardOpResult) => void }
  | { readonly kind: 'remove'; readonly actor: WorkerActor; readonly resolve: (result: ShardOpResult) => void };

export type ShardOwnerState = 'serving' | 'draining' | 'closed';

interface Sum {
  cpu: number;
  memory: number;
  gpuCount: number;
  count: number;
}

/** One worker's share of a commit batch's outcome. */
interface Tally {
  readonly placed: Sum;
  readonly aborted: Sum;
  readonly released: Sum;
  /** The status Redis now holds, when the batch changed it (the last change wins, as in Redis). */
  status: WorkerStatus | null;
  /** The worker's highest ResourceVersion this batch reported. */
  version: number;
  /** Replies that must show the actor's state after the batch (status changes). */
  readonly afterSettle: Array<() => void>;
  /** Redis removed the worker in this batch: the actor goes too. */
  removed: boolean;
}

const newTally = (): Tally => ({
  placed: { cpu: 0, memory: 0, gpuCount: 0, count: 0 },
  aborted: { cpu: 0, memory: 0, gpuCount: 0, count: 0 },
  released: { cpu: 0, memory: 0, gpuCount: 0, count: 0 },
  status: null,
  version: 0,
  afterSettle: [],
  removed: false,
});

function add(sum: Sum, cpu: number, memory: number, gpuCount: number): void {
  sum.cpu += cpu;
  sum.memory += memory;
  sum.gpuCount += gpuCount;
  sum.count += 1;
}

const unavailable = (message: string, unknown = false): ShardOpResult => ({ ok: false, code: 'UNAVAILABLE', message, unknown });

export class ShardOwner {
  readonly shard: number;
  readonly epoch: number;
  private readonly actors = new Map<string, WorkerActor>();
  /** Capacity columns mirrored from the actors, refreshed after every event sent to one. */
  private readonly index = new WorkerIndex();
  /** Counts actor creations; a reload leaves alone actors created after it began reading. */
  private generation = 0;
  private readonly createdAt = new Map<WorkerActor, number>();
  private queue: QueuedOp[] = [];
  private committing = false;
  private flushScheduled = false;
  private reloadNeeded = false;
  private ownerState: ShardOwnerState = 'serving';
  /** The capacity summary at close, for the "unowned" notice routers may still reason from. */
  private finalCapacity: CapacityGroup[] = [];
  private idleWaiters: Array<() => void> = [];
  /** Counters for metrics and the benchmark. */
  readonly stats = { batches: 0, committedOps: 0, fenceRefusals: 0, versionConflicts: 0, resyncs: 0 };

  private constructor(private readonly options: ShardOwnerOptions) {
    this.shard = options.shard;
    this.epoch = options.epoch;
  }

  /** Build the shard's actors from Redis. Call only after the epoch bump, so no earlier write is missed. */
  static async open(options: ShardOwnerOptions): Promise<ShardOwner> {
    const owner = new ShardOwner(options);
    for (const record of await options.store.loadShard(options.shard)) owner.addActor(record);
    return owner;
  }

  get state(): ShardOwnerState {
    return this.ownerState;
  }

  get workerCount(): number {
    return this.actors.size;
  }

  /** Run one op for this shard. Never rejects: every failure is a result the router can act on. */
  execute(op: WorkerShardOp): Promise<ShardOpResult> | ShardOpResult {
    if (this.ownerState !== 'serving') return unavailable(`shard ${this.shard} is ${this.ownerState} on this replica`);
    // Anyone on the bus can publish on a shard subject: an op naming a worker of another shard
    // would otherwise create or change a second record of that machine here.
    const workerId = op.k === 'place' ? null : op.k === 'register' ? op.worker.id : op.workerId;
    if (workerId !== null) {
      const home = shardOf(workerId, this.options.shards);
      if (home !== this.shard) {
        return { ok: false, code: 'INVALID_REQUEST', message: `worker ${workerId} belongs to shard ${home}, not shard ${this.shard}` };
      }
    }
    // Back-pressure: every kind of write waits in the same queue, so every kind is bounded by it.
    if (op.k !== 'register' && this.queue.length >= this.options.maxQueuedOps) {
      return unavailable(`shard ${this.shard} has ${this.queue.length} writes queued; retry`);
    }
    switch (op.k) {
      case 'place':
        return this.place(op.id, op.request, op.requestKey, op.deadline, op.spec);
      case 'release':
        return this.release(op.id, op.workerId);
      case 'status':
        return this.changeStatus(op.workerId, op.action);
      case 'remove':
        return this.remove(op.workerId);
      case 'register':
        return this.register(op.worker);
    }
  }

  capacity(): CapacityGroup[] {
    if (this.ownerState === 'closed') return this.finalCapacity;
    return summarizeCapacity(this.index.workers());
  }

  /** Stop taking ops, let queued and in-flight writes finish, stop the actors. */
  async drain(): Promise<void> {
    if (this.ownerState === 'serving') this.ownerState = 'draining';
    await this.idle();
    this.close();
  }

  /** Stop at once: queued ops are answered UNAVAILABLE; a write already sent is answered by Redis. */
  close(): void {
    if (this.ownerState === 'closed' && this.actors.size === 0) return;
    this.finalCapacity = this.capacity();
    this.ownerState = 'closed';
    this.failQueue('shard closed on this replica');
    for (const actor of this.actors.values()) actor.stop();
    this.actors.clear();
    this.index.clear();
    this.createdAt.clear();
  }

  private addActor(record: WorkerRecord): WorkerActor {
    const actor = createActor(workerMachine, { input: record });
    actor.start();
    this.actors.set(record.id, actor);
    this.index.add(actor);
    this.generation += 1;
    this.createdAt.set(actor, this.generation);
    return actor;
  }

  private removeActor(actor: WorkerActor): void {
    actor.stop();
    this.actors.delete(actor.getSnapshot().context.spec.id);
    this.index.remove(actor);
    this.createdAt.delete(actor);
  }

  /** Give back the reservation of a placement that will not be written (one actor event). */
  private abortReservation(queued: QueuedPlacement): void {
    this.tell(queued.actor, { type: 'PLACEMENT_ABORTED', resources: queued.request, count: 1 });
  }

  /** Every event to an actor goes through here, so the index never lags behind the actor. */
  private tell(actor: WorkerActor, event: WorkerEvent): void {
    actor.send(event);
    this.index.refresh(actor);
  }

  private place(containerId: string, request: PlacementRequest, requestKey: string, deadline: number, spec: string, redecided = false): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.index.choose(request, this.options.strategy);
    if (actor === null) return { ok: false, code: 'NO_FIT', message: `no worker in shard ${this.shard} fits` };
    const before = actor.getSnapshot().context.reservations;
    this.tell(actor, { type: 'RESERVE', containerId, request });
    // The actor's guard re-checks what chooseWorker checked; disagreement is a bug, not an input error.
    if (actor.getSnapshot().context.reservations !== before + 1) {
      throw new Error(`worker ${actor.getSnapshot().context.spec.id} refused a reservation it was chosen for`);
    }
    return this.enqueue((resolve) => ({ kind: 'place', actor, containerId, request, deadline, requestKey, spec, redecided, resolve }));
  }

  private release(containerId: string, workerId: string): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.actors.get(workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not in shard ${this.shard}` };
    return this.enqueue((resolve) => ({ kind: 'release', actor, containerId, resolve }));
  }

  /**
   * Remove a worker from the shard: only one that takes no placements (drain or disable it first)
   * and holds no container. The actor's view is checked here; commit_batch.lua checks Redis's.
   */
  private remove(workerId: string): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.actors.get(workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not registered` };
    const { context, value } = actor.getSnapshot();
    if (value === 'available') {
      return { ok: false, code: 'CONFLICT', message: `worker ${workerId} is available; drain or disable it before removing it` };
    }
    const spec = context.spec;
    if (context.reservations > 0 || context.freeCpu !== spec.cpu || context.freeMemory !== spec.memory || context.freeGpuCount !== spec.gpuCount) {
      return { ok: false, code: 'CONFLICT', message: `worker ${workerId} still holds containers; release them before removing it` };
    }
    return this.enqueue((resolve) => ({ kind: 'remove', actor, resolve }));
  }

  private changeStatus(workerId: string, action: StatusAction): ShardOpResult | Promise<ShardOpResult> {
    const actor = this.actors.get(workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not registered` };
    const target = STATUS_ACTION_TARGET[action];
    const snapshot = actor.getSnapshot();
    if (snapshot.value === target) return { ok: true, worker: this.view(actor) };
    const event = { type: STATUS_ACTION_EVENT[action] satisfies StatusEventType } as const;
    if (!snapshot.can(event)) {
      return { ok: false, code: 'CONFLICT', message: `worker ${workerId} is ${String(snapshot.value)}; it cannot ${action} from there` };
    }
    this.tell(actor, event);
    return this.enqueue((resolve) => ({ kind: 'status', actor, status: target, resolve }));
  }

  private async register(worker: WorkerRegistration): Promise<ShardOpResult> {
    const spec = { ...worker, shard: this.shard };
    let outcome;
    try {
      outcome = await this.options.store.registerWorker(this.epoch, spec, 'available');
    } catch (error) {
      this.options.redisWrites.fail(error, { shard: this.shard, worker: worker.id, op: 'register' });
      return unavailable(`registration of ${worker.id} failed in Redis; retry`);
    }
    if (outcome.outcome === 'fenced') {
      this.fence(outcome.currentEpoch);
      return unavailable(`shard ${this.shard} moved to another replica; retry`);
    }
    if (outcome.outcome === 'wrong-shard') {
      // execute() refused this already; reaching here means the two hash functions disagree.
      this.options.log.error({ shard: this.shard, worker: worker.id, home: outcome.shard }, 'register_worker.lua refused the shard');
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
    const actor = this.actors.get(worker.id) ?? this.addActor(outcome.worker);
    if (outcome.outcome === 'created') this.options.onCapacityChange(this.shard, true);
    return { ok: true, worker: this.view(actor) };
  }

  private view(actor: WorkerActor): WorkerView {
    const { context, value } = actor.getSnapshot();
    return workerView({
      ...context.spec,
      freeCpu: context.freeCpu,
      freeMemory: context.freeMemory,
      freeGpuCount: context.freeGpuCount,
      status: value as WorkerStatus,
      resourceVersion: context.resourceVersion,
    });
  }

  private enqueue(make: (resolve: (result: ShardOpResult) => void) => QueuedOp): Promise<ShardOpResult> {
    return new Promise((resolve) => {
      this.queue.push(make(resolve));
      this.scheduleFlush();
    });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.committing) return;
    this.flushScheduled = true;
    // setImmediate, not a microtask: ops arriving in the same I/O turn join one batch.
    setImmediate(() => {
      this.flushScheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.committing || this.queue.length === 0) {
      this.notifyIdle();
      return;
    }
    this.committing = true;
    try {
      if (this.reloadNeeded) await this.reload();
      const batch = this.queue.splice(0, MAX_BATCH_OPS);
      await this.commit(batch);
    } catch (error) {
      // Only the reload can throw here (commit handles its own errors): Redis is unreachable.
      this.options.redisWrites.fail(error, { shard: this.shard, op: 'reload' });
      this.failQueue('Redis is unreachable from this replica; retry');
    } finally {
      this.committing = false;
      if (this.queue.length > 0 && this.ownerState !== 'closed') this.scheduleFlush();
      else this.notifyIdle();
    }
  }

  private async commit(batch: QueuedOp[]): Promise<void> {
    const now = Date.now();
    const live: QueuedOp[] = [];
    const ops: BatchOp[] = [];
    for (const queued of batch) {
      if (queued.kind === 'place' && queued.deadline > 0 && queued.deadline < now) {
        this.abortReservation(queued);
        queued.resolve({ ok: false, code: 'EXPIRED', message: 'the router gave up on this placement' });
        continue;
      }
      live.push(queued);
      ops.push(this.batchOp(queued));
    }
    if (ops.length === 0) return;
    if (!this.options.leaseHeld()) {
      for (const queued of live) {
        if (queued.kind === 'place') this.abortReservation(queued);
        queued.resolve(unavailable(`the lease of shard ${this.shard} ran out on this replica; retry`));
      }
      return;
    }

    let result;
    try {
      result = await this.options.store.commitBatch(this.shard, this.epoch, ops);
    } catch (error) {
      // The outcome is unknown (the script may have run before the connection broke). Drop the
      // reservations, resync everything from Redis before the next batch, and say so.
      this.options.redisWrites.fail(error, { shard: this.shard, ops: ops.length, op: 'commit (outcome unknown; the shard is reloaded before its next write)' });
      this.reloadNeeded = true;
      for (const queued of live) {
        if (queued.kind === 'place') this.abortReservation(queued);
        queued.resolve(unavailable('Redis did not answer; the outcome is unknown, retry with the same id', true));
      }
      return;
    }
    this.stats.batches += 1;
    this.options.redisWrites.ok();

    if (result.fenced) {
      this.stats.fenceRefusals += 1;
      for (const queued of live) queued.resolve(unavailable(`shard ${this.shard} moved to another replica; retry`));
      this.fence(result.currentEpoch);
      return;
    }

    const resync = new Set<WorkerActor>();
    const redecide: QueuedPlacement[] = [];
    const tallies = new Map<WorkerActor, Tally>();
    for (let i = 0; i < live.length; i += 1) {
      const queued = live[i]!;
      let tally = tallies.get(queued.actor);
      if (tally === undefined) tallies.set(queued.actor, (tally = newTally()));
      if (this.apply(queued, result.outcomes[i]!, tally, redecide)) resync.add(queued.actor);
    }
    // One event per kind per worker for the whole batch: fewer actor steps, same final state.
    let grew = false;
    for (const [actor, tally] of tallies) {
      if (tally.released.count > 0 || tally.status === 'available') grew = true;
      this.settle(actor, tally);
    }
    // Before any await: the replies resolved above go out only after this synchronous code, so a
    // summary published now reaches other routers before a client hears "released".
    this.options.onCapacityChange(this.shard, grew);
    if (resync.size > 0) {
      await this.resync(resync);
      this.options.onCapacityChange(this.shard, true);
    }
    for (const queued of redecide) this.redecide(queued);
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
      result = this.place(queued.containerId, queued.request, queued.requestKey, queued.deadline, queued.spec, true);
    } catch (error) {
      this.options.log.error({ err: error, shard: this.shard, container: queued.containerId }, 'placement could not be decided again');
      result = { ok: false, code: 'RETRY', message: `shard ${this.shard} could not decide the placement again` };
    }
    void Promise.resolve(result).then(queued.resolve);
  }

  private batchOp(queued: QueuedOp): BatchOp {
    const context = queued.actor.getSnapshot().context;
    const base = { workerId: context.spec.id, expectedVersion: context.resourceVersion };
    if (queued.kind === 'place') {
      const { cpu, memory, gpuCount } = queued.request;
      return { kind: 'place', ...base, containerId: queued.containerId, cpu, memory, gpuCount, deadline: queued.deadline, requestKey: queued.requestKey, spec: queued.spec };
    }
    if (queued.kind === 'release') return { kind: 'release', ...base, containerId: queued.containerId };
    if (queued.kind === 'remove') return { kind: 'remove', ...base };
    return { kind: 'status', ...base, status: queued.status };
  }

  /**
   * Answer the waiting router for one op and add its effect to the worker's tally (told to the
   * actor once per batch by `settle`). Returns true when the actor must resync from Redis.
   */
  private apply(queued: QueuedOp, outcome: OpOutcome, tally: Tally, redecide: QueuedPlacement[]): boolean {
    const workerId = queued.actor.getSnapshot().context.spec.id;
    this.stats.committedOps += 1;
    if (outcome.version > tally.version) tally.version = outcome.version;
    if (queued.kind === 'place') {
      const { cpu, memory, gpuCount } = queued.request;
      if (outcome.code === 'PLACED') {
        add(tally.placed, cpu, memory, gpuCount);
        this.options.events.publish({ id: queued.containerId, status: 'placed', workerId });
        queued.resolve({ ok: true, workerId });
        return false;
      }
      if (outcome.code === 'NOT_PLACEABLE') {
        add(tally.aborted, cpu, memory, gpuCount);
        const [status = '', holderKey = ''] = outcome.extra.split(' ');
        const message = status === 'queued'
          ? `container ${queued.containerId} is queued by another request`
          : `container ${queued.containerId} ended (${status}) without being placed`;
        queued.resolve({ ok: false, code: 'NOT_PLACEABLE', message, requestKey: holderKey });
        return false;
      }
      add(tally.aborted, cpu, memory, gpuCount);
      if (outcome.code === 'ALREADY_PLACED') {
        const [holder = '', requestKey = ''] = outcome.extra.split(' ');
        queued.resolve({ ok: false, code: 'ALREADY_PLACED', message: `container ${queued.containerId} is already placed on ${holder}`, workerId: holder, requestKey });
        return false;
      }
      if (outcome.code === 'EXPIRED') {
        queued.resolve({ ok: false, code: 'EXPIRED', message: 'the router gave up on this placement' });
        return false;
      }
      // RV_CONFLICT, NO_CAPACITY, NOT_SCHEDULABLE, WORKER_NOT_FOUND: the actor's view was not Redis's.
      this.stats.versionConflicts += 1;
      this.options.log.warn({ shard: this.shard, worker: workerId, code: outcome.code }, 'placement refused by Redis; resyncing worker');
      if (queued.redecided) {
        queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
      } else {
        redecide.push(queued);
      }
      return true;
    }
    if (queued.kind === 'release') {
      if (outcome.code === 'RELEASED') {
        const [cpu, memory, gpuCount] = outcome.extra.split(' ').map(Number) as [number, number, number];
        add(tally.released, cpu, memory, gpuCount);
        this.options.events.publish({ id: queued.containerId, status: 'released', workerId, reason: 'RELEASED' });
        queued.resolve({ ok: true, released: true, workerId });
        return false;
      }
      if (outcome.code === 'ALREADY_RELEASED') {
        queued.resolve({ ok: true, released: true, workerId });
        return false;
      }
      if (outcome.code === 'NOT_FOUND' || outcome.code === 'WRONG_WORKER') {
        queued.resolve({ ok: false, code: 'NOT_FOUND', message: `container ${queued.containerId} is not placed on ${workerId}` });
        return false;
      }
      this.stats.versionConflicts += 1;
      queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
      return true;
    }
    if (queued.kind === 'remove') {
      if (outcome.code === 'REMOVED') {
        tally.removed = true;
        queued.resolve({ ok: true, removed: true });
        return false;
      }
      if (outcome.code === 'NOT_REMOVABLE') {
        queued.resolve({ ok: false, code: 'CONFLICT', message: `worker ${workerId} cannot be removed: it is ${outcome.extra.replace('containers', 'holding containers:')}` });
        return true;
      }
      this.stats.versionConflicts += 1;
      queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
      return true;
    }
    if (outcome.code === 'STATUS_SET') {
      tally.status = queued.status;
      // Answered in settle(), once the actor knows the new version the reply shows.
      tally.afterSettle.push(() => queued.resolve({ ok: true, worker: this.view(queued.actor) }));
      return false;
    }
    this.stats.versionConflicts += 1;
    queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
    return true;
  }

  /** Tell one actor the batch's outcome for it, as at most one event of each kind. */
  private settle(actor: WorkerActor, tally: Tally): void {
    const { placed, aborted, released, version } = tally;
    if (placed.count > 0) this.tell(actor, { type: 'PLACEMENT_COMMITTED', resources: placed, count: placed.count, resourceVersion: version });
    if (aborted.count > 0) this.tell(actor, { type: 'PLACEMENT_ABORTED', resources: aborted, count: aborted.count });
    if (released.count > 0) this.tell(actor, { type: 'RELEASE_COMMITTED', resources: released, resourceVersion: version });
    if (tally.status !== null) this.tell(actor, { type: 'STATUS_COMMITTED', status: tally.status, resourceVersion: version });
    for (const answer of tally.afterSettle) answer();
    if (tally.removed) this.removeActor(actor);
  }

  private async resync(actors: Set<WorkerActor>): Promise<void> {
    for (const actor of actors) {
      const id = actor.getSnapshot().context.spec.id;
      try {
        const record = await this.options.store.readWorker(this.shard, id);
        this.stats.resyncs += 1;
        if (record === null) this.removeActor(actor);
        else this.tell(actor, { type: 'SYNCED', record });
      } catch (error) {
        this.options.redisWrites.fail(error, { shard: this.shard, worker: id, op: 'resync (the shard is reloaded before its next write)' });
        this.reloadNeeded = true;
      }
    }
  }

  /** Resync every actor from Redis (after a commit of unknown outcome). */
  private async reload(): Promise<void> {
    const startedAt = this.generation;
    const records = await this.options.store.loadShard(this.shard);
    const seen = new Set<string>();
    for (const record of records) {
      seen.add(record.id);
      const actor = this.actors.get(record.id);
      if (actor === undefined) this.addActor(record);
      else this.tell(actor, { type: 'SYNCED', record });
    }
    for (const [id, actor] of [...this.actors]) {
      // A worker registered while the reload was reading may be missing from what it read.
      if (!seen.has(id) && (this.createdAt.get(actor) ?? 0) <= startedAt) this.removeActor(actor);
    }
    this.reloadNeeded = false;
    this.stats.resyncs += records.length;
  }

  private fence(currentEpoch: number): void {
    if (this.ownerState === 'closed') return;
    this.options.log.warn({ shard: this.shard, epoch: this.epoch, currentEpoch }, 'fenced: another replica owns this shard now');
    this.close();
    this.options.onFenced(this.shard);
  }

  private failQueue(message: string): void {
    const queued = this.queue;
    this.queue = [];
    for (const op of queued) {
      if (op.kind === 'place') this.abortReservation(op);
      op.resolve(unavailable(message));
    }
  }

  private idle(): Promise<void> {
    if (!this.committing && this.queue.length === 0 && !this.flushScheduled) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    if (this.committing || this.queue.length > 0 || this.flushScheduled) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const waiter of waiters) waiter();
  }
}
