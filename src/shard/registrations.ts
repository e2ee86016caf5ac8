/**
 * A shard owner's registrations, committed in groups: registrations that arrive while the previous
 * call is in flight go to Redis together in one fenced register_workers.lua call (at most
 * MAX_REGISTRATIONS_PER_CALL), like placements in group-commit.ts. A fleet registers by the
 * thousand, and one script call per worker cost a replica more than the registering itself
 * (measured under the backlog benchmark: the Redis client's work per call was ~15 % of a
 * replica's time while 10,000 workers registered).
 */
import type { WorkerSpec, WorkerStatus } from '../../actors/capacity.js';
import { MAX_REGISTRATIONS_PER_CALL, type DroverStore, type RegisterOutcome } from '../store/store.js';

/** What a queued registration came to; 'closed' and 'busy' were never sent to Redis. */
export type RegistrationResult =
  | RegisterOutcome
  /** The call failed on the client side (outcome unknown: registration is idempotent, retry). */
  | { readonly outcome: 'failed'; readonly error: unknown }
  /** The owner closed before it was sent. */
  | { readonly outcome: 'closed' }
  /** Too many registrations wait already. */
  | { readonly outcome: 'busy' };

interface Pending {
  readonly spec: WorkerSpec;
  readonly status: WorkerStatus;
  readonly resolve: (result: RegistrationResult) => void;
}

export interface RegistrationQueueOptions {
  readonly store: DroverStore;
  readonly shard: number;
  readonly epoch: number;
  /** Registrations waiting at most; more are answered 'busy' (the router retries). */
  readonly maxPending: number;
}

export class RegistrationQueue {
  private pending: Pending[] = [];
  private running = false;
  private closed = false;
  private idleWaiters: Array<() => void> = [];
  readonly stats = { calls: 0, registrations: 0 };

  constructor(private readonly options: RegistrationQueueOptions) {}

  register(spec: WorkerSpec, status: WorkerStatus): Promise<RegistrationResult> {
    if (this.closed) return Promise.resolve({ outcome: 'closed' });
    if (this.pending.length >= this.options.maxPending) return Promise.resolve({ outcome: 'busy' });
    return new Promise((resolve) => {
      this.pending.push({ spec, status, resolve });
      if (!this.running) void this.run();
    });
  }

  /** Resolves once nothing waits and no call is in flight (a graceful hand-over). */
  idle(): Promise<void> {
    if (!this.running && this.pending.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Registrations not yet sent are answered 'closed'; a call in flight is answered by Redis. */
  close(): void {
    this.closed = true;
    const pending = this.pending;
    this.pending = [];
    for (const { resolve } of pending) resolve({ outcome: 'closed' });
  }

  private async run(): Promise<void> {
    this.running = true;
    // Let the registrations of this turn (a router's message carries many) join the first call.
    await new Promise<void>((resolve) => setImmediate(resolve));
    try {
      while (this.pending.length > 0 && !this.closed) {
        const batch = this.pending.splice(0, MAX_REGISTRATIONS_PER_CALL);
        let results: readonly RegistrationResult[];
        try {
          const reply = await this.options.store.registerWorkers(this.options.epoch, this.options.shard, batch);
          this.stats.calls += 1;
          this.stats.registrations += batch.length;
          results = reply.fenced ? batch.map(() => ({ outcome: 'fenced', currentEpoch: reply.currentEpoch })) : reply.outcomes;
        } catch (error) {
          results = batch.map(() => ({ outcome: 'failed', error }));
        }
        batch.forEach((registration, index) => registration.resolve(results[index]!));
      }
    } finally {
      this.running = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const waiter of waiters) waiter();
    }
  }
}
