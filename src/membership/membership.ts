/**
 * Replica membership. Each replica heartbeats into a Redis sorted set (see heartbeat.lua) every
 * quarter of the member TTL and gets the live set back; a replica that stops heartbeating drops
 * out after the TTL. Joins and leaves are also announced on NATS so others re-read at once
 * instead of waiting for their next heartbeat: NATS makes it fast, Redis makes it right.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Subjects } from '../protocol/subjects.js';
import type { DroverStore } from '../store/store.js';
import type { Logger } from '../util/log.js';

export interface MembershipOptions {
  readonly store: DroverStore;
  readonly nc: NatsConnection;
  readonly subjects: Subjects;
  readonly replicaId: string;
  /** How long a heartbeat keeps a member alive. */
  readonly ttlMs: number;
  readonly log: Logger;
  /** Called with the sorted live member ids whenever they change. */
  readonly onChange: (members: readonly string[]) => void;
}

export class Membership {
  private current: string[] = [];
  private timer: NodeJS.Timeout | null = null;
  private subscription: Subscription | null = null;
  private beating: Promise<void> | null = null;
  private left = false;
  readonly stats = { heartbeats: 0, failures: 0, changes: 0 };

  constructor(private readonly options: MembershipOptions) {}

  get members(): readonly string[] {
    return this.current;
  }

  get intervalMs(): number {
    return Math.max(50, Math.floor(this.options.ttlMs / 4));
  }

  /** Join: first heartbeat (so the caller knows the members), announce, keep beating. */
  async start(): Promise<void> {
    const { nc, subjects } = this.options;
    this.subscription = nc.subscribe(subjects.membership, {
      callback: (error, msg) => {
        if (error) return;
        try {
          const notice = msg.json<{ replicaId?: string }>();
          if (notice.replicaId !== this.options.replicaId) void this.beat();
        } catch {
          // Malformed notices are ignored; the periodic heartbeat converges anyway.
        }
      },
    });
    await this.beat();
    this.announce('join');
    this.schedule();
  }

  /** Stop heartbeating without leaving: the entry expires after the TTL (as if this process froze). */
  async stop(): Promise<void> {
    this.left = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.beating !== null) await this.beating;
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /** Leave: stop beating, remove ourselves, tell the others. */
  async leave(): Promise<void> {
    this.left = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.beating !== null) await this.beating;
    try {
      await this.options.store.heartbeat(this.options.replicaId, 0);
    } catch (error) {
      this.options.log.warn({ err: error }, 'could not remove this replica from the members; it will expire');
    }
    this.announce('leave');
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /** One heartbeat now (also on a NATS notice). Never rejects. */
  beat(): Promise<void> {
    if (this.left) return Promise.resolve();
    this.beating ??= this.runBeat().finally(() => {
      this.beating = null;
    });
    return this.beating;
  }

  private async runBeat(): Promise<void> {
    let members: string[];
    try {
      members = await this.options.store.heartbeat(this.options.replicaId, this.options.ttlMs);
      this.stats.heartbeats += 1;
    } catch (error) {
      this.stats.failures += 1;
      this.options.log.warn({ err: error }, 'heartbeat failed');
      return;
    }
    if (this.left) return;
    if (members.length !== this.current.length || members.some((m, i) => m !== this.current[i])) {
      this.current = members;
      this.stats.changes += 1;
      this.options.log.info({ members }, 'membership changed');
      this.options.onChange(members);
    }
  }

  private announce(event: 'join' | 'leave'): void {
    if (this.options.nc.isClosed()) return;
    this.options.nc.publish(this.options.subjects.membership, JSON.stringify({ replicaId: this.options.replicaId, event }));
  }

  private schedule(): void {
    if (this.left) return;
    this.timer = setTimeout(() => {
      void this.beat().finally(() => this.schedule());
    }, this.intervalMs);
  }
}
