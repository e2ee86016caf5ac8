/**
 * The `drover` command.
 *
 *   drover replica                      run a replica (REDIS_URL, NATS_URL, DROVER_* configure it)
 *   drover demo [--workers N] [--containers N] [--replicas N] [--concurrency N]
 *   drover chaos [--quick] [--faults LIST] [--mixed N] [--replicas N] [--workers N] [--seed N] [--results FILE] [--logs DIR]
 *   drover status                       every replica's shards, members and counters
 *   drover bench [SCENARIO ...] [--out FILE] [--baseline-seconds N] | --report FILE
 *   drover submit --id ID --cpu M --memory MiB [--gpu TYPE] [--gpu-count N] [--pool P]
 *   drover release --id ID
 *   drover container --id ID
 *   drover workers [list]               table of every worker
 *   drover workers register --id ID --cpu M --memory MiB [--gpu TYPE --gpu-count N] [--pool P]
 *   drover workers get|drain|disable|enable|remove --id ID
 *   drover events [--id ID] [--since TIME | --seq N] [--json]
 *
 * Client commands (status, submit, release, container, workers) talk NATS only (NATS_URL,
 * DROVER_PREFIX) and take `--timeout MS` (default 10000), how long to wait for a reply. They print
 * the JSON reply (or a table) and exit 0 on success; 1 on an error reply, or when there was no
 * reply (NATS unreachable, no replica serving the prefix, timeout: one line on stderr saying which);
 * 2 on a usage error (unknown command or flag, a flag given twice, a stray word, a value that is not
 * a whole number where one is needed).
 */
import { parseArgs } from 'node:util';
import { DroverClient, NoReplicaError, type ContainerSpec, type ReplicaStatus, type Reply, type ResourceSpec, type WaitTarget } from '../client/drover-client.js';
import type { ClusterBacklog } from '../backlog/backlog-report.js';
import { DEFAULT_MAX_WAIT_MS, MAX_MAX_WAIT_MS, MAX_PRIORITY, MIN_PRIORITY } from '../protocol/limits.js';
import { httpHostVar, loadConfig } from '../config.js';
// The demo, the chaos suite and the benchmark are loaded only when asked for, so a replica does
// not carry their modules (HDR histograms, process clusters) in its memory.
import type { FaultName } from '../chaos/run.js';
import type { ScenarioName } from '../bench/scenarios.js';
import { Replica } from '../replica/replica.js';
import { Agent } from '../agent/agent.js';
import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../util/log.js';
import { renderTable } from '../util/table.js';
import { eventsCommand, eventsOptions } from './events-command.js';

const USAGE = `usage:
  drover replica
  drover agent --id ID --cpu MILLICORES --memory MIB [--gpu TYPE --gpu-count N] [--pool NAME]
               [--state-dir DIR] [--stop-grace-ms MS] [--stop-containers-on-exit]
  drover demo [--workers N] [--containers N] [--replicas N] [--concurrency N]
  drover chaos [--quick] [--faults kill,pause,...] [--mixed N] [--replicas N] [--workers N] [--seed N] [--results FILE] [--logs DIR]
  drover status
  drover console [--port N] [--host ADDR]   the cluster's page, collected over NATS (default 127.0.0.1:9469)
  drover charts [--format svg|dot|mermaid|all] [--out DIR]   draw every machine in actors/ (default svg into docs/charts)
  drover bench [seed|scale|million|churn|rebalance|memory|redis-memory|backlog ...] [--out FILE] [--baseline-seconds N]
  drover bench --report FILE          the README's results table from a results file
  drover submit --id ID --cpu MILLICORES --memory MIB [--gpu TYPE] [--gpu-count N] [--pool NAME]
                [--priority N] [--max-wait MS] [--no-queue] [-- COMMAND ARG...]
  drover release --id ID             (a queued container is cancelled; a placed one released)
  drover container --id ID
  drover wait --id ID [--for placed|running|terminal]   (default terminal; --timeout default 1 h)
  drover events [--id ID] [--since TIME | --seq N] [--json]   replay the event stream from a time
                (2026-01-31T12:00:00Z, or 90s/10m/2h/1d ago) or a stream sequence, then follow; Ctrl-C stops
  drover backlog                     depth by pool and shape, oldest age, from every replica
  drover workers [list]
  drover workers register --id ID --cpu MILLICORES --memory MIB [--gpu TYPE --gpu-count N] [--pool NAME]
  drover workers get|drain|disable|enable|remove --id ID
client commands (status, submit, release, container, wait, backlog, workers) also take --timeout MS: how long to
  wait for a reply (default 10000, at most 600000); exit 0 ok, 1 error reply or no reply, 2 usage
environment: NATS_URL, REDIS_URL (replica, demo), DROVER_PREFIX, DROVER_SHARDS, DROVER_REPLICA_ID,
  DROVER_LEASE_TTL_MS, DROVER_HTTP_PORT, DROVER_HTTP_HOST, DROVER_LOG_LEVEL (see README)`;

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
  logs: { type: 'string' },
  out: { type: 'string' },
  report: { type: 'string' },
  'baseline-seconds': { type: 'string' },
  timeout: { type: 'string' },
  priority: { type: 'string' },
  'max-wait': { type: 'string' },
  'no-queue': { type: 'boolean' },
  for: { type: 'string' },
  format: { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  'state-dir': { type: 'string' },
  'stop-grace-ms': { type: 'string' },
  'stop-containers-on-exit': { type: 'boolean' },
  since: { type: 'string' },
  seq: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** tokens: the flags as given, repeats included (values keeps only the last of a repeated flag). */
const PARSE_CONFIG = { options: OPTIONS, allowPositionals: true, strict: true, tokens: true } as const;
type Parsed = ReturnType<typeof parseArgs<typeof PARSE_CONFIG>>;
type Values = Parsed['values'];

/** How long a client command waits for a reply, unless --timeout says otherwise. */
const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_TIMEOUT_MS = 600_000;
/** How long `status` collects replies from replicas when no --timeout is given. */
const STATUS_WINDOW_MS = 500;

/**
 * How many positional words each command takes, its own name included; a command not listed (bench:
 * its scenario names) checks its own. A stray word is refused rather than ignored: it is usually a
 * value whose flag was mistyped or forgotten, and the command would run without it.
 */
const POSITIONAL_LIMITS: Record<string, number> = {
  replica: 1,
  agent: 1,
  demo: 1,
  chaos: 1,
  status: 1,
  charts: 1,
  console: 1,
  submit: 1,
  release: 1,
  container: 1,
  wait: 1,
  events: 1,
  backlog: 1,
  workers: 2,
};

/**
 * parseArgs keeps the last of a repeated flag, so `--id a --id b` would quietly act on b. Either one
 * may be the one the person meant: refuse instead.
 */
function refuseRepeatedFlags(tokens: Parsed['tokens']): void {
  const seen = new Set<string>();
  for (const token of tokens) {
    if (token.kind !== 'option') continue;
    if (seen.has(token.name)) throw new UsageError(`--${token.name} is given more than once`);
    seen.add(token.name);
  }
}

function refuseStrayWords(positionals: string[]): void {
  const [command] = positionals;
  const limit = command === undefined ? undefined : POSITIONAL_LIMITS[command];
  if (limit === undefined || positionals.length <= limit) return;
  const stray = positionals.slice(limit).map((word) => `"${word}"`).join(', ');
  throw new UsageError(`unexpected ${stray} after "${positionals.slice(0, limit).join(' ')}" (values go after their flag, as in --id ID)`);
}

function parse(argv: string[]): Parsed {
  let parsed: Parsed;
  try {
    parsed = parseArgs({ ...PARSE_CONFIG, args: argv });
  } catch (error) {
    // parseArgs's own message names the flag (unknown option, missing value).
    throw new UsageError((error as Error).message);
  }
  refuseRepeatedFlags(parsed.tokens);
  refuseStrayWords(parsed.positionals);
  return parsed;
}

function required(values: Values, name: 'id' | 'cpu' | 'memory'): string {
  const value = values[name];
  if (value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

/** Digits with an optional minus sign: what a person types for a whole number (no 1e3, 0x10, 1.0). */
const WHOLE_NUMBER = /^-?\d+$/;

/**
 * A resource amount as a number. Only its form is checked here: a value that is not a whole number
 * is a usage error (the person typed something else than they meant), while a whole number out of
 * range goes to the replica, which owns the limits and answers INVALID_REQUEST naming them.
 */
function amount(raw: string, name: string, unit: string): number {
  if (!WHOLE_NUMBER.test(raw)) throw new UsageError(`--${name} must be a whole number (${unit}); got "${raw}"`);
  const value = Number(raw);
  // JSON has no Infinity: it would reach the replica as null, which reads as "not given".
  if (!Number.isFinite(value)) throw new UsageError(`--${name} has too many digits; got ${raw.length} characters`);
  return value;
}

/** --id, --cpu, --memory, --gpu, --gpu-count, --pool as a request body. */
function resourceSpec(values: Values): ResourceSpec {
  const gpuCount = values['gpu-count'];
  return {
    id: required(values, 'id'),
    cpu: amount(required(values, 'cpu'), 'cpu', 'millicores'),
    memory: amount(required(values, 'memory'), 'memory', 'MiB'),
    ...(values.gpu !== undefined ? { gpu: values.gpu } : {}),
    ...(gpuCount !== undefined ? { gpuCount: amount(gpuCount, 'gpu-count', 'GPUs') } : {}),
    ...(values.pool !== undefined ? { pool: values.pool } : {}),
  };
}

/** A whole number from `min` to `max` for the CLI's own settings (counts, seconds, milliseconds). */
function boundedInt(raw: string | undefined, fallback: number, name: string, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = WHOLE_NUMBER.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`--${name} must be a whole number from ${min} to ${max}; got "${raw}"`);
  }
  return value;
}

function positiveInt(raw: string | undefined, fallback: number, name: string, max: number): number {
  return boundedInt(raw, fallback, name, 1, max);
}

function wholeNumber(raw: string | undefined, fallback: number, name: string, max: number): number {
  return boundedInt(raw, fallback, name, 0, max);
}

function requestTimeout(values: Values): number {
  return positiveInt(values.timeout, DEFAULT_TIMEOUT_MS, 'timeout', MAX_TIMEOUT_MS);
}

function print(reply: Reply<object>): number {
  process.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
  return reply.ok ? 0 : 1;
}

/**
 * Run a client command. Its flags are checked before connecting, so a usage error is reported as
 * one even when NATS is down. Connecting has its own bound (DEFAULT_CONNECT_TIMEOUT_MS), so a wrong
 * NATS_URL fails within seconds whatever --timeout says.
 */
async function withClient(values: Values, fn: (client: DroverClient) => Promise<number>): Promise<number> {
  const timeoutMs = requestTimeout(values);
  const config = loadConfig();
  const client = await DroverClient.connect(config.natsUrl, config.prefix, timeoutMs, 'drover-cli');
  try {
    return await fn(client);
  } finally {
    // The command's outcome is already decided (and printed); a failed close must not replace it.
    await client.close().catch(() => undefined);
  }
}

const WAIT_TARGETS: readonly WaitTarget[] = ['placed', 'running', 'terminal'];
/** `drover wait` waits this long unless --timeout says otherwise, and at most a day. */
const DEFAULT_WAIT_MS = 3_600_000;
const MAX_WAIT_MS = 86_400_000;

/** Print each status change of a container until it reaches --for; exit 0 then, 1 on timeout or unknown id. */
async function waitCommand(values: Values): Promise<number> {
  const id = required(values, 'id');
  const until = (values.for ?? 'terminal') as WaitTarget;
  if (!WAIT_TARGETS.includes(until)) throw new UsageError(`--for must be one of ${WAIT_TARGETS.join(', ')}; got "${values.for}"`);
  const timeoutMs = positiveInt(values.timeout, DEFAULT_WAIT_MS, 'timeout', MAX_WAIT_MS);
  const config = loadConfig();
  const client = await DroverClient.connect(config.natsUrl, config.prefix, Math.min(timeoutMs, DEFAULT_TIMEOUT_MS), 'drover-cli');
  let lastRead = '';
  try {
    const result = await client.waitFor(id, until, timeoutMs, (event) => {
      process.stderr.write(`${new Date(event.at).toISOString()} ${event.id} ${event.status}${event.workerId ? ` on ${event.workerId}` : ''}${event.reason ? ` (${event.reason})` : ''}${typeof event.seq === 'number' ? ` seq ${event.seq}` : ''}\n`);
    }, {
      onGap: (first, last) => {
        process.stderr.write(`drover wait: missed ${first === last ? `seq ${first}` : `seqs ${first}-${last}`} of ${id}; reading its record again\n`);
      },
      // The first reading says where it starts (later ones, every second, only when they change it).
      onRecord: (container) => {
        const line = `${container.status} (seq ${container.seq})`;
        if (line === lastRead) return;
        lastRead = line;
        process.stderr.write(`drover wait: ${id} is ${line}\n`);
      },
    });
    process.stdout.write(`${JSON.stringify(result.container ?? { id, status: result.status }, null, 2)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`drover wait: ${(error as Error).message}\n`);
    return 1;
  } finally {
    await client.close().catch(() => undefined);
  }
}

function renderBacklog(backlog: ClusterBacklog): string {
  const age = (ms: number | null) => (ms === null ? '-' : `${(ms / 1000).toFixed(1)} s`);
  const lines = [`queued: ${backlog.depth}, oldest ${age(backlog.oldestAgeMs)} (from ${backlog.replicas.map((r) => `${r.replicaId}: ${r.shards} shards`).join(', ') || 'no replica'})`];
  if (backlog.missingShards.length > 0) lines.push(`not reported (not counted): shards ${backlog.missingShards.join(', ')}`);
  if (backlog.pools.length > 0) {
    lines.push('', renderTable(['pool', 'queued', 'oldest'], backlog.pools.map((p) => [p.pool ?? '(none)', p.depth, age(p.oldestAgeMs)])));
    lines.push('', renderTable(['cpu', 'memory', 'gpu', 'pool', 'queued', 'oldest'], backlog.shapes.map((s) => [
      s.cpu, s.memory, s.gpuCount > 0 ? `${s.gpuCount} x ${s.gpu ?? 'any'}` : '-', s.pool ?? '(none)', s.depth, age(s.oldestAgeMs),
    ])));
  }
  return `${lines.join('\n')}\n`;
}

/**
 * A worker machine's agent, until SIGTERM or SIGINT. Its containers keep running when it stops
 * (the next agent on the machine adopts them), unless --stop-containers-on-exit.
 */
async function runAgent(values: Values): Promise<number> {
  const worker = resourceSpec(values);
  const config = loadConfig();
  const log = createLogger(config.logLevel, { role: 'agent', worker: worker.id });
  const stateDir = values['state-dir'] ?? join(homedir(), '.drover', `agent-${worker.id}`);
  const stopGraceMs = positiveInt(values['stop-grace-ms'], 10_000, 'stop-grace-ms', 600_000);
  const agent = await Agent.start({ natsUrl: config.natsUrl, prefix: config.prefix, worker, stateDir, stopGraceMs, log });
  log.info({ stateDir }, 'agent started');
  return new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      log.info({ signal }, 'signal received: agent stopping');
      agent.stop(values['stop-containers-on-exit'] === true).then(() => resolve(0), () => resolve(1));
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    // Refused by Drover while running (another agent took the worker over): it stopped its containers.
    void agent.done.then(resolve);
  });
}

async function runReplica(): Promise<number> {
  const config = loadConfig();
  const log = createLogger(config.logLevel, { role: 'replica' });
  // A bug that escapes every handler is logged loudly, but does not take the shards down with it:
  // every write is fenced, and the leases keep the replica honest about what it owns.
  process.on('unhandledRejection', (reason) => log.error({ err: reason }, 'unhandled rejection'));
  const replica = await Replica.start(config, log);
  return new Promise<number>((resolve) => {
    // Another process took this replica's id while it was paused or cut off: hand over what it
    // still holds and exit 1, so a supervisor sees the failure instead of two processes with one id.
    void replica.fatal.then(() => {
      replica.stop().then(() => resolve(1), () => resolve(1));
    });
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

const WORKER_ACTIONS = ['list', 'register', 'get', 'drain', 'disable', 'enable', 'remove'];

/** "ok", or which link is cut and what the replica did about it (a status reply can still come over NATS while Redis is cut). */
function linkState(status: ReplicaStatus): string {
  const cut = (['nats', 'redis'] as const).filter((link) => status.links?.[link].cut === true).map((link) => (link === 'nats' ? 'NATS' : 'Redis'));
  if (cut.length === 0) return status.steppedOut === true ? 'stepped out' : 'ok';
  return `${cut.join('+')} cut${status.steppedOut === true ? ', stepped out' : ''}${status.routing === false ? ', not routing' : ''}`;
}

async function workersCommand(action: string, values: Values): Promise<number> {
  // Checked before connecting: a typo is a usage error even when NATS is unreachable.
  if (!WORKER_ACTIONS.includes(action)) throw new UsageError(`unknown workers action "${action}"`);
  const spec = action === 'register' ? resourceSpec(values) : null;
  const id = action === 'list' || action === 'register' ? null : required(values, 'id');
  return withClient(values, async (client) => {
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
        return print(await client.registerWorker(spec!));
      case 'get':
        return print(await client.getWorker(id!));
      case 'drain':
        return print(await client.drainWorker(id!));
      case 'disable':
        return print(await client.disableWorker(id!));
      case 'enable':
        return print(await client.enableWorker(id!));
      case 'remove':
        return print(await client.removeWorker(id!));
      default:
        throw new UsageError(`unknown workers action "${action}"`);
    }
  });
}

/**
 * Every replica answers on the status subject, so replies are collected for a while rather than
 * awaited: for STATUS_WINDOW_MS, or for --timeout when it is given (slow or distant replicas).
 */
async function statusCommand(values: Values): Promise<number> {
  const windowMs = values.timeout === undefined ? STATUS_WINDOW_MS : requestTimeout(values);
  return withClient(values, async (client) => {
    const statuses = (await client.clusterStatus(windowMs)).sort((a, b) => a.replicaId.localeCompare(b.replicaId));
    if (statuses.length === 0) throw new NoReplicaError(client.subjects.status, client.subjects.prefix);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(statuses, null, 2)}\n`);
      return 0;
    }
    const rows = statuses.map((s) => [
      s.replicaId, s.shards.length, s.workers, s.members.length, Math.round(s.uptimeMs / 1000), linkState(s),
      s.router.placed ?? 0, s.router.reroutes ?? 0, s.owners.fenceRefusals ?? 0, s.leases.lost ?? 0,
    ]);
    process.stdout.write(`${renderTable(['replica', 'shards', 'workers', 'members', 'up (s)', 'links', 'placed', 're-routes', 'fence refusals', 'leases lost'], rows)}\n`);
    return 0;
  });
}

/** Serve the cluster console until interrupted (Ctrl-C or SIGTERM). */
async function consoleCommand(values: Values): Promise<number> {
  const { DEFAULT_CONSOLE_PORT, startConsole } = await import('../observe/console.js');
  const port = wholeNumber(values.port, DEFAULT_CONSOLE_PORT, 'port', 65_535);
  let host: string;
  try {
    host = httpHostVar(values.host, '--host');
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const config = loadConfig();
  const client = await DroverClient.connect(config.natsUrl, config.prefix, DEFAULT_TIMEOUT_MS, 'drover-console');
  let server;
  try {
    ({ server } = await startConsole(client, host, port));
  } catch (error) {
    await client.close();
    throw new Error(`cannot serve the console on ${host}:${port}: ${(error as Error).message}`);
  }
  const address = server.address!;
  process.stdout.write(`drover console: http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}/debug ` +
    `(cluster of prefix ${config.prefix} over ${config.natsUrl}); Ctrl-C stops it\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.stop();
  await client.close();
  return 0;
}

async function chartsCommand(values: Values): Promise<number> {
  const { CHART_FORMATS, writeCharts } = await import('../charts/charts.js');
  const format = values.format ?? 'svg';
  if (format !== 'all' && !(CHART_FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`unknown chart format "${format}"; known: ${CHART_FORMATS.join(', ')}, all`);
  }
  const formats = format === 'all' ? CHART_FORMATS : [format as (typeof CHART_FORMATS)[number]];
  for (const path of await writeCharts(values.out ?? join('docs', 'charts'), formats)) process.stdout.write(`${path}\n`);
  return 0;
}

async function benchCommand(names: string[], values: Values): Promise<number> {
  if (values.report !== undefined) {
    const { benchMarkdown } = await import('../bench/report.js');
    process.stdout.write(`${benchMarkdown(values.report)}\n`);
    return 0;
  }
  const { runBench } = await import('../bench/run.js');
  const { SCENARIOS, RUN_ONLY_BY_NAME } = await import('../bench/scenarios.js');
  const known = Object.keys(SCENARIOS);
  for (const name of names) if (!known.includes(name)) throw new UsageError(`unknown scenario "${name}"; known: ${known.join(', ')}`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const report = await runBench({
    scenarios: (names.length > 0 ? names : known.filter((name) => !RUN_ONLY_BY_NAME.has(name))) as ScenarioName[],
    outFile: values.out ?? `bench-results-${stamp}.json`,
    baselineSeconds: positiveInt(values['baseline-seconds'], 30, 'baseline-seconds', 3_600),
    out: (line) => process.stdout.write(`${line}\n`),
  });
  return report.scenarios.flatMap((s) => s.rows).every((r) => r.targetMet !== false) ? 0 : 1;
}

/** The chaos run's log directory, created if missing; a path that cannot be a directory is a usage error. */
function makeLogDir(dir: string): string {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (error) {
    throw new UsageError(`--logs ${dir}: ${(error as Error).message}`);
  }
  return dir;
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
    logDir: values.logs === undefined ? null : makeLogDir(values.logs),
    out: (line) => process.stdout.write(`${line}\n`),
  });
  return result.report.violations.length === 0 && result.problems.length === 0 ? 0 : 1;
}

export async function main(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`drover: ${error.message}\n${USAGE}\n`);
      return 2;
    }
    // No reply (DroverUnavailableError) or a failure: the message says what failed and where
    // (NATS, the prefix's replicas, the timeout). One line, no stack.
    process.stderr.write(`drover: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

async function run(allArgs: string[]): Promise<number> {
  // `drover submit ... -- sleep 5`: what follows `--` is the container's command, not flags.
  const dash = allArgs.indexOf('--');
  const argv = dash >= 0 ? allArgs.slice(0, dash) : allArgs;
  const containerCommand = dash >= 0 ? allArgs.slice(dash + 1) : null;
  if (containerCommand !== null && containerCommand.length === 0) throw new UsageError('nothing follows "--"; give the command to run, or leave "--" out');
  const { values, positionals } = parse(argv);
  if (containerCommand !== null && positionals[0] !== 'submit') throw new UsageError('only submit takes a command after "--"');
  const [command, action] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return command === undefined && !values.help ? 2 : 0;
  }
  switch (command) {
    case 'replica':
      return runReplica();
    case 'agent':
      return runAgent(values);
    case 'demo':
      return (await import('../demo/demo.js')).runDemo({
        workers: positiveInt(values.workers, 200, 'workers', 100_000),
        containers: positiveInt(values.containers, 5_000, 'containers', 10_000_000),
        replicas: positiveInt(values.replicas, 1, 'replicas', 16),
        concurrency: positiveInt(values.concurrency, 128, 'concurrency', 10_000),
      });
    case 'chaos':
      return chaosCommand(values);
    case 'bench':
      return benchCommand(positionals.slice(1), values);
    case 'status':
      return statusCommand(values);
    case 'charts':
      return chartsCommand(values);
    case 'console':
      return consoleCommand(values);
    case 'submit': {
      const spec: ContainerSpec = {
        ...resourceSpec(values),
        ...(values.priority !== undefined ? { priority: boundedInt(values.priority, 0, 'priority', MIN_PRIORITY, MAX_PRIORITY) } : {}),
        ...(values['max-wait'] !== undefined ? { maxWaitMs: positiveInt(values['max-wait'], DEFAULT_MAX_WAIT_MS, 'max-wait', MAX_MAX_WAIT_MS) } : {}),
        ...(values['no-queue'] === true ? { queue: false } : {}),
        ...(containerCommand !== null ? { command: containerCommand } : {}),
      };
      return withClient(values, async (client) => print(await client.submit(spec)));
    }
    case 'wait':
      return waitCommand(values);
    case 'events': {
      const options = eventsOptions(values);
      if (typeof options === 'string') throw new UsageError(options);
      const config = loadConfig();
      const client = await DroverClient.connect(config.natsUrl, config.prefix, DEFAULT_TIMEOUT_MS, 'drover-cli');
      try {
        return await eventsCommand(client, options);
      } finally {
        await client.close().catch(() => undefined);
      }
    }
    case 'backlog':
      return withClient(values, async (client) => {
        const reply = await client.backlog();
        if (!reply.ok || values.json === true) return print(reply);
        process.stdout.write(renderBacklog(reply));
        return 0;
      });
    case 'release': {
      const id = required(values, 'id');
      return withClient(values, async (client) => print(await client.release(id)));
    }
    case 'container': {
      const id = required(values, 'id');
      return withClient(values, async (client) => print(await client.getContainer(id)));
    }
    case 'workers':
      return workersCommand(action ?? 'list', values);
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}
