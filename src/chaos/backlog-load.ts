/**
 * The chaos suite's scheduling-loop load: requests that wait. It submits containers into a small
 * pool (more than fit, so about half are queued), releases each one some time after it is placed
 * (so the backlog keeps draining into freed room), and cancels some while they wait. Every submit
 * and release is retried with the same request key until it gets an explicit answer, like the
 * main load. Container events are recorded for the checker (their order must be one the container
 * machine allows).
 *
 * At the end it keeps releasing until every container it was told about (queued or placed) has
 * ended. A container that never ends is a request the backlog lost or stranded: the checker
 * reports it (`stuck`).
 */
import type { Subscription } from '@nats-io/transport-node';
import { DroverClient, type ContainerEvent } from '../client/drover-client.js';
import { TERMINAL_STATUSES, type ContainerStatus } from '../../actors/container-machine.js';

export interface BacklogLoadOptions {
  readonly natsUrl: string;
  readonly prefix: string;
  readonly pool: string;
  /** Submits per second. */
  readonly rate: number;
  /** How long a placed container is kept before it is released. */
  readonly holdMs: number;
  /** Chance that a queued container is cancelled instead of waiting. */
  readonly cancelChance: number;
  readonly random: () => number;
  readonly requestTimeoutMs: number;
  /** Ids start with this ("q-" by default): each load has its own. */
  readonly idPrefix?: string;
  /**
   * For containers run by worker agents: the command of container number n, and the exit code
   * it must end with. Such containers are not released: they end on their own.
   */
  readonly command?: (n: number) => { argv: string[]; exitCode: number };
  /**
   * The pool's workers: while one of them has room for a container (every container of a load has
   * the same shape) for WAIT_WITH_ROOM_MS on end, no container may stay queued all that time.
   */
  readonly workerIds?: readonly string[];
  /**
   * How long past its expiry a queued request may still be queued: a fault may keep its home shard
   * unanswered for up to a lease TTL plus 2 s (the partition bound), and expiry runs every second.
   */
  readonly expirySlackMs: number;
}

/** What the load saw waiting too long: a queued request past its expiry, or waiting while room existed. */
export interface WaitProblem {
  readonly kind: 'queued-past-time' | 'waits-with-room';
  readonly message: string;
}

/** What one container's requests were told. */
export interface BacklogRecord {
  readonly id: string;
  /** The submit's final answer: queued, placed, or an error code ('lost': no explicit answer). */
  submit: string;
  /** Whether a release was answered (released or stopping). */
  released: boolean;
  /** Events received, in order. */
  readonly events: ContainerStatus[];
  /** The exit code its command ends with, when an agent runs it. */
  readonly expectedExitCode?: number;
}

const MAX_ATTEMPTS = 60;
/** Every this many submits, one asks for a short maxWaitMs, so expiry is exercised through the faults. */
const SHORT_WAIT_EVERY = 10;
const SHORT_WAIT_MS = 4_000;
/**
 * Room continuously available this long while a container stays queued is a violation: longer than
 * any fault keeps a shard unanswered (a lease TTL of 2 s plus recovery, a pause of 4.2 s).
 */
const WAIT_WITH_ROOM_MS = 10_000;
const MAX_WAIT_PROBLEMS = 40;
const MAX_BACKOFF_MS = 1_000;
/** Containers not yet ended are looked up this often (events are at most once). */
const SWEEP_MS = 1_000;
/** Lookups a sweep sends at once. */
const SWEEP_BATCH = 50;

export class BacklogLoad {
  readonly records = new Map<string, BacklogRecord>();
  private client: DroverClient | null = null;
  private subscription: Subscription | null = null;
  private running = false;
  private submitting: Promise<void> = Promise.resolve();
  private sweeper: NodeJS.Timeout | null = null;
  private readonly releasing = new Set<string>();
  /** Releases in flight now. */
  private readonly releasingNow = new Set<string>();
  /** Containers acknowledged (queued or placed) and not yet known to have ended. */
  private readonly open = new Set<string>();
  private readonly pending = new Set<Promise<unknown>>();
  private sequence = 0;
  readonly waitProblems: WaitProblem[] = [];
  private readonly reportedWaits = new Set<string>();
  /** When each open container was first seen queued by a sweep (cleared when it is not). */
  private readonly queuedSince = new Map<string, number>();
  /** Since when a worker of the pool has had room at every sweep (null: not at the last one). */
  private roomSince: number | null = null;

  constructor(private readonly options: BacklogLoadOptions) {}

  async start(): Promise<void> {
    this.client = await DroverClient.connect(this.options.natsUrl, this.options.prefix, this.options.requestTimeoutMs, 'chaos-backlog');
    this.subscription = this.client.nc.subscribe(`${this.options.prefix}.events.containers.*`, {
      callback: (error, msg) => {
        if (error) return;
        const event = msg.json<ContainerEvent>();
        const record = this.records.get(event.id);
        if (record === undefined) return;
        record.events.push(event.status);
        if (event.status === 'placed' && this.options.command === undefined) this.releaseLater(event.id);
        if (TERMINAL_STATUSES.has(event.status)) this.open.delete(event.id);
      },
    });
    await this.client.nc.flush();
    this.running = true;
    this.submitting = this.submitLoop();
    this.sweeper = setInterval(() => this.track(this.sweep()), SWEEP_MS);
  }

  /** Stop submitting, then release until every container it was told about has ended (or the time runs out). */
  async drain(timeoutMs: number): Promise<string[]> {
    this.running = false;
    await this.submitting;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const open = await this.sweep();
      if (open.length === 0 || Date.now() > deadline) {
        await Promise.all([...this.pending]);
        return open;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.sweeper !== null) clearInterval(this.sweeper);
    await this.submitting;
    await Promise.all([...this.pending]);
    this.subscription?.unsubscribe();
    await this.client?.close().catch(() => undefined);
  }

  private track<T>(promise: Promise<T>): void {
    this.pending.add(promise);
    void promise.finally(() => this.pending.delete(promise)).catch(() => undefined);
  }

  private async submitLoop(): Promise<void> {
    const every = 1_000 / this.options.rate;
    while (this.running) {
      this.sequence += 1;
      this.track(this.submit(`${this.options.idPrefix ?? 'q-'}${this.sequence}`, this.sequence));
      await new Promise((resolve) => setTimeout(resolve, every));
    }
  }

  private async submit(id: string, n: number): Promise<void> {
    const client = this.client!;
    const command = this.options.command?.(n);
    const record: BacklogRecord = { id, submit: 'lost', released: false, events: [], ...(command !== undefined ? { expectedExitCode: command.exitCode } : {}) };
    this.records.set(id, record);
    const key = DroverClient.newRequestKey();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt += 1) {
      if (attempt > 0) await backoff(attempt);
      let reply;
      try {
        const maxWaitMs = n % SHORT_WAIT_EVERY === 0 ? SHORT_WAIT_MS : 600_000;
        reply = await client.submit({ id, cpu: 1_000, memory: 1_024, pool: this.options.pool, maxWaitMs, ...(command !== undefined ? { command: command.argv } : {}) }, key);
      } catch {
        continue; // no answer: retry with the same key
      }
      if (!reply.ok && reply.error.code === 'UNAVAILABLE') continue;
      record.submit = reply.ok ? reply.status : reply.error.code;
      if (reply.ok) this.open.add(id);
      if (reply.ok && reply.status === 'placed' && command === undefined) this.releaseLater(id);
      if (reply.ok && reply.status === 'queued' && this.options.random() < this.options.cancelChance) this.track(this.release(id));
      return;
    }
  }

  private releaseLater(id: string): void {
    if (this.releasing.has(id)) return;
    this.releasing.add(id);
    this.track(new Promise((resolve) => setTimeout(resolve, this.options.holdMs)).then(() => this.release(id)));
  }

  private async release(id: string): Promise<void> {
    if (this.releasingNow.has(id)) return;
    this.releasingNow.add(id);
    try {
      await this.releaseOnce(id);
    } finally {
      this.releasingNow.delete(id);
    }
  }

  private async releaseOnce(id: string): Promise<void> {
    const client = this.client!;
    const key = DroverClient.newRequestKey();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt += 1) {
      if (attempt > 0) await backoff(attempt);
      let reply;
      try {
        reply = await client.release(id, key);
      } catch {
        continue;
      }
      if (!reply.ok && reply.error.code === 'UNAVAILABLE') continue;
      if (reply.ok) this.records.get(id)!.released = true;
      return;
    }
  }

  /**
   * Read every container not known to have ended: release the placed ones (their event may have
   * been lost, or the release did not take), and return the ids still open.
   */
  private async sweep(): Promise<string[]> {
    const client = this.client;
    if (client === null) return [];
    const ids = [...this.open];
    const room = await this.poolHasRoom(client);
    const now = Date.now();
    this.roomSince = room ? this.roomSince ?? now : null;
    const stillQueued = new Set<string>();
    for (let i = 0; i < ids.length; i += SWEEP_BATCH) {
      await Promise.all(ids.slice(i, i + SWEEP_BATCH).map(async (id) => {
        let reply;
        try {
          reply = await client.getContainer(id);
        } catch {
          return;
        }
        if (!reply.ok) return;
        const status = reply.container.status;
        if (TERMINAL_STATUSES.has(status)) {
          this.open.delete(id);
          return;
        }
        if (status === 'queued') {
          stillQueued.add(id);
          this.checkWait(id, reply.container.expiresAt, now);
        }
        // Placed, but its release is not under way (its event was lost, or the load stopped).
        if (this.options.command === undefined && status === 'placed' && !this.releasingNow.has(id) && (!this.releasing.has(id) || !this.running)) {
          this.releasing.add(id);
          this.track(this.release(id));
        }
      }));
    }
    for (const id of this.queuedSince.keys()) if (!stillQueued.has(id)) this.queuedSince.delete(id);
    return [...this.open];
  }

  /** Whether some worker of the pool is available with room for one container (unknown: false). */
  private async poolHasRoom(client: DroverClient): Promise<boolean> {
    const workerIds = this.options.workerIds ?? [];
    const replies = await Promise.all(workerIds.map((id) => client.getWorker(id).catch(() => null)));
    return replies.some((reply) => reply?.ok === true && reply.worker.status === 'available' && reply.worker.freeCpu >= 1_000 && reply.worker.freeMemory >= 1_024);
  }

  /** A queued container past its expiry, or waiting all the while room existed, is reported (once). */
  private checkWait(id: string, expiresAt: number | null, now: number): void {
    const since = this.queuedSince.get(id) ?? now;
    this.queuedSince.set(id, since);
    if (expiresAt !== null && now > expiresAt + this.options.expirySlackMs) {
      this.waitProblem('queued-past-time', id, `container ${id} is still queued ${now - expiresAt} ms after it expired (expiresAt ${expiresAt})`);
    }
    if (this.roomSince !== null && now - this.roomSince >= WAIT_WITH_ROOM_MS && now - since >= WAIT_WITH_ROOM_MS) {
      this.waitProblem('waits-with-room', id, `container ${id} has been queued for ${now - since} ms while pool ${this.options.pool} had room for it for ${now - this.roomSince} ms`);
    }
  }

  private waitProblem(kind: WaitProblem['kind'], id: string, message: string): void {
    const key = `${kind}/${id}`;
    if (this.reportedWaits.has(key) || this.waitProblems.length >= MAX_WAIT_PROBLEMS) return;
    this.reportedWaits.add(key);
    this.waitProblems.push({ kind, message });
  }
}

function backoff(attempt: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.min(MAX_BACKOFF_MS, 25 * 2 ** attempt)));
}
