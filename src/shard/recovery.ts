/**
 * Recovery of a shard's actors from Redis, the source of truth: one worker after Redis refused a
 * write to it (its actor's view was wrong), or every worker after a commit whose outcome is unknown
 * (the connection broke while the script may have run).
 */
import type { DroverStore } from '../store/store.js';
import type { Incident } from '../util/incident.js';
import type { ShardWorkers, WorkerActor } from './shard-workers.js';

export interface RecoveryContext {
  readonly store: DroverStore;
  readonly shard: number;
  readonly redisWrites: Incident;
  readonly stats: { resyncs: number };
  /** A resync failed: reload everything before the next write. */
  readonly markReloadNeeded: () => void;
}

export async function resyncWorkers(workers: ShardWorkers, actors: Set<WorkerActor>, context: RecoveryContext): Promise<void> {
  for (const actor of actors) {
    const id = actor.getSnapshot().context.spec.id;
    try {
      const record = await context.store.readWorker(context.shard, id);
      context.stats.resyncs += 1;
      if (record === null) workers.remove(actor);
      else workers.tell(actor, { type: 'SYNCED', record });
    } catch (error) {
      context.redisWrites.fail(error, { shard: context.shard, worker: id, op: 'resync (the shard is reloaded before its next write)' });
      context.markReloadNeeded();
    }
  }
}

/** Resync every actor from Redis (after a commit of unknown outcome). */
export async function reloadWorkers(workers: ShardWorkers, context: RecoveryContext): Promise<void> {
  const startedAt = workers.generation;
  const records = await context.store.loadShard(context.shard);
  const seen = new Set<string>();
  for (const record of records) {
    seen.add(record.id);
    const actor = workers.get(record.id);
    if (actor === undefined) workers.add(record);
    else workers.tell(actor, { type: 'SYNCED', record });
  }
  for (const [id, actor] of [...workers.entries()]) {
    // A worker registered while the reload was reading may be missing from what it read.
    if (!seen.has(id) && workers.createdAtGeneration(actor) <= startedAt) workers.remove(actor);
  }
  context.stats.resyncs += records.length;
}
