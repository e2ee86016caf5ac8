/**
 * The chaos suite. Private Redis (append-only, fsync always) and NATS, replicas as OS processes,
 * each reaching Redis and NATS through its own TCP fault proxy, continuous load from several
 * clients, a probe of every shard, and faults injected one scenario at a time and then mixed:
 * SIGKILL, SIGSTOP past twice the lease TTL then SIGCONT, a replica joining, a replica leaving with
 * SIGTERM, NATS restarted, Redis restarted, and partitions of one replica's link (a silent
 * blackhole of its NATS or its Redis connection, or 400 ms of latency each way to Redis). At the
 * end the checker judges the whole run from the clients' record and Redis.
 */
import { writeFileSync } from 'node:fs';
import { startNats, startRedis, type ServerProcess } from '../../infra/servers.js';
import { DroverClient, type ReplicaStatus } from '../client/drover-client.js';
import { DroverStore } from '../store/store.js';
import { renderTable } from '../util/table.js';
import { checkBacklogRun, checkRun, type CheckReport, type Violation } from './checker.js';
import { BacklogLoad } from './backlog-load.js';
import { AgentFleet } from './agent-fleet.js';
import { copiesOnWorker } from './container-processes.js';
import { ContainerWatch } from './container-watch.js';
import { ChaosLoad, seededRandom } from './load.js';
import { ProcessCluster, type ReplicaProcess } from '../replica/process-cluster.js';
import { shardOf } from '../shard/shard-map.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { RequestLog } from './request-log.js';
import { ShardProbe } from './shard-probe.js';
import { Redis } from 'ioredis';

/** Single faults, each run once as its own scenario by default. */
export const FAULTS = ['kill', 'pause', 'join', 'leave', 'nats-restart', 'redis-restart'] as const;
/** Faults that overlap: a replica is paused while Redis crashes and restarts. */
export const OVERLAPPING_FAULTS = ['pause-redis-restart'] as const;
/** One replica's link, through its fault proxy: silently cut, or slow. */
export const PARTITION_FAULTS = ['nats-cut', 'redis-cut', 'redis-slow'] as const;
/**
 * Worker agents' faults: SIGKILLed and restarted on its state directory (it adopts what runs);
 * frozen (SIGSTOP of the agent alone) past the worker TTL and woken; its NATS link silently cut
 * past the TTL and healed; the machine dying (agent and containers SIGKILLed) and coming back as a
 * new machine; a twin agent with the same worker id (refused).
 */
export const AGENT_FAULTS = ['agent-kill', 'agent-freeze', 'agent-cut', 'machine-death', 'agent-twin'] as const;
export const ALL_FAULTS = [...FAULTS, ...OVERLAPPING_FAULTS, ...PARTITION_FAULTS, ...AGENT_FAULTS] as const;
/** Latency each way for `redis-slow`: longer than every Redis command timeout of a replica at a 2 s lease. */
const SLOW_LINK_MS = 400;
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
  /**
   * How long a partition fault cuts (or slows) a replica's link before it heals; by default three
   * lease TTLs and two seconds, so that the time after the first lease TTL, when the others must
   * be serving everything, is most of it.
   */
  readonly partitionMs?: number;
  readonly resultsFile: string | null;
  /** A directory for every replica's full log (`<replica id>.log`), or null to keep only tails. */
  readonly logDir?: string | null;
  readonly out: (line: string) => void;
}

export interface FaultResult {
  readonly fault: FaultName;
  readonly replica: string | null;
  readonly timings: Record<string, number | null>;
  readonly unavailable: number;
  readonly transportFailures: number;
  /** The longest time any shard went without answering a probe, from the fault until recovery. */
  readonly longestDarkMs: number;
  /**
   * Probes that failed on shards the faulty replica did not own, from one lease TTL after the
   * fault until it was healed (or recovered): a cut-off replica must not take others down with it.
   */
  readonly othersFailed: number;
  readonly othersProbed: number;
  readonly note: string;
  readonly ok: boolean;
}

export interface ChaosResult {
  readonly faults: FaultResult[];
  readonly report: CheckReport;
  readonly problems: string[];
  readonly durationMs: number;
  /** What the backlog load did: submitted, answered queued, placed at once, events, cancelled while queued. */
  readonly backlog: { submitted: number; queued: number; placed: number; events: number; requeuedOrCancelled: number };
}

const RECOVERY_TIMEOUT_MS = 60_000;
/** How long a woken replica may take to answer the status request its pause fault checks. */
const VICTIM_STATUS_TIMEOUT_MS = 5_000;
/** Every shard is probed this often, and a probe without an answer this long failed. */
const PROBE_INTERVAL_MS = 100;
const PROBE_TIMEOUT_MS = 1_000;
/**
 * Each load has its own pool. The main load's containers are held until it releases them, and a
 * submit without a pool may use any worker: in the backlog's or the agents' pool they would take
 * the room those loads must drain into (seen: 197 agent containers stuck behind placeholders).
 */
const MAIN_POOL = 'chaos-main';
/** The backlog load's pool: four workers of two cores, eight of its containers at once. */
const BACKLOG_POOL = 'chaos-queue';
const BACKLOG_WORKERS = 4;
/** After the load stops, every queued or placed container must end within this. */
const BACKLOG_DRAIN_MS = 60_000;
/**
 * Worker agents: three machines of two cores in their own pool, unreachable after 2 s of silence,
 * lost after 6 s (plus the 1 s margin; their agents fence themselves at 5 s).
 */
const AGENT_POOL = 'chaos-agents';
const AGENTS = 3;
const AGENT_WORKER_TTL_MS = 2_000;
const AGENT_WORKER_LOST_AFTER_MS = 6_000;
/** How long agent-freeze and agent-cut last: past the TTL, well short of the agent's fence. */
const AGENT_SILENCE_MS = Math.round(AGENT_WORKER_TTL_MS * 1.6);
/** The pause after an agent fault before the next (its own checks waited for its recovery already). */
const AGENT_SETTLE_MS = 500;

interface Context {
  readonly options: ChaosOptions;
  readonly cluster: ProcessCluster;
  readonly redis: ServerProcess;
  readonly nats: ServerProcess;
  readonly observer: DroverClient;
  readonly log: RequestLog;
  readonly random: () => number;
  /** Each replica's fault proxies to NATS and to Redis. */
  readonly links: ReadonlyMap<string, { readonly nats: FaultProxy; readonly redis: FaultProxy }>;
  readonly agents: AgentFleet;
  readonly watch: ContainerWatch;
}

/** What runFault hands back; the rest of a FaultResult is measured around it. */
type FaultRun = Omit<FaultResult, 'unavailable' | 'transportFailures' | 'longestDarkMs' | 'othersFailed' | 'othersProbed'> & {
  start: number;
  end: number;
  /** When the fault itself ended (a partition healed, a paused replica resumed), if it lasts. */
  healedAt: number | null;
  /** Shards the faulty replica owned when the fault began (empty when the fault is a server's). */
  victimShards: number[];
};

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

async function shardsOf(ctx: Context, replica: ReplicaProcess): Promise<number[]> {
  return (await ctx.observer.clusterStatus(400)).find((s) => s.replicaId === replica.id)?.shards ?? [];
}

async function runFault(ctx: Context, fault: FaultName): Promise<FaultRun> {
  const { cluster, options } = ctx;
  const start = Date.now();
  switch (fault) {
    case 'kill': {
      const victim = pick(ctx, cluster.live());
      const victimShards = await shardsOf(ctx, victim);
      await victim.kill();
      const survivors = cluster.live();
      const reowned = await waitFor(() => allOwnedBy(ctx, survivors), start);
      const joinAt = Date.now();
      await cluster.add();
      const rebalanced = await waitFor(() => balanced(ctx, cluster.live()), joinAt);
      return {
        fault, replica: victim.id, start, end: Date.now(), ok: reowned !== null && rebalanced !== null, healedAt: joinAt, victimShards,
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
        fault, replica: cluster.replicas[cluster.replicas.length - 1]!.id, start, end: Date.now(), ok: rebalanced !== null, healedAt: null, victimShards: [],
        timings: { 'process start': started, 'join to balanced': rebalanced },
        note: `${cluster.live().length} replicas`,
      };
    }
    case 'leave': {
      const victim = pick(ctx, cluster.live());
      const victimShards = await shardsOf(ctx, victim);
      const code = await victim.terminate();
      const exited = Date.now() - start;
      const rebalanced = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: victim.id, start, end: Date.now(), ok: rebalanced !== null && code === 0, healedAt: null, victimShards,
        timings: { 'SIGTERM to exit': exited, 'SIGTERM to balanced': rebalanced },
        note: `exit code ${code}; ${cluster.live().length} replicas left`,
      };
    }
    case 'nats-restart': {
      await ctx.nats.restart();
      const down = Date.now() - start;
      const serving = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: null, start, end: Date.now(), ok: serving !== null, healedAt: start + down, victimShards: [],
        timings: { 'NATS down (SIGKILL to ready)': down, 'restart to balanced': serving },
        note: 'clients and replicas reconnect on their own',
      };
    }
    case 'redis-restart': {
      await ctx.redis.restart();
      const down = Date.now() - start;
      const serving = await waitFor(() => balanced(ctx, cluster.live()), start);
      return {
        fault, replica: null, start, end: Date.now(), ok: serving !== null, healedAt: start + down, victimShards: [],
        timings: { 'Redis down (SIGKILL to ready, AOF replayed)': down, 'restart to balanced': serving },
        note: 'append-only file, fsync always',
      };
    }
    case 'agent-kill':
    case 'agent-freeze':
    case 'agent-cut':
    case 'machine-death':
    case 'agent-twin':
      return agentFault(ctx, fault, start);
    case 'nats-cut':
      return partitionFault(ctx, fault, start, 'silent blackhole of its NATS connection', (links) => links.nats.blackhole(), (links) => links.nats.heal());
    case 'redis-cut':
      return partitionFault(ctx, fault, start, 'silent blackhole of its Redis connection', (links) => links.redis.blackhole(), (links) => links.redis.heal());
    case 'redis-slow':
      return partitionFault(
        ctx, fault, start, `${SLOW_LINK_MS} ms each way added to its Redis connection`,
        (links) => links.redis.setLatency(SLOW_LINK_MS), (links) => links.redis.setLatency(0),
      );
  }
}

async function workerStatusOf(ctx: Context, workerId: string): Promise<string | null> {
  const reply = await ctx.observer.getWorker(workerId).catch(() => null);
  return reply?.ok === true ? reply.worker.status : null;
}

/**
 * One agent fault on a random agent. Each checks its own outcome (the worker unreachable while the
 * agent is silent, available again after; a twin refused); that no container ran twice, ran where
 * its record does not put it, or ran on after it ended is the container watch's to judge.
 */
async function agentFault(ctx: Context, fault: FaultName, start: number): Promise<FaultRun> {
  const victim = pick(ctx, ctx.agents.ids);
  const status = () => workerStatusOf(ctx, victim);
  const base = { fault, replica: victim, start, victimShards: [] as number[] };
  switch (fault) {
    case 'agent-kill': {
      // Restarted on its state directory: the same incarnation adopts what runs, nothing unknown.
      const running = copiesOnWorker(victim).map((copy) => copy.containerId);
      await ctx.agents.kill(victim);
      const restartAt = Date.now();
      ctx.agents.start(victim);
      await new Promise((r) => setTimeout(r, AGENT_WORKER_TTL_MS));
      const back = await waitFor(async () => (await status()) === 'available', restartAt);
      const records = await Promise.all(running.map((id) => ctx.observer.getContainer(id).catch(() => null)));
      const disturbed = records.filter((r) => r?.ok === true && (r.container.status === 'unknown' || r.container.status === 'lost'));
      return {
        ...base, end: Date.now(), ok: back !== null && disturbed.length === 0, healedAt: restartAt,
        timings: { 'restart to available': back },
        note: `${running.length} containers running at the kill, ${disturbed.length} of them unknown or lost after the restart`,
      };
    }
    case 'agent-freeze':
    case 'agent-cut': {
      if (fault === 'agent-freeze') {
        ctx.watch.agentFrozen(victim, true);
        ctx.agents.freeze(victim, true);
      } else ctx.agents.link(victim).blackhole();
      const unreachable = await waitFor(async () => (await status()) === 'unreachable', start, AGENT_SILENCE_MS + 5_000);
      const remaining = start + AGENT_SILENCE_MS - Date.now();
      if (remaining > 0) await new Promise((r) => setTimeout(r, remaining));
      const healedAt = Date.now();
      if (fault === 'agent-freeze') {
        ctx.agents.freeze(victim, false);
        ctx.watch.agentFrozen(victim, false);
      } else ctx.agents.link(victim).heal();
      const back = await waitFor(async () => (await status()) === 'available', healedAt);
      return {
        ...base, end: Date.now(), ok: unreachable !== null && back !== null, healedAt,
        timings: { [`${fault === 'agent-freeze' ? 'SIGSTOP' : 'cut'} to unreachable`]: unreachable, 'silent for': healedAt - start, 'back to available': back },
        note: `worker TTL ${AGENT_WORKER_TTL_MS} ms; its containers unknown meanwhile, then running again`,
      };
    }
    case 'machine-death': {
      await ctx.agents.killMachine(victim);
      const unreachable = await waitFor(async () => (await status()) === 'unreachable', start);
      const lost = await waitFor(async () => (await status()) === 'lost', start);
      const restartAt = Date.now();
      ctx.agents.startFresh(victim);
      const back = await waitFor(async () => (await status()) === 'available', restartAt);
      return {
        ...base, end: Date.now(), ok: unreachable !== null && lost !== null && back !== null, healedAt: restartAt,
        timings: { 'SIGKILL to unreachable': unreachable, 'SIGKILL to lost': lost, 'new machine to available': back },
        note: `lost after ${AGENT_WORKER_LOST_AFTER_MS} ms plus the margin; back as a new incarnation`,
      };
    }
    default: {
      const twin = await ctx.agents.twin(victim);
      const refused = twin !== null && twin.code !== 0 && twin.stderr.includes('AGENT_CONFLICT');
      const still = await status();
      return {
        ...base, end: Date.now(), ok: refused && still === 'available', healedAt: null,
        timings: {},
        note: twin === null ? 'the twin kept running: NOT refused' : `the twin exited ${twin.code}${refused ? ' (AGENT_CONFLICT)' : ''}; the worker is ${still}`,
      };
    }
  }
}

/**
 * Cut (or slow down) one replica's link through its fault proxy for `partitionMs`, then heal it.
 * Passes when the other replicas own every shard while it lasts and the cluster is balanced
 * again, the healed replica included, after it ends. The dark-window and failed-request bounds
 * are checked by the caller, from the probes.
 */
async function partitionFault(
  ctx: Context,
  fault: FaultName,
  start: number,
  what: string,
  cut: (links: { nats: FaultProxy; redis: FaultProxy }) => void,
  heal: (links: { nats: FaultProxy; redis: FaultProxy }) => void,
): Promise<FaultRun> {
  const { cluster, options } = ctx;
  const victim = pick(ctx, cluster.live());
  const links = ctx.links.get(victim.id)!;
  const victimShards = await shardsOf(ctx, victim);
  const others = cluster.live().filter((r) => r !== victim);
  const cutAt = Date.now();
  cut(links);
  const reowned = await waitFor(() => allOwnedBy(ctx, others), cutAt);
  const remaining = cutAt + (options.partitionMs ?? 3 * options.leaseTtlMs + 2_000) - Date.now();
  if (remaining > 0) await new Promise((r) => setTimeout(r, remaining));
  const healedAt = Date.now();
  heal(links);
  const rebalanced = await waitFor(() => balanced(ctx, cluster.live()), healedAt);
  return {
    fault, replica: victim.id, start, end: Date.now(), ok: reowned !== null && rebalanced !== null, healedAt, victimShards,
    timings: { 'cut to all shards owned by others': reowned, 'cut for': healedAt - cutAt, 'heal to balanced': rebalanced },
    note: what,
  };
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
): Promise<FaultRun> {
  const { cluster, options } = ctx;
  const victim = pick(ctx, cluster.live());
  const victimShards = await shardsOf(ctx, victim);
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
  // Its report, asked until it answers (a few seconds at most): what is checked is what it says,
  // not how fast one status request comes back while it catches up.
  let victimStatus: ReplicaStatus | undefined;
  await waitFor(async () => {
    victimStatus = (await ctx.observer.clusterStatus(500)).find((s) => s.replicaId === victim.id);
    return victimStatus !== undefined;
  }, Date.now(), VICTIM_STATUS_TIMEOUT_MS);
  const refusals = victimStatus?.owners.fenceRefusals ?? 0;
  const lost = victimStatus?.leases.lost ?? 0;
  // On waking, the replica must have found out that its leases ran out (it gives them up and
  // stops writing them; any write it still sends is refused by the fence in Redis).
  const foundOut = victimStatus !== undefined && lost > 0;
  return {
    fault, replica: victim.id, start, end: Date.now(), ok: reowned !== null && rejoined !== null && foundOut, healedAt: resumeAt, victimShards,
    timings: {
      ...(duringMs === null ? {} : { 'Redis down while paused (SIGKILL to ready)': duringMs }),
      'SIGSTOP to all shards owned by others': reowned,
      'paused for': pausedMs,
      'SIGCONT to balanced': rejoined,
    },
    note: victimStatus === undefined
      ? `the woken replica did not answer a status request within ${VICTIM_STATUS_TIMEOUT_MS} ms`
      : `on waking it gave up ${lost} expired leases; ${refusals} writes refused by the fence`,
  };
}

/** Faults for the mixed phase: keep between `replicas` and `replicas + 2` processes running. */
function mixedFault(ctx: Context): FaultName {
  const live = ctx.cluster.live().length;
  const choices: FaultName[] = ['kill', 'pause', 'nats-restart', 'redis-restart', 'pause-redis-restart', ...PARTITION_FAULTS];
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
    DROVER_WORKER_TTL_MS: String(AGENT_WORKER_TTL_MS),
    DROVER_WORKER_LOST_AFTER_MS: String(AGENT_WORKER_LOST_AFTER_MS),
  };
  // Each replica reaches Redis and NATS through its own fault proxies (forwarding untouched until a
  // partition fault cuts one), so one replica's link can be cut while the servers stay up.
  const links = new Map<string, { nats: FaultProxy; redis: FaultProxy }>();
  const port = (url: string) => Number(new URL(url).port);
  const cluster = new ProcessCluster(env, [], async (replicaId) => {
    const replicaLinks = { nats: await startFaultProxy({ targetPort: port(nats.url) }), redis: await startFaultProxy({ targetPort: port(redis.url) }) };
    links.set(replicaId, replicaLinks);
    return { NATS_URL: replicaLinks.nats.url('nats'), REDIS_URL: replicaLinks.redis.url('redis') };
  }, options.logDir ?? null);
  const log = new RequestLog();
  let observer: DroverClient | null = null;
  let load: ChaosLoad | null = null;
  let backlogLoad: BacklogLoad | null = null;
  let agentLoad: BacklogLoad | null = null;
  const agents = new AgentFleet({ natsUrl: nats.url, prefix, pool: AGENT_POOL, count: AGENTS, cpu: 2_000, memory: 4_096 });
  let probe: ShardProbe | null = null;
  let watch: ContainerWatch | null = null;
  const storeRedis = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 20 });
  try {
    out(`chaos: Redis ${redis.url} (append-only, fsync always), NATS ${nats.url}, prefix ${prefix}, lease TTL ${options.leaseTtlMs} ms`);
    for (let i = 0; i < options.replicas; i += 1) await cluster.add();
    observer = await DroverClient.connect(nats.url, prefix, 5_000, 'chaos-observer');
    watch = new ContainerWatch({ idPrefix: 'a-', observer, ttlMs: AGENT_WORKER_TTL_MS });
    const ctx: Context = { options, cluster, redis, nats, observer, log, random: seededRandom(options.seed + 1), links, agents, watch };
    if ((await waitFor(() => balanced(ctx, cluster.live()), Date.now())) === null) throw new Error('the cluster never balanced at start');
    out(`chaos: ${options.replicas} replica processes balanced over ${options.shards} shards`);

    for (let i = 0; i < options.workers; i += 1) {
      const reply = await observer.registerWorker({ id: `worker-${i}`, cpu: 4_000, memory: 8_192, pool: MAIN_POOL });
      if (!reply.ok) throw new Error(`registering worker-${i}: ${reply.error.message}`);
    }
    // One worker of each shard answers the shard probe (a worker in a shard that got none is added).
    const probeWorkers: string[] = [];
    for (let shard = 0; shard < options.shards; shard += 1) {
      let id = Array.from({ length: options.workers }, (_, i) => `worker-${i}`).find((w) => shardOf(w, options.shards) === shard);
      for (let n = 0; id === undefined; n += 1) {
        if (shardOf(`probe-${n}`, options.shards) !== shard) continue;
        id = `probe-${n}`;
        const reply = await observer.registerWorker({ id, cpu: 4_000, memory: 8_192, pool: MAIN_POOL });
        if (!reply.ok) throw new Error(`registering ${id}: ${reply.error.message}`);
      }
      probeWorkers.push(id);
    }
    probe = new ShardProbe({ natsUrl: nats.url, prefix, workers: probeWorkers, intervalMs: PROBE_INTERVAL_MS, timeoutMs: PROBE_TIMEOUT_MS });
    await probe.start();
    out(`chaos: ${options.workers} workers registered; probing every shard every ${PROBE_INTERVAL_MS} ms; ` +
      `starting load (${options.clients} clients x ${options.lanesPerClient} lanes)`);
    load = new ChaosLoad({
      natsUrl: nats.url, prefix, log, clients: options.clients, lanesPerClient: options.lanesPerClient,
      releaseChance: 0.45, maxAttempts: 60, requestTimeoutMs: 3_000, seed: options.seed, pool: MAIN_POOL,
    });
    await load.start();
    // A queued request must have ended this soon after its expiry: the partition bound (a lease TTL
    // plus 2 s without an answer from its home shard) plus the one-second expiry sweep.
    const expirySlackMs = options.leaseTtlMs + 3_000;
    // Requests that wait: a small pool that the backlog load keeps overfull.
    for (let i = 0; i < BACKLOG_WORKERS; i += 1) {
      const reply = await observer.registerWorker({ id: `queue-worker-${i}`, cpu: 2_000, memory: 4_096, pool: BACKLOG_POOL });
      if (!reply.ok) throw new Error(`registering queue-worker-${i}: ${reply.error.message}`);
    }
    backlogLoad = new BacklogLoad({
      natsUrl: nats.url, prefix, pool: BACKLOG_POOL, workerIds: Array.from({ length: BACKLOG_WORKERS }, (_, i) => `queue-worker-${i}`), expirySlackMs, rate: 15, holdMs: 400, cancelChance: 0.1, random: seededRandom(options.seed + 2), requestTimeoutMs: 3_000,
    });
    await backlogLoad.start();
    // Containers run by worker agents: each runs a short command whose exit code the checker knows.
    await agents.startAll();
    for (const id of agents.ids) {
      if ((await waitFor(async () => {
        const reply = await observer!.getWorker(id).catch(() => null);
        return reply?.ok === true && reply.worker.status === 'available';
      }, Date.now(), 20_000)) === null) throw new Error(`agent ${id} did not come up`);
    }
    agentLoad = new BacklogLoad({
      natsUrl: nats.url, prefix, pool: AGENT_POOL, workerIds: agents.ids, expirySlackMs, rate: 3, holdMs: 0, cancelChance: 0.05, random: seededRandom(options.seed + 3), requestTimeoutMs: 3_000,
      // Every fourth runs longer than the worker TTL, so that a copy started elsewhere while it
      // still runs (the fault this load is here to catch) would be seen in /proc.
      idPrefix: 'a-', command: (n) => ({ argv: ['sh', '-c', `sleep ${n % 4 === 0 ? 4 : 1}; exit ${n % 4}`], exitCode: n % 4 }),
    });
    await agentLoad.start();
    watch.start();
    out(`chaos: ${AGENTS} worker agents in pool ${AGENT_POOL} (6 containers fit), 3 submits/s of 'sleep 1 (every fourth 4); exit n%4'; ` +
      `their processes sampled from /proc every 200 ms`);
    out(`chaos: backlog load: ${BACKLOG_WORKERS} workers in pool ${BACKLOG_POOL} (8 containers fit), 15 submits/s held 400 ms once placed, 10 % of the queued cancelled`);
    await new Promise((r) => setTimeout(r, options.settleMs));

    const plan: FaultName[] = [...options.scenarios];
    const faults: FaultResult[] = [];
    for (let i = 0; i < plan.length + options.mixedFaults; i += 1) {
      const fault = i < plan.length ? plan[i]! : mixedFault(ctx);
      const phase = i < plan.length ? 'scenario' : 'mixed';
      out(`chaos: [${phase} ${i + 1}/${plan.length + options.mixedFaults}] ${fault} ...`);
      const result = await runFault(ctx, fault);
      // Count what clients saw from the fault until one settle period after recovery. An agent's
      // fault touches no replica: the main load needs no time to settle after it.
      const agentFault = (AGENT_FAULTS as readonly string[]).includes(fault);
      await new Promise((r) => setTimeout(r, agentFault ? Math.min(options.settleMs, AGENT_SETTLE_MS) : options.settleMs));
      const to = Date.now();
      const dark = probe.longestDark(result.start, result.end);
      const others = new Set(Array.from({ length: options.shards }, (_, shard) => shard).filter((shard) => !result.victimShards.includes(shard)));
      const othersProbes = probe.failures(result.start + options.leaseTtlMs, result.healedAt ?? result.end, others);
      const partition = (PARTITION_FAULTS as readonly string[]).includes(result.fault);
      // The issue's bounds for a cut link: no shard dark for longer than the lease TTL plus two
      // seconds, and under 5 % failed requests on the others' shards after the first lease TTL.
      const withinBounds = !partition || (dark.ms <= options.leaseTtlMs + 2_000 && othersProbes.failed <= 0.05 * othersProbes.sent);
      const full: FaultResult = {
        fault: result.fault, replica: result.replica, timings: result.timings, note: result.note, ok: result.ok && withinBounds,
        unavailable: log.countErrors('UNAVAILABLE', result.start, to),
        transportFailures: log.countAttempts('transport', result.start, to),
        longestDarkMs: dark.ms,
        othersFailed: othersProbes.failed,
        othersProbed: othersProbes.sent,
      };
      faults.push(full);
      out(`chaos:   ${Object.entries(full.timings).map(([k, v]) => `${k} ${v === null ? 'NEVER' : `${v} ms`}`).join(', ')}; ` +
        `${full.unavailable} UNAVAILABLE, ${full.transportFailures} no-reply attempts; longest dark shard ${dark.ms} ms (shard ${dark.shard}); ` +
        `others' shards: ${full.othersFailed} of ${full.othersProbed} probes failed after the first lease TTL; ${full.note}`);
    }

    out('chaos: stopping load and waiting for every request to end');
    await load.stop();
    load = null;
    out('chaos: stopping the backlog load; releasing until every queued or placed container has ended');
    const [queuedOpen, agentOpen] = await Promise.all([backlogLoad.drain(BACKLOG_DRAIN_MS), agentLoad.drain(BACKLOG_DRAIN_MS)]);
    const stillOpen = [...queuedOpen, ...agentOpen];
    const backlogRecords = [...backlogLoad.records.values(), ...agentLoad.records.values()];
    const waitProblems = [...backlogLoad.waitProblems, ...agentLoad.waitProblems];
    await backlogLoad.stop();
    await agentLoad.stop();
    backlogLoad = null;
    agentLoad = null;
    await probe.stop();
    probe = null;
    // Every agent container has ended: none may still run a TTL later.
    await new Promise((r) => setTimeout(r, AGENT_WORKER_TTL_MS + 1_500));
    const leftRunning = await watch.sample(true);
    await watch.stop();
    out(`chaos: container watch: ${watch.stats.samples} samples of /proc, ${watch.stats.recordReads} record reads, ` +
      `at most ${watch.stats.maxLive} agent containers live at once, ${leftRunning.length} still running at the end`);
    await storeRedis.connect();
    const store = new DroverStore(storeRedis, { prefix, shards: options.shards, historyCap: 0, releasedRetentionSeconds: 0 });
    out(`chaos: checking ${log.records.length} requests against Redis`);
    const report = await checkRun(store, options.shards, log.records);
    report.violations.push(...(await checkBacklogRun(store, backlogRecords, stillOpen)));
    report.violations.push(...watch.violations);
    report.violations.push(...waitProblems);
    for (const copy of leftRunning) {
      report.violations.push({ kind: 'terminal-running', message: `container ${copy.containerId} still runs on ${copy.workerId} (group ${copy.group}) after the run ended` });
    }
    const backlogCounts = {
      submitted: backlogRecords.length,
      queued: backlogRecords.filter((r) => r.submit === 'queued').length,
      placed: backlogRecords.filter((r) => r.submit === 'placed').length,
      events: backlogRecords.reduce((n, r) => n + r.events.length, 0),
      requeuedOrCancelled: backlogRecords.filter((r) => r.events.includes('released') && !r.events.includes('placed')).length,
    };
    out(`chaos: backlog load: ${backlogCounts.submitted} submitted, ${backlogCounts.queued} answered queued, ${backlogCounts.placed} placed at once, ` +
      `${backlogCounts.events} events, ${backlogCounts.requeuedOrCancelled} cancelled while queued; ${stillOpen.length} never ended`);

    const problems: string[] = [];
    for (const f of faults) {
      if (!f.ok) {
        problems.push(`${f.fault} (${f.replica ?? 'server'}) did not recover within bounds: ${JSON.stringify(f.timings)}; ` +
          `longest dark ${f.longestDarkMs} ms; others' shards ${f.othersFailed}/${f.othersProbed} probes failed; ${f.note}`);
      }
    }
    const exitCodes = await Promise.all(cluster.replicas.filter((r) => r.running).map(async (r) => [r.id, await r.terminate(20_000)] as const));
    for (const [id, code] of exitCodes) if (code !== 0) problems.push(`replica ${id} exited ${code} on SIGTERM at the end`);

    printResult(out, faults, report, problems);
    const result: ChaosResult = { faults, report, problems, durationMs: Date.now() - began, backlog: backlogCounts };
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
    await backlogLoad?.stop().catch(() => undefined);
    await agentLoad?.stop().catch(() => undefined);
    await watch?.stop().catch(() => undefined);
    await agents.stopAll().catch(() => undefined);
    await probe?.stop().catch(() => undefined);
    await observer?.close().catch(() => undefined);
    for (const replicaLinks of links.values()) {
      replicaLinks.nats.heal();
      replicaLinks.redis.heal();
    }
    await cluster.stopAll().catch(() => undefined);
    await Promise.all([...links.values()].flatMap((l) => [l.nats.close(), l.redis.close()]));
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
    `${(f.longestDarkMs / 1000).toFixed(2)} s`,
    f.othersProbed === 0 ? '-' : `${((100 * f.othersFailed) / f.othersProbed).toFixed(1)} % (${f.othersFailed}/${f.othersProbed})`,
    f.unavailable,
    f.transportFailures,
    f.ok ? 'recovered' : 'NOT RECOVERED',
  ]);
  out('');
  out(renderTable(['fault', 'replica', 'timings', 'longest dark shard', 'others\' shards failed after 1 TTL', 'UNAVAILABLE', 'no reply', 'result'], rows));
  const c = report.counts;
  out('');
  out(renderTable(['checked', 'value'], [
    ['client requests', c.requests],
    ['placements acknowledged', c.placedAcks],
    ['releases acknowledged', c.releasedAcks],
    ['final errors', Object.entries(c.errors).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'],
    ['history entries replayed', c.historyEntries],
    ['placements no main-load client was told of (the backlog and agent loads\' own)', c.unacknowledgedPlacements],
    ['workers audited', c.workers],
    ['violations', report.violations.length],
  ]));
  for (const v of report.violations as Violation[]) out(`VIOLATION ${v.kind}: ${v.message}`);
  for (const p of problems) out(`PROBLEM ${p}`);
  out(report.violations.length === 0 && problems.length === 0 ? 'chaos: PASS' : 'chaos: FAIL');
}
