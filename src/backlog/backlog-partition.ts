/**
 * One home shard's backlog: the queued containers whose id hashes to this shard, held by the
 * replica that holds the shard's lease, under the same epoch as the shard's workers. It is the
 * durable half of the backlog: what it says "queued" is in Redis (backlog_commit.lua) before the
 * client hears it, and it is rebuilt from Redis by the next owner. Deciding what to place when is
 * the scheduler's job (backlog-scheduler.ts); this module only keeps entries and writes them.
 *
 * Writes are group-committed like the shard owner's: one fenced backlog_commit per shard in flight,
 * carrying every op queued meanwhile (up to MAX_BATCH_OPS). An epoch refusal closes the partition
 * at once: another replica owns the shard's backlog now.
 *
 * Bounded work. Every kind of write (queue, end, drop) waits in the one queue, bounded by
 * `maxQueuedOps`: a queue or an end past it is answered unavailable (an expiry is simply tried at
 * the next sweep), and a drop past it is left to the reconciliation. An entry whose end is being
 * written is not ended again, and a refused end writes nothing after it (backlog_commit.lua takes a
 * record that is not queued out of the set in the same op).
 *
 * Reconciliation. Memory and Redis can disagree when a write's reply is lost (a queue that did
 * land, an end that did not): the set holds a queued id no entry holds, or an entry is held whose
 * record is no longer queued. So the partition compares them, page by page, after every write of
 * unknown outcome (just those ids, RECONCILE_AFTER_UNKNOWN_MS later) and every RECONCILE_EVERY_MS
 * (the whole set): a queued record in the set is held (adopted, and tried by the scheduler), an
 * entry whose record is queued but missing from the set is put back in it, and what is not queued
 * any more is forgotten and dropped. So every record that says queued in this shard's set is held
 * by this partition within one reconciliation, where it can be placed, expired and cancelled.
 */
import { placementOf, type PlacementRequest } from '../../actors/capacity.js';
import { MAX_BATCH_OPS, type BacklogOp, type BacklogOutcome, type DroverStore } from '../store/store.js';
import type { ContainerRecord } from '../store/records.js';
import type { Incident } from '../util/incident.js';
import type { Logger } from '../util/log.js';
import type { ContainerEventPublisher } from '../events/container-events.js';

/** A queued container as the backlog holds it in memory (about 300 bytes; see README, "Backlog"). */
/** How long a queued entry may wait in all: what it was queued with (kept with its placement, for a requeue). */
export function maxWaitOf(entry: QueuedEntry): number {
  return Math.max(1, entry.expiresAt - entry.queuedAt);
}

/** Placed ids are removed from the Redis backlog set at most this long after their placement. */
const DROP_DELAY_MS = 100;
/** The whole set is compared with memory this often (plus up to a tenth more, so partitions spread out). */
export const RECONCILE_EVERY_MS = 30_000;
/** Ids of a write whose outcome is unknown are compared with memory this long after it (Redis may be back by then). */
const RECONCILE_AFTER_UNKNOWN_MS = 1_000;
/** Ids read per page of the set (ZRANGE), and compared per round trip (ZMSCORE and records): one read stays bounded. */
const RECONCILE_PAGE = 1_000;
/** Ids of unknown outcome kept for the next targeted reconciliation; beyond this the full one finds them. */
const MAX_UNSETTLED_IDS = 10_000;

export interface QueuedEntry {
  readonly id: string;
  readonly shard: number;
  readonly requestKey: string;
  readonly priority: number;
  readonly queuedAt: number;
  readonly expiresAt: number;
  readonly request: PlacementRequest;
  /** A placement attempt is in flight: it must not be expired or cancelled under the attempt. */
  attempting: boolean;
  /** Its end (expiry or cancel) is being written: it is not ended again, nor attempted, meanwhile. */
  ending: boolean;
  /** Settles when the end being written is answered (a second end waits for it). */
  endWritten?: Promise<unknown>;
  /** Removed from the backlog (placed, cancelled, expired): a heap slot still naming it is skipped. */
  gone: boolean;
  /** Told when the attempt in flight ends (a cancel waits for it). */
  settled: Array<() => void>;
  /** The shard holding a worker for it (it waited past the hold bound), if any. */
  holdShard?: number;
  /** A hold request for it is in flight. */
  holding?: boolean;
}

export type QueueResult =
  | { readonly outcome: 'queued'; readonly entry: QueuedEntry; readonly created: boolean }
  | { readonly outcome: 'placed'; readonly workerId: string; readonly requestKey: string }
  | { readonly outcome: 'refused'; readonly code: 'CONFLICT' | 'BACKLOG_FULL'; readonly message: string }
  | { readonly outcome: 'unavailable'; readonly message: string };

export type CancelResult = 'cancelled' | 'not-queued' | 'unavailable';

export interface QueueRequest extends PlacementRequest {
  readonly id: string;
  readonly priority: number;
  readonly maxWaitMs: number;
  readonly spec: string;
}

export interface BacklogPartitionOptions {
  readonly store: DroverStore;
  readonly shard: number;
  readonly epoch: number;
  readonly log: Logger;
  readonly redisWrites: Incident;
  readonly leaseHeld: () => boolean;
  readonly onFenced: (shard: number) => void;
  readonly events: ContainerEventPublisher;
  /** Writes of every kind waiting for a commit beyond which new ones are refused (back-pressure). */
  readonly maxQueuedOps: number;
  /** The whole set is reconciled this often (default RECONCILE_EVERY_MS; tests shorten it). */
  readonly reconcileEveryMs?: number;
}

export interface ReconcileStats {
  /** Queued records found in Redis that no entry held: now held. */
  adopted: number;
  /** Entries whose record was queued but not in the set: put back in it. */
  restored: number;
  /** Entries or ids whose record is not queued any more: forgotten (and dropped from the set). */
  forgotten: number;
  /** Reconciliations run (whole set or ids), and those a Redis error cut short. */
  runs: number;
  failed: number;
}

interface PendingWrite {
  readonly op: BacklogOp;
  readonly resolve: (outcome: BacklogOutcome | null) => void;
}

export class BacklogPartition {
  readonly shard: number;
  readonly epoch: number;
  readonly entries = new Map<string, QueuedEntry>();
  private writes: PendingWrite[] = [];
  /** Ids placed (or found ended) whose removal from the Redis set waits for the next drop batch. */
  private drops: string[] = [];
  private dropTimer: NodeJS.Timeout | null = null;
  private committing = false;
  private flushScheduled = false;
  private closed = false;
  private idleWaiters: Array<() => void> = [];
  /** Ids whose write had an unknown outcome, for the next targeted reconciliation. */
  private unsettled = new Set<string>();
  private unsettledTimer: NodeJS.Timeout | null = null;
  private reconcileTimer: NodeJS.Timeout | null = null;
  private reconciling: Promise<void> | null = null;
  /** Ends being written now (see endsInFlight). */
  private ending = 0;
  /** A drop was left out at the bound: the next whole reconciliation writes it. */
  private dropsDeferred = false;
  /** Told of every entry the reconciliation adopted (the scheduler tries it like a new one). */
  onAdopted: (entry: QueuedEntry) => void = () => undefined;
  readonly stats = { batches: 0, fenceRefusals: 0, written: { queue: 0, drop: 0, end: 0 }, reconcile: { adopted: 0, restored: 0, forgotten: 0, runs: 0, failed: 0 } as ReconcileStats };

  private constructor(private readonly options: BacklogPartitionOptions) {
    this.shard = options.shard;
    this.epoch = options.epoch;
  }

  /** Ends (expiries, cancels) being written now. */
  get endsInFlight(): number {
    return this.ending;
  }

  /** Writes waiting for a commit now (every kind; drops included). */
  get pendingWrites(): number {
    return this.writes.length + this.drops.length;
  }

  /** Writes that may still be queued before the bound (every kind counts). */
  get writeRoom(): number {
    return Math.max(0, this.options.maxQueuedOps - this.writes.length - this.drops.length);
  }

  /**
   * Rebuild the shard's backlog from Redis. Call only after the epoch bump: a previous owner can
   * no longer write it, so what is read is complete. Ids whose record says placed or ended (the
   * previous owner placed them and stopped before forgetting them) are forgotten now.
   */
  static async open(options: BacklogPartitionOptions): Promise<BacklogPartition> {
    const partition = new BacklogPartition(options);
    const stale: string[] = [];
    for (const { id, record } of await options.store.loadBacklog(options.shard)) {
      if (record !== null && record.status === 'queued') partition.entries.set(id, entryFromRecord(options.shard, record));
      else stale.push(id);
    }
    for (const id of stale) void partition.write({ kind: 'drop', containerId: id });
    partition.scheduleReconcile();
    return partition;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Queue a container (durable once this resolves 'queued'); idempotent for the same request key. */
  async queue(request: QueueRequest, requestKey: string): Promise<QueueResult> {
    if (this.closed) return { outcome: 'unavailable', message: `the backlog of shard ${this.shard} is closed on this replica` };
    const existing = this.entries.get(request.id);
    if (existing !== undefined) {
      if (existing.requestKey === requestKey) return { outcome: 'queued', entry: existing, created: false };
      return { outcome: 'refused', code: 'CONFLICT', message: `container ${request.id} is already queued by another request` };
    }
    if (this.writeRoom === 0) {
      return { outcome: 'unavailable', message: `the backlog of shard ${this.shard} has ${this.writes.length} writes waiting; retry` };
    }
    const outcome = await this.write({
      kind: 'queue',
      containerId: request.id,
      requestKey,
      priority: request.priority,
      maxWaitMs: request.maxWaitMs,
      cpu: request.cpu,
      memory: request.memory,
      gpu: request.gpu,
      gpuCount: request.gpuCount,
      pool: request.pool,
      spec: request.spec,
    });
    if (outcome === null) return { outcome: 'unavailable', message: `the backlog of shard ${this.shard} could not be written; retry` };
    switch (outcome.code) {
      case 'QUEUED': {
        const current = this.entries.get(request.id);
        if (current !== undefined) return { outcome: 'queued', entry: current, created: false };
        const { id, priority } = request;
        const entry: QueuedEntry = {
          id,
          shard: this.shard,
          requestKey,
          priority,
          queuedAt: Number(outcome.extra),
          expiresAt: Number(outcome.extra) + request.maxWaitMs,
          request: placementOf(request),
          attempting: false,
          ending: false,
          gone: false,
          settled: [],
        };
        this.entries.set(id, entry);
        // Only a new record is a status write (seq > 0); a requeued record was queued, and its
        // event published, by the Q op of its worker's shard (group-commit.ts).
        if (outcome.seq > 0) this.options.events.publish({ id, status: 'queued', seq: outcome.seq });
        return { outcome: 'queued', entry, created: true };
      }
      case 'PLACED': {
        const [workerId = '', holderKey = ''] = outcome.extra.split(' ');
        return { outcome: 'placed', workerId, requestKey: holderKey };
      }
      case 'QUEUED_BY':
        return { outcome: 'refused', code: 'CONFLICT', message: `container ${request.id} is already queued by another request` };
      case 'ENDED': {
        const [status = 'released'] = outcome.extra.split(' ');
        return { outcome: 'refused', code: 'CONFLICT', message: `container ${request.id} already ended (${status}) without being placed; use a new id` };
      }
      case 'FULL':
        return { outcome: 'refused', code: 'BACKLOG_FULL', message: `the backlog is full (shard ${this.shard} holds its share of DROVER_BACKLOG_MAX); retry later` };
      default:
        this.options.log.error({ shard: this.shard, code: outcome.code }, 'backlog_commit answered a queue op with an unexpected code');
        return { outcome: 'unavailable', message: `the backlog of shard ${this.shard} answered ${outcome.code}` };
    }
  }

  /**
   * Forget an entry its attempt placed (or found placed or ended). In memory at once, so nothing
   * attempts it again; in Redis in the background: until then, the next owner would find the
   * record placed and drop the id itself. `unqueued`: the placement's own commit already took the
   * id out of the set (it was placed in this, its home, shard), so there is nothing to write.
   */
  forget(entry: QueuedEntry, unqueued = false): void {
    entry.gone = true;
    if (this.entries.get(entry.id) === entry) this.entries.delete(entry.id);
    if (this.closed || unqueued) return;
    this.dropLater(entry.id);
  }

  private dropLater(id: string): void {
    // Bounded like every write: past the bound the id stays in the set (its record says placed or
    // ended), and the next whole reconciliation drops it, as a next owner would.
    if (this.writeRoom === 0) {
      this.dropsDeferred = true;
      return;
    }
    // Dropped in Redis in batches (every DROP_DELAY_MS, or at MAX_BATCH_OPS): one script call for
    // many placements instead of one per few. Until then the set holds an id whose record says
    // placed, which a next owner drops itself.
    this.drops.push(id);
    if (this.drops.length >= MAX_BATCH_OPS) this.flushDrops();
    else if (this.dropTimer === null) this.dropTimer = setTimeout(() => this.flushDrops(), DROP_DELAY_MS);
  }

  private flushDrops(): void {
    if (this.dropTimer !== null) clearTimeout(this.dropTimer);
    this.dropTimer = null;
    const drops = this.drops;
    this.drops = [];
    for (const containerId of drops) void this.write({ kind: 'drop', containerId });
  }

  /**
   * End a queued entry without a placement: a client's cancel, or its maxWaitMs passed. One end per
   * entry at a time: an entry already ending is not ended again ('not-queued': the caller reads the
   * record, which the end in flight settles). 'unavailable' past the write bound, or when the
   * outcome is unknown (the entry stays, and is reconciled).
   */
  async end(entry: QueuedEntry, reason: 'CANCELLED' | 'EXPIRED'): Promise<CancelResult> {
    if (this.closed) return 'unavailable';
    if (entry.ending) {
      // Another end of it is being written (a cancel during its expiry): its outcome is the
      // answer; the caller reads the record, which that write settled.
      await entry.endWritten;
      return entry.gone ? 'not-queued' : 'unavailable';
    }
    if (entry.gone) return 'not-queued';
    if (this.writeRoom === 0) return 'unavailable';
    const status = reason === 'CANCELLED' ? 'released' : 'failed';
    entry.ending = true;
    this.ending += 1;
    let outcome: BacklogOutcome | null;
    const written = this.write({ kind: 'end', containerId: entry.id, status, reason });
    entry.endWritten = written;
    try {
      outcome = await written;
    } finally {
      entry.ending = false;
      entry.endWritten = undefined;
      this.ending -= 1;
    }
    if (outcome === null) return 'unavailable';
    if (outcome.code === 'ENDED_NOW') {
      entry.gone = true;
      if (this.entries.get(entry.id) === entry) this.entries.delete(entry.id);
      this.options.events.publish({ id: entry.id, status, reason, seq: outcome.seq });
      return 'cancelled';
    }
    // The record is not queued any more: a placement (from an attempt of a previous owner of this
    // backlog, still in flight when it lost the lease) won, or an earlier end whose reply was lost
    // did. The same op took the id out of the set, so the entry is forgotten with no drop to write;
    // the caller reads the record again.
    this.forget(entry, true);
    return 'not-queued';
  }

  /**
   * Compare memory with Redis for these ids now (a cancel for an id this partition does not hold,
   * a write whose outcome was unknown): a queued record is held, a record that is not queued is
   * forgotten. Throws if Redis cannot be read.
   */
  async settle(ids: readonly string[]): Promise<void> {
    for (let start = 0; start < ids.length && !this.closed; start += RECONCILE_PAGE) {
      await this.settlePage(ids.slice(start, start + RECONCILE_PAGE));
    }
  }

  /** Reconcile the whole set with memory now (also runs every RECONCILE_EVERY_MS on its own). */
  reconcile(): Promise<void> {
    this.reconciling ??= this.reconcileAll().finally(() => {
      this.reconciling = null;
    });
    return this.reconciling;
  }

  private async reconcileAll(): Promise<void> {
    this.stats.reconcile.runs += 1;
    this.dropsDeferred = false;
    // Redis to memory: every id of the set, page by page; the ids no entry holds are settled.
    // (An id can move between pages while the set changes; the next run sees what this one missed.)
    for (let start = 0; !this.closed; start += RECONCILE_PAGE) {
      const page = await this.options.store.backlogPage(this.shard, start, RECONCILE_PAGE);
      const unheld = page.filter((id) => !this.entries.has(id));
      if (unheld.length > 0) await this.settlePage(unheld);
      if (page.length < RECONCILE_PAGE) break;
    }
    // Memory to Redis: entries at rest (not being attempted or ended) whose id is not in the set.
    // Only set membership is read for them (one ZMSCORE a page); records only for the few missing.
    const atRest = [...this.entries.values()].filter((entry) => !entry.attempting && !entry.ending).map((entry) => entry.id);
    for (let start = 0; start < atRest.length && !this.closed; start += RECONCILE_PAGE) {
      const page = atRest.slice(start, start + RECONCILE_PAGE);
      const inSet = await this.options.store.inBacklog(this.shard, page);
      const missing = page.filter((_, index) => !inSet[index]);
      if (missing.length > 0) await this.settlePage(missing, true);
    }
  }

  /**
   * One page of ids: read whether each is in the set and its record, and make memory and the set
   * agree with the record. `onlyMissing`: act only on ids not in the set (the entries' pass).
   */
  private async settlePage(ids: readonly string[], onlyMissing = false): Promise<void> {
    const members = await this.options.store.backlogMembers(this.shard, ids);
    if (this.closed) return;
    for (const { id, inSet, record } of members) {
      if (onlyMissing && inSet) continue;
      const entry = this.entries.get(id);
      // An attempt or an end in flight settles this entry itself.
      if (entry !== undefined && (entry.attempting || entry.ending)) continue;
      if (record !== null && record.status === 'queued') {
        let held = entry;
        if (held === undefined) {
          held = entryFromRecord(this.shard, record);
          this.entries.set(id, held);
          this.stats.reconcile.adopted += 1;
          this.onAdopted(held);
        }
        if (!inSet && this.writeRoom > 0) {
          // Back in the set (backlog_commit's queue op with the same key only adds the id).
          this.stats.reconcile.restored += 1;
          void this.write(requeueOp(held, record));
        }
        continue;
      }
      if (entry !== undefined) {
        this.stats.reconcile.forgotten += 1;
        this.forget(entry, true);
      }
      if (inSet) this.dropLater(id);
    }
  }

  /** Reconcile the whole set every RECONCILE_EVERY_MS (and sooner after drops were left at the bound). */
  private scheduleReconcile(): void {
    if (this.closed) return;
    const every = this.options.reconcileEveryMs ?? RECONCILE_EVERY_MS;
    this.reconcileTimer = setTimeout(() => {
      this.reconcileTimer = null;
      this.reconcile()
        .catch((error: unknown) => {
          this.stats.reconcile.failed += 1;
          this.options.redisWrites.fail(error, { shard: this.shard, op: 'backlog reconciliation (tried again later)' });
        })
        .finally(() => this.scheduleReconcile());
    }, every + Math.floor(Math.random() * every * 0.1));
    this.reconcileTimer.unref();
  }

  /** Ids of a write of unknown outcome: reconciled RECONCILE_AFTER_UNKNOWN_MS later, and again until Redis answers. */
  private settleLater(ids: readonly string[]): void {
    if (this.closed) return;
    for (const id of ids) if (this.unsettled.size < MAX_UNSETTLED_IDS) this.unsettled.add(id);
    if (this.unsettledTimer !== null) return;
    this.unsettledTimer = setTimeout(() => {
      this.unsettledTimer = null;
      const ids = [...this.unsettled];
      this.unsettled.clear();
      this.stats.reconcile.runs += 1;
      this.settle(ids).catch((error: unknown) => {
        this.stats.reconcile.failed += 1;
        this.options.redisWrites.fail(error, { shard: this.shard, op: 'backlog reconciliation of unknown writes (tried again)' });
        this.settleLater(ids);
      });
    }, RECONCILE_AFTER_UNKNOWN_MS);
    this.unsettledTimer.unref();
  }

  /** Stop writing; queued writes are answered null (unavailable). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.dropTimer !== null) clearTimeout(this.dropTimer);
    this.dropTimer = null;
    if (this.reconcileTimer !== null) clearTimeout(this.reconcileTimer);
    this.reconcileTimer = null;
    if (this.unsettledTimer !== null) clearTimeout(this.unsettledTimer);
    this.unsettledTimer = null;
    this.unsettled.clear();
    this.drops = [];
    const writes = this.writes;
    this.writes = [];
    for (const write of writes) write.resolve(null);
    for (const entry of this.entries.values()) entry.gone = true;
    this.entries.clear();
  }

  /** Let queued and in-flight writes finish, then close (a graceful hand-over). */
  async drain(): Promise<void> {
    if (!this.closed && this.drops.length > 0) this.flushDrops();
    if (this.committing || this.writes.length > 0 || this.flushScheduled) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    this.close();
  }

  private write(op: BacklogOp): Promise<BacklogOutcome | null> {
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.writes.push({ op, resolve });
      if (!this.flushScheduled && !this.committing) {
        this.flushScheduled = true;
        setImmediate(() => {
          this.flushScheduled = false;
          void this.flush();
        });
      }
    });
  }

  private async flush(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    try {
      while (this.writes.length > 0 && !this.closed) await this.commit(this.writes.splice(0, MAX_BATCH_OPS));
    } finally {
      this.committing = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const waiter of waiters) waiter();
    }
  }

  private async commit(batch: PendingWrite[]): Promise<void> {
    if (!this.options.leaseHeld()) {
      for (const write of batch) write.resolve(null);
      return;
    }
    let result;
    for (const write of batch) this.stats.written[write.op.kind] += 1;
    try {
      result = await this.options.store.commitBacklog(this.shard, this.epoch, batch.map((write) => write.op));
    } catch (error) {
      // Outcome unknown: every op here is idempotent (queue by request key, drop and end by the
      // record's status), and the ids are reconciled with Redis shortly (a queue that landed is
      // held, an end that landed is forgotten), whether or not the caller retries.
      this.options.redisWrites.fail(error, { shard: this.shard, ops: batch.length, op: 'backlog commit (outcome unknown; reconciled)' });
      for (const write of batch) write.resolve(null);
      this.settleLater(batch.map((write) => write.op.containerId));
      return;
    }
    this.options.redisWrites.ok();
    this.stats.batches += 1;
    if (result.fenced) {
      this.stats.fenceRefusals += 1;
      for (const write of batch) write.resolve(null);
      this.options.log.warn({ shard: this.shard, epoch: this.epoch, currentEpoch: result.currentEpoch }, 'backlog fenced: another replica owns this shard now');
      this.close();
      this.options.onFenced(this.shard);
      return;
    }
    batch.forEach((write, index) => write.resolve(result.outcomes[index]!));
  }
}

/** The queue op that puts a queued record's id back in the set (same key: the script only adds the id). */
function requeueOp(entry: QueuedEntry, record: ContainerRecord): BacklogOp {
  return {
    kind: 'queue',
    containerId: entry.id,
    requestKey: entry.requestKey,
    priority: entry.priority,
    maxWaitMs: maxWaitOf(entry),
    ...entry.request,
    spec: record.spec,
  };
}

function entryFromRecord(shard: number, record: ContainerRecord): QueuedEntry {
  return {
    id: record.id,
    shard,
    requestKey: record.requestKey,
    priority: record.priority ?? 0,
    queuedAt: record.queuedAt ?? 0,
    expiresAt: record.expiresAt ?? Number.MAX_SAFE_INTEGER,
    request: placementOf(record),
    attempting: false,
    ending: false,
    gone: false,
    settled: [],
  };
}
