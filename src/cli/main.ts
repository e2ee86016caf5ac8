/**
 * The `drover` command.
 *
 *   drover replica                      run a replica (REDIS_URL, NATS_URL, DROVER_* configure it)
 *   drover demo [--workers N] [--containers N] [--replicas N] [--concurrency N]
 *   drover chaos [--quick] [--faults LIST] [--mixed N] [--replicas N] [--workers N] [--seed N] [--results FILE]
 *   drover status                       every replica's shards, members and counters
 *   drover bench [SCENARIO ...] [--out FILE] [--baseline-seconds N] | --report FILE
 *   drover submit --id ID --cpu M --memory MiB [--gpu TYPE] [--gpu-count N] [--pool P]
 *   drover release --id ID
 *   drover container --id ID
 *   drover workers [list]               table of every worker
 *   drover workers register --id ID --cpu M --memory MiB [--gpu TYPE --gpu-count N] [--pool P]
 *   drover workers get|drain|disable|enable --id ID
 *
 * Client commands talk NATS only (NATS_URL, DROVER_PREFIX); they print the JSON reply (or a table)
 * and exit 0 on success, 1 on an error reply, 2 on a usage error.
 */
import { parseArgs } from 'node:util';
import { DroverClient, type Reply, type ResourceSpec } from '../client/drover-client.js';
import { loadConfig } from '../config.js';
// The demo, the chaos suite and the benchmark are loaded only when asked for, so a replica does
// not carry their modules (HDR histograms, process clusters) in its memory.
import type { FaultName } from '../chaos/run.js';
import type { ScenarioName } from '../bench/scenarios.js';
import { Replica } from '../replica/replica.js';
import { createLogger } from '../util/log.js';
import { renderTable } from '../util/table.js';

const USAGE = `usage:
  drover replica
  drover demo [--workers N] [--containers N] [--replicas N] [--concurrency N]
  drover chaos [--quick] [--faults kill,pause,...] [--mixed N] [--replicas N] [--workers N] [--seed N] [--results FILE]
  drover status
  drover bench [seed|scale|million|churn|rebalance|memory ...] [--out FILE] [--baseline-seconds N]
  drover bench --report FILE          the README's results table from a results file
  drover submit --id ID --cpu MILLICORES --memory MIB [--gpu TYPE] [--gpu-count N] [--pool NAME]
  drover release --id ID
  drover container --id ID
  drover workers [list]
  drover workers register --id ID --cpu MILLICORES --memory MIB [--gpu TYPE --gpu-count N] [--pool NAME]
  drover workers get|drain|disable|enable --id ID
environment: NATS_URL, REDIS_URL (replica, demo), DROVER_PREFIX, DROVER_SHARDS, DROVER_REPLICA_ID,
  DROVER_LEASE_TTL_MS, DROVER_LOG_LEVEL (see README)`;

class UsageError extends Error {}

const OPTIONS = {
  id: { type: 'string' },
  cpu: { type: 'string' },
  memory: { type: 'string' },
  gpu: { type: 'string' },
  'gpu-count': { type: 'string' },
  pool: { type: 'string' },
  workers: { type: 'string' },
  containers: { type: 'string' },
  replicas: { type: 'string' },
  concurrency: { type: 'string' },
  json: { type: 'boolean' },
  quick: { type: 'boolean' },
  faults: { type: 'string' },
  mixed: { type: 'string' },
  seed: { type: 'string' },
  results: { type: 'string' },
  out: { type: 'string' },
  report: { type: 'string' },
  'baseline-seconds': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

function required(values: Values, name: 'id' | 'cpu' | 'memory'): string {
  const value = values[name];
  if (value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

/** Numbers are passed through as numbers when they look like numbers; the replica validates them. */
function numeric(raw: string | undefined): number | string | undefined {
  if (raw === undefined) return undefined;
  return /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw;
}

/**
 * --id, --cpu, --memory, --gpu, --gpu-count, --pool as a request body. Values that look like
 * numbers are sent as numbers, anything else as typed, so the replica's validation (not the CLI)
 * says what is wrong.
 */
function resourceSpec(values: Values): ResourceSpec {
  return {
    id: required(values, 'id'),
    cpu: numeric(required(values, 'cpu')) as number,
    memory: numeric(required(values, 'memory')) as number,
    ...(values.gpu !== undefined ? { gpu: values.gpu } : {}),
    ...(values['gpu-count'] !== undefined ? { gpuCount: numeric(values['gpu-count']) as number } : {}),
    ...(values.pool !== undefined ? { pool: values.pool } : {}),
  };
}

function positiveInt(raw: string | undefined, fallback: number, name: string, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 1 || value > max) throw new UsageError(`--${name} must be a whole number from 1 to ${max}`);
  return value;
}

function wholeNumber(raw: string | undefined, fallback: number, name: string, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0 || value > max) throw new UsageError(`--${name} must be a whole number from 0 to ${max}`);
  return value;
}

function print(reply: Reply<object>): number {
  process.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
  return reply.ok ? 0 : 1;
}

async function withClient(fn: (client: DroverClient) => Promise<number>): Promise<number> {
  const config = loadConfig();
  const client = await DroverClient.connect(config.natsUrl, config.prefix);
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}

async function runReplica(): Promise<number> {
  const config = loadConfig();
  const log = createLogger(config.logLevel, { role: 'replica' });
  // A bug that escapes every handler is logged loudly, but does not take the shards down with it:
  // every write is fenced, and the leases keep the replica honest about what it owns.
  process.on('unhandledRejection', (reason) => log.error({ err: reason }, 'unhandled rejection'));
  const replica = await Replica.start(config, log);
  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      signals += 1;
      if (signals > 1) {
        log.warn({ signal }, 'second signal: exiting without hand-over');
        resolve(1);
        return;
      }
      log.info({ signal }, 'signal received: stopping gracefully');
      replica.stop().then(() => resolve(0), (error: unknown) => {
        log.error({ err: error }, 'graceful stop failed');
        resolve(1);
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

async function workersCommand(action: string, values: Values): Promise<number> {
  return withClient(async (client) => {
    switch (action) {
      case 'list': {
        const workers = await client.allWorkers();
        if (values.json) {
          process.stdout.write(`${JSON.stringify(workers, null, 2)}\n`);
          return 0;
        }
        const rows = workers.map((w) => [
          w.id, w.shard, w.status, `${w.freeCpu}/${w.cpu}`, `${w.freeMemory}/${w.memory}`,
          w.gpu === null ? '-' : `${w.freeGpuCount}/${w.gpuCount} ${w.gpu}`, w.pool ?? '-', w.resourceVersion,
        ]);
        process.stdout.write(`${renderTable(['worker', 'shard', 'status', 'free cpu (m)', 'free memory (MiB)', 'free gpu', 'pool', 'version'], rows)}\n`);
        process.stdout.write(`${workers.length} workers\n`);
        return 0;
      }
      case 'register':
        return print(await client.registerWorker(resourceSpec(values)));
      case 'get':
        return print(await client.getWorker(required(values, 'id')));
      case 'drain':
        return print(await client.drainWorker(required(values, 'id')));
      case 'disable':
        return print(await client.disableWorker(required(values, 'id')));
      case 'enable':
        return print(await client.enableWorker(required(values, 'id')));
      default:
        throw new UsageError(`unknown workers action "${action}"`);
    }
  });
}

async function benchCommand(names: string[], values: Values): Promise<number> {
  if (values.report !== undefined) {
    const { benchMarkdown } = await import('../bench/report.js');
    process.stdout.write(`${benchMarkdown(values.report)}\n`);
    return 0;
  }
  const { runBench } = await import('../bench/run.js');
  const { SCENARIOS } = await import('../bench/scenarios.js');
  const known = Object.keys(SCENARIOS);
  for (const name of names) if (!known.includes(name)) throw new UsageError(`unknown scenario "${name}"; known: ${known.join(', ')}`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const report = await runBench({
    scenarios: (names.length > 0 ? names : known) as ScenarioName[],
    outFile: values.out ?? `bench-results-${stamp}.json`,
    baselineSeconds: positiveInt(values['baseline-seconds'], 30, 'baseline-seconds', 3_600),
    out: (line) => process.stdout.write(`${line}\n`),
  });
  return report.scenarios.flatMap((s) => s.rows).every((r) => r.targetMet !== false) ? 0 : 1;
}

async function chaosCommand(values: Values): Promise<number> {
  const { ALL_FAULTS, runChaos } = await import('../chaos/run.js');
  const quick = values.quick === true;
  const faults = (values.faults ?? ALL_FAULTS.join(',')).split(',').filter((f) => f !== '');
  for (const fault of faults) {
    if (!(ALL_FAULTS as readonly string[]).includes(fault)) throw new UsageError(`unknown fault "${fault}"; known: ${ALL_FAULTS.join(', ')}`);
  }
  const mixedFaults = wholeNumber(values.mixed, quick ? 2 : 8, 'mixed', 1_000);
  // A run that injects nothing would say PASS about a cluster that was never disturbed.
  if (faults.length === 0 && mixedFaults === 0) throw new UsageError('nothing to inject: give --faults or a --mixed count above 0');
  const result = await runChaos({
    replicas: positiveInt(values.replicas, 3, 'replicas', 16),
    workers: positiveInt(values.workers, quick ? 200 : 300, 'workers', 100_000),
    shards: quick ? 16 : 32,
    leaseTtlMs: quick ? 1_500 : 2_000,
    scenarios: faults as FaultName[],
    mixedFaults,
    settleMs: quick ? 1_500 : 5_000,
    clients: quick ? 3 : 4,
    lanesPerClient: quick ? 4 : 8,
    seed: positiveInt(values.seed, 1, 'seed', 2 ** 31),
    resultsFile: values.results ?? null,
    out: (line) => process.stdout.write(`${line}\n`),
  });
  return result.report.violations.length === 0 && result.problems.length === 0 ? 0 : 1;
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, action] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return command === undefined && !values.help ? 2 : 0;
  }
  try {
    switch (command) {
      case 'replica':
        return await runReplica();
      case 'demo':
        return await (await import('../demo/demo.js')).runDemo({
          workers: positiveInt(values.workers, 200, 'workers', 100_000),
          containers: positiveInt(values.containers, 5_000, 'containers', 10_000_000),
          replicas: positiveInt(values.replicas, 1, 'replicas', 16),
          concurrency: positiveInt(values.concurrency, 128, 'concurrency', 10_000),
        });
      case 'chaos':
        return await chaosCommand(values);
      case 'bench':
        return await benchCommand(positionals.slice(1), values);
      case 'status':
        return await withClient(async (client) => {
          const statuses = (await client.clusterStatus(500)).sort((a, b) => a.replicaId.localeCompare(b.replicaId));
          if (values.json) {
            process.stdout.write(`${JSON.stringify(statuses, null, 2)}\n`);
            return 0;
          }
          const rows = statuses.map((s) => [
            s.replicaId, s.shards.length, s.workers, s.members.length, Math.round(s.uptimeMs / 1000),
            s.router.placed ?? 0, s.router.reroutes ?? 0, s.owners.fenceRefusals ?? 0, s.leases.lost ?? 0,
          ]);
          process.stdout.write(`${renderTable(['replica', 'shards', 'workers', 'members', 'up (s)', 'placed', 're-routes', 'fence refusals', 'leases lost'], rows)}\n`);
          return statuses.length > 0 ? 0 : 1;
        });
      case 'submit':
        return await withClient(async (client) => print(await client.submit(resourceSpec(values))));
      case 'release':
        return await withClient(async (client) => print(await client.release(required(values, 'id'))));
      case 'container':
        return await withClient(async (client) => print(await client.getContainer(required(values, 'id'))));
      case 'workers':
        return await workersCommand(action ?? 'list', values);
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`${error.message}\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(`drover: ${(error as Error).message}\n`);
    return 1;
  }
}
