/**
 * The router's side of the shard subjects. Ops for the same shard that arrive in the same I/O turn
 * travel in one NATS request (micro-batching), so under load a router sends one message per shard
 * per turn instead of one per container. Every op gets a result: a missing owner (no responders),
 * a timeout or a malformed reply all become UNAVAILABLE, never a lost request.
 */
import { errors, type NatsConnection } from '@nats-io/transport-node';
import { MAX_SHARD_OPS, parseShardCapacity, type ShardCapacity, type ShardOp, type ShardOpResult, type ShardReply } from '../protocol/shard-messages.js';
import type { Subjects } from '../protocol/subjects.js';

interface Pending {
  readonly op: ShardOp;
  readonly resolve: (result: ShardOpResult) => void;
}

export interface ShardClientOptions {
  readonly nc: NatsConnection;
  readonly subjects: Subjects;
  /** How long to wait for a shard's owner. */
  readonly timeoutMs: number;
  /** Fresh capacity piggy-backed on replies. */
  readonly onCapacity: (capacity: ShardCapacity) => void;
}

export class ShardClient {
  private readonly pending = new Map<number, Pending[]>();
  private flushScheduled = false;
  private inFlightRequests = 0;
  readonly stats = { requests: 0, ops: 0, timeouts: 0, noResponders: 0 };

  constructor(private readonly options: ShardClientOptions) {}

  get inFlight(): number {
    return this.inFlightRequests;
  }

  send(shard: number, op: ShardOp): Promise<ShardOpResult> {
    return new Promise((resolve) => {
      let list = this.pending.get(shard);
      if (list === undefined) {
        list = [];
        this.pending.set(shard, list);
      }
      list.push({ op, resolve });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    const batches = [...this.pending];
    this.pending.clear();
    for (const [shard, list] of batches) {
      for (let i = 0; i < list.length; i += MAX_SHARD_OPS) void this.request(shard, list.slice(i, i + MAX_SHARD_OPS));
    }
  }

  private async request(shard: number, list: Pending[]): Promise<void> {
    const { nc, subjects, timeoutMs } = this.options;
    this.inFlightRequests += 1;
    this.stats.requests += 1;
    this.stats.ops += list.length;
    let results: readonly ShardOpResult[];
    try {
      const payload = Buffer.from(JSON.stringify({ ops: list.map((p) => p.op) }));
      const reply = await nc.request(subjects.shard(shard), payload, { timeout: timeoutMs });
      const body = reply.json<ShardReply>();
      if (!Array.isArray(body.results) || body.results.length !== list.length) {
        throw new Error(`shard ${shard} answered ${Array.isArray(body.results) ? body.results.length : 'no'} results for ${list.length} ops`);
      }
      results = body.results;
      const capacity = parseShardCapacity(body.capacity);
      if (capacity !== null) this.options.onCapacity(capacity);
    } catch (error) {
      const message = describe(error, shard);
      if (error instanceof errors.TimeoutError) this.stats.timeouts += 1;
      if (error instanceof errors.RequestError && error.isNoResponders()) this.stats.noResponders += 1;
      const unknown = error instanceof errors.TimeoutError;
      results = list.map(() => ({ ok: false as const, code: 'UNAVAILABLE' as const, message, unknown }));
    } finally {
      this.inFlightRequests -= 1;
    }
    for (let i = 0; i < list.length; i += 1) list[i]!.resolve(results[i]!);
  }
}

function describe(error: unknown, shard: number): string {
  if (error instanceof errors.RequestError && error.isNoResponders()) return `no replica serves shard ${shard} right now`;
  if (error instanceof errors.TimeoutError) return `the owner of shard ${shard} did not answer in time`;
  return `shard ${shard} request failed: ${(error as Error).message}`;
}
