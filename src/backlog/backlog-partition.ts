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
  /** Writes waiting for a commit beyond which new ones are refused (back-pressure). */
  readonly maxQueuedOps: number;
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
  readonly stats = { batches: 0, fenceRefusals: 0 };

  private constructor(private readonly options: BacklogPartitionOptions) {
    this.shard = options.shard;
    this.epoch = options.epoch;
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
    if (this.writes.length >= this.options.maxQueuedOps) {
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
    // Dropped in Redis in batches (every DROP_DELAY_MS, or at MAX_BATCH_OPS): one script call for
    // many placements instead of one per few. Until then the set holds an id whose record says
    // placed, which a next owner drops itself.
    this.drops.push(entry.id);
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

  /** End a queued entry without a placement: a client's cancel, or its maxWaitMs passed. */
  async end(entry: QueuedEntry, reason: 'CANCELLED' | 'EXPIRED'): Promise<CancelResult> {
    if (this.closed) return 'unavailable';
    const status = reason === 'CANCELLED' ? 'released' : 'failed';
    const outcome = await this.write({ kind: 'end', containerId: entry.id, status, reason });
    if (outcome === null) return 'unavailable';
    if (outcome.code === 'ENDED_NOW') {
      entry.gone = true;
      if (this.entries.get(entry.id) === entry) this.entries.delete(entry.id);
      this.options.events.publish({ id: entry.id, status, reason, seq: outcome.seq });
      return 'cancelled';
    }
    // The record is not queued any more: a placement (from an attempt of a previous owner of this
    // backlog, still in flight when it lost the lease) won. The entry is forgotten; the caller
    // reads the record again.
    this.forget(entry);
    return 'not-queued';
  }

  /** Stop writing; queued writes are answered null (unavailable). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.dropTimer !== null) clearTimeout(this.dropTimer);
    this.dropTimer = null;
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
    try {
      result = await this.options.store.commitBacklog(this.shard, this.epoch, batch.map((write) => write.op));
    } catch (error) {
      // Outcome unknown: every op here is idempotent (queue by request key, drop and end by the
      // record's status), so the caller's retry, or the next owner's load, settles it.
      this.options.redisWrites.fail(error, { shard: this.shard, ops: batch.length, op: 'backlog commit (outcome unknown)' });
      for (const write of batch) write.resolve(null);
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
    gone: false,
    settled: [],
  };
}
