/**
 * Driving a real Drover cluster for the benchmark: replica processes against the benchmark's
 * Redis and NATS, worker registration, and placement load (single submits or batches) with
 * latency recorded per container from submit to placed.
 */
import { DroverClient, type ContainerSpec, type ReplicaStatus, type WorkerSpecInput } from '../client/drover-client.js';
import { ProcessCluster } from '../replica/process-cluster.js';
import type { ErrorCode } from '../protocol/errors.js';
import { Progress } from '../util/progress.js';
import type { Latency } from './latency.js';

export interface BenchClusterOptions {
  readonly redisUrl: string;
  readonly natsUrl: string;
  readonly replicas: number;
  readonly shards: number;
  readonly env?: Record<string, string>;
  readonly nodeArgs?: readonly string[];
}

/** Counters summed over every replica (router re-routes, owner conflicts and fence refusals). */
export interface ClusterCounters {
  placed: number;
  reroutes: number;
  versionConflicts: number;
  fenceRefusals: number;
  batches: number;
  committedOps: number;
}

export const NO_COUNTERS: ClusterCounters = { placed: 0, reroutes: 0, versionConflicts: 0, fenceRefusals: 0, batches: 0, committedOps: 0 };

export function sumCounters(all: readonly ClusterCounters[]): ClusterCounters {
  const sum = { ...NO_COUNTERS };
  for (const c of all) {
    for (const key of Object.keys(sum) as Array<keyof ClusterCounters>) sum[key] += c[key];
  }
  return sum;
}

export class BenchCluster {
  private constructor(
    readonly prefix: string,
    readonly cluster: ProcessCluster,
    readonly client: DroverClient,
    readonly shards: number,
  ) {}

  static async start(options: BenchClusterOptions): Promise<BenchCluster> {
    const prefix = `bench${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
    const cluster = new ProcessCluster(
      {
        REDIS_URL: options.redisUrl,
        NATS_URL: options.natsUrl,
        DROVER_PREFIX: prefix,
        DROVER_SHARDS: String(options.shards),
        ...options.env,
      },
      // DROVER_BENCH_NODE_ARGS adds node flags to every replica, e.g. "--cpu-prof --cpu-prof-dir=prof".
      [...(options.nodeArgs ?? []), ...(process.env.DROVER_BENCH_NODE_ARGS ?? '').split(' ').filter((arg) => arg !== '')],
    );
    for (let i = 0; i < options.replicas; i += 1) await cluster.add();
    const client = await DroverClient.connect(options.natsUrl, prefix, 120_000, 'drover-bench');
    const bench = new BenchCluster(prefix, cluster, client, options.shards);
    await bench.waitBalanced();
    return bench;
  }

  async statuses(): Promise<ReplicaStatus[]> {
    const live = this.cluster.live();
    return this.client.clusterStatus(1_000, live.length);
  }

  /** Every shard owned once, by the live replicas, within one of each other. */
  async waitBalanced(timeoutMs = 30_000): Promise<number> {
    const started = Date.now();
    while (Date.now() - started < timeoutMs) {
      const statuses = await this.statuses();
      const live = this.cluster.live();
      const answered = statuses.filter((s) => live.some((r) => r.id === s.replicaId));
      const all = answered.flatMap((s) => s.shards);
      const counts = answered.map((s) => s.shards.length);
      if (
        answered.length === live.length &&
        all.length === this.shards &&
        new Set(all).size === this.shards &&
        Math.max(...counts) - Math.min(...counts) <= 1
      ) {
        return Date.now() - started;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the bench cluster did not balance in ${timeoutMs} ms`);
  }

  async counters(): Promise<ClusterCounters> {
    return sumCounters([...(await this.countersByReplica()).values()]);
  }

  /** Each live replica's counters, by replica id (a replica that leaves takes its counters along). */
  async countersByReplica(): Promise<Map<string, ClusterCounters>> {
    const byReplica = new Map<string, ClusterCounters>();
    for (const s of await this.statuses()) {
      byReplica.set(s.replicaId, {
        placed: s.router.placed ?? 0,
        reroutes: s.router.reroutes ?? 0,
        versionConflicts: s.owners.versionConflicts ?? 0,
        fenceRefusals: s.owners.fenceRefusals ?? 0,
        batches: s.owners.batches ?? 0,
        committedOps: s.owners.committedOps ?? 0,
      });
    }
    return byReplica;
  }

  replicaPids(): Record<string, number | undefined> {
    return Object.fromEntries(this.cluster.live().map((r) => [r.id, r.pid]));
  }

  async registerWorkers(workers: readonly WorkerSpecInput[], label = 'registering workers'): Promise<void> {
    const progress = new Progress(label, workers.length);
    let done = 0;
    await runLanes(workers, 64, async (worker) => {
      const reply = await this.client.registerWorker(worker);
      if (!reply.ok) throw new Error(`registering ${worker.id}: ${reply.error.code} ${reply.error.message}`);
      done += 1;
      progress.update(done);
    });
    progress.done();
    // Owners publish capacity within 10 ms of a change; give every router time to hear it.
    await new Promise((r) => setTimeout(r, 300));
  }

  async stop(): Promise<void> {
    await this.client.close().catch(() => undefined);
    await this.cluster.stopAll();
  }
}

/** Run `work` over `items` with at most `lanes` in flight. */
export async function runLanes<T>(items: readonly T[], lanes: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(lanes, items.length) }, async () => {
      while (next < items.length) {
        const index = next;
        next += 1;
        await work(items[index]!, index);
      }
    }),
  );
}

export interface PlacementRun {
  placed: number;
  failed: number;
  errors: Partial<Record<ErrorCode, number>>;
  seconds: number;
}

/** Submit `containers` in batches of `batchSize`, `inFlight` batches at a time. */
export async function placeInBatches(
  client: DroverClient,
  containers: readonly ContainerSpec[],
  options: { batchSize: number; inFlight: number; latency: Latency; label: string; onPlaced?: (count: number) => void },
): Promise<PlacementRun> {
  const batches: ContainerSpec[][] = [];
  for (let i = 0; i < containers.length; i += options.batchSize) batches.push(containers.slice(i, i + options.batchSize));
  const run: PlacementRun = { placed: 0, failed: 0, errors: {}, seconds: 0 };
  const progress = new Progress(options.label, containers.length);
  const started = performance.now();
  await runLanes(batches, options.inFlight, async (batch) => {
    const sent = performance.now();
    const reply = await client.submitBatch(batch.map((container) => ({ ...container, queue: false })));
    const ms = performance.now() - sent;
    if (!reply.ok) {
      run.failed += batch.length;
      run.errors[reply.error.code] = (run.errors[reply.error.code] ?? 0) + batch.length;
    } else {
      let placed = 0;
      for (const result of reply.results) {
        if (result.ok) placed += 1;
        else run.errors[result.error.code] = (run.errors[result.error.code] ?? 0) + 1;
      }
      run.placed += placed;
      run.failed += batch.length - placed;
      options.latency.record(ms, placed);
      options.onPlaced?.(placed);
    }
    progress.update(run.placed + run.failed, `placed ${run.placed}`);
  });
  run.seconds = (performance.now() - started) / 1000;
  progress.done(`placed ${run.placed}`);
  return run;
}

/** Submit `containers` one request each, `inFlight` at a time. */
export async function placeSingly(
  client: DroverClient,
  containers: readonly ContainerSpec[],
  options: { inFlight: number; latency: Latency },
): Promise<PlacementRun> {
  const run: PlacementRun = { placed: 0, failed: 0, errors: {}, seconds: 0 };
  const started = performance.now();
  await runLanes(containers, options.inFlight, async (container) => {
    const sent = performance.now();
    const reply = await client.submit({ ...container, queue: false });
    if (reply.ok) {
      run.placed += 1;
      options.latency.record(performance.now() - sent);
    } else {
      run.failed += 1;
      run.errors[reply.error.code] = (run.errors[reply.error.code] ?? 0) + 1;
    }
  });
  run.seconds = (performance.now() - started) / 1000;
  return run;
}
