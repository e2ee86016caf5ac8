/**
 * A small typed client for Drover's public NATS contract. The CLI, the demo, the benchmark and the
 * tests all use it; any other NATS client speaking the same JSON works just as well.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { ErrorCode } from '../protocol/errors.js';
import type { WorkerView } from '../protocol/shard-messages.js';
import { Subjects } from '../protocol/subjects.js';

export type Reply<T> = ({ ok: true } & T) | { ok: false; error: { code: ErrorCode; message: string }; workerId?: string };

export interface ContainerSpec {
  id: string;
  cpu: number;
  memory: number;
  gpu?: string;
  gpuCount?: number;
  pool?: string;
}

export interface WorkerSpecInput {
  id: string;
  cpu: number;
  memory: number;
  gpu?: string;
  gpuCount?: number;
  pool?: string;
}

export type PlaceReply = Reply<{ status: 'placed'; id: string; workerId: string }>;

export interface ContainerInfo {
  id: string;
  status: 'placed' | 'released';
  workerId: string;
  shard: number;
  cpu: number;
  memory: number;
  gpuCount: number;
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

  static async connect(natsUrl: string, prefix = 'drover', timeoutMs = 10_000): Promise<DroverClient> {
    const nc = await connect({ servers: natsUrl, name: 'drover-client', noAsyncTraces: true });
    return new DroverClient(nc, prefix, timeoutMs);
  }

  async close(): Promise<void> {
    await this.nc.drain();
  }

  /** Send raw bytes to a subject and return the parsed reply (used by tests of malformed input). */
  async raw(subject: string, payload: string | Uint8Array): Promise<Record<string, unknown>> {
    const reply = await this.nc.request(subject, payload, { timeout: this.timeoutMs });
    return reply.json<Record<string, unknown>>();
  }

  private async call<T>(subject: string, body: unknown): Promise<Reply<T>> {
    return (await this.raw(subject, JSON.stringify(body))) as Reply<T>;
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
  submit(container: ContainerSpec): Promise<PlaceReply> {
    return this.call(this.subjects.submit, container);
  }
  submitBatch(containers: ContainerSpec[]): Promise<Reply<{ results: PlaceReply[] }>> {
    return this.call(this.subjects.submitBatch, { containers });
  }
  release(id: string): Promise<Reply<{ id: string; status: 'released' }>> {
    return this.call(this.subjects.release, { id });
  }
  getContainer(id: string): Promise<Reply<{ container: ContainerInfo }>> {
    return this.call(this.subjects.containersGet, { id });
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
