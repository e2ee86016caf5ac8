/**
 * Shard leases, taken and extended with redlock, each acquisition numbered by a Redis epoch.
 *
 * Redlock alone is not safe (a paused process wakes up believing it still holds an expired lock);
 * the epoch is what makes it safe: `take_epoch` bumps the shard's epoch only for the current
 * holder, and every capacity write checks it (see commit_batch.lua). The lease decides who *should*
 * write; the epoch makes sure nobody else *can*.
 *
 * Every third of the lease TTL the keeper extends what it holds (an extension that fails, or a
 * lease whose time ran out while the process was stalled, is given up at once) and tries to
 * acquire desired shards nobody holds. Handing a shard over is the replica's job: it drains the
 * shard's owner and then calls `release`.
 */
import type { Redis } from 'ioredis';
import Redlock, { type Lock } from 'redlock';
import type { DroverStore } from '../store/store.js';
import type { Logger } from '../util/log.js';

export interface ShardLeaseHandlers {
  /** The lease is ours with this epoch: open the shard. If this throws, the lease is released. */
  readonly onAcquired: (shard: number, epoch: number) => Promise<void>;
  /** The lease is gone (extension failed or expired): stop writing the shard now. */
  readonly onLost: (shard: number, reason: string) => void;
}

export interface ShardLeasesOptions {
  readonly redis: Redis;
  readonly store: DroverStore;
  readonly ttlMs: number;
  readonly log: Logger;
  readonly handlers: ShardLeaseHandlers;
  /** Acquisitions attempted at once (bounded so a replica starting with 4,096 shards stays polite). */
  readonly acquireConcurrency?: number;
}

interface HeldLease {
  lock: Lock;
  readonly epoch: number;
}

export class ShardLeases {
  private readonly redlock: Redlock;
  private readonly held = new Map<number, HeldLease>();
  /** Shards being acquired or released right now; the loop leaves them alone. */
  private readonly busy = new Set<number>();
  private desiredShards = new Set<number>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private stopped = false;
  private extending: Promise<void> | null = null;
  private acquiring: Promise<void> | null = null;
  readonly stats = { acquired: 0, lost: 0, released: 0, extendFailures: 0 };

  constructor(private readonly options: ShardLeasesOptions) {
    // retryCount 0: a held lease is someone else's; the loop tries again next tick.
    this.redlock = new Redlock([options.redis], { retryCount: 0, driftFactor: 0.01, automaticExtensionThreshold: 0 });
    // Redlock emits "error" for per-client failures; they are handled where the promise rejects.
    this.redlock.on('error', () => undefined);
  }

  get intervalMs(): number {
    return Math.max(100, Math.floor(this.options.ttlMs / 3));
  }

  /** The epoch of the lease this replica holds on the shard, or null. */
  epochOf(shard: number): number | null {
    return this.held.get(shard)?.epoch ?? null;
  }

  /** The shards this replica should own; the loop acquires missing ones. */
  setDesired(shards: Iterable<number>): void {
    this.desiredShards = new Set(shards);
  }

  isDesired(shard: number): boolean {
    return this.desiredShards.has(shard);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule(0);
  }

  /** Run one extend pass and one acquire pass now, and wait for both (tests use this to avoid waiting). */
  async tick(): Promise<void> {
    await this.extendAll();
    await this.acquireMissing();
  }

  /** Try the desired shards nobody holds now (a shard was just released, or membership changed). */
  acquireSoon(): void {
    if (this.running) void this.acquireMissing();
  }

  /** Whether this replica may still believe it holds the shard (its lease has not run out locally). */
  holds(shard: number): boolean {
    const lease = this.held.get(shard);
    return lease !== undefined && Date.now() < lease.lock.expiration;
  }

  /** Stop the loop; held leases stay until released or expired. */
  async stop(): Promise<void> {
    this.running = false;
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    await Promise.all([this.extending, this.acquiring]);
  }

  /** Give a shard up: its owner has already drained. */
  async release(shard: number): Promise<void> {
    const lease = this.held.get(shard);
    if (lease === undefined) return;
    this.held.delete(shard);
    this.busy.add(shard);
    try {
      await lease.lock.release();
      this.stats.released += 1;
    } catch (error) {
      // It expires on its own; the next owner bumps the epoch either way.
      this.options.log.warn({ err: error, shard }, 'lease release failed; it will expire');
    } finally {
      this.busy.delete(shard);
    }
  }

  /** Forget a shard without touching Redis (its writes were fenced: someone else has it). */
  forget(shard: number): void {
    if (this.held.delete(shard)) this.stats.lost += 1;
  }

  /**
   * One timer, two passes that never wait for each other: extensions must not queue behind a slow
   * acquisition (loading a big shard), or a held lease could run out while the replica is busy.
   */
  private schedule(delayMs: number): void {
    if (!this.running) return;
    this.timer = setTimeout(() => {
      void this.extendAll();
      void this.acquireMissing();
      this.schedule(this.intervalMs);
    }, delayMs);
  }

  private acquireMissing(): Promise<void> {
    if (this.acquiring !== null) return this.acquiring;
    this.acquiring = (async () => {
      const missing = [...this.desiredShards].filter((shard) => !this.held.has(shard) && !this.busy.has(shard));
      const concurrency = this.options.acquireConcurrency ?? 16;
      for (let i = 0; i < missing.length && !this.stopped; i += concurrency) {
        await Promise.all(missing.slice(i, i + concurrency).map((shard) => this.acquire(shard)));
      }
    })().finally(() => {
      this.acquiring = null;
    });
    return this.acquiring;
  }

  private extendAll(): Promise<void> {
    if (this.extending !== null) return this.extending;
    this.extending = this.extendHeld().finally(() => {
      this.extending = null;
    });
    return this.extending;
  }

  private async extendHeld(): Promise<void> {
    await Promise.all(
      [...this.held].map(async ([shard, lease]) => {
        if (this.busy.has(shard)) return;
        if (Date.now() >= lease.lock.expiration) {
          // The process stalled past the lease: someone may have it already. Stop writing.
          this.lose(shard, 'lease expired before it could be extended');
          return;
        }
        try {
          lease.lock = await lease.lock.extend(this.options.ttlMs);
        } catch (error) {
          this.stats.extendFailures += 1;
          this.lose(shard, `lease extension failed: ${(error as Error).message}`);
        }
      }),
    );
  }

  private lose(shard: number, reason: string): void {
    if (!this.held.delete(shard)) return;
    this.stats.lost += 1;
    this.options.log.warn({ shard, reason }, 'shard lease lost');
    this.options.handlers.onLost(shard, reason);
  }

  private async acquire(shard: number): Promise<void> {
    // The pass listed its shards when it began; membership or a shutdown may have changed since.
    if (this.stopped || !this.desiredShards.has(shard)) return;
    this.busy.add(shard);
    let lock: Lock | null = null;
    try {
      lock = await this.redlock.acquire([this.options.store.keys.lease(shard)], this.options.ttlMs);
      const epoch = await this.options.store.takeEpoch(shard, lock.value);
      if (epoch === 0) throw new Error('lease expired before the epoch was taken');
      this.held.set(shard, { lock, epoch });
      try {
        await this.options.handlers.onAcquired(shard, epoch);
      } catch (error) {
        this.held.delete(shard);
        throw error;
      }
      this.stats.acquired += 1;
    } catch (error) {
      if (lock !== null && !this.held.has(shard)) {
        this.options.log.warn({ err: error, shard }, 'could not open shard after acquiring its lease; releasing');
        await lock.release().catch(() => undefined);
      }
      // Otherwise the lease is someone else's (ResourceLockedError / ExecutionError): try next tick.
    } finally {
      this.busy.delete(shard);
    }
  }
}
