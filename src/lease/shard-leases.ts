/**
 * Shard leases, each acquisition numbered by a Redis epoch; extended and released with redlock.
 *
 * A lease alone is not safe (a paused process wakes up believing it still holds an expired lock);
 * the epoch is what makes it safe: `acquire_lease.lua` takes the lease and bumps the shard's epoch
 * in one atomic step, and every capacity write checks the epoch (see commit_batch.lua). The lease
 * decides who *should* write; the epoch makes sure nobody else *can*.
 *
 * Why not redlock's own acquire: it draws a fresh random value per call, so an acquisition that
 * ran in Redis but whose reply was lost (a command timeout on a slow link) leaves a lease that
 * nobody, not even this replica, can use until it expires; on a link slow enough for every reply
 * to be late, the shard would never be owned. Here the value is one per process, so acquiring is
 * idempotent: the next attempt finds its own value and takes the lease again. Redlock extends and
 * releases it (a Lock built on that value), which is exactly its compare-value-then-act scripts.
 *
 * Every third of the lease TTL the keeper extends what it holds (an extension that fails, or a
 * lease whose time ran out while the process was stalled, is given up at once) and tries to
 * acquire desired shards nobody holds. Handing a shard over is the replica's job: it drains the
 * shard's owner and then calls `release`.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import Redlock, { Lock } from 'redlock';
import type { DroverStore } from '../store/store.js';
import { Incident } from '../util/incident.js';
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
  /** This replica's id: the first part of its lease value, so an operator can see who holds a lease. */
  readonly replicaId: string;
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

/** Redlock's clock drift allowance, as its own acquire computes it. */
const DRIFT_FACTOR = 0.01;

export class ShardLeases {
  private readonly redlock: Redlock;
  /** This process's lease value: the same for every shard and every attempt (see above). */
  readonly value: string;
  private readonly held = new Map<number, HeldLease>();
  /** Shards being acquired or released right now; the loop leaves them alone. */
  private readonly busy = new Set<number>();
  private desiredShards = new Set<number>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private stopped = false;
  private extending: Promise<void> | null = null;
  private acquiring: Promise<void> | null = null;
  private readonly acquireIncident: Incident;
  private readonly extendIncident: Incident;
  readonly stats = { acquired: 0, lost: 0, released: 0, extendFailures: 0, acquireFailures: 0 };

  constructor(private readonly options: ShardLeasesOptions) {
    // retryCount 0: a refused extension means the lease is gone; the loop does the retrying.
    this.redlock = new Redlock([options.redis], { retryCount: 0, driftFactor: DRIFT_FACTOR, automaticExtensionThreshold: 0 });
    // Redlock emits "error" for per-client failures; they are handled where the promise rejects.
    this.redlock.on('error', () => undefined);
    this.value = `${options.replicaId}.${randomBytes(8).toString('hex')}`;
    this.acquireIncident = new Incident(options.log, 'lease acquisition');
    this.extendIncident = new Incident(options.log, 'lease extension');
  }

  get intervalMs(): number {
    return Math.max(100, Math.floor(this.options.ttlMs / 3));
  }

  /** The epoch of the lease this replica holds on the shard, or null. */
  epochOf(shard: number): number | null {
    return this.held.get(shard)?.epoch ?? null;
  }

  /** When the lease this replica holds on the shard expires unless extended (Unix ms), or null. */
  expiresAt(shard: number): number | null {
    return this.held.get(shard)?.lock.expiration ?? null;
  }

  /** The shards this replica should own; the loop acquires missing ones. */
  setDesired(shards: Iterable<number>): void {
    this.desiredShards = new Set(shards);
  }

  isDesired(shard: number): boolean {
    return this.desiredShards.has(shard);
  }

  /** The shards this replica should own now. */
  desired(): number[] {
    return [...this.desiredShards];
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.stopped = false;
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

  /** Give a shard up: its owner has already drained (or closed). Never rejects. */
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
      this.options.log.debug({ err: error, shard }, 'lease release failed; it will expire');
    } finally {
      this.busy.delete(shard);
    }
  }

  /**
   * Give up every lease this process holds or may hold: the held ones, and `shards` this replica
   * was trying to acquire (an acquisition whose reply was lost on a slow link may have taken a
   * lease in Redis after all). Each release deletes the lease only if it still holds this
   * process's value, so it never touches another replica's lease. Never rejects.
   */
  async releaseAll(shards: Iterable<number>): Promise<void> {
    const all = new Set([...this.held.keys(), ...shards]);
    await Promise.all(
      [...all].map(async (shard) => {
        if (this.held.has(shard)) return this.release(shard);
        const lock = new Lock(this.redlock, [this.options.store.keys.lease(shard)], this.value, [], 0);
        await lock.release().catch(() => undefined);
      }),
    );
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
      const acquired: number[] = [];
      for (let i = 0; i < missing.length && !this.stopped; i += concurrency) {
        const results = await Promise.all(missing.slice(i, i + concurrency).map((shard) => this.acquire(shard)));
        results.forEach((ok, j) => {
          if (ok) acquired.push(missing[i + j]!);
        });
      }
      // One line per pass, not one per shard.
      if (acquired.length > 0) this.options.log.info({ shards: acquired }, 'shards acquired');
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
    const lost: Array<{ shard: number; reason: string }> = [];
    let failures = 0;
    let lastError: unknown = null;
    await Promise.all(
      [...this.held].map(async ([shard, lease]) => {
        if (this.busy.has(shard)) return;
        if (Date.now() >= lease.lock.expiration) {
          // The process stalled past the lease: someone may have it already. Stop writing.
          if (this.lose(shard)) lost.push({ shard, reason: 'lease expired before it could be extended' });
          return;
        }
        try {
          lease.lock = await lease.lock.extend(this.options.ttlMs);
        } catch (error) {
          this.stats.extendFailures += 1;
          failures += 1;
          lastError = error;
          // The extension may have landed in Redis after all (a lost reply): the lease then still
          // holds this process's value, and the next acquire pass takes it back with a new epoch.
          if (this.lose(shard)) lost.push({ shard, reason: `lease extension failed: ${(error as Error).message}` });
        }
      }),
    );
    if (failures > 0) this.extendIncident.fail(lastError, { shards: failures });
    else if (this.held.size > 0) this.extendIncident.ok();
    if (lost.length > 0) {
      this.options.log.warn({ shards: lost.map((l) => l.shard), reason: lost[0]!.reason }, 'shard leases lost');
      for (const { shard, reason } of lost) this.options.handlers.onLost(shard, reason);
    }
  }

  private lose(shard: number): boolean {
    if (!this.held.delete(shard)) return false;
    this.stats.lost += 1;
    return true;
  }

  /** One acquisition; true when the shard was opened. Never rejects. */
  private async acquire(shard: number): Promise<boolean> {
    // The pass listed its shards when it began; membership or a shutdown may have changed since.
    if (this.stopped || !this.desiredShards.has(shard)) return false;
    this.busy.add(shard);
    const key = this.options.store.keys.lease(shard);
    let lock: Lock | null = null;
    try {
      const start = Date.now();
      const { epoch } = await this.options.store.acquireLease(shard, this.value, this.options.ttlMs);
      this.acquireIncident.ok();
      if (epoch === 0) return false; // another replica holds it; try again next pass
      const drift = Math.round(DRIFT_FACTOR * this.options.ttlMs) + 2;
      lock = new Lock(this.redlock, [key], this.value, [], start + this.options.ttlMs - drift);
      if (Date.now() >= lock.expiration) throw new Error('lease expired before the acquisition answered');
      this.held.set(shard, { lock, epoch });
      try {
        await this.options.handlers.onAcquired(shard, epoch);
      } catch (error) {
        this.held.delete(shard);
        throw error;
      }
      this.stats.acquired += 1;
      return true;
    } catch (error) {
      this.stats.acquireFailures += 1;
      this.acquireIncident.fail(error, { shard });
      if (lock !== null && !this.held.has(shard)) await lock.release().catch(() => undefined);
      return false;
    } finally {
      this.busy.delete(shard);
    }
  }
}
