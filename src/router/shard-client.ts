/**
 * The router's side of the shard subjects. Ops that arrive in the same I/O turn travel together
 * (micro-batching): the placements and registrations of every shard whose owner the capacity view
 * knows go in one request to that owner's replica subject (other ops: one request per shard), so under load a router sends one message per owner replica per
 * turn instead of one per shard (a registration batch of 100 workers touches up to 64 shards, and
 * would otherwise send about 1.5 workers per message). The owner runs an op only while it serves
 * the op's shard; an op it answers `notServed` (the shard moved since its last summary), and every
 * op whose owner is unknown or whose owner's subject has no responder, goes on the shard's own
 * subject, where only the lease holder listens. Every op gets a result: a missing owner (no
 * responders), a timeout or a malformed reply all become UNAVAILABLE, never a lost request.
 */
import { errors, type NatsConnection } from '@nats-io/transport-node';
import {
  MAX_SHARD_OPS,
  parseShardCapacity,
  type ReplicaOpsReply,
  type ShardCapacity,
  type ShardOp,
  type ShardOpResult,
  type ShardReply,
} from '../protocol/shard-messages.js';
import type { Subjects } from '../protocol/subjects.js';

/** The op kinds grouped by owner replica (see flush). */
const GROUPED_KINDS: ReadonlySet<ShardOp['k']> = new Set(['place', 'register']);
/** A request's payload stays under this many bytes (and under half the server's maximum payload). */
const MAX_REQUEST_BYTES = 512 * 1024;
/** nats-server's default max_payload, when the server did not say. */
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

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
  /** The replica the last summary named as the shard's owner, or null (unknown: use the shard subject). */
  readonly ownerOf?: (shard: number) => string | null;
}

export class ShardClient {
  private readonly pending = new Map<number, Pending[]>();
  private flushScheduled = false;
  private inFlightRequests = 0;
  readonly stats = { requests: 0, ops: 0, timeouts: 0, noResponders: 0, ownerRequests: 0, notServed: 0 };

  constructor(private readonly options: ShardClientOptions) {}

  get inFlight(): number {
    return this.inFlightRequests;
  }

  send(shard: number, op: ShardOp): Promise<ShardOpResult> {
    return new Promise((resolve) => {
      push(this.pending, shard, { op, resolve });
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
    const byOwner = new Map<string, Array<{ shard: number; pending: Pending }>>();
    for (const [shard, list] of batches) {
      const owner = this.options.ownerOf?.(shard) ?? null;
      // Only placements and registrations, the ops that come by the thousand, are grouped. The
      // others keep one shard per message: a report's reply carries assignments with commands of
      // up to 16 KiB (grouped over many agents it could outgrow the payload limit), and a slow op
      // (a requeue reading Redis, a status change behind a long commit queue) must not hold the
      // answers of other shards' ops, nor make their bounded retries repeat ops that ran.
      const grouped = owner === null ? [] : list.filter((pending) => GROUPED_KINDS.has(pending.op.k));
      const alone = owner === null ? list : list.filter((pending) => !GROUPED_KINDS.has(pending.op.k));
      if (alone.length > 0) this.requestShard(shard, alone);
      if (owner === null) continue;
      for (const pending of grouped) push(byOwner, owner, { shard, pending });
    }
    for (const [owner, group] of byOwner) {
      const encoded = group.map(({ shard, pending }) => `{"s":${shard},"op":${JSON.stringify(pending.op)}}`);
      for (const [from, to] of this.chunks(encoded)) void this.requestOwner(owner, group.slice(from, to), encoded.slice(from, to));
    }
  }

  private requestShard(shard: number, list: Pending[]): void {
    const encoded = list.map((pending) => JSON.stringify(pending.op));
    for (const [from, to] of this.chunks(encoded)) void this.request(shard, list.slice(from, to), encoded.slice(from, to));
  }

  /**
   * Index ranges of encoded ops that fit one request: at most MAX_SHARD_OPS ops and at most half
   * the server's maximum payload (ops carry commands and environments of up to 16 KiB each, and
   * a request over the limit would fail whole). An op larger than that alone goes alone.
   */
  private chunks(encoded: readonly string[]): Array<[number, number]> {
    const maxBytes = Math.min(MAX_REQUEST_BYTES, Math.floor((this.options.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD) / 2));
    const ranges: Array<[number, number]> = [];
    let from = 0;
    let bytes = 0;
    for (let i = 0; i < encoded.length; i += 1) {
      const size = Buffer.byteLength(encoded[i]!) + 1;
      if (i > from && (i - from >= MAX_SHARD_OPS || bytes + size > maxBytes)) {
        ranges.push([from, i]);
        from = i;
        bytes = 0;
      }
      bytes += size;
    }
    if (from < encoded.length) ranges.push([from, encoded.length]);
    return ranges;
  }

  /**
   * Ops of several shards in one request to the replica that owns them. Ops it no longer serves,
   * and all of them when its subject has no responder (it stopped), go on their shards' subjects.
   */
  private async requestOwner(owner: string, group: Array<{ shard: number; pending: Pending }>, encoded: readonly string[]): Promise<void> {
    this.stats.ownerRequests += 1;
    let results: readonly ShardOpResult[];
    const resend = new Map<number, Pending[]>();
    try {
      const body = await this.exchange<ReplicaOpsReply>(this.options.subjects.replicaOps(owner), encoded, `replica ${owner}`);
      results = body.results;
      if (Array.isArray(body.capacities)) {
        for (const received of body.capacities.slice(0, MAX_SHARD_OPS)) {
          const capacity = parseShardCapacity(received);
          if (capacity !== null) this.options.onCapacity(capacity);
        }
      }
    } catch (error) {
      if (error instanceof errors.RequestError && error.isNoResponders()) {
        // The owner's replica is gone: whoever holds each shard now answers on its subject.
        this.stats.noResponders += 1;
        for (const { shard, pending } of group) push(resend, shard, pending);
        results = [];
      } else {
        if (error instanceof errors.TimeoutError) this.stats.timeouts += 1;
        const message = `replica ${owner}: ${error instanceof errors.TimeoutError ? 'did not answer in time' : `request failed: ${(error as Error).message}`}`;
        const unknown = error instanceof errors.TimeoutError;
        results = group.map(() => ({ ok: false as const, code: 'UNAVAILABLE' as const, message, unknown }));
      }
    }
    for (let i = 0; i < results.length; i += 1) {
      const result = wellFormed(results[i], owner);
      const { shard, pending } = group[i]!;
      if (!result.ok && result.notServed === true) {
        this.stats.notServed += 1;
        push(resend, shard, pending);
      } else {
        pending.resolve(result);
      }
    }
    for (const [shard, list] of resend) this.requestShard(shard, list);
  }

  private async request(shard: number, list: Pending[], encoded: readonly string[]): Promise<void> {
    let results: readonly ShardOpResult[];
    try {
      const body = await this.exchange<ShardReply>(this.options.subjects.shard(shard), encoded, `shard ${shard}`);
      results = body.results;
      const capacity = parseShardCapacity(body.capacity);
      if (capacity !== null) this.options.onCapacity(capacity);
    } catch (error) {
      const message = describe(error, shard);
      if (error instanceof errors.TimeoutError) this.stats.timeouts += 1;
      if (error instanceof errors.RequestError && error.isNoResponders()) this.stats.noResponders += 1;
      const unknown = error instanceof errors.TimeoutError;
      results = list.map(() => ({ ok: false as const, code: 'UNAVAILABLE' as const, message, unknown }));
    }
    for (let i = 0; i < list.length; i += 1) list[i]!.resolve(results[i]!);
  }

  /** One request of `encoded` ops on `subject`; the reply must hold one result per op (else it throws). */
  private async exchange<Reply extends { readonly results: readonly ShardOpResult[] }>(subject: string, encoded: readonly string[], who: string): Promise<Reply> {
    this.inFlightRequests += 1;
    this.stats.requests += 1;
    this.stats.ops += encoded.length;
    try {
      const reply = await this.options.nc.request(subject, Buffer.from(`{"ops":[${encoded.join(',')}]}`), { timeout: this.options.timeoutMs });
      const body = reply.json<Reply>();
      if (!Array.isArray(body.results) || body.results.length !== encoded.length) {
        throw new Error(`${who} answered ${Array.isArray(body.results) ? body.results.length : 'no'} results for ${encoded.length} ops`);
      }
      return body;
    } finally {
      this.inFlightRequests -= 1;
    }
  }
}

/** A result entry as received: anything but an object with a boolean `ok` is UNAVAILABLE (outcome unknown), never a throw that would leave other ops unanswered. */
function wellFormed(result: unknown, owner: string): ShardOpResult {
  if (typeof result === 'object' && result !== null && typeof (result as { ok?: unknown }).ok === 'boolean') return result as ShardOpResult;
  return { ok: false, code: 'UNAVAILABLE', message: `replica ${owner} answered a malformed result`, unknown: true };
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  let list = map.get(key);
  if (list === undefined) map.set(key, (list = []));
  list.push(value);
}

function describe(error: unknown, shard: number): string {
  if (error instanceof errors.RequestError && error.isNoResponders()) return `no replica serves shard ${shard} right now`;
  if (error instanceof errors.TimeoutError) return `the owner of shard ${shard} did not answer in time`;
  return `shard ${shard} request failed: ${(error as Error).message}`;
}
