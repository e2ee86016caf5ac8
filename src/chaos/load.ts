/**
 * Continuous submits and releases from several clients, each on its own NATS connection, as a
 * careful production client behaves: a request that gets no reply (timeout, lost connection) or
 * UNAVAILABLE is retried with the same container id and the same request key, with backoff, until
 * it gets an explicit answer or runs out of attempts. Thanks to the key, a retry whose earlier
 * attempt was placed is answered "placed"; an ALREADY_PLACED is therefore a real duplicate. Every attempt is recorded in the RequestLog.
 */
import { DroverClient, type PlaceReply } from '../client/drover-client.js';
import type { RequestLog, RequestRecord } from './request-log.js';

export interface LoadOptions {
  readonly natsUrl: string;
  readonly prefix: string;
  readonly log: RequestLog;
  readonly clients: number;
  readonly lanesPerClient: number;
  /** Chance that a lane releases one of its containers instead of submitting a new one. */
  readonly releaseChance: number;
  /** Attempts per request before it is given up as lost. */
  readonly maxAttempts: number;
  readonly requestTimeoutMs: number;
  readonly seed: number;
  /** The pool its containers ask for (its workers'), so it stays off the other loads' workers. */
  readonly pool?: string;
}

const SHAPES = [
  { cpu: 100, memory: 128 },
  { cpu: 250, memory: 512 },
  { cpu: 500, memory: 1_024 },
  { cpu: 1_000, memory: 2_048 },
];
const MAX_BACKOFF_MS = 1_000;

/** A small deterministic generator so a failing run can be replayed with the same seed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

export class ChaosLoad {
  private readonly clients: DroverClient[] = [];
  private running = false;
  private lanes: Promise<void>[] = [];
  private sequence = 0;
  readonly random: () => number;

  constructor(private readonly options: LoadOptions) {
    this.random = seededRandom(options.seed);
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.options.clients; i += 1) {
      this.clients.push(await DroverClient.connect(this.options.natsUrl, this.options.prefix, this.options.requestTimeoutMs, `chaos-client-${i}`));
    }
    this.running = true;
    this.lanes = this.clients.flatMap((client, c) =>
      Array.from({ length: this.options.lanesPerClient }, (_, lane) => this.lane(client, `client-${c}.${lane}`)),
    );
  }

  /** Stop starting new requests and wait until every request in flight has a final outcome. */
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.lanes);
    await Promise.all(this.clients.map((client) => client.close().catch(() => undefined)));
  }

  private async lane(client: DroverClient, name: string): Promise<void> {
    const held: string[] = [];
    while (this.running) {
      if (held.length > 0 && this.random() < this.options.releaseChance) {
        const index = Math.floor(this.random() * held.length);
        const id = held.splice(index, 1)[0]!;
        await this.release(client, name, id);
      } else {
        this.sequence += 1;
        const id = `${name.replace('.', '-')}-${this.sequence}`;
        const shape = SHAPES[Math.floor(this.random() * SHAPES.length)]!;
        const final = await this.submit(client, name, id, shape.cpu, shape.memory);
        if (final.kind === 'placed') held.push(id);
      }
    }
    // Leave what is still held placed: the checker verifies those are in Redis.
  }

  private async submit(client: DroverClient, name: string, id: string, cpu: number, memory: number): Promise<NonNullable<RequestRecord['final']>> {
    const record = this.options.log.begin(name, 'submit', id, cpu, memory);
    // One request key for every attempt: a retry whose earlier attempt was placed is told "placed".
    const requestKey = DroverClient.newRequestKey();
    for (let attempt = 0; attempt < this.options.maxAttempts; attempt += 1) {
      if (attempt > 0) await backoff(attempt);
      let reply: PlaceReply;
      try {
        reply = await client.submit({ id, cpu, memory, queue: false, ...(this.options.pool !== undefined ? { pool: this.options.pool } : {}) }, requestKey);
      } catch (error) {
        record.attempts.push({ at: Date.now(), outcome: { kind: 'transport', message: (error as Error).message } });
        continue;
      }
      if (reply.ok && reply.status === 'placed') {
        record.attempts.push({ at: Date.now(), outcome: { kind: 'placed', workerId: reply.workerId } });
        return this.finish(record, { kind: 'placed', workerId: reply.workerId });
      }
      if (reply.ok) throw new Error(`submit of ${id} was queued, though the chaos load submits with queue: false`);
      const code = reply.error.code;
      record.attempts.push({ at: Date.now(), outcome: { kind: 'error', code, ...(reply.workerId !== undefined ? { workerId: reply.workerId } : {}) } });
      if (code === 'UNAVAILABLE') continue;
      return this.finish(record, { kind: 'error', code });
    }
    return this.finish(record, this.lastExplicit(record) ?? { kind: 'lost' });
  }

  private async release(client: DroverClient, name: string, id: string): Promise<void> {
    const record = this.options.log.begin(name, 'release', id);
    const requestKey = DroverClient.newRequestKey();
    for (let attempt = 0; attempt < this.options.maxAttempts; attempt += 1) {
      if (attempt > 0) await backoff(attempt);
      try {
        const reply = await client.release(id, requestKey);
        if (reply.ok) {
          record.attempts.push({ at: Date.now(), outcome: { kind: 'released' } });
          this.finish(record, { kind: 'released' });
          return;
        }
        record.attempts.push({ at: Date.now(), outcome: { kind: 'error', code: reply.error.code } });
        if (reply.error.code !== 'UNAVAILABLE') {
          this.finish(record, { kind: 'error', code: reply.error.code });
          return;
        }
      } catch (error) {
        record.attempts.push({ at: Date.now(), outcome: { kind: 'transport', message: (error as Error).message } });
      }
    }
    this.finish(record, this.lastExplicit(record) ?? { kind: 'lost' });
  }

  /** After the last attempt: the last explicit reply (an UNAVAILABLE is explicit), if any. */
  private lastExplicit(record: RequestRecord): RequestRecord['final'] {
    for (let i = record.attempts.length - 1; i >= 0; i -= 1) {
      const outcome = record.attempts[i]!.outcome;
      if (outcome.kind === 'error') return { kind: 'error', code: outcome.code };
    }
    return null;
  }

  private finish(record: RequestRecord, final: NonNullable<RequestRecord['final']>): NonNullable<RequestRecord['final']> {
    record.final = final;
    record.endedAt = Date.now();
    return final;
  }
}

function backoff(attempt: number): Promise<void> {
  const ms = Math.min(MAX_BACKOFF_MS, 25 * 2 ** Math.min(attempt, 6));
  return new Promise((resolve) => setTimeout(resolve, ms * (0.5 + Math.random() / 2)));
}
