/**
 * The worker actors of one shard and the index of their capacity columns: the only way an actor is
 * created, told an event or removed, so the index never lags behind an actor.
 */
import type { Actor } from 'xstate';
import type { PlacementRequest, PlacementStrategy, WorkerRecord, WorkerStatus } from '../../actors/capacity.js';
import { restoreWorkerActor, type workerMachine, type WorkerEvent } from '../../actors/worker-machine.js';
import { workerViewOf, type CapacityGroup, type WorkerView } from '../protocol/shard-messages.js';
import { WorkerIndex } from './worker-index.js';

export type WorkerActor = Actor<typeof workerMachine>;

export class ShardWorkers {
  private readonly actors = new Map<string, WorkerActor>();
  /** Capacity columns mirrored from the actors, refreshed after every event sent to one. */
  private readonly index = new WorkerIndex();
  /** Counts actor creations; a reload leaves alone actors created after it began reading. */
  generation = 0;
  private readonly createdAt = new Map<WorkerActor, number>();

  get size(): number {
    return this.actors.size;
  }

  get(workerId: string): WorkerActor | undefined {
    return this.actors.get(workerId);
  }

  entries(): IterableIterator<[string, WorkerActor]> {
    return this.actors.entries();
  }

  /** When the actor was created, in `generation` units. */
  createdAtGeneration(actor: WorkerActor): number {
    return this.createdAt.get(actor) ?? 0;
  }

  /** The best worker for the request by the strategy, from the actors' local state (workers held for another container left out). */
  choose(request: PlacementRequest, strategy: PlacementStrategy, containerId: string | null = null): WorkerActor | null {
    return this.index.choose(request, strategy, containerId);
  }

  hold(actor: WorkerActor, containerId: string | null): void {
    this.index.hold(actor, containerId);
  }

  holderOf(actor: WorkerActor): string | undefined {
    return this.index.holderOf(actor);
  }

  summary(): CapacityGroup[] {
    return this.index.summarize();
  }

  add(record: WorkerRecord): WorkerActor {
    const actor = restoreWorkerActor(record);
    this.actors.set(record.id, actor);
    this.index.add(actor);
    this.generation += 1;
    this.createdAt.set(actor, this.generation);
    return actor;
  }

  remove(actor: WorkerActor): void {
    actor.stop();
    this.actors.delete(actor.getSnapshot().context.spec.id);
    this.index.remove(actor);
    this.createdAt.delete(actor);
  }

  /** Every event to an actor goes through here, so the index never lags behind the actor. */
  tell(actor: WorkerActor, event: WorkerEvent): void {
    actor.send(event);
    this.index.refresh(actor);
  }

  /**
   * The worker as the contract shows it, straight from the actor's context. Not by spreading the
   * spec into a record first: those objects had no shape V8 could keep, and building views was
   * 10 % of a replica's time while a fleet registered (profiled under the backlog benchmark).
   */
  view(actor: WorkerActor): WorkerView {
    const { context, value } = actor.getSnapshot();
    return workerViewOf(context.spec, context, value as WorkerStatus, context.resourceVersion);
  }

  /** Stop every actor (the owner closed). */
  clear(): void {
    for (const actor of this.actors.values()) actor.stop();
    this.actors.clear();
    this.index.clear();
    this.createdAt.clear();
  }
}
