/**
 * A shard's group commit: every write of the shard's owner waits in one queue, and one fenced
 * `commit_batch` per shard is in flight at a time, carrying every op queued meanwhile (up to
 * MAX_BATCH_OPS). With one batch in flight, each op can quote its worker's exact ResourceVersion,
 * so a conflict only ever means someone else wrote the worker. The outcome of each op is told back
 * to its worker's actor (once per kind per worker per batch) and answered to whoever asked.
 *
 * A refused write is never retried blindly: an epoch refusal means another replica owns the shard
 * (the owner closes at once); a version or capacity refusal means the actor's view was wrong (the
 * actor is resynced from Redis, see recovery.ts, and a placement is decided once more by the owner;
 * a second refusal tells the router to try elsewhere).
 */
import type { PlacementRequest, WorkerStatus } from '../../actors/capacity.js';
import type { ContainerReason } from '../../actors/container-machine.js';
import type { ShardOpResult } from '../protocol/shard-messages.js';
import { MAX_BATCH_OPS, type BatchOp, type OpOutcome, type TransitionFrom, type TransitionTo } from '../store/store.js';
import { reloadWorkers, resyncWorkers, type RecoveryContext } from './recovery.js';
import { shardOf } from './shard-map.js';
import type { ShardOwnerOptions } from './shard-owner.js';
import type { ShardWorkers, WorkerActor } from './shard-workers.js';

export interface QueuedPlacement {
  readonly kind: 'place';
  readonly actor: WorkerActor;
  readonly containerId: string;
  /** What it asks for; its cpu, memory and gpuCount are the resources reserved on `actor`. */
  readonly request: PlacementRequest;
  readonly deadline: number;
  readonly requestKey: string;
  /** Command and environment JSON for the worker's agent, or ''. */
  readonly spec: string;
  readonly priority: number;
  readonly maxWaitMs: number;
  /** Already decided once more after Redis refused its first worker (at most one such retry). */
  readonly redecided: boolean;
  readonly resolve: (result: ShardOpResult) => void;
}

export type QueuedOp =
  | QueuedPlacement
  | {
      readonly kind: 'release';
      readonly actor: WorkerActor;
      readonly containerId: string;
      /** How it ends (default: released by a client) and, when it exited, its exit code. */
      readonly final?: 'released' | 'exited' | 'lost';
      readonly reason?: ContainerReason;
      readonly exitCode?: number;
      readonly resolve: (result: ShardOpResult) => void;
    }
  | {
      readonly kind: 'transition';
      readonly actor: WorkerActor;
      readonly containerId: string;
      readonly from: ReadonlyArray<TransitionFrom>;
      readonly to: TransitionTo;
      readonly resolve: (result: ShardOpResult) => void;
    }
  /** Mark a placed container delivered to the agent `incarnation` (its assignment goes out next). */
  | { readonly kind: 'deliver'; readonly actor: WorkerActor; readonly containerId: string; readonly incarnation: string; readonly resolve: (result: ShardOpResult) => void }
  /** Record the agent incarnation reporting for the worker (refused while another live one holds it). */
  | { readonly kind: 'agent'; readonly actor: WorkerActor; readonly incarnation: string; readonly silent: boolean; readonly resolve: (result: ShardOpResult) => void }
  | { readonly kind: 'requeue'; readonly actor: WorkerActor; readonly containerId: string; readonly resolve: (result: ShardOpResult) => void }
  | { readonly kind: 'outbox-ack'; readonly actor: null; readonly containerId: string; readonly resolve: (result: ShardOpResult) => void }
  | { readonly kind: 'status'; readonly actor: WorkerActor; readonly status: WorkerStatus; readonly resolve: (result: ShardOpResult) => void }
  | { readonly kind: 'remove'; readonly actor: WorkerActor; readonly resolve: (result: ShardOpResult) => void };

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

export const unavailable = (message: string, unknown = false): ShardOpResult => ({ ok: false, code: 'UNAVAILABLE', message, unknown });

/** What the group commit needs from its shard's owner. */
export interface GroupCommitHost {
  readonly options: ShardOwnerOptions;
  readonly stats: { batches: number; committedOps: number; fenceRefusals: number; versionConflicts: number; resyncs: number };
  /** The owner stopped serving: queued ops are failed, no new batch starts. */
  closed(): boolean;
  /** Redis refused the owner's epoch. */
  fence(currentEpoch: number): void;
  /** Decide a placement once more after its worker resynced (the owner's admission does it). */
  redecide(queued: QueuedPlacement): void;
  /** Redis refused a write because the worker was not what the actor held (counted, and shown on the debug page). */
  versionConflict(workerId: string, code: string): void;
}

export class GroupCommit {
  private queue: QueuedOp[] = [];
  private committing = false;
  private flushScheduled = false;
  /** A commit of unknown outcome happened: every actor is resynced before the next batch. */
  private reloadNeeded = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly host: GroupCommitHost,
    private readonly workers: ShardWorkers,
  ) {}

  /** Ops waiting for a commit (the owner's back-pressure bound). */
  get size(): number {
    return this.queue.length;
  }

  private recoveryContext(): RecoveryContext {
    const { store, shard, redisWrites } = this.host.options;
    return { store, shard, redisWrites, stats: this.host.stats, markReloadNeeded: () => (this.reloadNeeded = true) };
  }

  enqueue(make: (resolve: (result: ShardOpResult) => void) => QueuedOp): Promise<ShardOpResult> {
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
      if (this.reloadNeeded) {
        await reloadWorkers(this.workers, this.recoveryContext());
        this.reloadNeeded = false;
      }
      const batch = this.queue.splice(0, MAX_BATCH_OPS);
      await this.commit(batch);
    } catch (error) {
      // Only the reload can throw here (commit handles its own errors): Redis is unreachable.
      this.host.options.redisWrites.fail(error, { shard: this.host.options.shard, op: 'reload' });
      this.failQueue('Redis is unreachable from this replica; retry');
    } finally {
      this.committing = false;
      if (this.queue.length > 0 && !this.host.closed()) this.scheduleFlush();
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
    if (!this.host.options.leaseHeld()) {
      for (const queued of live) {
        if (queued.kind === 'place') this.abortReservation(queued);
        queued.resolve(unavailable(`the lease of shard ${this.host.options.shard} ran out on this replica; retry`));
      }
      return;
    }

    let result;
    try {
      result = await this.host.options.store.commitBatch(this.host.options.shard, this.host.options.epoch, ops);
    } catch (error) {
      // The outcome is unknown (the script may have run before the connection broke). Drop the
      // reservations, resync everything from Redis before the next batch, and say so.
      this.host.options.redisWrites.fail(error, { shard: this.host.options.shard, ops: ops.length, op: 'commit (outcome unknown; the shard is reloaded before its next write)' });
      this.reloadNeeded = true;
      for (const queued of live) {
        if (queued.kind === 'place') this.abortReservation(queued);
        queued.resolve(unavailable('Redis did not answer; the outcome is unknown, retry with the same id', true));
      }
      return;
    }
    this.host.stats.batches += 1;
    this.host.options.redisWrites.ok();

    if (result.fenced) {
      this.host.stats.fenceRefusals += 1;
      for (const queued of live) queued.resolve(unavailable(`shard ${this.host.options.shard} moved to another replica; retry`));
      this.host.fence(result.currentEpoch);
      return;
    }

    const resync = new Set<WorkerActor>();
    const redecide: QueuedPlacement[] = [];
    const tallies = new Map<WorkerActor, Tally>();
    for (let i = 0; i < live.length; i += 1) {
      const queued = live[i]!;
      if (queued.actor === null) {
        queued.resolve(result.outcomes[i]!.code === 'ACKED' ? { ok: true, requeued: true } : unavailable(`outbox ack answered ${result.outcomes[i]!.code}`));
        continue;
      }
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
    this.host.options.onCapacityChange(this.host.options.shard, grew);
    if (resync.size > 0) {
      await resyncWorkers(this.workers, resync, this.recoveryContext());
      this.host.options.onCapacityChange(this.host.options.shard, true);
    }
    for (const queued of redecide) this.host.redecide(queued);
  }

  private batchOp(queued: QueuedOp): BatchOp {
    if (queued.actor === null) return { kind: 'outbox-ack', containerId: queued.containerId, workerId: '', expectedVersion: 0 };
    const context = queued.actor.getSnapshot().context;
    const base = { workerId: context.spec.id, expectedVersion: context.resourceVersion };
    if (queued.kind === 'place') {
      const { cpu, memory, gpuCount } = queued.request;
      return { kind: 'place', ...base, containerId: queued.containerId, cpu, memory, gpuCount, deadline: queued.deadline, requestKey: queued.requestKey, spec: queued.spec, priority: queued.priority, maxWaitMs: queued.maxWaitMs,
        gpu: queued.request.gpu, pool: queued.request.pool };
    }
    if (queued.kind === 'release') {
      return { kind: 'release', ...base, containerId: queued.containerId, final: queued.final, reason: queued.reason, exitCode: queued.exitCode };
    }
    if (queued.kind === 'transition') return { kind: 'transition', ...base, containerId: queued.containerId, from: queued.from, to: queued.to };
    if (queued.kind === 'requeue') return { kind: 'requeue', ...base, containerId: queued.containerId, homeShard: shardOf(queued.containerId, this.host.options.shards) };
    if (queued.kind === 'remove') return { kind: 'remove', ...base };
    if (queued.kind === 'deliver') return { kind: 'deliver', ...base, containerId: queued.containerId, incarnation: queued.incarnation };
    if (queued.kind === 'agent') return { kind: 'agent', ...base, incarnation: queued.incarnation, silent: queued.silent };
    return { kind: 'status', ...base, status: queued.status };
  }

  /**
   * Answer the waiting router for one op and add its effect to the worker's tally (told to the
   * actor once per batch by `settle`). Returns true when the actor must resync from Redis.
   */
  private apply(queued: Exclude<QueuedOp, { kind: 'outbox-ack' }>, outcome: OpOutcome, tally: Tally, redecide: QueuedPlacement[]): boolean {
    const workerId = queued.actor.getSnapshot().context.spec.id;
    this.host.stats.committedOps += 1;
    if (outcome.version > tally.version) tally.version = outcome.version;
    if (queued.kind === 'place') {
      const { cpu, memory, gpuCount } = queued.request;
      if (outcome.code === 'PLACED') {
        add(tally.placed, cpu, memory, gpuCount);
        this.host.options.events.publish({ id: queued.containerId, status: 'placed', workerId, seq: outcome.seq });
        // Its agent (if it has one) is told to report now: the reply carries the assignment.
        if (queued.actor.getSnapshot().context.spec.agent === true) this.host.options.pokeAgent(workerId);
        queued.resolve(outcome.extra === 'unqueued' ? { ok: true, workerId, unqueued: true } : { ok: true, workerId });
        return false;
      }
      if (outcome.code === 'NOT_PLACEABLE') {
        add(tally.aborted, cpu, memory, gpuCount);
        const [status = '', holderKey = ''] = outcome.extra.split(' ');
        const message = status === 'queued'
          ? `container ${queued.containerId} is queued by another request`
          : status === 'different'
            ? `container ${queued.containerId} is queued by this request key with another body: a request key names one request`
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
      this.host.versionConflict(workerId, outcome.code);
      this.host.options.log.warn({ shard: this.host.options.shard, worker: workerId, code: outcome.code }, 'placement refused by Redis; resyncing worker');
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
        const final = queued.final ?? 'released';
        const reason = queued.reason ?? (final === 'released' ? 'RELEASED' : undefined);
        this.host.options.events.publish({
          id: queued.containerId,
          status: final,
          workerId,
          seq: outcome.seq,
          ...(reason !== undefined ? { reason } : {}),
          ...(queued.exitCode !== undefined ? { exitCode: queued.exitCode } : {}),
        });
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
      this.host.versionConflict(workerId, outcome.code);
      queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
      return true;
    }
    if (queued.kind === 'transition') {
      if (outcome.code === 'TRANSITIONED') {
        this.host.options.events.publish({ id: queued.containerId, status: queued.to, workerId, seq: outcome.seq });
        if (queued.to === 'stopping') queued.resolve({ ok: true, stopping: true, workerId });
        else queued.resolve({ ok: true, workerId });
        return false;
      }
      queued.resolve({ ok: false, code: 'CONFLICT', message: `container ${queued.containerId} is ${outcome.extra} on ${workerId}` });
      return false;
    }
    if (queued.kind === 'deliver') {
      if (outcome.code === 'DELIVERED') queued.resolve({ ok: true, workerId });
      else queued.resolve({ ok: false, code: 'CONFLICT', message: `container ${queued.containerId} is ${outcome.extra} on ${workerId}` });
      return false;
    }
    if (queued.kind === 'agent') {
      if (outcome.code === 'AGENT_RECORDED') {
        queued.resolve({ ok: true, workerId });
        return false;
      }
      if (outcome.code === 'AGENT_CONFLICT') {
        queued.resolve({ ok: false, code: 'AGENT_CONFLICT', message: `worker ${workerId} is run by another live agent (incarnation ${outcome.extra})` });
        return false;
      }
      queued.resolve({ ok: false, code: 'NOT_FOUND', message: `worker ${workerId} is not registered` });
      return false;
    }
    if (queued.kind === 'requeue') {
      if (outcome.code === 'REQUEUED') {
        const [cpu, memory, gpuCount] = outcome.extra.split(' ').map(Number) as [number, number, number];
        add(tally.released, cpu, memory, gpuCount);
        // Published here, by the writer of the status (its worker's shard), whatever its home
        // backlog does next: the backlog may still hold the entry from the first time (its
        // queue op then finds the record queued and writes nothing), and would publish nothing.
        this.host.options.events.publish({ id: queued.containerId, status: 'queued', seq: outcome.seq });
        this.host.options.onRequeued(queued.containerId);
        queued.resolve({ ok: true, requeued: true });
        return false;
      }
      if (outcome.code === 'NOT_IN_STATE') {
        queued.resolve({ ok: false, code: 'CONFLICT', message: `container ${queued.containerId} is ${outcome.extra}` });
        return false;
      }
      this.host.versionConflict(workerId, outcome.code);
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
      this.host.versionConflict(workerId, outcome.code);
      queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
      return true;
    }
    if (outcome.code === 'STATUS_SET') {
      tally.status = queued.status;
      // Answered in settle(), once the actor knows the new version the reply shows.
      tally.afterSettle.push(() => queued.resolve({ ok: true, worker: this.workers.view(queued.actor) }));
      return false;
    }
    this.host.versionConflict(workerId, outcome.code);
    queued.resolve({ ok: false, code: 'RETRY', message: `worker ${workerId} changed under this replica (${outcome.code})` });
    return true;
  }

  /** Tell one actor the batch's outcome for it, as at most one event of each kind. */
  private settle(actor: WorkerActor, tally: Tally): void {
    const { placed, aborted, released, version } = tally;
    if (placed.count > 0) this.workers.tell(actor, { type: 'PLACEMENT_COMMITTED', resources: placed, count: placed.count, resourceVersion: version });
    if (aborted.count > 0) this.workers.tell(actor, { type: 'PLACEMENT_ABORTED', resources: aborted, count: aborted.count });
    if (released.count > 0) this.workers.tell(actor, { type: 'RELEASE_COMMITTED', resources: released, resourceVersion: version });
    if (tally.status !== null) this.workers.tell(actor, { type: 'STATUS_COMMITTED', status: tally.status, resourceVersion: version });
    for (const answer of tally.afterSettle) answer();
    if (tally.removed) this.workers.remove(actor);
  }

  /** Give back the reservation of a placement that will not be written (one actor event). */
  abortReservation(queued: QueuedPlacement): void {
    this.workers.tell(queued.actor, { type: 'PLACEMENT_ABORTED', resources: queued.request, count: 1 });
  }

  failQueue(message: string): void {
    const queued = this.queue;
    this.queue = [];
    for (const op of queued) {
      if (op.kind === 'place') this.abortReservation(op);
      op.resolve(unavailable(message));
    }
  }

  idle(): Promise<void> {
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
