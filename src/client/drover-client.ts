/**
 * A small typed client for Drover's public NATS contract. The CLI, the demo, the benchmark and the
 * tests all use it; any other NATS client speaking the same JSON works just as well.
 */
import { connect, errors, headers, type NatsConnection } from '@nats-io/transport-node';
import type { ErrorCode } from '../protocol/errors.js';
import type { ContainerView } from '../protocol/container-view.js';
import type { PublishedContainerEvent } from '../events/container-events.js';
import { TERMINAL_STATUSES, type ContainerStatus } from '../../actors/container-machine.js';
import type { ClusterBacklog } from '../backlog/backlog-report.js';
import type { AgentInstructions, WorkerView } from '../protocol/shard-messages.js';
import { randomBytes } from 'node:crypto';
import { DEADLINE_HEADER, REQUEST_KEY_HEADER, Subjects } from '../protocol/subjects.js';

/**
 * The request got no reply from Drover, for a reason outside Drover's contract: NATS could not be
 * reached, no replica serves the subject, or the reply did not come in time. The message says what
 * failed and where, in words a person can act on (the CLI prints it after "drover: ").
 */
export class DroverUnavailableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The first connection to NATS failed (refused, unknown host, no answer within the connect timeout). */
export class NatsUnreachableError extends DroverUnavailableError {
  constructor(readonly natsUrl: string, readonly reason: string, options?: ErrorOptions) {
    super(`cannot reach NATS at ${withoutCredentials(natsUrl)}: ${reason}`, options);
  }
}

/**
 * NATS answered "no responders": nothing subscribes to the subject. For a public subject this means
 * no replica runs under this prefix (or none has started serving yet); a wrong DROVER_PREFIX is the
 * usual cause, so the message names it.
 */
export class NoReplicaError extends DroverUnavailableError {
  constructor(readonly subject: string, readonly prefix: string, options?: ErrorOptions) {
    super(`no Drover replica answered on ${subject} (is a replica running with DROVER_PREFIX=${prefix}?)`, options);
  }
}

/**
 * No reply within the client's timeout. The outcome is unknown: the request may still be acted on
 * until its deadline (see DEADLINE_HEADER), so a retry should carry the same request key.
 */
export class RequestTimeoutError extends DroverUnavailableError {
  constructor(readonly subject: string, readonly timeoutMs: number, options?: ErrorOptions) {
    super(`no reply on ${subject} within ${timeoutMs} ms`, options);
  }
}

/** How long the first connection to NATS may take before the client gives up (and each reconnect dial). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

/** A NATS URL with its user and password (or token) hidden, fit for an error message. */
function withoutCredentials(natsUrl: string): string {
  return natsUrl.replace(/\/\/[^/@]*@/g, '//***@');
}

/** Why a connect failed, in a few words: nats.js says "timeout" or "connection refused", the OS says the rest. */
function connectFailureReason(error: unknown, connectTimeoutMs: number): string {
  if (error instanceof errors.TimeoutError) return `no answer within ${connectTimeoutMs} ms`;
  return error instanceof Error && error.message !== '' ? error.message : String(error);
}

/** A NATS request error as one of the typed errors above; anything else is returned unchanged. */
function requestFailure(error: unknown, subject: string, prefix: string, timeoutMs: number): unknown {
  if (error instanceof errors.RequestError && error.isNoResponders()) return new NoReplicaError(subject, prefix, { cause: error });
  if (error instanceof errors.TimeoutError) return new RequestTimeoutError(subject, timeoutMs, { cause: error });
  return error;
}

export type Reply<T> = ({ ok: true } & T) | { ok: false; error: { code: ErrorCode; message: string }; workerId?: string };

/** What a submit asks for, and what a registration offers: the same fields (see README). */
export interface ResourceSpec {
  id: string;
  cpu: number;
  memory: number;
  gpu?: string;
  gpuCount?: number;
  pool?: string;
}
/** A submit: the resources, and optionally how it waits and what its worker's agent runs. */
export interface ContainerSpec extends ResourceSpec {
  priority?: number;
  maxWaitMs?: number;
  /** false: answer NO_CAPACITY at once instead of queueing (default true). */
  queue?: boolean;
  command?: string[];
  env?: Record<string, string>;
}
export interface WorkerSpecInput extends ResourceSpec {
  /** Registered by a worker agent (see `drover agent`). */
  agent?: boolean;
}

export type PlaceReply = Reply<{ status: 'placed'; id: string; workerId: string } | { status: 'queued'; id: string }>;

export type ContainerInfo = ContainerView;
export type ContainerEvent = PublishedContainerEvent;

export interface ReplicaStatus {
  ok: true;
  replicaId: string;
  uptimeMs: number;
  memory: { rss: number; heapUsed: number; external: number; arrayBuffers: number };
  members: string[];
  desired: number[];
  shards: number[];
  workers: number;
  router: Record<string, number>;
  owners: Record<string, number>;
  leases: Record<string, number>;
  /** Each link's state as the replica sees it (see src/replica/link-monitor.ts). */
  links?: Record<'nats' | 'redis', { cut: boolean; lastRoundTripMs: number | null; sinceGoodMs: number }>;
  /** The replica gave its shards up and left the members while a link is cut. */
  steppedOut?: boolean;
  /** Whether its router is in the public queue group (it leaves it while Redis is cut). */
  routing?: boolean;
  /** Where it serves metrics, health and its debug page (null: DROVER_HTTP_PORT=off). */
  http?: { host: string; port: number; url: string } | null;
  /** Its backlog scheduler's counters and the containers queued in its partitions. */
  backlog?: Record<string, number>;
  /** Its shard owners' counts of agent reports, refused reports, and silences acted on (unreachable, unknown, lost, requeued). */
  agents?: Record<string, number>;
}

export type WaitTarget = 'placed' | 'running' | 'terminal';
/** `drover wait` reads the record again this often, in case an event was lost. */
const WAIT_RECHECK_MS = 1_000;

/** Whether `status` is (or is past) `until`. */
export function reached(status: ContainerStatus, until: WaitTarget): boolean {
  if (TERMINAL_STATUSES.has(status)) return true;
  if (until === 'terminal') return false;
  if (until === 'running') return status === 'running' || status === 'stopping';
  return status !== 'queued';
}

/** 96 random bits per process, so keys of different clients never meet. */
const KEY_PREFIX = randomBytes(12).toString('hex');
let keyCounter = 0;

export class DroverClient {
  readonly subjects: Subjects;

  constructor(
    readonly nc: NatsConnection,
    prefix = 'drover',
    private readonly timeoutMs = 10_000,
  ) {
    this.subjects = new Subjects(prefix);
  }

  /**
   * Connect. The first connection is one bounded attempt (`connectTimeoutMs` per server): a command
   * pointed at the wrong NATS_URL should say so within seconds, not retry for ever. Once connected,
   * the connection reconnects for as long as the client lives (NATS restarts heal), which the
   * long-running clients (demo, chaos load, benchmark) rely on. Throws NatsUnreachableError.
   */
  static async connect(
    natsUrl: string,
    prefix = 'drover',
    timeoutMs = 10_000,
    name = 'drover-client',
    connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS,
  ): Promise<DroverClient> {
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: natsUrl,
        name,
        noAsyncTraces: true,
        // Not waitOnFirstConnect: that would turn an unreachable server into endless retries.
        waitOnFirstConnect: false,
        timeout: connectTimeoutMs,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
      });
    } catch (error) {
      throw new NatsUnreachableError(natsUrl, connectFailureReason(error, connectTimeoutMs), { cause: error });
    }
    return new DroverClient(nc, prefix, timeoutMs);
  }

  /**
   * Drain (let replies in flight arrive), or close outright when draining fails: a drain needs the
   * server, and a client whose server went away must still let go of its socket and timers.
   */
  async close(): Promise<void> {
    try {
      await this.nc.drain();
    } catch {
      await this.nc.close();
    }
  }

  /** A fresh request key: give the same one to every retry of one request (see REQUEST_KEY_HEADER). */
  static newRequestKey(): string {
    // A random prefix per process and a counter: unique without a call into the crypto library
    // for every request (a busy client sends thousands a second).
    keyCounter += 1;
    return `k-${KEY_PREFIX}-${keyCounter.toString(36)}`;
  }

  /**
   * Send raw bytes to a subject and return the parsed reply (used by tests of malformed input).
   * `requestKey` goes in the Drover-Request-Key header. A missing reply is thrown as NoReplicaError
   * or RequestTimeoutError.
   */
  async raw(subject: string, payload: string | Uint8Array, requestKey?: string): Promise<Record<string, unknown>> {
    // The request is worth nothing to us after our timeout: say so, so it is not acted on later.
    const header = headers();
    header.set(DEADLINE_HEADER, String(Date.now() + this.timeoutMs));
    if (requestKey !== undefined) header.set(REQUEST_KEY_HEADER, requestKey);
    let reply;
    try {
      reply = await this.nc.request(subject, payload, { timeout: this.timeoutMs, headers: header });
    } catch (error) {
      throw requestFailure(error, subject, this.subjects.prefix, this.timeoutMs);
    }
    return reply.json<Record<string, unknown>>();
  }

  private async call<T>(subject: string, body: unknown, requestKey?: string): Promise<Reply<T>> {
    return (await this.raw(subject, JSON.stringify(body), requestKey)) as Reply<T>;
  }

  registerWorker(worker: WorkerSpecInput): Promise<Reply<{ worker: WorkerView }>> {
    return this.call(this.subjects.workersRegister, worker);
  }
  /** A worker agent's report: what it runs or ran; the reply says what to start, stop and forget. */
  report(
    workerId: string,
    containers: Array<{ id: string; status: 'running' } | { id: string; status: 'exited'; exitCode: number; fenced?: boolean }>,
    incarnation: string,
    seq: number,
  ): Promise<Reply<AgentInstructions>> {
    return this.call(this.subjects.workersReport, { workerId, containers, incarnation, seq });
  }
  /** Register up to 500 workers in one request; each gets its own answer, in order. */
  registerWorkers(workers: WorkerSpecInput[]): Promise<Reply<{ results: Array<Reply<{ worker: WorkerView }>> }>> {
    return this.call(this.subjects.workersRegisterBatch, { workers });
  }
  getWorker(id: string): Promise<Reply<{ worker: WorkerView }>> {
    return this.call(this.subjects.workersGet, { id });
  }
  drainWorker(id: string): Promise<Reply<{ worker: WorkerView }>> {
    return this.call(this.subjects.workersDrain, { id });
  }
  disableWorker(id: string): Promise<Reply<{ worker: WorkerView }>> {
    return this.call(this.subjects.workersDisable, { id });
  }
  enableWorker(id: string): Promise<Reply<{ worker: WorkerView }>> {
    return this.call(this.subjects.workersEnable, { id });
  }
  listWorkers(cursor: string | null = null, limit = 500): Promise<Reply<{ workers: WorkerView[]; next: string | null }>> {
    return this.call(this.subjects.workersList, { cursor, limit });
  }
  removeWorker(id: string): Promise<Reply<{ id: string; status: 'removed' }>> {
    return this.call(this.subjects.workersRemove, { id });
  }
  /**
   * Place a container. Pass the same `requestKey` to every retry of one submit (a new one is made
   * when none is given): a retry whose first attempt was placed then gets "placed" again.
   */
  submit(container: ContainerSpec, requestKey: string = DroverClient.newRequestKey()): Promise<PlaceReply> {
    return this.call(this.subjects.submit, container, requestKey);
  }
  submitBatch(containers: ContainerSpec[], requestKey: string = DroverClient.newRequestKey()): Promise<Reply<{ results: PlaceReply[] }>> {
    return this.call(this.subjects.submitBatch, { containers }, requestKey);
  }
  release(id: string, requestKey: string = DroverClient.newRequestKey()): Promise<Reply<{ id: string; status: ContainerStatus }>> {
    return this.call(this.subjects.release, { id }, requestKey);
  }
  getContainer(id: string): Promise<Reply<{ container: ContainerInfo }>> {
    return this.call(this.subjects.containersGet, { id });
  }
  /** The backlog of the whole cluster: depth by pool and shape, oldest age, shards not reported. */
  backlog(): Promise<Reply<ClusterBacklog>> {
    return this.call(this.subjects.backlog, {});
  }

  /**
   * Wait until container `id` reaches `until`: 'placed' (placed or anything after), 'running'
   * (running, or ended before it ran) or 'terminal'. Subscribes to the container's events first,
   * then reads its record, so a change between the two is not missed; events are at most once, so
   * the record is read again every WAIT_RECHECK_MS too, and at once when an event's `seq` jumps
   * past the last one seen (an event was missed: `onGap` is told which seqs). Resolves with the
   * record as last read (or as the event said), rejects after `timeoutMs`.
   */
  async waitFor(
    id: string,
    until: WaitTarget,
    timeoutMs: number,
    onEvent?: (event: ContainerEvent) => void,
    hooks: { onGap?: (firstMissed: number, lastMissed: number) => void; onRecord?: (container: ContainerInfo) => void } = {},
  ): Promise<{ status: ContainerStatus; container: ContainerInfo | null }> {
    const subscription = this.nc.subscribe(this.subjects.containerEvents(id));
    /** The highest seq known, from the record or an event (0: none yet, or a record from before seq). */
    let lastSeq = 0;
    let settle: (value: { status: ContainerStatus; container: ContainerInfo | null }) => void = () => undefined;
    let fail: (error: Error) => void = () => undefined;
    const done = new Promise<{ status: ContainerStatus; container: ContainerInfo | null }>((resolve, reject) => {
      settle = resolve;
      fail = reject;
    });
    const check = async (): Promise<void> => {
      const reply = await this.getContainer(id);
      if (!reply.ok) {
        if (reply.error.code === 'NOT_FOUND') fail(new Error(`container ${id} is not known`));
        return;
      }
      // A record from an older replica has no seq: nothing to compare then.
      if (typeof reply.container.seq === 'number' && reply.container.seq > lastSeq) lastSeq = reply.container.seq;
      hooks.onRecord?.(reply.container);
      if (reached(reply.container.status, until)) settle({ status: reply.container.status, container: reply.container });
    };
    void (async () => {
      for await (const msg of subscription) {
        try {
          const event = msg.json<ContainerEvent>();
          if (typeof event.seq === 'number' && Number.isSafeInteger(event.seq)) {
            if (lastSeq > 0 && event.seq > lastSeq + 1) {
              // Missed at least one status write: read the record now rather than at the next recheck.
              hooks.onGap?.(lastSeq + 1, event.seq - 1);
              void check().catch(() => undefined);
            }
            if (event.seq > lastSeq) lastSeq = event.seq;
          }
          onEvent?.(event);
          if (reached(event.status, until)) {
            settle({ status: event.status, container: null });
            return;
          }
        } catch {
          // a malformed event is ignored; the record is read again below
        }
      }
    })();
    const timer = setTimeout(() => fail(new RequestTimeoutError(this.subjects.containerEvents(id), timeoutMs)), timeoutMs);
    const recheck = setInterval(() => void check().catch(() => undefined), WAIT_RECHECK_MS);
    try {
      await this.nc.flush();
      await check();
      const result = await done;
      if (result.container === null) {
        const reply = await this.getContainer(id).catch(() => null);
        if (reply?.ok) return { status: result.status, container: reply.container };
      }
      return result;
    } finally {
      clearTimeout(timer);
      clearInterval(recheck);
      subscription.unsubscribe();
    }
  }

  /**
   * Ask every replica for its status; replies that arrive within `maxWaitMs` are returned (or as
   * soon as `expected` replies are in).
   */
  async clusterStatus(maxWaitMs = 300, expected?: number): Promise<ReplicaStatus[]> {
    const statuses: ReplicaStatus[] = [];
    try {
      const replies = await this.nc.requestMany(
        this.subjects.status,
        '',
        expected === undefined ? { strategy: 'timer', maxWait: maxWaitMs } : { strategy: 'count', maxMessages: expected, maxWait: maxWaitMs },
      );
      for await (const msg of replies) {
        try {
          const status = msg.json<ReplicaStatus | { ok: false }>();
          if (status.ok !== false) statuses.push(status);
        } catch {
          // a malformed status is skipped
        }
      }
    } catch {
      // no responders, or the connection is down: no replica answered
    }
    return statuses;
  }

  /** Every registered worker, page by page. */
  async allWorkers(): Promise<WorkerView[]> {
    const workers: WorkerView[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < 100_000; page += 1) {
      const reply = await this.listWorkers(cursor);
      if (!reply.ok) throw new Error(`workers.list failed: ${reply.error.code} ${reply.error.message}`);
      workers.push(...reply.workers);
      cursor = reply.next;
      if (cursor === null) return workers;
    }
    throw new Error('workers.list did not end');
  }
}
