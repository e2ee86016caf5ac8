/**
 * What a replica serves on one shard's subject: the shard's workers (its ShardOwner) and the
 * shard's backlog (its BacklogPartition, ops for containers whose id hashes to this shard). Both
 * were opened under the same lease epoch and are closed together.
 */
import { placementOf } from '../../actors/capacity.js';
import type { BacklogPartition } from '../backlog/backlog-partition.js';
import type { BacklogScheduler } from '../backlog/backlog-scheduler.js';
import type { ShardOp, ShardOpResult } from '../protocol/shard-messages.js';
import type { DroverStore } from '../store/store.js';
import { shardOf } from '../shard/shard-map.js';
import type { ShardOwner, ShardOwnerState } from '../shard/shard-owner.js';

export class ShardEndpoint {
  constructor(
    readonly owner: ShardOwner,
    readonly backlog: BacklogPartition,
    private readonly scheduler: BacklogScheduler,
    private readonly shards: number,
    private readonly store: DroverStore,
  ) {}

  get state(): ShardOwnerState {
    return this.owner.state;
  }

  execute(op: ShardOp): ShardOpResult | Promise<ShardOpResult> {
    if (op.k !== 'enqueue' && op.k !== 'cancel' && op.k !== 'requeue') return this.owner.execute(op);
    if (this.owner.state !== 'serving' || this.backlog.isClosed) {
      return { ok: false, code: 'UNAVAILABLE', message: `shard ${this.owner.shard} is ${this.owner.state} on this replica` };
    }
    // A container's backlog is its id's home shard; any other would be a second queue for it.
    const home = shardOf(op.id, this.shards);
    if (home !== this.owner.shard) {
      return { ok: false, code: 'INVALID_REQUEST', message: `container ${op.id} queues in shard ${home}, not shard ${this.owner.shard}` };
    }
    if (op.k === 'requeue') return this.requeue(op.id);
    return op.k === 'enqueue' ? this.enqueue(op) : this.cancel(op.id);
  }

  /**
   * A container whose worker was lost before running it is queued again in its record (by its
   * worker's shard): hold it in this backlog again, with its key, priority, queue time and expiry.
   * Idempotent; a record that is no longer queued needs nothing.
   */
  private async requeue(id: string): Promise<ShardOpResult> {
    let record;
    try {
      record = await this.store.readContainer(id);
    } catch {
      return { ok: false, code: 'UNAVAILABLE', message: `could not read container ${id}; retry` };
    }
    if (record === null || record.status !== 'queued') return { ok: true, requeued: true };
    const queuedAt = record.queuedAt ?? Date.now();
    const maxWaitMs = Math.max(1, (record.expiresAt ?? queuedAt + 1) - queuedAt);
    const request = { id, ...placementOf(record), priority: record.priority ?? 0, maxWaitMs, spec: record.spec };
    const result = await this.scheduler.requeued(this.owner.shard, request, record.requestKey);
    if (result.outcome === 'queued') return { ok: true, requeued: true };
    if (result.outcome === 'unavailable') return { ok: false, code: 'UNAVAILABLE', message: result.message };
    // Placed again or ended meanwhile: nothing to hold.
    return { ok: true, requeued: true };
  }

  private async enqueue(op: Extract<ShardOp, { k: 'enqueue' }>): Promise<ShardOpResult> {
    const result = await this.backlog.queue({ id: op.id, ...op.request, priority: op.priority, maxWaitMs: op.maxWaitMs, spec: op.spec }, op.requestKey);
    switch (result.outcome) {
      case 'queued':
        if (result.created) this.scheduler.queued(result.entry);
        // Queued before by this request key: the router compares the retry with the record.
        return result.created ? { ok: true, queued: true } : { ok: true, queued: true, existing: true };
      case 'placed':
        return { ok: false, code: 'ALREADY_PLACED', message: `container ${op.id} is already placed on ${result.workerId}`, workerId: result.workerId, requestKey: result.requestKey };
      case 'refused':
        return { ok: false, code: result.code === 'BACKLOG_FULL' ? 'BACKLOG_FULL' : 'NOT_PLACEABLE', message: result.message };
      case 'unavailable':
        return { ok: false, code: 'UNAVAILABLE', message: result.message };
    }
  }

  private async cancel(id: string): Promise<ShardOpResult> {
    const result = await this.scheduler.cancel(this.owner.shard, id);
    if (result === 'cancelled') return { ok: true, cancelled: true };
    if (result === 'not-queued') return { ok: false, code: 'NOT_FOUND', message: `container ${id} is not queued` };
    return { ok: false, code: 'UNAVAILABLE', message: `the backlog of shard ${this.owner.shard} could not cancel ${id} now; retry` };
  }
}
