/**
 * What a replica serves on one shard's subject: the shard's workers (its ShardOwner) and the
 * shard's backlog (its BacklogPartition, ops for containers whose id hashes to this shard). Both
 * were opened under the same lease epoch and are closed together.
 */
import type { BacklogPartition } from '../backlog/backlog-partition.js';
import type { BacklogScheduler } from '../backlog/backlog-scheduler.js';
import type { ShardOp, ShardOpResult } from '../protocol/shard-messages.js';
import { shardOf } from '../shard/shard-map.js';
import type { ShardOwner, ShardOwnerState } from '../shard/shard-owner.js';

export class ShardEndpoint {
  constructor(
    readonly owner: ShardOwner,
    readonly backlog: BacklogPartition,
    private readonly scheduler: BacklogScheduler,
    private readonly shards: number,
  ) {}

  get state(): ShardOwnerState {
    return this.owner.state;
  }

  execute(op: ShardOp): ShardOpResult | Promise<ShardOpResult> {
    if (op.k !== 'enqueue' && op.k !== 'cancel') return this.owner.execute(op);
    if (this.owner.state !== 'serving' || this.backlog.isClosed) {
      return { ok: false, code: 'UNAVAILABLE', message: `shard ${this.owner.shard} is ${this.owner.state} on this replica` };
    }
    // A container's backlog is its id's home shard; any other would be a second queue for it.
    const home = shardOf(op.id, this.shards);
    if (home !== this.owner.shard) {
      return { ok: false, code: 'INVALID_REQUEST', message: `container ${op.id} queues in shard ${home}, not shard ${this.owner.shard}` };
    }
    return op.k === 'enqueue' ? this.enqueue(op) : this.cancel(op.id);
  }

  private async enqueue(op: Extract<ShardOp, { k: 'enqueue' }>): Promise<ShardOpResult> {
    const result = await this.backlog.queue({ id: op.id, ...op.request, priority: op.priority, maxWaitMs: op.maxWaitMs, spec: op.spec }, op.requestKey);
    switch (result.outcome) {
      case 'queued':
        if (result.created) this.scheduler.queued(result.entry);
        return { ok: true, queued: true };
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
