/**
 * Replica membership. Each replica heartbeats into a Redis sorted set (see heartbeat.lua) every
 * quarter of the member TTL and gets the live set back; a replica that stops heartbeating drops
 * out after the TTL. Joins and leaves are also announced on NATS so others re-read at once
 * instead of waiting for their next heartbeat: NATS makes it fast, Redis makes it right.
 *
 * A member can also step out for a while (`suspend`, when this replica is cut off from NATS or
 * Redis and cannot serve what it would own) and step back in (`resume`); and a second process
 * started with the same replica id is refused (`DuplicateReplicaError`) instead of knocking the
 * first one out.
 */
import { randomBytes } from 'node:crypto';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Subjects } from '../protocol/subjects.js';
import type { DroverStore } from '../store/store.js';
import { Incident } from '../util/incident.js';
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
  /** Another process with this replica id holds it (it started while this one was paused): stop. */
  readonly onDuplicate: (message: string) => void;
  /** Another replica said on NATS that it is leaving (its router has left the queue group). */
  readonly onLeaveNotice?: (replicaId: string) => void;
}

export class DuplicateReplicaError extends Error {
  constructor(replicaId: string, heldForMs: number) {
    super(
      `another replica with DROVER_REPLICA_ID=${replicaId} is running (its membership is live for ${heldForMs} ms more ` +
        'and is being renewed); give each replica its own id, or stop the other one first',
    );
    this.name = 'DuplicateReplicaError';
  }
}

export class Membership {
  private current: string[] = [];
  private timer: NodeJS.Timeout | null = null;
  private subscription: Subscription | null = null;
  private beating: Promise<void> | null = null;
  private state: 'member' | 'suspended' | 'left' = 'member';
  /** This process's incarnation: tells it apart from another process started with the same id. */
  readonly incarnation = randomBytes(6).toString('hex');
  private readonly heartbeatIncident: Incident;
  readonly stats = { heartbeats: 0, failures: 0, changes: 0 };

  constructor(private readonly options: MembershipOptions) {
    this.heartbeatIncident = new Incident(options.log, 'membership heartbeat');
  }

  get members(): readonly string[] {
    return this.current;
  }

  get suspended(): boolean {
    return this.state === 'suspended';
  }

  get intervalMs(): number {
    return Math.max(50, Math.floor(this.options.ttlMs / 4));
  }

  /**
   * Join: first heartbeat (so the caller knows the members), announce, keep beating. A live entry
   * of another incarnation with this id may be a crashed predecessor whose entry has not expired
   * yet: wait it out once; if it is still there (renewed), the id is taken and start throws.
   */
  async start(): Promise<void> {
    const { nc, subjects } = this.options;
    this.subscription = nc.subscribe(subjects.membership, {
      callback: (error, msg) => {
        if (error) return;
        try {
          const notice = msg.json<{ replicaId?: string; event?: string }>();
          if (notice.replicaId === this.options.replicaId || typeof notice.replicaId !== 'string') return;
          if (notice.event === 'leave') this.options.onLeaveNotice?.(notice.replicaId);
          void this.beat();
        } catch {
          // Malformed notices are ignored; the periodic heartbeat converges anyway.
        }
      },
    });
    for (let attempt = 0; ; attempt += 1) {
      const result = await this.options.store.heartbeat(this.options.replicaId, this.incarnation, this.options.ttlMs);
      if (!result.duplicate) {
        this.stats.heartbeats += 1;
        this.apply(result.members);
        break;
      }
      if (attempt > 0 || result.heldForMs > this.options.ttlMs) {
        this.subscription.unsubscribe();
        throw new DuplicateReplicaError(this.options.replicaId, result.heldForMs);
      }
      this.options.log.warn({ waitMs: result.heldForMs }, 'a previous process with this replica id is still a member; waiting for its entry to expire');
      await new Promise((resolve) => setTimeout(resolve, result.heldForMs + 50));
    }
    this.announce('join');
    this.schedule();
  }

  /** Stop heartbeating without leaving: the entry expires after the TTL (as if this process froze). */
  async stop(): Promise<void> {
    this.state = 'left';
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.beating !== null) await this.beating;
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /** Leave: stop beating, remove ourselves, tell the others. */
  async leave(): Promise<void> {
    const wasMember = this.state === 'member';
    this.state = 'left';
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.beating !== null) await this.beating;
    if (wasMember) await this.remove();
    this.announce('leave');
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /**
   * Step out while this replica cannot serve (cut off from NATS or Redis): no more heartbeats, and
   * the entry is removed now if Redis can be reached (it expires after the TTL otherwise), so the
   * others stop counting on this replica and take its shards. The member list is emptied locally.
   */
  async suspend(): Promise<void> {
    if (this.state !== 'member') return;
    this.state = 'suspended';
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.beating !== null) await this.beating;
    await this.remove();
    this.announce('leave');
    this.apply([]);
  }

  /** Step back in after `suspend`: heartbeat now, announce, keep beating. */
  async resume(): Promise<void> {
    if (this.state !== 'suspended') return;
    this.state = 'member';
    await this.beat();
    this.announce('join');
    this.schedule();
  }

  /** One heartbeat now (also on a NATS notice). Never rejects. */
  beat(): Promise<void> {
    if (this.state !== 'member') return Promise.resolve();
    this.beating ??= this.runBeat().finally(() => {
      this.beating = null;
    });
    return this.beating;
  }

  private async remove(): Promise<void> {
    try {
      await this.options.store.heartbeat(this.options.replicaId, this.incarnation, 0);
    } catch (error) {
      this.options.log.debug({ err: error }, 'could not remove this replica from the members; it will expire');
    }
  }

  private async runBeat(): Promise<void> {
    let result;
    try {
      result = await this.options.store.heartbeat(this.options.replicaId, this.incarnation, this.options.ttlMs);
      this.stats.heartbeats += 1;
      this.heartbeatIncident.ok();
    } catch (error) {
      this.stats.failures += 1;
      this.heartbeatIncident.fail(error);
      return;
    }
    if (this.state !== 'member') return;
    if (result.duplicate) {
      // Our entry expired (this process was paused or cut off) and another process took the id.
      this.state = 'left';
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
      this.options.onDuplicate(new DuplicateReplicaError(this.options.replicaId, result.heldForMs).message);
      return;
    }
    this.apply(result.members);
  }

  private apply(members: string[]): void {
    if (members.length === this.current.length && members.every((m, i) => m === this.current[i])) return;
    this.current = members;
    this.stats.changes += 1;
    this.options.log.info({ members }, 'membership changed');
    this.options.onChange(members);
  }

  private announce(event: 'join' | 'leave'): void {
    if (this.options.nc.isClosed()) return;
    this.options.nc.publish(this.options.subjects.membership, JSON.stringify({ replicaId: this.options.replicaId, event }));
  }

  private schedule(): void {
    if (this.state !== 'member') return;
    // A beat that was in flight across suspend/resume schedules too: keep one timer, not two.
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      void this.beat().finally(() => this.schedule());
    }, this.intervalMs);
  }
}
