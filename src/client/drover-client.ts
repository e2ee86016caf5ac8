/**
 * A small typed client for Drover's public NATS contract. The CLI, the demo, the benchmark and the
 * tests all use it; any other NATS client speaking the same JSON works just as well.
 */
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import type { ErrorCode } from '../protocol/errors.js';
import type { WorkerView } from '../protocol/shard-messages.js';
import { randomBytes } from 'node:crypto';
import { DEADLINE_HEADER, REQUEST_KEY_HEADER, Subjects } from '../protocol/subjects.js';

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
export type ContainerSpec = ResourceSpec;
export type WorkerSpecInput = ResourceSpec;

export type PlaceReply = Reply<{ status: 'placed'; id: string; workerId: string }>;

export interface ContainerInfo {
  id: string;
  status: 'placed' | 'released';
  workerId: string;
  shard: number;
  cpu: number;
  memory: number;
  gpuCount: number;
  placedAt: number;
  releasedAt: number | null;
}

export interface ReplicaStatus {
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
}

export class DroverClient {
  readonly subjects: Subjects;

  constructor(
    readonly nc: NatsConnection,
    prefix = 'drover',
    private readonly timeoutMs = 10_000,
  ) {
    this.subjects = new Subjects(prefix);
  }

  /** Connect; the connection reconnects for as long as the client lives (NATS restarts heal). */
  static async connect(natsUrl: string, prefix = 'drover', timeoutMs = 10_000, name = 'drover-client'): Promise<DroverClient> {
    const nc = await connect({ servers: natsUrl, name, noAsyncTraces: true, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    return new DroverClient(nc, prefix, timeoutMs);
  }

  async close(): Promise<void> {
    await this.nc.drain();
  }

  /** A fresh request key: give the same one to every retry of one request (see REQUEST_KEY_HEADER). */
  static newRequestKey(): string {
    return `k-${randomBytes(12).toString('hex')}`;
  }

  /**
   * Send raw bytes to a subject and return the parsed reply (used by tests of malformed input).
   * `requestKey` goes in the Drover-Request-Key header.
   */
  async raw(subject: string, payload: string | Uint8Array, requestKey?: string): Promise<Record<string, unknown>> {
    // The request is worth nothing to us after our timeout: say so, so it is not acted on later.
    const header = headers();
    header.set(DEADLINE_HEADER, String(Date.now() + this.timeoutMs));
    if (requestKey !== undefined) header.set(REQUEST_KEY_HEADER, requestKey);
    const reply = await this.nc.request(subject, payload, { timeout: this.timeoutMs, headers: header });
    return reply.json<Record<string, unknown>>();
  }

  private async call<T>(subject: string, body: unknown, requestKey?: string): Promise<Reply<T>> {
    return (await this.raw(subject, JSON.stringify(body), requestKey)) as Reply<T>;
  }

  registerWorker(worker: WorkerSpecInput): Promise<Reply<{ worker: WorkerView }>> {
    return this.call(this.subjects.workersRegister, worker);
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
  release(id: string, requestKey: string = DroverClient.newRequestKey()): Promise<Reply<{ id: string; status: 'released' }>> {
    return this.call(this.subjects.release, { id }, requestKey);
  }
  getContainer(id: string): Promise<Reply<{ container: ContainerInfo }>> {
    return this.call(this.subjects.containersGet, { id });
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
          statuses.push(msg.json<ReplicaStatus>());
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
