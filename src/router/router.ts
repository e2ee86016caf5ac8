/**
 * The router: every replica runs one, in a NATS queue group on the public subjects, so clients
 * never need to know who owns what. It validates requests, picks a shard from its capacity view,
 * forwards to that shard's subject (served only by the lease holder) and turns the owner's answer
 * into the public reply. A shard that cannot fit the container, or is not served right now, costs a
 * re-route to another shard, within MAX_ROUTE_ATTEMPTS.
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import type { DroverConfig } from '../config.js';
import { DroverError, errorReply, replyFromError, type ErrorReply } from '../protocol/errors.js';
import type { AgentInstructions, ShardCapacity, ShardOp, ShardOpResult, StatusAction, WorkerView } from '../protocol/shard-messages.js';
import { parseShardCapacity, workerView } from '../protocol/shard-messages.js';
import { DEADLINE_HEADER, REQUEST_KEY_HEADER, REQUEST_KEY_PATTERN, type Subjects } from '../protocol/subjects.js';
import {
  decodeObject,
  parseContainerBatch,
  parseContainerRequest,
  parseIdRequest,
  parseListRequest,
  parseAgentReport,
  parseBacklogRequest,
  parseWorkerBatch,
  parseWorkerRegistration,
  specJson,
  type ContainerRequest,
  type SubmitRequest,
} from '../protocol/validate.js';
import { containerView } from '../protocol/container-view.js';
import { DEFAULT_MAX_WAIT_MS } from '../protocol/limits.js';
import { TERMINAL_STATUSES } from '../../actors/container-machine.js';
// Only what a placement needs travels to owners: not the rest of a submit (priority, command, ...).
import { placementOf } from '../../actors/capacity.js';
import { shardOf } from '../shard/shard-map.js';
import { CorruptRecordError } from '../store/records.js';
import type { DroverStore } from '../store/store.js';
import { Incident } from '../util/incident.js';
import type { Logger } from '../util/log.js';
import { mergeBacklogReports, parseBacklogReport, type BacklogReport } from '../backlog/backlog-report.js';
import type { AttemptResult } from '../observe/metrics.js';
import { CapacityView } from './capacity-view.js';
import { ShardClient } from './shard-client.js';
import { requestDifferences } from './same-request.js';

/**
 * Shards one placement may try. Every shard whose summary does not prove the container cannot fit
 * must be asked before NO_CAPACITY; past this many asks the router answers UNAVAILABLE instead.
 */
export const MAX_ROUTE_ATTEMPTS = 32;
/**
 * Times a placement looks again after concluding that nothing fits, because room appeared while
 * it was concluding (a release answered meanwhile). Bounded: under constant churn, an answer.
 */
const MAX_PLACE_ROUNDS = 3;
/** Tries of an op bound to one shard (release, register, status) while its owner is unavailable. */
const MAX_BOUND_ATTEMPTS = 4;
const BOUND_RETRY_DELAY_MS = 250;
/** Client requests one router works on at once; more are answered UNAVAILABLE. */
export const MAX_ROUTER_IN_FLIGHT = 20_000;
/**
 * A placement's deadline is the shard timeout; the router waits this much longer before it gives
 * up, so by then Redis (which checks the deadline on its own clock) can no longer commit it.
 */
const DEADLINE_GRACE_MS = 500;

export interface RouterStats {
  placed: number;
  /** Every re-route, and by cause (see PlacementSource): the three below sum to it. */
  reroutes: number;
  /** A client's placement that an owner refused (does not fit, or its worker changed): the view was stale. A conflict. */
  staleViewReroutes: number;
  /** A client's placement whose owner did not answer (unavailable, timed out): not a conflict. */
  unavailableReroutes: number;
  /** Any re-route within a queued container's attempt (the backlog retries against changing room): not a conflict. */
  backlogReroutes: number;
  noCapacity: number;
  unavailable: number;
  alreadyPlaced: number;
  released: number;
  invalid: number;
  /** Ops handed to an owner in this process (no NATS hop). */
  localOps: number;
  /** Requests dropped because their client's deadline had passed before the router began. */
  expired: number;
  /** Submits answered "queued". */
  queued: number;
  /** Placements made on the shard the caller preferred (the backlog's, under best-fit). */
  preferredPlaced: number;
}

/** Whose placement this is: a client's submit, or the backlog's attempt at a queued container. */
export type PlacementSource = 'submit' | 'backlog';

type PlaceReply =
  | { ok: true; status: 'placed'; id: string; workerId: string }
  | ErrorReply;
type SubmitReply = PlaceReply | { ok: true; status: 'queued'; id: string };

/** The shard endpoint a replica serves in this process (its owner and its backlog partition). */
export interface LocalShard {
  readonly state: 'serving' | 'draining' | 'closed';
  execute(op: ShardOp): ShardOpResult | Promise<ShardOpResult>;
}
/** How long `drover.backlog` waits for every replica's partitions. */
const BACKLOG_REPORT_WAIT_MS = 1_000;

export interface RouterOptions {
  readonly nc: NatsConnection;
  readonly store: DroverStore;
  readonly config: DroverConfig;
  readonly subjects: Subjects;
  readonly log: Logger;
  /** A summary said a shard has no owner now (its owner just handed it over). */
  readonly onShardReleased?: (shard: number) => void;
  /**
   * The shard owners running in this same process, if any. An op for a shard this replica holds
   * is handed to its owner directly instead of making a round trip through NATS to ourselves;
   * the owner is the lease holder either way, and its writes are fenced in Redis either way.
   */
  readonly localOwner?: (shard: number) => LocalShard | null;
  /** The current capacity summary of a shard held in this process (what a remote reply carries). */
  readonly localCapacity?: (shard: number) => ShardCapacity | null;
  /** Every placement attempt's result and duration (the metrics). */
  readonly onAttempt?: (result: AttemptResult, seconds: number) => void;
  /** A submitted container placed at once, `seconds` after its submit arrived (the metrics' end-to-end time). */
  readonly onScheduled?: (seconds: number) => void;
}

export class Router {
  readonly view: CapacityView;
  readonly shardClient: ShardClient;
  readonly stats: RouterStats = { placed: 0, reroutes: 0, staleViewReroutes: 0, unavailableReroutes: 0, backlogReroutes: 0, noCapacity: 0, unavailable: 0, alreadyPlaced: 0, released: 0, invalid: 0, localOps: 0, expired: 0, queued: 0, preferredPlaced: 0 };
  private readonly subscriptions: Subscription[] = [];
  private capacitySubscription: Subscription | null = null;
  private inFlight = 0;
  /** Request keys for clients that sent none: "<replica id>.<counter>". */
  private keyCounter = 0;
  private withdrawn = false;
  /** Failed Redis reads: one log line when they start failing, one when they work again. */
  private readonly redisReads: Incident;
  private idleWaiters: Array<() => void> = [];
  /** Replies that repeat an earlier placement of the same request key (see alreadyPlaced). */
  private readonly repeated = new WeakSet<PlaceReply>();
  /** Placements whose commit also took the container out of its home shard's backlog set (see isUnqueued). */
  private readonly unqueued = new WeakSet<PlaceReply>();
  /** "queued" replies to a submit its request key had queued already (a retry). */
  private readonly queuedBefore = new WeakSet<SubmitReply>();

  constructor(private readonly options: RouterOptions) {
    this.redisReads = new Incident(options.log, 'Redis reads of the router');
    this.view = new CapacityView(options.config.shards);
    this.shardClient = new ShardClient({
      nc: options.nc,
      subjects: options.subjects,
      timeoutMs: options.config.shardRequestTimeoutMs + DEADLINE_GRACE_MS,
      onCapacity: (capacity) => this.view.update(capacity),
      // Ops go to the replica the view names as owner, grouped; never to this replica itself
      // (its own shards are served in process, see `send`).
      ownerOf: (shard) => {
        const owner = this.view.ownerOf(shard);
        return owner === options.config.replicaId ? null : owner;
      },
    });
  }

  /** Listen to capacity summaries first, ask owners to republish, then serve the public subjects. */
  async start(): Promise<void> {
    const { nc, subjects } = this.options;
    this.capacitySubscription = nc.subscribe(subjects.capacityAll, {
      callback: (error, msg) => {
        if (error) return;
        try {
          const capacity = parseShardCapacity(msg.json());
          if (capacity === null) return;
          this.view.update(capacity);
          if (capacity.owner === null) this.options.onShardReleased?.(capacity.shard);
        } catch {
          // A malformed summary is dropped; the next one replaces it.
        }
      },
    });
    nc.publish(subjects.capacityRefresh);
    await nc.flush();
    this.subscribePublic();
    await nc.flush();
  }

  /** Whether this router is in the public queue group (it leaves it while Redis is cut off). */
  get routing(): boolean {
    return this.subscriptions.length > 0;
  }

  private subscribePublic(): void {
    const { nc, subjects } = this.options;
    const handlers: Array<[string, Handler]> = [
      [subjects.submit, (msg, deadline) => this.onSubmit(msg, deadline)],
      [subjects.submitBatch, (msg, deadline) => this.onSubmitBatch(msg, deadline)],
      [subjects.release, (msg) => this.onRelease(msg)],
      [subjects.containersGet, (msg) => this.onContainerGet(msg)],
      [subjects.backlog, (msg) => this.onBacklog(msg)],
      [subjects.workersRegister, (msg) => this.onRegister(msg)],
      [subjects.workersRegisterBatch, (msg) => this.onRegisterBatch(msg)],
      [subjects.workersGet, (msg) => this.onWorkerGet(msg)],
      [subjects.workersList, (msg) => this.onWorkerList(msg)],
      [subjects.workersDrain, (msg) => this.onStatus(msg, 'drain')],
      [subjects.workersDisable, (msg) => this.onStatus(msg, 'disable')],
      [subjects.workersEnable, (msg) => this.onStatus(msg, 'enable')],
      [subjects.workersRemove, (msg) => this.onRemove(msg)],
      [subjects.workersReport, (msg, deadline) => this.onReport(msg, deadline)],
    ];
    for (const [subject, handler] of handlers) {
      this.subscriptions.push(
        nc.subscribe(subject, { queue: subjects.routerQueue, callback: (error, msg) => (error ? undefined : this.serve(msg, handler)) }),
      );
    }
  }

  /**
   * Leave the public queue group (this replica cannot reach Redis): the NATS server then hands
   * clients' requests to the other routers. Requests already taken are finished.
   */
  async withdraw(): Promise<void> {
    if (this.withdrawn) return;
    this.withdrawn = true;
    const subscriptions = this.subscriptions.splice(0);
    await Promise.all(subscriptions.map((s) => s.drain().catch(() => undefined)));
    this.options.log.warn('router left the public queue group until Redis answers again');
  }

  /** Join the public queue group again after `withdraw`. */
  async rejoin(): Promise<void> {
    if (!this.withdrawn) return;
    this.withdrawn = false;
    this.subscribePublic();
    await this.options.nc.flush().catch(() => undefined);
    this.options.log.info('router is back in the public queue group');
  }

  /** Stop taking requests (other replicas' routers take them), then finish those in flight. */
  async stop(): Promise<void> {
    this.withdrawn = true;
    await Promise.all(this.subscriptions.splice(0).map((s) => s.drain().catch(() => undefined)));
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    this.capacitySubscription?.unsubscribe();
    this.capacitySubscription = null;
  }

  private serve(msg: Msg, handler: Handler): void {
    let deadline: number | null;
    try {
      deadline = clientDeadline(msg);
    } catch (error) {
      this.stats.invalid += 1;
      respond(msg, replyFromError(error));
      return;
    }
    if (deadline !== null && Date.now() > deadline) {
      // The client stopped waiting (this replica was paused, or very busy, or the client's clock
      // is ahead): acting now could place a container behind an answer the client already got for
      // a retry. Nothing is done, and the answer says so, with both clocks.
      this.stats.expired += 1;
      respond(msg, deadlineExceeded(deadline, 'before a router began it'));
      return;
    }
    if (this.inFlight >= MAX_ROUTER_IN_FLIGHT) {
      respond(msg, errorReply('UNAVAILABLE', `router busy: ${this.inFlight} requests in flight; retry`));
      return;
    }
    this.inFlight += 1;
    handler(msg, deadline)
      .then((reply) => respond(msg, reply), (error: unknown) => {
        if (!(error instanceof DroverError)) this.options.log.error({ err: error, subject: msg.subject }, 'request failed');
        else if (error.code === 'INVALID_REQUEST') this.stats.invalid += 1;
        respond(msg, replyFromError(error));
      })
      .finally(() => {
        this.inFlight -= 1;
        if (this.inFlight === 0) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          for (const waiter of waiters) waiter();
        }
      });
  }

  private async onSubmit(msg: Msg, deadline: number | null): Promise<SubmitReply> {
    const request = parseContainerRequest(decodeObject(msg.data));
    return this.submit(request, deadline, requestKey(msg) ?? this.newRequestKey());
  }

  /**
   * Place now if anything fits; otherwise (NO_CAPACITY, or shards that cannot answer now) queue it
   * in its home shard's backlog, unless the request said `queue: false`.
   */
  async submit(request: SubmitRequest, clientDeadline: number | null, key: string): Promise<SubmitReply> {
    const spec = specJson(request);
    const reply = await this.submitOnce(request, clientDeadline, key, spec);
    // A reply that repeats what an earlier request with this key did (a retry): only if this
    // request is that one. Read on this path only; a first submit costs nothing more.
    if (reply.ok && (this.repeated.has(reply as PlaceReply) || this.queuedBefore.has(reply))) {
      return (await this.conflictWithRecord(request, spec)) ?? reply;
    }
    return reply;
  }

  private async submitOnce(request: SubmitRequest, clientDeadline: number | null, key: string, spec: string): Promise<SubmitReply> {
    const started = performance.now();
    const placed = await this.place(request, clientDeadline, key, spec);
    if (placed.ok && !this.repeated.has(placed)) this.options.onScheduled?.((performance.now() - started) / 1_000);
    if (placed.ok || !request.queue) return placed;
    if (placed.error.code !== 'NO_CAPACITY' && placed.error.code !== 'UNAVAILABLE') return placed;
    // Not queued behind the back of a client that stopped waiting.
    if (clientDeadline !== null && Date.now() > clientDeadline) return deadlineExceeded(clientDeadline, 'before it could be placed or queued');
    const result = await this.sendBound(this.shardOf(request.id), {
      k: 'enqueue',
      id: request.id,
      request: placementOf(request),
      requestKey: key,
      priority: request.priority,
      maxWaitMs: request.maxWaitMs,
      spec,
    });
    if (result.ok) {
      this.stats.queued += 1;
      const queued: SubmitReply = { ok: true, status: 'queued', id: request.id };
      // Queued before, by this request key: a retry (checked against the record by `submit`).
      if ((result as { existing?: true }).existing === true) this.queuedBefore.add(queued);
      return queued;
    }
    switch (result.code) {
      case 'ALREADY_PLACED':
        return this.alreadyPlaced(request.id, key, result.workerId ?? '', result.requestKey ?? '');
      case 'NOT_PLACEABLE':
        return errorReply('CONFLICT', result.message);
      case 'BACKLOG_FULL':
        return errorReply('BACKLOG_FULL', result.message);
      default:
        return replyFromError(this.boundError(result));
    }
  }

  private async onSubmitBatch(msg: Msg, deadline: number | null): Promise<unknown> {
    const requests = parseContainerBatch(decodeObject(msg.data));
    // A key is compared per container id, so one key serves every container of the batch.
    const key = requestKey(msg) ?? this.newRequestKey();
    // One container's failure is its own answer; the others are answered as they ended.
    const results = await Promise.all(
      requests.map((request) =>
        this.submit(request, deadline, key).catch((error: unknown) => {
          this.options.log.error({ err: error, container: request.id }, 'placement failed');
          return replyFromError(error);
        }),
      ),
    );
    return { ok: true, results };
  }

  /**
   * CONFLICT when the container's record says its request key was used for another body (this
   * submit only reuses the key); null when the record matches, or is gone (its tombstone expired).
   */
  private async conflictWithRecord(request: SubmitRequest, spec: string): Promise<ErrorReply | null> {
    let record;
    try {
      record = await this.options.store.readContainer(request.id);
    } catch (error) {
      if (error instanceof CorruptRecordError) throw error;
      this.stats.unavailable += 1;
      return errorReply('UNAVAILABLE', `could not read container ${request.id} to compare this retry with its first request; retry with the same id and request key`);
    }
    if (record === null) return null;
    const differences = requestDifferences(record, request, spec);
    if (differences.length === 0) return null;
    return errorReply('CONFLICT', `container ${request.id} was submitted with this request key and another body (${differences.join('; ')}): a request key names one request`);
  }

  /** A request key for a client that sent none: unique per router, so retries of it are not recognised. */
  private newRequestKey(): string {
    this.keyCounter += 1;
    return `${this.options.config.replicaId}.${this.keyCounter}`;
  }

  /**
   * One placement attempt (a submit's, or a queued container's), timed and counted by its result.
   * `prefer`: a shard to ask first if the view says the request may fit there (the backlog's
   * queued containers of one shape keep filling the shard that placed the last of them); used
   * only under best-fit, whose aim is to pack, not to spread.
   */
  async place(request: ContainerRequest, clientDeadline: number | null = null, key: string = this.newRequestKey(), spec = '', prefer: number | null = null, source: PlacementSource = 'submit'): Promise<PlaceReply> {
    const started = performance.now();
    const reply = await this.attemptPlacement(request, clientDeadline, key, spec, prefer, source);
    // The backlog's attempts are its retries, counted by the backlog, not as clients' attempts.
    if (this.repeated.has(reply) || source === 'backlog') return reply;
    const result: AttemptResult = reply.ok ? 'scheduled' : reply.error.code === 'NO_CAPACITY' ? 'unschedulable' : 'error';
    this.options.onAttempt?.(result, (performance.now() - started) / 1_000);
    return reply;
  }

  /**
   * Whether the placement's own commit took the queued container out of its home backlog's Redis
   * set (it was placed in its home shard): the backlog then has no drop to write for it.
   */
  isUnqueued(reply: PlaceReply): boolean {
    return this.unqueued.has(reply);
  }

  /** Whether a reply only repeated an earlier placement of the same request (a retry). */
  isRepeat(reply: PlaceReply): boolean {
    return this.repeated.has(reply);
  }

  /**
   * Route one placement: ask shards that may fit until one places it. No attempt may be written
   * after `clientDeadline` (when the client sent one). NO_CAPACITY is answered only when every
   * shard either answered that nothing fits or has a fresh summary proving it; otherwise the
   * answer is UNAVAILABLE (retry), never a "no" that may be false.
   */
  private async attemptPlacement(request: ContainerRequest, clientDeadline: number | null, key: string, spec: string, prefer: number | null, source: PlacementSource): Promise<PlaceReply> {
    // A re-route's cause: a client's placement refused by its owner is a conflict (a stale view);
    // the backlog's re-routes are its retries against room that keeps changing.
    const reroute = (cause: 'staleViewReroutes' | 'unavailableReroutes') => {
      this.stats.reroutes += 1;
      this.stats[source === 'backlog' ? 'backlogReroutes' : cause] += 1;
    };
    const placement = placementOf(request);
    // Kept with the placement, for a requeue should its worker be lost before running it.
    const { priority = 0, maxWaitMs = DEFAULT_MAX_WAIT_MS } = request as Partial<SubmitRequest>;
    const tried = new Set<number>();
    /** Shards whose owner answered that nothing fits: the only shards asking proved empty. */
    const refuted = new Set<number>();
    let lastUnavailable: string | null = null;
    /** The latest deadline of an attempt whose write may still land (its outcome is unknown). */
    let unknownUntil = 0;
    let attempts = 0;
    /** Shards not proven full when the last round ended (their count, for the UNAVAILABLE message). */
    let unproven = 0;
    for (let round = 0; round < MAX_PLACE_ROUNDS; round += 1) {
      for (; attempts < MAX_ROUTE_ATTEMPTS; attempts += 1) {
        const preferred = attempts === 0 && prefer !== null && this.options.config.strategy === 'best-fit' && this.view.mayFit(prefer, request);
        const shard = preferred ? prefer : this.view.choose(request, tried, this.options.config.replicaId);
        if (shard === null) break;
        tried.add(shard);
        this.view.consume(shard, request);
        const routerDeadline = Date.now() + this.options.config.shardRequestTimeoutMs;
        const deadline = clientDeadline === null ? routerDeadline : Math.min(routerDeadline, clientDeadline);
        if (deadline <= Date.now()) {
          lastUnavailable = 'the client deadline passed';
          break;
        }
        const op: ShardOp = { k: 'place', id: request.id, request: placement, requestKey: key, deadline, spec, priority, maxWaitMs };
        const result = await this.send(shard, op);
        if (result.ok) {
          this.stats.placed += 1;
          if (preferred) this.stats.preferredPlaced += 1;
          const placed: PlaceReply = { ok: true, status: 'placed', id: request.id, workerId: (result as { workerId: string }).workerId };
          if ((result as { unqueued?: true }).unqueued === true) this.unqueued.add(placed);
          return placed;
        }
        switch (result.code) {
          case 'ALREADY_PLACED':
            return this.alreadyPlaced(request.id, key, result.workerId ?? '', result.requestKey ?? '');
          case 'NOT_PLACEABLE':
            // Queued by another request, or ended (cancelled, expired) before a placement.
            return errorReply('CONFLICT', result.message);
          case 'NO_FIT':
            reroute('staleViewReroutes');
            refuted.add(shard);
            this.view.forget(shard, request);
            break;
          case 'RETRY':
            reroute('staleViewReroutes');
            this.view.forget(shard, request);
            lastUnavailable = result.message;
            break;
          case 'UNAVAILABLE':
          case 'EXPIRED':
            reroute('unavailableReroutes');
            lastUnavailable = result.message;
            this.view.markUnreachable(shard);
            if (result.unknown === true) unknownUntil = Math.max(unknownUntil, deadline);
            break;
          default:
            throw new DroverError('INTERNAL', `shard ${shard} answered ${result.code}: ${result.message}`);
        }
      }
      // Before saying "not placed": an attempt that timed out, of this request or of an earlier one
      // with the same id, may have committed after all. Redis knows; the answer must match it.
      // An attempt of unknown outcome can still be written until its deadline (Redis checks it on
      // its own clock): read only once that has passed, with the same grace as for timeouts.
      const wait = unknownUntil + DEADLINE_GRACE_MS - Date.now();
      if (unknownUntil > 0 && wait > 0) await delay(wait);
      let placed;
      try {
        placed = await this.options.store.readContainer(request.id);
      } catch {
        this.stats.unavailable += 1;
        return errorReply('UNAVAILABLE', `could not place ${request.id} now, and Redis cannot say whether an attempt did; retry with the same id and request key`);
      }
      if (placed !== null && placed.status === 'queued' && placed.requestKey !== key) {
        return errorReply('CONFLICT', `container ${request.id} is queued by another request`);
      }
      if (placed !== null && placed.status !== 'queued') {
        if (placed.workerId === null) return errorReply('CONFLICT', `container ${request.id} ended (${placed.status}) without being placed`);
        return this.alreadyPlaced(request.id, key, placed.workerId, placed.requestKey);
      }
      if (lastUnavailable !== null) break;
      unproven = this.view.unproven(request, refuted).length;
      if (unproven === 0) {
        this.stats.noCapacity += 1;
        return errorReply('NO_CAPACITY', `no worker has room for ${request.id} (${describeRequest(request)}): ${this.noCapacityReason(request)}`);
      }
      // Room appeared (a release elsewhere) while this router was concluding: ask the shards
      // that may have it now. Shards that cannot be asked (no owner, no answer, no fresh summary)
      // make the answer UNAVAILABLE.
      if (this.view.choose(request, tried, this.options.config.replicaId) === null) break;
    }
    // Not placed, and the client stopped waiting: that is the answer, not "retry".
    if (clientDeadline !== null && Date.now() > clientDeadline) return deadlineExceeded(clientDeadline, 'before it could be placed');
    this.stats.unavailable += 1;
    const why = lastUnavailable ?? `${unproven} shards that may have room could not be asked`;
    return errorReply('UNAVAILABLE', `could not place ${request.id} now (${why}); retry with the same id and request key`);
  }

  /**
   * The container is (or was) placed on `workerId` by the request with `holderKey`: if that is this
   * request's own key, an earlier attempt of it (or of a retry) committed and the answer is
   * "placed"; otherwise it is another request's container.
   */
  private alreadyPlaced(id: string, key: string, workerId: string, holderKey: string): PlaceReply {
    if (holderKey === key) {
      this.stats.placed += 1;
      const reply: PlaceReply = { ok: true, status: 'placed', id, workerId };
      // A retry told what its first try did: not a new scheduling, so the metrics leave it out.
      this.repeated.add(reply);
      return reply;
    }
    this.stats.alreadyPlaced += 1;
    return errorReply('ALREADY_PLACED', `container ${id} is already placed on worker ${workerId}`, { workerId });
  }

  /** Why nothing fits: no such worker at all, none taking placements, or all full. */
  private noCapacityReason(request: ContainerRequest): string {
    const kind = [
      request.pool !== null ? `pool ${request.pool}` : null,
      request.gpuCount > 0 ? (request.gpu !== null ? `GPU type ${request.gpu}` : 'GPUs') : null,
    ].filter((part) => part !== null).join(' with ');
    const { registered, available } = this.view.fleet(request);
    if (registered === 0) return kind === '' ? 'no worker is registered' : `no worker of ${kind} is registered`;
    const which = kind === '' ? 'workers' : `workers of ${kind}`;
    if (available === 0) return `all ${registered} ${which} are pending, unreachable, draining, disabled or lost (none is available; an agent's worker is pending until its first report)`;
    return `all ${available} available ${which} are too full for it`;
  }

  /**
   * Release a container: a queued one is cancelled in its backlog (it never runs); a placed one is
   * released on its worker. Releasing an ended one answers its final status (idempotent).
   */
  private async onRelease(msg: Msg): Promise<unknown> {
    const { id } = parseIdRequest(decodeObject(msg.data));
    // A release is idempotent by container id: its request key is checked but not needed. A retry
    // after the container's tombstone expired cannot happen either, as a client retries only
    // until its deadline, far shorter than the tombstone's retention.
    requestKey(msg);
    // Twice at most: a cancel that finds the container no longer queued (an attempt placed it
    // meanwhile) reads it again and releases it where it was placed.
    for (let look = 0; look < 2; look += 1) {
      const container = await this.read(() => this.options.store.readContainer(id));
      if (container === null) throw new DroverError('NOT_FOUND', `container ${id} is not known`);
      if (TERMINAL_STATUSES.has(container.status)) return { ok: true, id, status: container.status };
      if (container.status === 'queued') {
        const result = await this.sendBound(container.shard, { k: 'cancel', id });
        if (result.ok) {
          this.stats.released += 1;
          return { ok: true, id, status: 'released' };
        }
        if (result.code === 'NOT_FOUND') continue;
        throw this.boundError(result);
      }
      const result = await this.sendBound(container.shard, { k: 'release', id, workerId: container.workerId ?? '' });
      if (!result.ok) {
        if (result.code === 'NOT_FOUND' && look === 0) continue;
        throw this.boundError(result);
      }
      this.stats.released += 1;
      // On a worker with an agent: stopping until the agent confirms (then released).
      return { ok: true, id, status: 'stopping' in result ? 'stopping' : 'released' };
    }
    throw new DroverError('UNAVAILABLE', `container ${id} changed while it was being released; retry`);
  }

  /**
   * The backlog of the whole cluster: every replica answers for the partitions it holds; the
   * answer says which shards did not answer within BACKLOG_REPORT_WAIT_MS.
   */
  private async onBacklog(msg: Msg): Promise<unknown> {
    parseBacklogRequest(decodeObject(msg.data));
    const { nc, subjects, config } = this.options;
    const reports: BacklogReport[] = [];
    const covered = new Set<number>();
    try {
      const replies = await nc.requestMany(subjects.backlogPartitions, '', { strategy: 'timer', maxWait: BACKLOG_REPORT_WAIT_MS });
      for await (const reply of replies) {
        const report = parseBacklogReport(reply.json());
        if (report === null) continue;
        reports.push(report);
        for (const shard of report.shards) covered.add(shard);
        if (covered.size >= config.shards) break;
      }
    } catch {
      // no responders: reported below as missing shards
    }
    return { ok: true, ...mergeBacklogReports(reports, config.shards) };
  }

  private async onContainerGet(msg: Msg): Promise<unknown> {
    const { id } = parseIdRequest(decodeObject(msg.data));
    const container = await this.read(() => this.options.store.readContainer(id));
    if (container === null) throw new DroverError('NOT_FOUND', `container ${id} is not known`);
    // Built field by field: the request key (how retries recognise themselves) is not shown.
    return { ok: true, container: containerView(container) };
  }

  private async onRegister(msg: Msg): Promise<unknown> {
    const worker = parseWorkerRegistration(decodeObject(msg.data));
    const result = await this.sendBound(this.shardOf(worker.id), { k: 'register', worker });
    if (!result.ok) throw this.boundError(result);
    return { ok: true, worker: (result as { worker: WorkerView }).worker };
  }

  /**
   * Many registrations in one request (a provisioner bringing up a fleet): each worker goes to its
   * shard as a single registration would, and the ops for one shard travel in one message. One
   * worker's failure is its own answer.
   */
  private async onRegisterBatch(msg: Msg): Promise<unknown> {
    const workers = parseWorkerBatch(decodeObject(msg.data));
    const results = await Promise.all(workers.map(async (worker) => {
      const result = await this.sendBound(this.shardOf(worker.id), { k: 'register', worker });
      if (!result.ok) return replyFromError(this.boundError(result));
      return { ok: true, worker: (result as { worker: WorkerView }).worker };
    }));
    return { ok: true, results };
  }

  private async onStatus(msg: Msg, action: StatusAction): Promise<unknown> {
    const { id } = parseIdRequest(decodeObject(msg.data));
    const result = await this.sendBound(this.shardOf(id), { k: 'status', workerId: id, action });
    if (!result.ok) throw this.boundError(result);
    return { ok: true, worker: (result as { worker: WorkerView }).worker };
  }

  /** A worker agent's report: to its worker's shard owner, whose instructions are the reply. */
  private async onReport(msg: Msg, deadline: number | null): Promise<unknown> {
    const report = parseAgentReport(decodeObject(msg.data));
    // Retried only while the agent still waits: a report acted on after a newer one could end a
    // running container (the owner also refuses it past its deadline or behind a newer sequence).
    const result = await this.sendBound(this.shardOf(report.workerId), { k: 'report', report, deadline: deadline ?? 0 }, deadline);
    // Not acted on because the agent's deadline passed (here or at the owner): say that, not why else.
    if (!result.ok && deadline !== null && Date.now() > deadline) return deadlineExceeded(deadline, 'before its report could be acted on');
    if (!result.ok) throw this.boundError(result);
    return { ok: true, ...(result as { agent: AgentInstructions }).agent };
  }

  /** One op to one shard's owner (local or over NATS), for the backlog's holds and held placements. */
  ask(shard: number, op: ShardOp): Promise<ShardOpResult> {
    return this.send(shard, op);
  }

  /** Hand a requeued container to its home shard's backlog; whether it has it now. */
  async requeue(containerId: string): Promise<boolean> {
    const result = await this.sendBound(this.shardOf(containerId), { k: 'requeue', id: containerId });
    return result.ok;
  }

  private async onRemove(msg: Msg): Promise<unknown> {
    const { id } = parseIdRequest(decodeObject(msg.data));
    const result = await this.sendBound(this.shardOf(id), { k: 'remove', workerId: id });
    if (!result.ok) throw this.boundError(result);
    return { ok: true, id, status: 'removed' };
  }

  private async onWorkerGet(msg: Msg): Promise<unknown> {
    const { id } = parseIdRequest(decodeObject(msg.data));
    const record = await this.read(() => this.options.store.readWorker(this.shardOf(id), id));
    if (record === null) throw new DroverError('NOT_FOUND', `worker ${id} is not registered`);
    return { ok: true, worker: workerView(record) };
  }

  /** Pages through workers shard by shard; the cursor is "<shard>:<offset>". */
  private async onWorkerList(msg: Msg): Promise<unknown> {
    const { cursor, limit } = parseListRequest(decodeObject(msg.data));
    let [shard, offset] = cursor === null ? [0, 0] : cursor.split(':').map(Number) as [number, number];
    const workers: WorkerView[] = [];
    while (shard < this.options.config.shards && workers.length < limit) {
      const ids = await this.read(() => this.options.store.listShardWorkerIds(shard));
      const slice = ids.slice(offset, offset + (limit - workers.length));
      for (const id of slice) {
        const record = await this.read(() => this.options.store.readWorker(shard, id));
        if (record !== null) workers.push(workerView(record));
      }
      offset += slice.length;
      if (offset >= ids.length) {
        shard += 1;
        offset = 0;
      }
    }
    return { ok: true, workers, next: shard < this.options.config.shards ? `${shard}:${offset}` : null };
  }

  /** A Redis read for a client: if Redis cannot answer, the client gets UNAVAILABLE, not INTERNAL. */
  private async read<T>(run: () => Promise<T>): Promise<T> {
    try {
      const result = await run();
      this.redisReads.ok();
      return result;
    } catch (error) {
      if (error instanceof CorruptRecordError) throw error;
      this.redisReads.fail(error);
      throw new DroverError('UNAVAILABLE', 'Redis is unreachable from this replica right now; retry');
    }
  }

  private shardOf(workerId: string): number {
    return shardOf(workerId, this.options.config.shards);
  }

  /** To the shard's owner: in this process when we hold it, over NATS otherwise. */
  private async send(shard: number, op: ShardOp): Promise<ShardOpResult> {
    const local = this.options.localOwner?.(shard) ?? null;
    if (local === null || local.state !== 'serving') return this.shardClient.send(shard, op);
    this.stats.localOps += 1;
    let result: ShardOpResult;
    try {
      // Bounded without a timer of our own: the owner's Redis commands time out (commandTimeout,
      // a third of the lease TTL), and an op queued behind them is answered when they do.
      result = await local.execute(op);
    } catch (error) {
      this.options.log.error({ err: error, shard, op: op.k }, 'local shard op failed');
      result = { ok: false, code: 'UNAVAILABLE', message: `shard ${shard} failed the op: ${(error as Error).message}` };
    }
    // As a remote owner's reply would, refresh this router's view of the shard at once.
    const capacity = this.options.localCapacity?.(shard) ?? null;
    if (capacity !== null) this.view.update(capacity);
    return result;
  }

  /** Send an op that only one shard can serve, waiting out a short hand-over before giving up. */
  private async sendBound(shard: number, op: ShardOp, deadline: number | null = null): Promise<ShardOpResult> {
    let result: ShardOpResult = { ok: false, code: 'UNAVAILABLE', message: 'not tried' };
    for (let attempt = 0; attempt < MAX_BOUND_ATTEMPTS; attempt += 1) {
      if (attempt > 0) await delay(BOUND_RETRY_DELAY_MS * attempt);
      if (attempt > 0 && deadline !== null && Date.now() > deadline) return result;
      result = await this.send(shard, op);
      if (result.ok || (result.code !== 'UNAVAILABLE' && result.code !== 'RETRY')) return result;
    }
    return result;
  }

  private boundError(result: ShardOpResult & { ok: false }): DroverError {
    switch (result.code) {
      case 'NOT_FOUND':
      case 'CONFLICT':
      case 'INVALID_REQUEST':
      case 'UNAVAILABLE':
        if (result.code === 'UNAVAILABLE') this.stats.unavailable += 1;
        return new DroverError(result.code, result.message);
      case 'AGENT_CONFLICT':
        return new DroverError(result.code, result.message);
      case 'RETRY':
        this.stats.unavailable += 1;
        return new DroverError('UNAVAILABLE', `${result.message}; retry`);
      default:
        return new DroverError('INTERNAL', `unexpected shard answer ${result.code}: ${result.message}`);
    }
  }
}

function respond(msg: Msg, body: unknown): void {
  if (msg.reply) msg.respond(JSON.stringify(body));
}

/** A public subject's handler, given the request and its client's deadline (read once, in `serve`). */
type Handler = (msg: Msg, clientDeadline: number | null) => Promise<unknown>;

function describeRequest(request: ContainerRequest): string {
  return `cpu ${request.cpu}m, memory ${request.memory}MiB` +
    `${request.gpuCount > 0 ? `, ${request.gpuCount} GPU ${request.gpu ?? 'of any type'}` : ''}${request.pool !== null ? `, pool ${request.pool}` : ''}`;
}

/**
 * The client's request key header. A malformed one is refused (INVALID_REQUEST) rather than
 * ignored: a client that believes its retries are safe must not be silently treated as one without a key.
 */
function requestKey(msg: Msg): string | null {
  const raw = msg.headers?.get(REQUEST_KEY_HEADER);
  if (raw === undefined || raw === '') return null;
  if (!REQUEST_KEY_PATTERN.test(raw)) {
    throw new DroverError('INVALID_REQUEST', `header ${REQUEST_KEY_HEADER} must match ${REQUEST_KEY_PATTERN.source}`);
  }
  return raw;
}

/**
 * The client's deadline header, or null without one. A malformed one is refused (INVALID_REQUEST),
 * not ignored: a client that believes its request dies at its deadline must not be served past it.
 */
function clientDeadline(msg: Msg): number | null {
  const raw = msg.headers?.get(DEADLINE_HEADER);
  if (raw === undefined || raw === '') return null;
  const value = /^[0-9]{1,16}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new DroverError('INVALID_REQUEST', `header ${DEADLINE_HEADER} must be a time in Unix milliseconds (a whole number above 0); got ${JSON.stringify(raw.slice(0, 40))}`);
  }
  return value;
}

/** The answer to a request whose client deadline passed `when`: the deadline, and this replica's clock. */
function deadlineExceeded(deadline: number, when: string): ErrorReply {
  const replicaTime = Date.now();
  return errorReply(
    'DEADLINE_EXCEEDED',
    `the request's ${DEADLINE_HEADER} ${deadline} passed ${replicaTime - deadline} ms ago by this replica's clock (${replicaTime}), ${when}; nothing was done`,
    { deadline, replicaTime },
  );
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
