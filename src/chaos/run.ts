/**
 * The chaos suite. Private Redis (append-only, fsync always) and NATS, replicas as OS processes,
 * continuous load from several clients, and faults injected one scenario at a time and then
 * mixed: SIGKILL, SIGSTOP past twice the lease TTL then SIGCONT, a replica joining, a replica
 * leaving with SIGTERM, NATS restarted, Redis restarted. At the end the checker judges the whole
 * run from the clients' record and Redis.
 */
import { writeFileSync } from 'node:fs';
import { startNats, startRedis, type ServerProcess } from '../../infra/servers.js';
import { DroverClient, type ReplicaStatus } from '../client/drover-client.js';
import { DroverStore } from '../store/store.js';
import { renderTable } from '../util/table.js';
import { checkRun, type CheckReport, type Violation } from './checker.js';
import { ChaosLoad, seededRandom } from './load.js';
import { ProcessCluster, type ReplicaProcess } from '../replica/process-cluster.js';
import { RequestLog } from './request-log.js';
import { Redis } from 'ioredis';

/** Single faults, each run once as its own scenario by default. */
export const FAULTS = ['kill', 'pause', 'join', 'leave', 'nats-restart', 'redis-restart'] as const;
/** Faults that overlap: a replica is paused while Redis crashes and restarts. */
export const OVERLAPPING_FAULTS = ['pause-redis-restart'] as const;
export const ALL_FAULTS = [...FAULTS, ...OVERLAPPING_FAULTS] as const;
export type FaultName = (typeof ALL_FAULTS)[number];

export interface ChaosOptions {
  readonly replicas: number;
  readonly workers: number;
  readonly shards: number;
  readonly leaseTtlMs: number;
  /** Each fault once, in this order. */
  readonly scenarios: readonly FaultName[];
  /** Then this many faults chosen at random. */
  readonly mixedFaults: number;
  /** Load runs this long before the first fault and between faults. */
  readonly settleMs: number;
  readonly clients: number;
  readonly lanesPerClient: number;
  readonly seed: number;
  readonly resultsFile: string | null;
  readonly out: (line: string) => void;
}

export interface FaultResult {
  readonly fault: FaultName;
  readonly replica: string | null;
  readonly timings: Record<string, number | null>;
  readonly unavailable: number;
  readonly transportFailures: number;
  readonly note: string;
  readonly ok: boolean;
}

export interface ChaosResult {
  readonly faults: FaultResult[];
  readonly report: CheckReport;
  readonly problems: string[];
  readonly durationMs: number;
}

const RECOVERY_TIMEOUT_MS = 60_000;

interface Context {
  readonly options: ChaosOptions;
  readonly cluster: ProcessCluster;
  readonly redis: ServerProcess;
  readonly nats: ServerProcess;
  readonly observer: DroverClient;
  readonly log: RequestLog;
  readonly random: () => number;
}

/** Poll `check` until true; the elapsed ms since `since`, or null if it never became true. */
async function waitFor(check: () => Promise<boolean>, since: number, timeoutMs = RECOVERY_TIMEOUT_MS): Promise<number | null> {
  while (Date.now() - since < timeoutMs) {
    if (await check()) return Date.now() - since;
    await new Promise((r) => setTimeout(r, 50));
  }
  return null;
}

async function statuses(ctx: Context, expected: readonly ReplicaProcess[]): Promise<ReplicaStatus[]> {
  return ctx.observer.clusterStatus(400, expected.length);
}

/** Every shard served by exactly one of `replicas` (others may answer too, but must serve none). */
async function allOwnedBy(ctx: Context, replicas: readonly ReplicaProcess[]): Promise<boolean> {
  const ids = new Set(replicas.map((r) => r.id));
  const seen = new Map<number, number>();
  for (const status of await statuses(ctx, replicas)) {
    if (!ids.has(status.replicaId)) {
      if (status.shards.length > 0) return false;
      continue;
    }
    for (const shard of status.shards) seen.set(shard, (seen.get(shard) ?? 0) + 1);
  }
  if (seen.size !== ctx.options.shards) return false;
  for (const count of seen.values()) if (count !== 1) return false;
  return true;
}

/** All shards owned by `replicas`, every one of them answering, their counts within one. */
async function balanced(ctx: Context, replicas: readonly ReplicaProcess[]): Promise<boolean> {
  const answered = (await statuses(ctx, replicas)).filter((s) => replicas.some((r) => r.id === s.replicaId));
  if (answered.length !== replicas.length) return false;
  const counts = answered.map((s) => s.shards.length);
  if (Math.max(...counts) - Math.min(...counts) > 1) return false;
  const all = answered.flatMap((s) => s.shards);
  return all.length === ctx.options.shards && new Set(all).size === ctx.options.shards;
}

function pick<T>(ctx: Context, list: readonly T[]): T {
  return list[Math.floor(ctx.random() * list.length)]!;
}

async function runFault(ctx: Context, fault: FaultName): Promise<Omit<FaultResult, 'unavailable' | 'transportFailures'> & { start: number; end: number }> {
  const { cluster, options } = ctx;
  const start = Date.now();
  switch (fault) {
    case 'kill': {
      const victim = pick(ctx, cluster.live());
      await victim.kill();
      const survivors = cluster.live();
      const reowned = await waitFor(() => allOwnedBy(ctx, survivors), start);
      const joinAt = Date.now();
      await cluster.add();
      const rebalanced = await waitFor(() => balanced(ctx, cluster.live()), joinAt);
      return {
        fault, replica: victim.id, start, end: Date.now(), ok: reowned !== null && rebalanced !== null,
        timings: { 'SIGKILL to all shards owned': reowned, 'replacement join to balanced': rebalanced },
        note: `lease TTL ${options.leaseTtlMs} ms`,
      };
    }
    case 'pause':
      return pauseFault(ctx, fault, start, null);
    case 'pause-redis-restart':
      return pauseFault(ctx, fault, start, async () => {
        const begun = Date.now();
        await ctx.redis.restart();
        return Date.now() - begun;
      });
    case 'join': {
      await cluster.add();
      const started = Date.now() - start;
      const rebalanced = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: cluster.replicas[cluster.replicas.length - 1]!.id, start, end: Date.now(), ok: rebalanced !== null,
        timings: { 'process start': started, 'join to balanced': rebalanced },
        note: `${cluster.live().length} replicas`,
      };
    }
    case 'leave': {
      const victim = pick(ctx, cluster.live());
      const code = await victim.terminate();
      const exited = Date.now() - start;
      const rebalanced = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: victim.id, start, end: Date.now(), ok: rebalanced !== null && code === 0,
        timings: { 'SIGTERM to exit': exited, 'SIGTERM to balanced': rebalanced },
        note: `exit code ${code}; ${cluster.live().length} replicas left`,
      };
    }
    case 'nats-restart': {
      await ctx.nats.restart();
      const down = Date.now() - start;
      const serving = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: null, start, end: Date.now(), ok: serving !== null,
        timings: { 'NATS down (SIGKILL to ready)': down, 'restart to balanced': serving },
        note: 'clients and replicas reconnect on their own',
      };
    }
    case 'redis-restart': {
      await ctx.redis.restart();
      const down = Date.now() - start;
      const serving = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: null, start, end: Date.now(), ok: serving !== null,
        timings: { 'Redis down (SIGKILL to ready, AOF replayed)': down, 'restart to balanced': serving },
        note: 'append-only file, fsync always',
      };
    }
  }
}

/**
 * SIGSTOP a replica for at least twice the lease TTL, optionally with another fault (`during`,
 * returning how long it took) while it is stopped, then SIGCONT it. Passes when the others own
 * every shard while it is stopped, the cluster is balanced again after it wakes, and the woken
 * replica reports that it found its leases had run out.
 */
async function pauseFault(
  ctx: Context,
  fault: FaultName,
  start: number,
  during: (() => Promise<number>) | null,
): Promise<Omit<FaultResult, 'unavailable' | 'transportFailures'> & { start: number; end: number }> {
  const { cluster, options } = ctx;
  const victim = pick(ctx, cluster.live());
  victim.signal('SIGSTOP');
  const others = cluster.live();
  const duringMs = during === null ? null : await during();
  const reowned = await waitFor(() => allOwnedBy(ctx, others), start);
  const pauseFor = 2 * options.leaseTtlMs + 200;
  const remaining = start + pauseFor - Date.now();
  if (remaining > 0) await new Promise((r) => setTimeout(r, remaining));
  const pausedMs = Date.now() - start;
  const resumeAt = Date.now();
  victim.signal('SIGCONT');
  const rejoined = await waitFor(() => balanced(ctx, cluster.live()), resumeAt);
  const victimStatus = (await ctx.observer.clusterStatus(500)).find((s) => s.replicaId === victim.id);
  const refusals = victimStatus?.owners.fenceRefusals ?? 0;
  const lost = victimStatus?.leases.lost ?? 0;
  // On waking, the replica must have found out that its leases ran out (it gives them up and
  // stops writing them; any write it still sends is refused by the fence in Redis).
  const foundOut = victimStatus !== undefined && lost > 0;
  return {
    fault, replica: victim.id, start, end: Date.now(), ok: reowned !== null && rejoined !== null && foundOut,
    timings: {
      ...(duringMs === null ? {} : { 'Redis down while paused (SIGKILL to ready)': duringMs }),
      'SIGSTOP to all shards owned by others': reowned,
      'paused for': pausedMs,
      'SIGCONT to balanced': rejoined,
    },
    note: victimStatus === undefined
      ? 'the woken replica did not answer a status request'
      : `on waking it gave up ${lost} expired leases; ${refusals} writes refused by the fence`,
  };
}

/** Faults for the mixed phase: keep between `replicas` and `replicas + 2` processes running. */
function mixedFault(ctx: Context): FaultName {
  const live = ctx.cluster.live().length;
  const choices: FaultName[] = ['kill', 'pause', 'nats-restart', 'redis-restart', 'pause-redis-restart'];
  if (live < ctx.options.replicas + 2) choices.push('join');
  if (live > ctx.options.replicas) choices.push('leave');
  return pick(ctx, choices);
}

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const began = Date.now();
  const out = options.out;
  const redis = await startRedis({ persistent: true });
  const nats = await startNats();
  const prefix = `chaos${Date.now().toString(36)}`;
  const env = {
    REDIS_URL: redis.url,
    NATS_URL: nats.url,
    DROVER_PREFIX: prefix,
    DROVER_SHARDS: String(options.shards),
    DROVER_LEASE_TTL_MS: String(options.leaseTtlMs),
    DROVER_HISTORY_CAP: '100000000',
    DROVER_SHARD_TIMEOUT_MS: '1000',
    DROVER_LOG_LEVEL: 'info',
  };
  const cluster = new ProcessCluster(env);
  const log = new RequestLog();
  let observer: DroverClient | null = null;
  let load: ChaosLoad | null = null;
  const storeRedis = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 20 });
  try {
    out(`chaos: Redis ${redis.url} (append-only, fsync always), NATS ${nats.url}, prefix ${prefix}, lease TTL ${options.leaseTtlMs} ms`);
    for (let i = 0; i < options.replicas; i += 1) await cluster.add();
    observer = await DroverClient.connect(nats.url, prefix, 5_000, 'chaos-observer');
    const ctx: Context = { options, cluster, redis, nats, observer, log, random: seededRandom(options.seed + 1) };
    if ((await waitFor(() => balanced(ctx, cluster.live()), Date.now())) === null) throw new Error('the cluster never balanced at start');
    out(`chaos: ${options.replicas} replica processes balanced over ${options.shards} shards`);

    for (let i = 0; i < options.workers; i += 1) {
      const reply = await observer.registerWorker({ id: `worker-${i}`, cpu: 4_000, memory: 8_192 });
      if (!reply.ok) throw new Error(`registering worker-${i}: ${reply.error.message}`);
    }
    out(`chaos: ${options.workers} workers registered; starting load (${options.clients} clients x ${options.lanesPerClient} lanes)`);
    load = new ChaosLoad({
      natsUrl: nats.url, prefix, log, clients: options.clients, lanesPerClient: options.lanesPerClient,
      releaseChance: 0.45, maxAttempts: 60, requestTimeoutMs: 3_000, seed: options.seed,
    });
    await load.start();
    await new Promise((r) => setTimeout(r, options.settleMs));

    const plan: FaultName[] = [...options.scenarios];
    const faults: FaultResult[] = [];
    for (let i = 0; i < plan.length + options.mixedFaults; i += 1) {
      const fault = i < plan.length ? plan[i]! : mixedFault(ctx);
      const phase = i < plan.length ? 'scenario' : 'mixed';
      out(`chaos: [${phase} ${i + 1}/${plan.length + options.mixedFaults}] ${fault} ...`);
      const result = await runFault(ctx, fault);
      // Count what clients saw from the fault until one settle period after recovery.
      await new Promise((r) => setTimeout(r, options.settleMs));
      const to = Date.now();
      const full: FaultResult = {
        fault: result.fault, replica: result.replica, timings: result.timings, note: result.note, ok: result.ok,
        unavailable: log.countErrors('UNAVAILABLE', result.start, to),
        transportFailures: log.countAttempts('transport', result.start, to),
      };
      faults.push(full);
      out(`chaos:   ${Object.entries(full.timings).map(([k, v]) => `${k} ${v === null ? 'NEVER' : `${v} ms`}`).join(', ')}; ` +
        `${full.unavailable} UNAVAILABLE, ${full.transportFailures} no-reply attempts; ${full.note}`);
    }

    out('chaos: stopping load and waiting for every request to end');
    await load.stop();
    load = null;
    await storeRedis.connect();
    const store = new DroverStore(storeRedis, { prefix, shards: options.shards, historyCap: 0, releasedRetentionSeconds: 0 });
    out(`chaos: checking ${log.records.length} requests against Redis`);
    const report = await checkRun(store, options.shards, log.records);

    const problems: string[] = [];
    for (const f of faults) if (!f.ok) problems.push(`${f.fault} (${f.replica ?? 'server'}) did not recover: ${JSON.stringify(f.timings)} ${f.note}`);
    const exitCodes = await Promise.all(cluster.replicas.filter((r) => r.running).map(async (r) => [r.id, await r.terminate(20_000)] as const));
    for (const [id, code] of exitCodes) if (code !== 0) problems.push(`replica ${id} exited ${code} on SIGTERM at the end`);

    printResult(out, faults, report, problems);
    const result: ChaosResult = { faults, report, problems, durationMs: Date.now() - began };
    if (options.resultsFile !== null) {
      writeFileSync(options.resultsFile, JSON.stringify({ options: { ...options, out: undefined }, ...result, log: undefined }, null, 2));
      out(`chaos: results written to ${options.resultsFile}`);
    }
    return result;
  } catch (error) {
    for (const replica of cluster.replicas) {
      if (replica.running) out(`--- last log lines of ${replica.id} ---\n${replica.logs.split('\n').slice(-15).join('\n')}`);
    }
    throw error;
  } finally {
    await load?.stop().catch(() => undefined);
    await observer?.close().catch(() => undefined);
    await cluster.stopAll().catch(() => undefined);
    storeRedis.disconnect();
    await nats.stop();
    await redis.stop();
  }
}

function printResult(out: (line: string) => void, faults: FaultResult[], report: CheckReport, problems: string[]): void {
  const rows = faults.map((f) => [
    f.fault,
    f.replica ?? '-',
    Object.entries(f.timings).map(([k, v]) => `${k}: ${v === null ? 'NEVER' : `${(v / 1000).toFixed(2)} s`}`).join('; '),
    f.unavailable,
    f.transportFailures,
    f.ok ? 'recovered' : 'NOT RECOVERED',
  ]);
  out('');
  out(renderTable(['fault', 'replica', 'timings', 'UNAVAILABLE', 'no reply', 'result'], rows));
  const c = report.counts;
  out('');
  out(renderTable(['checked', 'value'], [
    ['client requests', c.requests],
    ['placements acknowledged', c.placedAcks],
    ['releases acknowledged', c.releasedAcks],
    ['final errors', Object.entries(c.errors).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'],
    ['history entries replayed', c.historyEntries],
    ['placements with an unknown-outcome reply', c.unacknowledgedPlacements],
    ['workers audited', c.workers],
    ['violations', report.violations.length],
  ]));
  for (const v of report.violations as Violation[]) out(`VIOLATION ${v.kind}: ${v.message}`);
  for (const p of problems) out(`PROBLEM ${p}`);
  out(report.violations.length === 0 && problems.length === 0 ? 'chaos: PASS' : 'chaos: FAIL');
}
