/**
 * The main job (`npm start`): a local Drover cluster end to end. With no REDIS_URL / NATS_URL it
 * starts private redis-server and nats-server processes on free ports; it starts replicas,
 * registers a fleet of workers over NATS, places a few thousand containers with a progress line,
 * releases some, checks the accounting in Redis, and prints a summary. Then the scheduling loop
 * with real worker agents (loop-demo.ts): a backlog draining as containers exit, and a lost agent.
 */
import { serversFromEnv } from '../../infra/servers.js';
import { auditAccounting } from '../audit/accounting.js';
import { DroverClient, type ContainerSpec, type PlaceReply, type WorkerSpecInput } from '../client/drover-client.js';
import { loadConfig } from '../config.js';
import { Replica } from '../replica/replica.js';
import { createLogger } from '../util/log.js';
import { Progress } from '../util/progress.js';
import { formatNumber, renderTable } from '../util/table.js';
import { runLoopDemo } from './loop-demo.js';

export interface DemoOptions {
  readonly workers: number;
  readonly containers: number;
  readonly replicas: number;
  readonly concurrency: number;
}

/** A mixed fleet: mostly general workers, some large-memory ones, a few GPU workers in a pool. */
export function demoFleet(count: number): WorkerSpecInput[] {
  return Array.from({ length: count }, (_, i) => {
    const id = `worker-${String(i).padStart(4, '0')}`;
    if (i % 10 === 9) return { id, cpu: 64_000, memory: 262_144, gpu: 'a100', gpuCount: 4, pool: 'gpu' };
    if (i % 5 === 4) return { id, cpu: 32_000, memory: 262_144 };
    return { id, cpu: 32_000, memory: 131_072 };
  });
}

/** Containers of a few typical shapes; every 50th wants a GPU. */
export function demoContainers(count: number, prefix = 'ctr'): ContainerSpec[] {
  const shapes = [
    { cpu: 250, memory: 512 },
    { cpu: 500, memory: 1_024 },
    { cpu: 1_000, memory: 2_048 },
    { cpu: 2_000, memory: 8_192 },
  ];
  return Array.from({ length: count }, (_, i) => {
    const id = `${prefix}-${String(i).padStart(6, '0')}`;
    if (i % 50 === 49) return { id, cpu: 4_000, memory: 16_384, gpu: 'a100', gpuCount: 1, pool: 'gpu' };
    return { id, ...shapes[i % shapes.length]! };
  });
}

export async function runDemo(options: DemoOptions): Promise<number> {
  const out = process.stdout;
  const log = createLogger(process.env.DROVER_LOG_LEVEL ?? 'warn', { role: 'demo' });
  const { redisUrl, natsUrl, started: servers } = await serversFromEnv();
  const replicas: Replica[] = [];
  let client: DroverClient | null = null;
  try {
    // A fresh prefix per run, so a demo against a shared Redis never mixes with earlier data.
    const prefix = process.env.DROVER_PREFIX ?? `demo-${Date.now().toString(36)}`;
    out.write(`Drover demo: Redis ${redisUrl}${servers.some((s) => s.name === 'redis') ? ' (private)' : ''}, ` +
      `NATS ${natsUrl}${servers.some((s) => s.name === 'nats') ? ' (private)' : ''}, prefix ${prefix}\n`);

    for (let i = 0; i < options.replicas; i += 1) {
      // Agents' workers are unreachable after 2 s of silence in the demo and lost after 6 s (10 s and
      // 5 minutes by default), so the loss shows quickly.
      const workerTtlMs = process.env.DROVER_WORKER_TTL_MS === undefined ? { workerTtlMs: 2_000 } : {};
      const lostAfter = process.env.DROVER_WORKER_LOST_AFTER_MS === undefined && process.env.DROVER_WORKER_TTL_MS === undefined ? { workerLostAfterMs: 6_000 } : {};
      // Every replica of the demo serves its debug page on a free port (printed below) unless DROVER_HTTP_PORT is set.
      const httpPort = process.env.DROVER_HTTP_PORT === undefined ? { httpPort: 0 } : {};
      const config = loadConfig(process.env, { redisUrl, natsUrl, prefix, replicaId: `demo-replica-${i + 1}`, ...workerTtlMs, ...lostAfter, ...httpPort });
      replicas.push(await Replica.start(config, log));
    }
    out.write(`started ${replicas.length} replica(s) holding ${replicas.reduce((n, r) => n + r.servedShards().length, 0)} ` +
      `of ${replicas[0]!.config.shards} shards\n`);
    for (const replica of replicas) {
      const http = replica.httpAddress();
      if (http !== null) out.write(`  ${replica.config.replicaId}: debug page ${http.url}, metrics http://${http.host}:${http.port}/metrics\n`);
    }

    client = await DroverClient.connect(natsUrl, prefix);
    const fleet = demoFleet(options.workers);
    const registering = new Progress('registering workers', fleet.length);
    for (let i = 0; i < fleet.length; i += 1) {
      const reply = await client.registerWorker(fleet[i]!);
      if (!reply.ok) throw new Error(`registering ${fleet[i]!.id}: ${reply.error.code} ${reply.error.message}`);
      registering.update(i + 1);
    }
    registering.done();
    // Capacity summaries are coalesced for a few milliseconds; let the routers hear them.
    await new Promise((r) => setTimeout(r, 100));

    const containers = demoContainers(options.containers);
    const placing = new Progress('placing containers', containers.length);
    const counts = { placed: 0, noCapacity: 0, other: 0 };
    const placedIds: string[] = [];
    const started = performance.now();
    let next = 0;
    const lane = async () => {
      while (next < containers.length) {
        const container = containers[next++]!;
        const reply: PlaceReply = await client!.submit({ ...container, queue: false });
        if (reply.ok) {
          counts.placed += 1;
          placedIds.push(container.id);
        } else if (reply.error.code === 'NO_CAPACITY') counts.noCapacity += 1;
        else counts.other += 1;
        placing.update(counts.placed + counts.noCapacity + counts.other, `placed ${counts.placed}`);
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, lane));
    const placeSeconds = (performance.now() - started) / 1000;
    placing.done(`placed ${counts.placed}`);

    const toRelease = placedIds.filter((_, i) => i % 3 === 0);
    const releasing = new Progress('releasing a third', toRelease.length);
    let released = 0;
    await Promise.all(
      Array.from({ length: options.concurrency }, async (_, lane) => {
        for (let i = lane; i < toRelease.length; i += options.concurrency) {
          const reply = await client!.release(toRelease[i]!);
          if (reply.ok) released += 1;
          releasing.update(released);
        }
      }),
    );
    releasing.done();

    const audit = await auditAccounting(replicas[0]!.store, replicas[0]!.config.shards);
    const stats = replicas.map((r) => r.stats());
    const sum = (pick: (s: (typeof stats)[number]) => number) => stats.reduce((n, s) => n + pick(s), 0);
    const reroutes = sum((s) => s.router.reroutes);
    const versionConflicts = sum((s) => s.owners.versionConflicts);
    const fenceRefusals = sum((s) => s.owners.fenceRefusals);
    const batches = sum((s) => s.owners.batches);
    const committed = sum((s) => s.owners.committedOps);

    out.write('\n');
    out.write(
      renderTable(
        ['result', 'value'],
        [
          ['workers registered', fleet.length],
          ['containers submitted', containers.length],
          ['placed', counts.placed],
          ['refused: NO_CAPACITY', counts.noCapacity],
          ['other errors', counts.other],
          ['released', released],
          ['placement time', `${placeSeconds.toFixed(2)} s`],
          ['placements/s', formatNumber(counts.placed / placeSeconds)],
          ['in flight (clients)', options.concurrency],
          ['conflicts: re-routes', reroutes],
          ['conflicts: version refusals', versionConflicts],
          ['conflicts: fence refusals', fenceRefusals],
          ['Redis commits (batches)', `${batches} for ${committed} writes`],
          ['accounting exact', audit.violations.length === 0 ? `yes (${audit.workers} workers, ${audit.livePlacements} live placements)` : 'NO'],
        ],
      ) + '\n',
    );
    for (const violation of audit.violations.slice(0, 20)) out.write(`  violation: ${violation}\n`);
    const loop = await runLoopDemo({ client, natsUrl, prefix, workerTtlMs: replicas[0]!.config.workerTtlMs, workerLostAfterMs: replicas[0]!.config.workerLostAfterMs, out });
    return audit.violations.length === 0 && counts.other === 0 && loop ? 0 : 1;
  } finally {
    await client?.close().catch(() => undefined);
    await Promise.all(replicas.map((r) => r.stop().catch(() => undefined)));
    await Promise.all(servers.map((s) => s.stop().catch(() => undefined)));
  }
}
