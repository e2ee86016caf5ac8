/**
 * Asks every shard, through the public contract, whether it is answerable: for each shard a no-op
 * `workers.enable` of one of its (available) workers, which a router forwards to the shard's owner
 * and the owner answers without writing. One lane per shard, one probe every `intervalMs`, from a
 * client with its own NATS connection (not behind any fault proxy). From the record the chaos
 * suite reads, per fault, the longest time any shard went unanswered and the share of probes that
 * failed on shards the faulty replica did not own.
 */
import { DroverClient } from '../client/drover-client.js';

export interface ProbeRecord {
  readonly at: number;
  readonly ok: boolean;
}

export interface ShardProbeOptions {
  readonly natsUrl: string;
  readonly prefix: string;
  /** One available worker per shard, indexed by shard. */
  readonly workers: readonly string[];
  readonly intervalMs: number;
  readonly timeoutMs: number;
}

/** Probes kept per shard (at 5 a second, over an hour): a bound, not a limit a run reaches. */
const MAX_PROBES_PER_SHARD = 20_000;

export class ShardProbe {
  readonly records: ProbeRecord[][];
  private client: DroverClient | null = null;
  private running = false;
  private lanes: Promise<void>[] = [];

  constructor(private readonly options: ShardProbeOptions) {
    this.records = options.workers.map(() => []);
  }

  async start(): Promise<void> {
    this.client = await DroverClient.connect(this.options.natsUrl, this.options.prefix, this.options.timeoutMs, 'chaos-shard-probe');
    this.running = true;
    this.lanes = this.options.workers.map((worker, shard) => this.lane(this.client!, worker, this.records[shard]!));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.lanes);
    await this.client?.close().catch(() => undefined);
  }

  private async lane(client: DroverClient, worker: string, records: ProbeRecord[]): Promise<void> {
    while (this.running) {
      const at = Date.now();
      let ok = false;
      try {
        ok = (await client.enableWorker(worker)).ok;
      } catch {
        ok = false; // no reply in time, no responders, connection trouble: not answerable now
      }
      if (records.length < MAX_PROBES_PER_SHARD) records.push({ at, ok });
      const wait = this.options.intervalMs - (Date.now() - at);
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  /**
   * The longest time any shard went without a successful probe, over [from, to]: the largest gap
   * between two successful probes' send times (or the window's edges) that overlaps the window.
   */
  longestDark(from: number, to: number): { ms: number; shard: number } {
    let worst = { ms: 0, shard: -1 };
    this.records.forEach((records, shard) => {
      let lastOk = from;
      for (const record of records) {
        if (!record.ok) continue;
        if (record.at <= from) {
          lastOk = from;
          continue;
        }
        if (record.at > to) break;
        if (record.at - lastOk > worst.ms) worst = { ms: record.at - lastOk, shard };
        lastOk = record.at;
      }
      // Dark until the end of the window (no success after the last one).
      const end = records.find((r) => r.ok && r.at > lastOk)?.at ?? to;
      if (Math.min(end, to) - lastOk > worst.ms) worst = { ms: Math.min(end, to) - lastOk, shard };
    });
    return worst;
  }

  /** Probes sent in [from, to) to the given shards, and how many of them failed. */
  failures(from: number, to: number, shards: ReadonlySet<number>): { sent: number; failed: number } {
    let sent = 0;
    let failed = 0;
    for (const shard of shards) {
      for (const record of this.records[shard] ?? []) {
        if (record.at < from || record.at >= to) continue;
        sent += 1;
        if (!record.ok) failed += 1;
      }
    }
    return { sent, failed };
  }
}
