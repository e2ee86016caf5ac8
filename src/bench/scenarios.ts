/**
 * The benchmark's scenarios. Each one starts what it needs (replica processes under a fresh
 * prefix), measures, and returns rows for the results table plus details for the JSON file.
 */
import { Redis } from 'ioredis';
import type { ContainerSpec, WorkerSpecInput } from '../client/drover-client.js';
import { shardOf } from '../shard/shard-map.js';
import { DroverStore, type BatchOp } from '../store/store.js';
import { Progress } from '../util/progress.js';
import { BenchCluster, NO_COUNTERS, placeInBatches, placeSingly, runLanes, sumCounters, type ClusterCounters } from './drover-bench.js';
import { Latency, type LatencySummary } from './latency.js';
import { ProcessWatch, round } from './process-stats.js';
import { serverSentEvents } from '../observe/event-stream.js';
import { SEED_CONCURRENCY, SeedScheduler } from './seed-baseline.js';
import { fullBacklogScenario, massExpiryScenario } from './backlog-faults.js';

export interface BenchContext {
  readonly redisUrl: string;
  readonly natsUrl: string;
  readonly redisPid: number | undefined;
  readonly natsPid: number | undefined;
  /** The baseline in `scale` stops after this long (it would take hours otherwise). */
  readonly baselineSeconds: number;
  readonly out: (line: string) => void;
}

export interface ResultRow {
  readonly scenario: string;
  readonly system: string;
  readonly placements: number;
  readonly seconds: number;
  readonly placementsPerSecond: number;
  readonly latency: LatencySummary | null;
  readonly conflictsPerPlacement: number | null;
  readonly reroutesPerPlacement: number | null;
  readonly fenceRefusalsPerPlacement: number | null;
  /** Sum over replica processes, percent of one core; and the largest replica RSS. */
  readonly replicaCpuPercent: number | null;
  readonly replicaMaxRssMiB: number | null;
  readonly redisCpuPercent: number | null;
  readonly target: string | null;
  readonly targetMet: boolean | null;
  readonly note: string;
}

export interface ScenarioResult {
  readonly name: string;
  readonly rows: ResultRow[];
  readonly details: Record<string, unknown>;
}

/** A row's fields a scenario may leave empty (shared by every scenario module). */
export const blankRow = {
  latency: null,
  conflictsPerPlacement: null,
  reroutesPerPlacement: null,
  fenceRefusalsPerPlacement: null,
  replicaCpuPercent: null,
  replicaMaxRssMiB: null,
  redisCpuPercent: null,
  target: null,
  targetMet: null,
  note: '',
};

function fleet(count: number, cpu: number, memory: number): WorkerSpecInput[] {
  return Array.from({ length: count }, (_, i) => ({ id: `worker-${String(i).padStart(5, '0')}`, cpu, memory }));
}

function containers(count: number, prefix: string, cpu: number, memory: number): ContainerSpec[] {
  return Array.from({ length: count }, (_, i) => ({ id: `${prefix}-${i}`, cpu, memory }));
}

function delta(after: ClusterCounters, before: ClusterCounters): ClusterCounters {
  return {
    placed: after.placed - before.placed,
    reroutes: after.reroutes - before.reroutes,
    versionConflicts: after.versionConflicts - before.versionConflicts,
    fenceRefusals: after.fenceRefusals - before.fenceRefusals,
    batches: after.batches - before.batches,
    committedOps: after.committedOps - before.committedOps,
  };
}

/** A Drover row's conflict columns: counter changes over a phase, per placement made in it. */
function perPlacement(d: ClusterCounters, placed: number, digits = 4) {
  const per = (n: number) => round(n / Math.max(1, placed), digits);
  return {
    conflictsPerPlacement: per(d.reroutes + d.versionConflicts + d.fenceRefusals),
    reroutesPerPlacement: per(d.reroutes),
    fenceRefusalsPerPlacement: per(d.fenceRefusals),
  };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function usage(stats: Record<string, { cpuPercent: number; maxRssMiB: number }>, replicaIds: readonly string[]) {
  const replicas = replicaIds.map((id) => stats[id]).filter((s) => s !== undefined);
  return {
    replicaCpuPercent: replicas.reduce((sum, s) => sum + s.cpuPercent, 0),
    replicaMaxRssMiB: Math.max(0, ...replicas.map((s) => s.maxRssMiB)),
    redisCpuPercent: stats.redis?.cpuPercent ?? null,
  };
}

async function withRedis<T>(ctx: BenchContext, run: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis(ctx.redisUrl, { enableAutoPipelining: true, maxRetriesPerRequest: 2 });
  try {
    return await run(redis);
  } finally {
    redis.disconnect();
  }
}

/**
 * The seed's baseline for `requests`, SEED_CONCURRENCY at a time, optionally cut off after
 * `seconds`, for `rounds` rounds of which the first `warmUpRounds` are not measured: latency,
 * conflicts, placements and CPU cover the measured rounds only. The seed's scheduler runs inside
 * this (the benchmark's) process, so its CPU and RSS are this process's.
 */
async function runBaseline(
  ctx: BenchContext,
  label: string,
  workers: readonly WorkerSpecInput[],
  requests: readonly ContainerSpec[],
  cutOffSeconds: number | null,
  rounds = 1,
  warmUpRounds = 0,
) {
  return withRedis(ctx, async (redis) => {
    const seed = new SeedScheduler(redis, `seedbase${Date.now().toString(36)}`);
    await seed.addWorkers(workers);
    const latency = new Latency();
    let watch: ProcessWatch | null = null;
    const progress = new Progress(label, requests.length * rounds);
    const roundSeconds: number[] = [];
    const roundPlaced: number[] = [];
    let placed = 0;
    let finished = 0;
    let cutOff = false;
    let conflictsBefore = 0;
    let started = performance.now();
    for (let round = 0; round < rounds && !cutOff; round += 1) {
      const measured = round >= warmUpRounds;
      if (round === warmUpRounds) {
        watch = new ProcessWatch({ redis: ctx.redisPid, scheduler: process.pid });
        conflictsBefore = seed.stats.conflicts;
        started = performance.now();
      }
      const roundStart = performance.now();
      let placedThisRound = 0;
      const slice = requests.map((r) => ({ ...r, id: `${r.id}-r${round}` }));
      await runLanes(slice, SEED_CONCURRENCY, async (request) => {
        if (cutOffSeconds !== null && (performance.now() - started) / 1000 > cutOffSeconds) {
          cutOff = true;
          return;
        }
        const sent = performance.now();
        const outcome = await seed.schedule(request.id, request.cpu, request.memory);
        finished += 1;
        if (outcome.placed) {
          placedThisRound += 1;
          if (measured) {
            placed += 1;
            latency.record(performance.now() - sent);
          }
        }
        progress.update(finished, `placed ${placed}, conflicts ${seed.stats.conflicts}`);
      });
      if (measured) {
        roundSeconds.push((performance.now() - roundStart) / 1000);
        roundPlaced.push(placedThisRound);
      }
    }
    const seconds = (performance.now() - started) / 1000;
    progress.done(`placed ${placed}${cutOff ? ' (cut off)' : ''}`, finished);
    const stats = watch?.stop() ?? {};
    return {
      placed,
      finished,
      seconds,
      roundSeconds,
      roundPlaced,
      cutOff,
      latency: latency.summary(),
      conflicts: seed.stats.conflicts - conflictsBefore,
      stats: { ...seed.stats },
      redisCpuPercent: stats.redis?.cpuPercent ?? null,
      schedulerCpuPercent: stats.scheduler?.cpuPercent ?? null,
      schedulerMaxRssMiB: stats.scheduler?.maxRssMiB ?? null,
    };
  });
}

// ---------------------------------------------------------------------------------------------
// seed: the audit's own workload, Drover and the seed's algorithm in the same run.

export async function seedScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const WORKERS = 40;
  const COUNT = 100;
  const WARMUP_ROUNDS = 2;
  const ROUNDS = 5;
  const workers = fleet(WORKERS, 50_000, 65_536);
  ctx.out(`seed: ${WORKERS} workers of 50,000 millicores, ${COUNT} containers of 1,000 millicores, ${COUNT} in flight; ` +
    `${WARMUP_ROUNDS} warm-up rounds, then the median of ${ROUNDS}`);

  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  let droverRow: ResultRow;
  const droverRounds: Array<{ seconds: number; placed: number; conflicts: number }> = [];
  try {
    await cluster.registerWorkers(workers);
    for (let round = 0; round < WARMUP_ROUNDS; round += 1) {
      await placeSingly(cluster.client, containers(COUNT, `warm${round}`, 1_000, 1_024), { inFlight: COUNT, latency: new Latency() });
    }
    const latency = new Latency();
    const before = await cluster.counters();
    const watch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid });
    for (let round = 0; round < ROUNDS; round += 1) {
      const roundBefore = await cluster.counters();
      const run = await placeSingly(cluster.client, containers(COUNT, `seed${round}`, 1_000, 1_024), { inFlight: COUNT, latency });
      const d = delta(await cluster.counters(), roundBefore);
      droverRounds.push({ seconds: run.seconds, placed: run.placed, conflicts: d.reroutes + d.versionConflicts + d.fenceRefusals });
    }
    const stats = watch.stop();
    const d = delta(await cluster.counters(), before);
    const placements = droverRounds.reduce((n, r) => n + r.placed, 0);
    const seconds = median(droverRounds.map((r) => r.seconds));
    const conflicts = d.reroutes + d.versionConflicts + d.fenceRefusals;
    // The row shows the fewest placed in any round: a round that missed one must show, not hide.
    const fewestPlaced = Math.min(...droverRounds.map((r) => r.placed));
    droverRow = {
      ...blankRow,
      scenario: 'seed',
      system: 'drover (3 replicas)',
      placements: fewestPlaced,
      seconds: round(seconds, 4),
      placementsPerSecond: Math.round(fewestPlaced / seconds),
      latency: latency.summary(),
      ...perPlacement(d, placements, 3),
      ...usage(stats, Object.keys(cluster.replicaPids())),
      target: 'under 50 ms, 0 conflicts',
      targetMet: seconds < 0.05 && conflicts === 0 && fewestPlaced === COUNT,
      note: `median of ${ROUNDS} rounds of ${COUNT}: ${droverRounds.map((r) => `${(r.seconds * 1000).toFixed(1)} ms`).join(', ')}; ` +
        `placed per round ${droverRounds.map((r) => r.placed).join(', ')}`,
    };
  } finally {
    await cluster.stop();
  }

  const baseline = await runBaseline(ctx, 'seed baseline', workers, containers(COUNT, 'seedbase', 1_000, 1_024), null, WARMUP_ROUNDS + ROUNDS, WARMUP_ROUNDS);
  const measured = baseline.roundSeconds;
  const baselineSeconds = median(measured);
  const baselineFewest = Math.min(...baseline.roundPlaced);
  const baselineRow: ResultRow = {
    ...blankRow,
    scenario: 'seed',
    system: 'seed algorithm',
    placements: baselineFewest,
    seconds: round(baselineSeconds, 4),
    placementsPerSecond: Math.round(baselineFewest / baselineSeconds),
    latency: baseline.latency,
    conflictsPerPlacement: round(baseline.conflicts / Math.max(1, baseline.placed), 2),
    replicaCpuPercent: baseline.schedulerCpuPercent,
    replicaMaxRssMiB: baseline.schedulerMaxRssMiB,
    redisCpuPercent: baseline.redisCpuPercent,
    note: `median of ${ROUNDS} rounds after ${WARMUP_ROUNDS} warm-up: ${measured.map((s) => `${(s * 1000).toFixed(0)} ms`).join(', ')}; ` +
      `placed per round ${baseline.roundPlaced.join(', ')}; latency and conflicts from the measured rounds; runs in the benchmark process ` +
      `(its CPU and RSS); the audit measured 1.11-1.37 s and 20.4-26.3 conflicts per placement`,
  };
  const ratio = baselineSeconds / droverRow.seconds;
  ctx.out(`seed: drover ${(droverRow.seconds * 1000).toFixed(1)} ms, seed algorithm ${(baselineSeconds * 1000).toFixed(0)} ms: ${ratio.toFixed(1)}x`);
  return { name: 'seed', rows: [droverRow, baselineRow], details: { droverRounds, baseline, ratio: round(ratio, 1) } };
}

// ---------------------------------------------------------------------------------------------
// scale and million: many containers through batched submits.

async function droverVolume(
  ctx: BenchContext,
  name: string,
  workerCount: number,
  count: number,
  options: { target: string; met: (seconds: number, rate: number) => boolean },
): Promise<{ row: ResultRow; details: Record<string, unknown> }> {
  const BATCH = 500;
  const IN_FLIGHT = 16;
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  try {
    await cluster.registerWorkers(fleet(workerCount, 128_000, 262_144));
    const latency = new Latency();
    const before = await cluster.counters();
    const watch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid, nats: ctx.natsPid, bench: process.pid });
    const run = await placeInBatches(cluster.client, containers(count, name, 1_000, 1_024), {
      batchSize: BATCH,
      inFlight: IN_FLIGHT,
      latency,
      label: `${name}: placing`,
    });
    const stats = watch.stop();
    const d = delta(await cluster.counters(), before);
    const rate = run.placed / run.seconds;
    const row: ResultRow = {
      ...blankRow,
      scenario: name,
      system: 'drover (3 replicas)',
      placements: run.placed,
      seconds: round(run.seconds, 2),
      placementsPerSecond: Math.round(rate),
      latency: latency.summary(),
      ...perPlacement(d, run.placed),
      ...usage(stats, Object.keys(cluster.replicaPids())),
      target: options.target,
      targetMet: run.failed === 0 && options.met(run.seconds, rate),
      note: `${workerCount} workers; batches of ${BATCH}, ${IN_FLIGHT} in flight; ${run.failed} failed; ` +
        `${d.batches} Redis commits for ${d.committedOps} writes`,
    };
    return { row, details: { run, counters: d, processes: stats } };
  } finally {
    await cluster.stop();
  }
}

export async function scaleScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const WORKERS = 1_000;
  const COUNT = 100_000;
  ctx.out(`scale: 3 replicas, ${WORKERS} workers, ${COUNT} containers; the seed algorithm on the same workload, cut off after ${ctx.baselineSeconds} s`);
  const drover = await droverVolume(ctx, 'scale', WORKERS, COUNT, { target: '20,000 placements/s or more', met: (_, rate) => rate >= 20_000 });
  const workers = fleet(WORKERS, 128_000, 262_144);
  const baseline = await runBaseline(ctx, 'scale baseline', workers, containers(COUNT, 'scalebase', 1_000, 1_024), ctx.baselineSeconds);
  const baselineRate = baseline.placed / baseline.seconds;
  const baselineRow: ResultRow = {
    ...blankRow,
    scenario: 'scale',
    system: 'seed algorithm',
    placements: baseline.placed,
    seconds: round(baseline.seconds, 2),
    placementsPerSecond: Math.round(baselineRate),
    latency: baseline.latency,
    conflictsPerPlacement: round(baseline.conflicts / Math.max(1, baseline.placed), 2),
    replicaCpuPercent: baseline.schedulerCpuPercent,
    replicaMaxRssMiB: baseline.schedulerMaxRssMiB,
    redisCpuPercent: baseline.redisCpuPercent,
    note: baseline.cutOff
      ? `cut off after ${ctx.baselineSeconds} s with ${baseline.placed} of ${COUNT} placed`
      : `all ${COUNT} requests finished`,
  };
  const ratio = drover.row.placementsPerSecond / Math.max(1, baselineRate);
  ctx.out(`scale: drover ${drover.row.placementsPerSecond}/s, seed algorithm ${Math.round(baselineRate)}/s: ${ratio.toFixed(0)}x`);
  return { name: 'scale', rows: [drover.row, baselineRow], details: { drover: drover.details, baseline, ratio: round(ratio, 1) } };
}

export async function millionScenario(ctx: BenchContext): Promise<ScenarioResult> {
  ctx.out('million: 3 replicas, 10,000 workers, 1,000,000 containers');
  const drover = await droverVolume(ctx, 'million', 10_000, 1_000_000, { target: 'under 60 s', met: (seconds) => seconds < 60 });
  return { name: 'million', rows: [drover.row], details: drover.details };
}

// ---------------------------------------------------------------------------------------------
// churn: steady placements and releases at a fixed offered rate.

export async function churnScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const WORKERS = 1_000;
  const PREFILL = 32_000;
  const PHASE_SECONDS = 8;
  const MAX_IN_FLIGHT = 4_000;
  ctx.out(`churn: 3 replicas, ${WORKERS} workers half full (${PREFILL} containers); each op submits one container or releases ` +
    `the oldest, one request each; max rate found closed-loop, then ${PHASE_SECONDS} s open-loop at 25/50/90% of it`);
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  try {
    await cluster.registerWorkers(fleet(WORKERS, 64_000, 131_072));
    const live: string[] = [];
    let sequence = 0;
    await placeInBatches(cluster.client, containers(PREFILL, 'prefill', 1_000, 1_024), {
      batchSize: 500, inFlight: 8, latency: new Latency(), label: 'churn: prefill', onPlaced: () => undefined,
    });
    for (let i = 0; i < PREFILL; i += 1) live.push(`prefill-${i}`);
    const client = cluster.client;
    let failures = 0;
    /** The phase being measured: its placements and their submit-to-placed latency, its releases. */
    let phase = { placed: 0, released: 0, placeLatency: new Latency(), releaseLatency: new Latency() };
    const newPhase = () => (phase = { placed: 0, released: 0, placeLatency: new Latency(), releaseLatency: new Latency() });
    /**
     * One op: alternate a submit and a release of the oldest live container. Latency counts from
     * `from` (when the op was sent, or in the open loop when it was due).
     */
    const op = async (from: number): Promise<boolean> => {
      sequence += 1;
      const current = phase;
      if (sequence % 2 === 0 && live.length > 0) {
        const id = live.shift()!;
        const reply = await client.release(id);
        if (reply.ok) {
          current.released += 1;
          current.releaseLatency.record(performance.now() - from);
        }
        return reply.ok;
      }
      const id = `churn-${sequence}`;
      const reply = await client.submit({ id, cpu: 1_000, memory: 1_024, queue: false });
      if (reply.ok) {
        live.push(id);
        current.placed += 1;
        current.placeLatency.record(performance.now() - from);
      }
      return reply.ok;
    };
    /** A result row for one phase; placements/s counts placements, the note the ops. */
    const phaseRow = (system: string, seconds: number, ops: number, d: ClusterCounters, usageOf: ReturnType<typeof usage>, note: string): ResultRow => ({
      ...blankRow,
      scenario: 'churn',
      system,
      placements: phase.placed,
      seconds: round(seconds, 2),
      placementsPerSecond: Math.round(phase.placed / seconds),
      latency: phase.placeLatency.summary(),
      ...perPlacement(d, phase.placed),
      ...usageOf,
      note: `${Math.round(ops / seconds)} ops/s (${phase.placed} placements, ${phase.released} releases, release p99 ` +
        `${phase.releaseLatency.summary().p99Ms} ms)${note}`,
    });

    // Closed loop: the most this setup sustains.
    newPhase();
    let closedOps = 0;
    const closedEnd = performance.now() + PHASE_SECONDS * 1000;
    const progress = new Progress('churn: max rate', PHASE_SECONDS);
    const ticker = setInterval(() => progress.update(Math.min(PHASE_SECONDS, Math.round((PHASE_SECONDS * 1000 - (closedEnd - performance.now())) / 1000)), `${closedOps} ops`), 500);
    const closedBefore = await cluster.counters();
    const closedWatch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid });
    const closedStart = performance.now();
    await Promise.all(
      Array.from({ length: 256 }, async () => {
        while (performance.now() < closedEnd) {
          if (!(await op(performance.now()))) failures += 1;
          closedOps += 1;
        }
      }),
    );
    const closedSeconds = (performance.now() - closedStart) / 1000;
    const closedStats = closedWatch.stop();
    clearInterval(ticker);
    progress.done(`${closedOps} ops`);
    const maxRate = closedOps / closedSeconds;

    const rows: ResultRow[] = [
      phaseRow('drover: max (closed loop, 256 in flight)', closedSeconds, closedOps, delta(await cluster.counters(), closedBefore),
        usage(closedStats, Object.keys(cluster.replicaPids())), ''),
    ];
    const levels: Record<string, unknown>[] = [];
    for (const fraction of [0.25, 0.5, 0.9]) {
      const rate = maxRate * fraction;
      newPhase();
      const phaseBefore = await cluster.counters();
      const watch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid });
      const phaseProgress = new Progress(`churn: ${fraction * 100}% of max`, Math.round(rate * PHASE_SECONDS));
      let issued = 0;
      let completed = 0;
      let inFlight = 0;
      let overloaded = 0;
      const start = performance.now();
      const total = Math.round(rate * PHASE_SECONDS);
      const pending: Promise<void>[] = [];
      // Open loop: op i is due at start + i / rate; latency counts from when it was due, so a
      // stall shows up in the percentiles instead of silently slowing the offered load.
      while (issued < total) {
        const now = performance.now();
        while (issued < total && start + (issued * 1000) / rate <= now) {
          const due = start + (issued * 1000) / rate;
          issued += 1;
          if (inFlight >= MAX_IN_FLIGHT) {
            overloaded += 1;
            continue;
          }
          inFlight += 1;
          pending.push(
            op(due).then((ok) => {
              if (!ok) failures += 1;
              inFlight -= 1;
              completed += 1;
            }),
          );
        }
        phaseProgress.update(completed);
        await new Promise((r) => setTimeout(r, 2));
      }
      await Promise.all(pending);
      phaseProgress.done();
      const seconds = (performance.now() - start) / 1000;
      const stats = watch.stop();
      levels.push({
        fraction, offeredRate: Math.round(rate), completed, seconds, overloaded,
        placed: phase.placed, placeLatency: phase.placeLatency.summary(), released: phase.released, releaseLatency: phase.releaseLatency.summary(),
      });
      rows.push(phaseRow(`drover: ${fraction * 100}% of max`, seconds, completed, delta(await cluster.counters(), phaseBefore),
        usage(stats, Object.keys(cluster.replicaPids())),
        `; offered ${Math.round(rate)} ops/s${overloaded > 0 ? `; ${overloaded} ops dropped at ${MAX_IN_FLIGHT} in flight` : ''}`));
    }
    return { name: 'churn', rows, details: { maxRate: Math.round(maxRate), levels, failures } };
  } finally {
    await cluster.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// rebalance: a replica joins and one leaves under load.

export async function rebalanceScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const WINDOW_MS = 250;
  const JOIN_AT = 4_000;
  const LEAVE_AT = 11_000;
  const END_AT = 18_000;
  ctx.out(`rebalance: 3 replicas under batched load; a 4th joins at ${JOIN_AT / 1000} s, one leaves (SIGTERM) at ${LEAVE_AT / 1000} s; ` +
    `placements counted per ${WINDOW_MS} ms window`);
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  try {
    await cluster.registerWorkers(fleet(1_000, 128_000, 262_144));
    const windows: number[] = [];
    let failed = 0;
    let sequence = 0;
    let running = true;
    // Each container's latency is its batch's round trip, counted in the phase the batch was sent in.
    const joinLatency = new Latency();
    const leaveLatency = new Latency();
    const start = performance.now();
    const count = (n: number) => {
      const w = Math.floor((performance.now() - start) / WINDOW_MS);
      while (windows.length <= w) windows.push(0);
      windows[w]! += n;
    };
    const lanes = Array.from({ length: 8 }, async () => {
      while (running) {
        const batch = Array.from({ length: 200 }, () => ({ id: `rb-${(sequence += 1)}`, cpu: 10, memory: 10, queue: false }));
        const sent = performance.now();
        try {
          const reply = await cluster.client.submitBatch(batch);
          if (!reply.ok) failed += batch.length;
          else {
            const placed = reply.results.filter((r) => r.ok).length;
            count(placed);
            failed += batch.length - placed;
            const at = sent - start;
            if (at >= LEAVE_AT) leaveLatency.record(performance.now() - sent, placed);
            else if (at >= JOIN_AT) joinLatency.record(performance.now() - sent, placed);
          }
        } catch {
          failed += batch.length;
        }
      }
    });
    const events: Record<string, number | null> = {};
    const progress = new Progress('rebalance', END_AT / 1000);
    const ticker = setInterval(() => progress.update(Math.floor((performance.now() - start) / 1000)), 500);
    const at = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, start + ms - performance.now())));
    await at(JOIN_AT);
    const atJoin = await cluster.countersByReplica();
    const joinWatch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid });
    const joinStart = performance.now();
    const joiner = await cluster.cluster.add();
    joinWatch.add(joiner.id, joiner.pid);
    await cluster.waitBalanced();
    events.joinToBalancedMs = Math.round(performance.now() - joinStart);
    await at(LEAVE_AT);
    const atLeave = await cluster.countersByReplica();
    const joinStats = joinWatch.stop();
    const leaveWatch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid });
    const leaveStart = performance.now();
    const leaver = cluster.cluster.live()[0]!;
    const exitCode = await leaver.terminate();
    await cluster.waitBalanced();
    events.leaveToBalancedMs = Math.round(performance.now() - leaveStart);
    await at(END_AT);
    running = false;
    await Promise.all(lanes);
    const atEnd = await cluster.countersByReplica();
    const leaveStats = leaveWatch.stop();
    clearInterval(ticker);
    progress.done();
    /** Counter change between two snapshots; a replica gone by `after` counts up to `before`'s. */
    const change = (after: Map<string, ClusterCounters>, before: Map<string, ClusterCounters>) =>
      delta(sumCounters([...new Set([...before.keys(), ...after.keys()])].map((id) => after.get(id) ?? before.get(id) ?? NO_COUNTERS)),
        sumCounters([...before.values()]));

    const rate = (w: number) => (windows[w] ?? 0) * (1000 / WINDOW_MS);
    const windowOf = (ms: number) => Math.floor(ms / WINDOW_MS);
    const steady = (from: number, to: number) => {
      const rates = [];
      for (let w = windowOf(from); w < windowOf(to); w += 1) rates.push(rate(w));
      return rates.reduce((a, b) => a + b, 0) / Math.max(1, rates.length);
    };
    const before = steady(1_000, JOIN_AT);
    const analyse = (eventMs: number, until: number) => {
      let dip = Number.POSITIVE_INFINITY;
      let recoveredMs: number | null = null;
      for (let w = windowOf(eventMs); w < windowOf(until); w += 1) {
        dip = Math.min(dip, rate(w));
        if (recoveredMs === null && w > windowOf(eventMs) && rate(w) >= 0.9 * before && dip < 0.9 * before) {
          recoveredMs = (w + 1) * WINDOW_MS - eventMs;
        }
      }
      // No window below 90% of the steady rate means there was nothing to recover from.
      return { dipPercent: round((100 * dip) / before, 0), recoveredMs: dip >= 0.9 * before ? 0 : recoveredMs };
    };
    const join = analyse(JOIN_AT, LEAVE_AT);
    const leave = analyse(LEAVE_AT, END_AT);
    const after = steady(LEAVE_AT + 3_000, END_AT);
    const placedBetween = (from: number, to: number) => windows.slice(windowOf(from), windowOf(to)).reduce((a, b) => a + b, 0);
    const row = (
      system: string,
      span: readonly [number, number],
      a: { dipPercent: number; recoveredMs: number | null },
      balancedMs: number | null,
      latency: Latency,
      d: ClusterCounters,
      stats: ReturnType<ProcessWatch['stop']>,
      note: string,
    ): ResultRow => {
      const placed = placedBetween(span[0], span[1]);
      const seconds = (span[1] - span[0]) / 1000;
      return {
        ...blankRow,
        scenario: 'rebalance',
        system,
        placements: placed,
        seconds,
        placementsPerSecond: Math.round(placed / seconds),
        latency: latency.summary(),
        ...perPlacement(d, placed),
        ...usage(stats, Object.keys(stats).filter((name) => name !== 'redis')),
        note: `${span[0] / 1000}-${span[1] / 1000} s; lowest ${WINDOW_MS} ms window ${a.dipPercent}% of the steady ${Math.round(before)}/s ` +
          `before the join; back above 90% after ${a.recoveredMs === null ? 'never' : `${a.recoveredMs} ms`}; balanced after ${balancedMs} ms; ${note}`,
      };
    };
    const joinCounters = change(atLeave, atJoin);
    const leaveCounters = change(atEnd, atLeave);
    return {
      name: 'rebalance',
      rows: [
        row('drover: replica joins', [JOIN_AT, LEAVE_AT], join, events.joinToBalancedMs ?? null, joinLatency, joinCounters, joinStats, 'process start included'),
        row('drover: replica leaves (SIGTERM)', [LEAVE_AT, END_AT], leave, events.leaveToBalancedMs ?? null, leaveLatency, leaveCounters, leaveStats,
          `exit code ${exitCode}; ${failed} placements failed in the whole run; the leaver's counters up to its SIGTERM`),
      ],
      details: {
        windowMs: WINDOW_MS, windows: windows.map((n) => n * (1000 / WINDOW_MS)), steadyBefore: Math.round(before), steadyAfter: Math.round(after),
        join, leave, events, failed, exitCode, joinCounters, leaveCounters, joinProcesses: joinStats, leaveProcesses: leaveStats,
      },
    };
  } finally {
    await cluster.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// memory: one replica holding 10,000 worker actors.

export async function memoryScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const WORKERS = 10_000;
  ctx.out(`memory: one replica (started with --expose-gc, so its status reports live memory) takes ${WORKERS} workers`);
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 1, shards: 64, nodeArgs: ['--expose-gc'] });
  try {
    const [empty] = await cluster.statuses();
    if (empty === undefined) throw new Error('the replica did not answer');
    await cluster.registerWorkers(fleet(WORKERS, 128_000, 262_144));
    await new Promise((r) => setTimeout(r, 1_000));
    const [full] = await cluster.statuses();
    if (full === undefined || full.workers !== WORKERS) throw new Error(`the replica holds ${full?.workers} workers, expected ${WORKERS}`);
    // What the actors hold after a full GC: the JS heap, plus memory outside it (`external`, which
    // includes array buffers such as the worker index's typed arrays).
    // Then requests that wait: submitted into a pool no worker has, so each is queued in its home
    // shard's backlog (this one replica holds them all).
    const QUEUED = 20_000;
    const requests = Array.from({ length: QUEUED }, (_, i) => ({ id: `mq-${String(i).padStart(9, '0')}`, cpu: 100, memory: 128, pool: 'none-such', command: ['sleep', '60'] }));
    for (let i = 0; i < requests.length; i += 500) {
      const reply = await cluster.client.submitBatch(requests.slice(i, i + 500));
      if (!reply.ok || reply.results.some((r) => !r.ok || r.status !== 'queued')) throw new Error('memory: a request was not queued');
    }
    await new Promise((r) => setTimeout(r, 1_000));
    const [waiting] = await cluster.statuses();
    if (waiting === undefined) throw new Error('the replica did not answer');
    const livePerQueued = (waiting.memory.heapUsed + waiting.memory.external - full.memory.heapUsed - full.memory.external) / QUEUED;
    ctx.out(`memory: ${QUEUED} queued requests: ${Math.round(livePerQueued)} B live per queued request in the replica`);
    const heapPerActor = (full.memory.heapUsed - empty.memory.heapUsed) / WORKERS;
    const externalPerActor = (full.memory.external - empty.memory.external) / WORKERS;
    const livePerActor = heapPerActor + externalPerActor;
    const rssPerActor = (full.memory.rss - empty.memory.rss) / WORKERS;
    const rssMiB = full.memory.rss / 1024 / 1024;
    const row: ResultRow = {
      ...blankRow,
      scenario: 'memory',
      system: 'drover (1 replica)',
      placements: 0,
      seconds: 0,
      placementsPerSecond: 0,
      replicaMaxRssMiB: round(rssMiB, 1),
      target: 'under 8 KB per actor; under 300 MB RSS',
      // Per actor is the live memory the actors hold after a full GC (heap and external); RSS
      // also carries V8's free heap pages and the allocator's slack, so it is judged by the
      // brief's separate target for the replica's total.
      targetMet: livePerActor < 8 * 1024 && rssMiB < 300,
      note: `${WORKERS} actors: ${Math.round(livePerActor)} B live per actor (heap ${Math.round(heapPerActor)}, external ` +
        `${Math.round(externalPerActor)}), RSS growth ${Math.round(rssPerActor)} B per actor; ` +
        `RSS ${round(empty.memory.rss / 1024 / 1024, 1)} MiB empty, ${round(rssMiB, 1)} MiB with the actors; ` +
        `then ${QUEUED} queued requests: ${Math.round(livePerQueued)} B live per queued request`,
    };
    return {
      name: 'memory',
      rows: [row],
      details: { workers: WORKERS, empty: empty.memory, full: full.memory, liveBytesPerActor: Math.round(livePerActor), heapBytesPerActor: Math.round(heapPerActor),
        externalBytesPerActor: Math.round(externalPerActor), rssBytesPerActor: Math.round(rssPerActor), liveBytesPerQueuedRequest: Math.round(livePerQueued) },
    };
  } finally {
    await cluster.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// redis-memory: what Redis keeps per worker, per live container and per released container.

/** Redis's `used_memory`, in bytes. */
async function usedMemory(redis: Redis): Promise<number> {
  const match = /used_memory:(\d+)/.exec(await redis.info('memory'));
  if (match === null) throw new Error('INFO memory has no used_memory');
  return Number(match[1]);
}

/**
 * The store's own writes (register_workers.lua and commit_batch.lua, fenced as a replica writes
 * them) under fresh prefixes, once with the history stream off and once at its default cap:
 * `used_memory` before and after registering 2,000 workers over 64 shards, placing 20,000
 * containers (ids of 16 characters, request keys of 26), and releasing them all (each leaves a
 * tombstone that expires after DROVER_RELEASED_RETENTION_S). Nothing else writes to this Redis
 * meanwhile, so the deltas are Drover's.
 */
export async function redisMemoryScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const SHARDS = 64;
  const WORKERS = 2_000;
  const CONTAINERS = 20_000;
  const BATCH = 500;
  ctx.out(`redis-memory: ${WORKERS} workers, ${CONTAINERS} containers placed then released, written by the store's scripts; history off and on`);
  return withRedis(ctx, async (redis) => {
    const rows: ResultRow[] = [];
    const details: Record<string, unknown> = {};
    for (const historyCap of [0, 10_000]) {
      const prefix = `bmem${historyCap}${Date.now().toString(36)}`;
      const store = new DroverStore(redis, { prefix, shards: SHARDS, historyCap, releasedRetentionSeconds: 3_600 });
      const epochs: number[] = [];
      for (let shard = 0; shard < SHARDS; shard += 1) epochs[shard] = (await store.acquireLease(shard, 'bench', 600_000)).epoch;
      const before = await usedMemory(redis);
      const workers = fleet(WORKERS, 64_000, 262_144).map((w) => ({ id: w.id, shard: shardOf(w.id, SHARDS), version: 1 }));
      for (const w of workers) {
        await store.registerWorker(epochs[w.shard]!, { id: w.id, shard: w.shard, cpu: 64_000, memory: 262_144, gpu: null, gpuCount: 0, pool: null }, 'available');
      }
      const registered = await usedMemory(redis);
      // One shard at a time, in batches; every op quotes the version its worker had when the
      // batch began (as a replica's owner does), then takes the version Redis answers.
      const commit = async (kind: 'place' | 'release') => {
        for (let shard = 0; shard < SHARDS; shard += 1) {
          const indexes = Array.from({ length: CONTAINERS }, (_, i) => i).filter((i) => workers[i % WORKERS]!.shard === shard);
          for (let start = 0; start < indexes.length; start += BATCH) {
            const slice = indexes.slice(start, start + BATCH);
            const batch: BatchOp[] = slice.map((i) => {
              const w = workers[i % WORKERS]!;
              const containerId = `container-${String(i).padStart(6, '0')}`;
              return kind === 'place'
                ? { kind, containerId, workerId: w.id, expectedVersion: w.version, cpu: 100, memory: 128, gpuCount: 0, deadline: 0, requestKey: `k-${String(i).padStart(24, '0')}` }
                : { kind, containerId, workerId: w.id, expectedVersion: w.version };
            });
            const result = await store.commitBatch(shard, epochs[shard]!, batch);
            if (result.fenced) throw new Error(`redis-memory: shard ${shard} fenced`);
            result.outcomes.forEach((outcome, j) => {
              if (outcome.code !== (kind === 'place' ? 'PLACED' : 'RELEASED')) throw new Error(`redis-memory: ${kind} answered ${outcome.code}`);
              const w = workers[slice[j]! % WORKERS]!;
              w.version = Math.max(w.version, outcome.version);
            });
          }
        }
      };
      await commit('place');
      const placed = await usedMemory(redis);
      await commit('release');
      const released = await usedMemory(redis);
      const perWorker = Math.round((registered - before) / WORKERS);
      const perLive = Math.round((placed - registered) / CONTAINERS);
      const perTombstone = Math.round((released - registered) / CONTAINERS);
      // Queued requests: a record with status queued and the id in its home shard's backlog set
      // (backlog_commit.lua, as a home shard's owner writes it), with a 2-argument command.
      const queueIds = Array.from({ length: CONTAINERS }, (_, i) => `queued-${String(i).padStart(9, '0')}`);
      for (let shard = 0; shard < SHARDS; shard += 1) {
        const mine = queueIds.filter((id) => shardOf(id, SHARDS) === shard);
        for (let start = 0; start < mine.length; start += BATCH) {
          const ops = mine.slice(start, start + BATCH).map((containerId) => ({
            kind: 'queue' as const, containerId, requestKey: `k-${containerId.padStart(24, '0')}`, priority: 0, maxWaitMs: 3_600_000,
            cpu: 100, memory: 128, gpu: null, gpuCount: 0, pool: null, spec: JSON.stringify({ command: ['sleep', '60'], env: null }),
          }));
          const result = await store.commitBacklog(shard, epochs[shard]!, ops);
          if (result.fenced || result.outcomes.some((o) => o.code !== 'QUEUED')) throw new Error('redis-memory: queueing failed');
        }
      }
      const queued = await usedMemory(redis);
      const perQueued = Math.round((queued - released) / CONTAINERS);
      const history = historyCap === 0 ? 'history off' : `history on (cap ${historyCap} per shard)`;
      ctx.out(`redis-memory: ${history}: ${perWorker} B per worker, ${perLive} B per live container, ${perTombstone} B per released container, ${perQueued} B per queued request`);
      rows.push({
        ...blankRow,
        scenario: 'redis-memory',
        system: `store, ${history}`,
        placements: CONTAINERS,
        seconds: 0,
        placementsPerSecond: 0,
        note: `${perWorker} B per worker, ${perLive} B per live container, ${perTombstone} B per released container (tombstone), ${perQueued} B per queued request`,
      });
      details[historyCap === 0 ? 'historyOff' : 'historyOn'] = { perWorker, perLiveContainer: perLive, perReleasedContainer: perTombstone, perQueuedRequest: perQueued };
    }
    return { name: 'redis-memory', rows, details };
  });
}

// ---------------------------------------------------------------------------------------------
// backlog: requests queued against an empty fleet, drained as workers register; wake-up latency.

/**
 * 100,000 requests are queued while no worker exists; then 10,000 workers register (batches of
 * 100, 8 in flight) and the backlog drains: the time from the first registration until the
 * replicas' counters say all are placed (read every STATUS_POLL_MS), and the rate. The scale
 * scenario's Drover part (1,000 workers, 100,000 containers) runs before and again after, in the
 * same scenario, and the drain is compared with the mean of the two: a ratio of numbers from one
 * run on one machine, bracketed against the machine's drift between rounds. Then, on a quiet cluster,
 * the wake-up latency: one worker held full, one request waiting for it; the holder is released and
 * the time from sending the release to the waiting request's "placed" event is recorded, 300 times.
 */
/**
 * The drain's rate in each half second, from the poller's (time, placed) samples: shows how much
 * of the drain ran while workers were still registering (before the "|").
 */
function drainTimeline(samples: ReadonlyArray<{ at: number; placed: number }>, registeredAtMs: number): string {
  const STEP_MS = 500;
  const parts: string[] = [];
  let previous = 0;
  let index = 0;
  const end = samples.length === 0 ? 0 : samples[samples.length - 1]!.at;
  for (let t = STEP_MS; t < end + STEP_MS; t += STEP_MS) {
    while (index + 1 < samples.length && samples[index + 1]!.at <= t) index += 1;
    const placed = samples[index] !== undefined && samples[index]!.at <= t ? samples[index]!.placed : previous;
    if (registeredAtMs > t - STEP_MS && registeredAtMs <= t) parts.push('|');
    parts.push(String(Math.round(((placed - previous) * 1_000) / STEP_MS)));
    previous = placed;
  }
  return parts.join(' ');
}

/** How often the backlog scenario reads the replicas' placement counters while it drains. */
const STATUS_POLL_MS = 50;

export async function backlogScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const QUEUED = 100_000;
  const WORKERS = 10_000;
  const WAKES = 300;
  ctx.out(`backlog: 3 replicas; the scale reference first, then ${QUEUED} requests queued against no workers, drained as ${WORKERS} workers register; then ${WAKES} wake-ups on a quiet cluster; then the scale reference again`);
  const reference = await droverVolume(ctx, 'scale', 1_000, 100_000, { target: '(reference for backlog, before)', met: () => true });
  const firstReferenceRate = reference.row.placementsPerSecond;
  ctx.out(`backlog: scale reference before the drain ${firstReferenceRate}/s`);
  let measured: { rows: ResultRow[]; drainRate: number; drained: number; details: Record<string, unknown> };

  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  try {
    const nc = cluster.client.nc;
    // Placements by the backlog, summed over the replicas' own counters (as `scale` counts its
    // replies): receiving 100,000 events would load this machine's two cores with the measurement.
    const backlogPlaced = async (): Promise<number> =>
      (await cluster.statuses()).reduce((sum, status) => sum + ((status as unknown as { backlog?: { placed?: number } }).backlog?.placed ?? 0), 0);
    let placedCount = 0;
    let lastPlacedAt = 0;

    // Queue: nothing fits, so every submit is answered "queued" (durable in Redis).
    const queueing = new Progress('backlog: queueing', QUEUED);
    const queueStarted = performance.now();
    let queued = 0;
    const batches: ContainerSpec[][] = [];
    const all = containers(QUEUED, 'bl', 1_000, 1_024);
    for (let i = 0; i < all.length; i += 500) batches.push(all.slice(i, i + 500));
    await runLanes(batches, 16, async (batch) => {
      const reply = await cluster.client.submitBatch(batch);
      if (!reply.ok) throw new Error(`queueing: ${reply.error.code} ${reply.error.message}`);
      for (const result of reply.results) {
        if (!result.ok || result.status !== 'queued') throw new Error(`queueing: expected queued, got ${JSON.stringify(result)}`);
      }
      queued += batch.length;
      queueing.update(queued);
    });
    queueing.done();
    const queueSeconds = (performance.now() - queueStarted) / 1000;
    ctx.out(`backlog: ${QUEUED} queued in ${queueSeconds.toFixed(2)} s (${Math.round(QUEUED / queueSeconds)}/s)`);

    // Drain: register the fleet; every worker's capacity wakes the queued requests it may fit.
    const watch = new ProcessWatch({ ...cluster.replicaPids(), redis: ctx.redisPid, nats: ctx.natsPid, bench: process.pid });
    const before = await cluster.counters();
    const draining = new Progress('backlog: draining', QUEUED);
    const drainStarted = performance.now();
    let polling = true;
    /** (ms since the first registration, placed so far), for the drain's shape over time. */
    const timeline: Array<{ at: number; placed: number }> = [];
    const poller = (async () => {
      while (polling && placedCount < QUEUED) {
        const count = await backlogPlaced().catch(() => placedCount);
        if (count > placedCount) {
          placedCount = count;
          lastPlacedAt = performance.now();
          draining.update(placedCount);
          timeline.push({ at: lastPlacedAt - drainStarted, placed: count });
        }
        await new Promise((r) => setTimeout(r, STATUS_POLL_MS));
      }
    })();
    // As a provisioner brings a fleet up: drover.workers.register.batch, 100 workers a request, 8 at once.
    const registrations: WorkerSpecInput[][] = [];
    const workers = fleet(WORKERS, 16_000, 16_384);
    for (let i = 0; i < workers.length; i += 100) registrations.push(workers.slice(i, i + 100));
    await runLanes(registrations, 8, async (batch) => {
      const reply = await cluster.client.registerWorkers(batch);
      if (!reply.ok) throw new Error(`registering: ${reply.error.code} ${reply.error.message}`);
      const failed = reply.results.find((result) => !result.ok);
      if (failed !== undefined && !failed.ok) throw new Error(`registering: ${failed.error.code} ${failed.error.message}`);
    });
    const registeredSeconds = (performance.now() - drainStarted) / 1000;
    const deadline = Date.now() + 300_000;
    while (placedCount < QUEUED && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    polling = false;
    await poller;
    draining.done();
    const stats = watch.stop();
    const drained = placedCount;
    const drainSeconds = (lastPlacedAt - drainStarted) / 1000;
    const drainRate = drained / drainSeconds;
    const d = delta(await cluster.counters(), before);
    ctx.out(`backlog: ${drained} placed in ${drainSeconds.toFixed(2)} s (${Math.round(drainRate)}/s, ${Math.round((100 * drainRate) / Math.max(1, firstReferenceRate))} % of the scale reference before it); workers registered in ${registeredSeconds.toFixed(2)} s`);
    ctx.out(`backlog: drain rate per half second (placements/s; | = all workers registered): ${drainTimeline(timeline, registeredSeconds * 1_000)}`);

    // Wake-up latency on a quiet cluster: one worker held full, one request waiting for it.
    await new Promise((r) => setTimeout(r, 1_000));
    const waiters = new Map<string, () => void>();
    const events = nc.subscribe(`${cluster.prefix}.events.containers.>`, {
      callback: (error, msg) => {
        if (error) return;
        const event = msg.json<{ id: string; status: string }>();
        if (event.status === 'placed') waiters.get(event.id)?.();
      },
    });
    await nc.flush();
    const wake = new Latency();
    const wakeWorker = { id: 'wake-worker', cpu: 1_000, memory: 1_024, pool: 'wake' };
    const registered = await cluster.client.registerWorker(wakeWorker);
    if (!registered.ok) throw new Error(`registering the wake-up worker: ${registered.error.message}`);
    let holder = 'wake-hold-0';
    const held = await cluster.client.submit({ id: holder, cpu: 1_000, memory: 1_024, pool: 'wake' });
    if (!held.ok || held.status !== 'placed') throw new Error(`wake-up holder not placed: ${JSON.stringify(held)}`);
    const waking = new Progress('backlog: wake-ups', WAKES);
    for (let i = 1; i <= WAKES; i += 1) {
      const waiting = `wake-hold-${i}`;
      const reply = await cluster.client.submit({ id: waiting, cpu: 1_000, memory: 1_024, pool: 'wake' });
      if (!reply.ok || reply.status !== 'queued') throw new Error(`wake-up request not queued: ${JSON.stringify(reply)}`);
      // Let the queued request settle into its sleeping shape: this measures a wake-up, not a retry.
      await new Promise((r) => setTimeout(r, 20));
      const placed = new Promise<void>((resolve) => waiters.set(waiting, resolve));
      const sent = performance.now();
      const released = await cluster.client.release(holder);
      if (!released.ok) throw new Error(`releasing ${holder}: ${released.error.message}`);
      await placed;
      wake.record(performance.now() - sent);
      waiters.delete(waiting);
      holder = waiting;
      waking.update(i);
    }
    waking.done();
    events.unsubscribe();
    const wakeSummary = wake.summary();
    ctx.out(`backlog: wake-up p50 ${wakeSummary.p50Ms} ms, p99 ${wakeSummary.p99Ms} ms (release sent -> the waiting request's placed event)`);
    const rows: ResultRow[] = [
      {
        ...blankRow,
        scenario: 'backlog',
        system: 'drover (3 replicas)',
        placements: drained,
        seconds: round(drainSeconds, 2),
        placementsPerSecond: Math.round(drainRate),
        ...perPlacement(d, drained),
        ...usage(stats, Object.keys(cluster.replicaPids())),
        target: 'drain >= 80 % of scale\'s rate in the same run',
        targetMet: false, // decided below, once the reference after the drain is measured
        note: `${QUEUED} queued (in ${round(queueSeconds, 1)} s), drained as ${WORKERS} workers registered (batches of 100, 8 in flight; in ${round(registeredSeconds, 1)} s)`,
      },
      {
        ...blankRow,
        scenario: 'backlog wake-up',
        system: 'drover (3 replicas)',
        placements: WAKES,
        seconds: 0,
        placementsPerSecond: 0,
        latency: wakeSummary,
        target: 'wake-up p99 under 50 ms',
        targetMet: wakeSummary.p99Ms < 50,
        note: 'release of the holder sent -> the waiting request placed (its event received), one at a time on a quiet cluster',
      },
    ];
    measured = { rows, drainRate, drained, details: { queueSeconds, drainSeconds, registeredSeconds, drainRate: Math.round(drainRate), wake: wakeSummary, counters: d, processes: stats } };
  } finally {
    await cluster.stop();
  }
  // The reference again, after the drain: this machine's speed drifts by 10-20 % between rounds a
  // minute apart, and one reference taken before the drain made the ratio swing with it (78-108 %
  // over nine runs of the same code). The drain is compared with the mean of the two.
  const referenceAfter = await droverVolume(ctx, 'scale', 1_000, 100_000, { target: '(reference for backlog, after)', met: () => true });
  const referenceRate = Math.round((firstReferenceRate + referenceAfter.row.placementsPerSecond) / 2);
  const ratio = measured.drainRate / Math.max(1, referenceRate);
  ctx.out(`backlog: scale reference after the drain ${referenceAfter.row.placementsPerSecond}/s; the drain ${Math.round(measured.drainRate)}/s is ${Math.round(ratio * 100)} % of the two references' mean (${referenceRate}/s)`);
  const [drainRow, ...otherRows] = measured.rows;
  const judged: ResultRow = {
    ...drainRow!,
    targetMet: measured.drained === QUEUED && ratio >= 0.8,
    note: `${drainRow!.note}; ${Math.round(ratio * 100)} % of the scale reference (${referenceRate}/s, the mean of ${firstReferenceRate}/s before and ${referenceAfter.row.placementsPerSecond}/s after)`,
  };
  // A mass expiry (issue 18): 100,000 queued requests ending together, fitting submits meanwhile.
  const expiry = await massExpiryScenario(ctx);
  return {
    name: 'backlog',
    rows: [reference.row, judged, ...otherRows, referenceAfter.row, ...expiry.rows],
    details: { ...measured.details, referenceRate, referenceBefore: firstReferenceRate, referenceAfter: referenceAfter.row.placementsPerSecond, drainShareOfScale: round(ratio, 3), massExpiry: expiry.details },
  };
}

// page-cost: the scale workload with and without debug pages open, in one cluster.

/**
 * What an open debug page costs the replicas: 3 replicas with 10,000 workers (the size the issue
 * bounds the cost at) place 100,000 containers per round, in rounds alternating without and with
 * a page open on every replica (off, on, off, on: the fleet fills a little each round, so the two
 * kinds alternate). "A page open" is what the page's script asks of a replica: the event stream
 * (a snapshot every 250 ms at most) watching one worker that takes placements on that replica (so
 * its actor's inspection runs on every event), and the cluster view every 2 s. It is read by this
 * process instead of a browser: the browser's own work would run on the same two cores and be
 * counted against the replicas.
 */
export async function pageCostScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const WORKERS = 10_000;
  const PER_ROUND = 100_000;
  // A first round warms the replicas up (JIT, connections) and is not counted.
  const ROUNDS = ['warm-up', 'off', 'on', 'off', 'on'] as const;
  ctx.out(`page-cost: 3 replicas, ${WORKERS} workers; ${ROUNDS.length} rounds of ${PER_ROUND} placements, alternating without and with a debug page open on every replica`);
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  try {
    const workers = fleet(WORKERS, 128_000, 262_144);
    await cluster.registerWorkers(workers);
    const totals = { off: { placed: 0, seconds: 0, failed: 0 }, on: { placed: 0, seconds: 0, failed: 0 } };
    const rounds: Array<{ page: string; placed: number; seconds: number; rate: number; pushes: number }> = [];
    for (const [index, page] of ROUNDS.entries()) {
      const pages = page === 'on' ? await openPages(cluster, workers.map((w) => w.id)) : null;
      const run = await placeInBatches(cluster.client, containers(PER_ROUND, `page${index}`, 1_000, 1_024), {
        batchSize: 500,
        inFlight: 16,
        latency: new Latency(),
        label: `page-cost: round ${index + 1} (page ${page})`,
      });
      const pushes = pages === null ? 0 : await pages.close();
      if (page !== 'warm-up') {
        totals[page].placed += run.placed;
        totals[page].seconds += run.seconds;
        totals[page].failed += run.failed;
      }
      rounds.push({ page, placed: run.placed, seconds: round(run.seconds, 2), rate: Math.round(run.placed / run.seconds), pushes });
      ctx.out(`page-cost: round ${index + 1}, page ${page}: ${Math.round(run.placed / run.seconds)}/s${pages === null ? '' : ` (${pushes} pushes received)`}`);
    }
    const off = totals.off.placed / totals.off.seconds;
    const on = totals.on.placed / totals.on.seconds;
    const loss = 1 - on / off;
    ctx.out(`page-cost: without a page ${Math.round(off)}/s, with pages open ${Math.round(on)}/s: ${(loss * 100).toFixed(1)} % lost`);
    const row = (page: 'off' | 'on', rate: number): ResultRow => ({
      ...blankRow,
      scenario: page === 'off' ? 'page-cost' : 'page-cost, page open',
      system: 'drover (3 replicas)',
      placements: totals[page].placed,
      seconds: round(totals[page].seconds, 2),
      placementsPerSecond: Math.round(rate),
      target: page === 'on' ? 'loses under 5 % with a page open' : null,
      targetMet: page === 'on' ? loss < 0.05 && totals.on.failed === 0 && totals.off.failed === 0 : null,
      note: page === 'off'
        ? `${WORKERS} workers; rounds (page ${rounds.map((r) => `${r.page} ${r.rate}/s`).join(', ')})`
        : `${(loss * 100).toFixed(1)} % below the rounds without a page; one event stream per replica watching a busy worker, plus the cluster view every 2 s`,
    });
    return { name: 'page-cost', rows: [row('off', off), row('on', on)], details: { rounds, offRate: Math.round(off), onRate: Math.round(on), loss: round(loss, 4) } };
  } finally {
    await cluster.stop();
  }
}

/** One page per replica: its event stream watching a worker of that replica, and the cluster view every 2 s. */
async function openPages(cluster: BenchCluster, workerIds: readonly string[]): Promise<{ close: () => Promise<number> }> {
  const controller = new AbortController();
  let pushes = 0;
  const readers: Array<Promise<void>> = [];
  const timers: NodeJS.Timeout[] = [];
  for (const status of await cluster.statuses()) {
    const url = status.http?.url;
    if (url === undefined || url === null) throw new Error(`replica ${status.replicaId} serves no HTTP`);
    const base = url.replace(/\/debug$/, '');
    const owned = new Set(status.shards);
    const watched = workerIds.find((id) => owned.has(shardOf(id, cluster.shards)));
    if (watched === undefined) throw new Error(`replica ${status.replicaId} owns no worker`);
    const response = await fetch(`${base}/debug/events?watch=worker:${watched}`, { signal: controller.signal });
    if (!response.ok || response.body === null) throw new Error(`debug events of ${status.replicaId}: HTTP ${response.status}`);
    const body = response.body;
    readers.push((async () => {
      try {
        // The page parses each push; so does this reader.
        for await (const _event of serverSentEvents(body)) pushes += 1;
      } catch {
        // the stream broke: the round's count stands
      }
    })());
    timers.push(setInterval(() => void fetch(`${base}/debug/cluster`, { signal: controller.signal }).then((r) => r.arrayBuffer()).catch(() => undefined), 2_000));
  }
  return {
    close: async () => {
      for (const timer of timers) clearInterval(timer);
      controller.abort();
      await Promise.all(readers);
      return pushes;
    },
  };
}

export const SCENARIOS = {
  seed: seedScenario,
  scale: scaleScenario,
  million: millionScenario,
  churn: churnScenario,
  rebalance: rebalanceScenario,
  memory: memoryScenario,
  'redis-memory': redisMemoryScenario,
  backlog: backlogScenario,
  'backlog-expiry': massExpiryScenario,
  'full-backlog': fullBacklogScenario,
  'page-cost': pageCostScenario,
} as const;
export type ScenarioName = keyof typeof SCENARIOS;
/** Scenarios another one already runs (`backlog` ends with `backlog-expiry`): named alone only, not in a full run. */
export const RUN_ONLY_BY_NAME: ReadonlySet<string> = new Set(['backlog-expiry']);
