/**
 * The backlog's two load cases of issue 18, for the benchmark:
 *
 * - `full-backlog`: a full pool with hundreds queued. Two replicas, 46 workers kept full, 600
 *   requests of three shapes waiting; releases free room at a steady pace (each release is room for
 *   one queued container) for a churn window, then nothing happens for an idle window. Measured in
 *   each window from the replicas' own counters: the backlog's attempts per second, re-routes per
 *   second and placements per second, and the replicas' CPU. Each release comes with a new request
 *   of the same pool (placed at once if it fits, else queued), so the backlog stays as deep. Meanwhile a submit that fits an empty
 *   pool is sent every half second: each must be placed, not queued.
 * - `backlog-expiry` (also run at the end of `backlog`): 100,000 requests that fit nowhere, queued
 *   so that all expire at the same moment. Measured: how long after that moment the replicas'
 *   expiry counters reach 50 %, 99 % and 100 %, the replicas' peak heap, and the fitting submits
 *   (to a pool with room, sent throughout) placed meanwhile, with their latency.
 */
import type { ContainerEvent, ContainerSpec, ReplicaStatus } from '../client/drover-client.js';
import { Progress } from '../util/progress.js';
import { BenchCluster, runLanes } from './drover-bench.js';
import { Latency } from './latency.js';
import { ProcessWatch, round } from './process-stats.js';
import { blankRow, type BenchContext, type ResultRow, type ScenarioResult } from './scenarios.js';


function backlogCounter(statuses: readonly ReplicaStatus[], name: string): number {
  return statuses.reduce((sum, status) => sum + (status.backlog?.[name] ?? 0), 0);
}

function routerCounter(statuses: readonly ReplicaStatus[], name: string): number {
  return statuses.reduce((sum, status) => sum + (status.router[name] ?? 0), 0);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface WindowMeasure {
  readonly seconds: number;
  readonly attempts: number;
  readonly reroutes: number;
  readonly placements: number;
  readonly replicaCpuSeconds: number;
  readonly replicaCpuPercent: number;
}

const FULL_WORKERS = 46;
const FULL_QUEUED = 600;
const CHURN_SECONDS = 30;
const IDLE_SECONDS = 15;
/** Releases per second during the churn window (each frees room for one queued container). */
const RELEASES_PER_SECOND = 80;

export async function fullBacklogScenario(ctx: BenchContext): Promise<ScenarioResult> {
  ctx.out(`full-backlog: 2 replicas, ${FULL_WORKERS} workers kept full, ${FULL_QUEUED} queued; ${CHURN_SECONDS} s of ${RELEASES_PER_SECOND} releases/s (each with a new request), then ${IDLE_SECONDS} s idle; a fitting submit to an empty pool every 0.5 s`);
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 2, shards: 64 });
  try {
    const client = cluster.client;
    const running: string[] = [];
    const subscription = client.nc.subscribe(`${cluster.prefix}.events.containers.>`, {
      callback: (error, msg) => {
        if (error) return;
        const event = msg.json<ContainerEvent>();
        if (event.status === 'placed' && event.id.startsWith('fb-')) running.push(event.id);
      },
    });
    // 46 workers of 4 cores, filled with 1-core containers; 4 empty workers in another pool.
    await cluster.registerWorkers([
      ...Array.from({ length: FULL_WORKERS }, (_, i) => ({ id: `full-${i}`, cpu: 4_000, memory: 4_096, pool: 'full' })),
      ...Array.from({ length: 4 }, (_, i) => ({ id: `spare-${i}`, cpu: 16_000, memory: 16_384, pool: 'spare' })),
    ], 'full-backlog: registering');
    const filling = Array.from({ length: FULL_WORKERS * 4 }, (_, i): ContainerSpec => ({ id: `fb-fill-${i}`, cpu: 1_000, memory: 1_024, pool: 'full' }));
    await runLanes(filling, 32, async (container) => {
      const reply = await client.submit(container);
      if (!reply.ok || reply.status !== 'placed') throw new Error(`filling: ${JSON.stringify(reply)}`);
    });
    // Three shapes wait: the size of one freed slot, half of it, and two slots (which rarely fits).
    const shapes = [{ cpu: 1_000, memory: 1_024 }, { cpu: 500, memory: 512 }, { cpu: 2_000, memory: 2_048 }];
    const queueing = Array.from({ length: FULL_QUEUED }, (_, i): ContainerSpec => ({ id: `fb-q-${i}`, ...shapes[i % shapes.length]!, pool: 'full' }));
    await runLanes(queueing, 32, async (container) => {
      const reply = await client.submit(container);
      if (!reply.ok || reply.status !== 'queued') throw new Error(`queueing: ${JSON.stringify(reply)}`);
    });
    await delay(1_000);
    ctx.out(`full-backlog: ${running.length} running, ${FULL_QUEUED} queued`);

    let submitted = 0;
    const fitting = { sent: 0, placed: 0, queued: 0, other: 0 };
    const fittingLatency = new Latency();
    let sending = true;
    const fittingLoop = (async () => {
      for (let i = 0; sending; i += 1) {
        const started = performance.now();
        const id = `fit-${i}`;
        const reply = await client.submit({ id, cpu: 1_000, memory: 1_024, pool: 'spare' });
        fitting.sent += 1;
        if (reply.ok && reply.status === 'placed') {
          fitting.placed += 1;
          fittingLatency.record(performance.now() - started);
        } else if (reply.ok) fitting.queued += 1;
        else fitting.other += 1;
        await client.release(id);
        await delay(500);
      }
    })();

    const measure = async (seconds: number, releasesPerSecond: number): Promise<WindowMeasure> => {
      const before = await cluster.statuses();
      const watch = new ProcessWatch(cluster.replicaPids());
      const started = performance.now();
      let released = 0;
      while (performance.now() - started < seconds * 1_000) {
        if (releasesPerSecond > 0) {
          const due = Math.floor(((performance.now() - started) / 1_000) * releasesPerSecond);
          const releases: Array<Promise<unknown>> = [];
          while (released < due && running.length > 0) {
            const index = Math.floor(Math.random() * running.length);
            const [id] = running.splice(index, 1);
            releases.push(client.release(id!));
            // A new request for each one that ends, so the pool stays full and the backlog deep.
            releases.push(client.submit({ id: `fb-n-${submitted}`, ...shapes[submitted % shapes.length]!, pool: 'full' }));
            submitted += 1;
            released += 1;
          }
          await Promise.all(releases);
        }
        await delay(20);
      }
      const elapsed = (performance.now() - started) / 1_000;
      const cpu = watch.stop();
      const after = await cluster.statuses();
      const replicaCpuSeconds = Object.values(cpu).reduce((sum, process) => sum + process.cpuSeconds, 0);
      return {
        seconds: elapsed,
        attempts: backlogCounter(after, 'attempts') - backlogCounter(before, 'attempts'),
        reroutes: routerCounter(after, 'reroutes') - routerCounter(before, 'reroutes'),
        placements: routerCounter(after, 'placed') - routerCounter(before, 'placed'),
        replicaCpuSeconds: round(replicaCpuSeconds, 2),
        replicaCpuPercent: round((100 * replicaCpuSeconds) / elapsed, 1),
      };
    };
    const churn = await measure(CHURN_SECONDS, RELEASES_PER_SECOND);
    const idle = await measure(IDLE_SECONDS, 0);
    sending = false;
    await fittingLoop;
    subscription.unsubscribe();
    const queuedLeft = backlogCounter(await cluster.statuses(), 'queued');

    const rate = (count: number, w: WindowMeasure) => round(count / w.seconds, 1);
    const rowOf = (label: string, w: WindowMeasure): ResultRow => ({
      ...blankRow,
      scenario: 'full-backlog',
      system: `drover (2 replicas), ${label}`,
      placements: w.placements,
      seconds: round(w.seconds, 1),
      placementsPerSecond: rate(w.placements, w),
      reroutesPerPlacement: w.placements === 0 ? null : round(w.reroutes / w.placements, 3),
      replicaCpuPercent: w.replicaCpuPercent,
      note: `attempts ${rate(w.attempts, w)}/s, re-routes ${rate(w.reroutes, w)}/s, placements ${rate(w.placements, w)}/s; replicas ${w.replicaCpuSeconds} CPU-s (${w.replicaCpuPercent} % of a core)`,
    });
    const fittingSummary = fittingLatency.summary();
    ctx.out(`full-backlog: churn: ${rowOf('churn', churn).note}`);
    ctx.out(`full-backlog: idle: ${rowOf('idle', idle).note}`);
    ctx.out(`full-backlog: fitting submits to the empty pool: ${fitting.placed} of ${fitting.sent} placed (p99 ${fittingSummary?.p99Ms ?? '-'} ms), ${fitting.queued} queued, ${fitting.other} refused; ${queuedLeft} still queued at the end`);
    return {
      name: 'full-backlog',
      rows: [rowOf('churn', churn), rowOf('idle', idle)],
      details: { churn, idle, fitting, fittingLatency: fittingSummary, queuedLeft },
    };
  } finally {
    await cluster.stop();
  }
}

const EXPIRING = 100_000;
/** Every request is queued to expire this long after the first submit (queueing takes about 10 s here). */
const EXPIRE_AFTER_MS = 40_000;

export async function massExpiryScenario(ctx: BenchContext): Promise<ScenarioResult> {
  ctx.out(`backlog-expiry: 3 replicas; ${EXPIRING} requests that fit nowhere, all expiring at one moment; a fitting submit every 20 ms meanwhile`);
  const cluster = await BenchCluster.start({ redisUrl: ctx.redisUrl, natsUrl: ctx.natsUrl, replicas: 3, shards: 64 });
  try {
    const client = cluster.client;
    await cluster.registerWorkers(Array.from({ length: 20 }, (_, i) => ({ id: `open-${i}`, cpu: 64_000, memory: 65_536, pool: 'open' })), 'backlog-expiry: registering');
    const expiresAt = Date.now() + EXPIRE_AFTER_MS;
    const queueing = new Progress('backlog-expiry: queueing', EXPIRING);
    let queued = 0;
    const batches: ContainerSpec[][] = [];
    for (let i = 0; i < EXPIRING; i += 500) {
      batches.push(Array.from({ length: Math.min(500, EXPIRING - i) }, (_, j) => ({ id: `ex-${i + j}`, cpu: 1_000, memory: 1_024, pool: 'none', maxWaitMs: 1 })));
    }
    await runLanes(batches, 16, async (batch) => {
      // Each expires at the same moment: its maxWaitMs is what is left until then.
      const left = expiresAt - Date.now();
      if (left < 5_000) throw new Error('backlog-expiry: queueing took too long for the chosen expiry moment');
      const reply = await client.submitBatch(batch.map((container) => ({ ...container, maxWaitMs: left })));
      if (!reply.ok) throw new Error(`queueing: ${reply.error.code} ${reply.error.message}`);
      for (const result of reply.results) if (!result.ok || result.status !== 'queued') throw new Error(`queueing: expected queued, got ${JSON.stringify(result)}`);
      queued += batch.length;
      queueing.update(queued);
    });
    queueing.done();
    ctx.out(`backlog-expiry: ${EXPIRING} queued; they expire in ${((expiresAt - Date.now()) / 1_000).toFixed(1)} s`);

    // From 3 s before the moment until all have ended: fitting submits, and the replicas' counters.
    await delay(Math.max(0, expiresAt - 3_000 - Date.now()));
    const fitting = { sent: 0, placed: 0, other: 0 };
    const fittingLatency = new Latency();
    let sending = true;
    const fittingLoop = (async () => {
      for (let i = 0; sending; i += 1) {
        const started = performance.now();
        fitting.sent += 1;
        try {
          const reply = await client.submit({ id: `open-c-${i}`, cpu: 100, memory: 128, pool: 'open' });
          if (reply.ok && reply.status === 'placed') {
            fitting.placed += 1;
            fittingLatency.record(performance.now() - started);
          } else fitting.other += 1;
        } catch {
          // No replica answered in time (all stepped out, or busy): not placed.
          fitting.other += 1;
        }
        await delay(20);
      }
    })();
    const before = await cluster.statuses();
    const expiredBefore = backlogCounter(before, 'expired');
    const marks: { half: number | null; p99: number | null; all: number | null } = { half: null, p99: null, all: null };
    let peakHeap = 0;
    let incidents = 0;
    const giveUpAt = expiresAt + 120_000;
    for (;;) {
      const statuses = await cluster.statuses();
      // A replica that stepped out (a link it counted as cut) or did not answer is worth a line.
      const troubled = statuses.filter((status) => status.steppedOut === true || status.links?.redis.cut === true || status.links?.nats.cut === true);
      if (statuses.length < cluster.cluster.live().length || troubled.length > 0) {
        ctx.out(`backlog-expiry: ${statuses.length} replicas answered; stepped out or cut: ${troubled.map((status) => status.replicaId).join(', ') || 'none'}`);
        incidents += 1;
      }
      peakHeap = Math.max(peakHeap, ...statuses.map((status) => status.memory.heapUsed));
      const ended = backlogCounter(statuses, 'expired') - expiredBefore;
      const late = Date.now() - expiresAt;
      if (marks.half === null && ended >= EXPIRING / 2) marks.half = late;
      if (marks.p99 === null && ended >= EXPIRING * 0.99) marks.p99 = late;
      if (ended >= EXPIRING) {
        marks.all = late;
        break;
      }
      if (Date.now() > giveUpAt) break;
      await delay(100);
    }
    sending = false;
    await fittingLoop;
    const after = await cluster.statuses();
    const deferred = backlogCounter(after, 'expiryUnwritten') - backlogCounter(before, 'expiryUnwritten');
    const catchUps = backlogCounter(after, 'expiryCatchUps') - backlogCounter(before, 'expiryCatchUps');
    const fittingSummary = fittingLatency.summary();
    const seconds = (ms: number | null) => (ms === null ? 'not reached' : `${(ms / 1_000).toFixed(2)} s`);
    const note = `ended after their time: half ${seconds(marks.half)}, 99 % ${seconds(marks.p99)}, all ${seconds(marks.all)}; peak replica heap ${round(peakHeap / 1024 / 1024, 1)} MiB; fitting submits placed ${fitting.placed} of ${fitting.sent} (p99 ${fittingSummary?.p99Ms ?? '-'} ms); ${catchUps} sweeps left expired entries for a catch-up sweep, ${deferred} end writes refused or unknown; ${incidents} readings with a replica silent or stepped out`;
    ctx.out(`backlog-expiry: ${note}`);
    const row: ResultRow = {
      ...blankRow,
      scenario: 'backlog expiry',
      system: 'drover (3 replicas)',
      placements: fitting.placed,
      seconds: round((marks.all ?? 0) / 1_000, 2),
      placementsPerSecond: 0,
      latency: fittingSummary,
      target: 'all end within seconds of their time; fitting submits placed meanwhile',
      targetMet: marks.all !== null && marks.all < 10_000 && fitting.other === 0 && incidents === 0,
      note,
    };
    return { name: 'backlog-expiry', rows: [row], details: { marks, peakHeapBytes: peakHeap, fitting, fittingLatency: fittingSummary, deferred, catchUps, incidents } };
  } finally {
    await cluster.stop();
  }
}
