/**
 * `npm run bench [-- scenario ...] [--out FILE] [--baseline-seconds N]`: starts a private Redis and
 * NATS (unless REDIS_URL / NATS_URL are set), runs the scenarios with progress lines, prints the
 * results table and writes the results as JSON.
 */
import { execFileSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Redis } from 'ioredis';
import { findBinary, serversFromEnv } from '../../infra/servers.js';
import { renderTable } from '../util/table.js';
import { SCENARIOS, type BenchContext, type ResultRow, type ScenarioName, type ScenarioResult } from './scenarios.js';

export interface BenchOptions {
  readonly scenarios: readonly ScenarioName[];
  readonly outFile: string;
  readonly baselineSeconds: number;
  readonly out: (line: string) => void;
}

export interface BenchResults {
  readonly version: 1;
  readonly startedAt: string;
  readonly durationSeconds: number;
  readonly machine: Record<string, string | number>;
  readonly scenarios: ScenarioResult[];
}

function versionOf(binary: string, args: string[]): string {
  try {
    return execFileSync(findBinary(binary), args, { encoding: 'utf8' }).trim().split('\n')[0]!;
  } catch {
    return 'unknown';
  }
}

export function machineDescription(): Record<string, string | number> {
  const cpu = cpus();
  return {
    cpus: cpu.length,
    cpuModel: cpu[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    redis: versionOf('redis-server', ['--version']),
    nats: versionOf('nats-server', ['--version']),
  };
}

const cell = (value: number | null | undefined, digits = 0) => (value === null || value === undefined ? '-' : value.toFixed(digits));

export function resultRows(rows: readonly ResultRow[]): string[][] {
  return rows.map((r) => [
    r.scenario,
    r.system,
    String(r.placements),
    r.seconds === 0 ? '-' : r.seconds < 1 ? `${(r.seconds * 1000).toFixed(1)} ms` : `${r.seconds.toFixed(2)} s`,
    r.placementsPerSecond === 0 ? '-' : String(r.placementsPerSecond),
    cell(r.latency?.p50Ms, 2),
    cell(r.latency?.p99Ms, 2),
    cell(r.latency?.maxMs, 1),
    cell(r.conflictsPerPlacement, r.conflictsPerPlacement !== null && r.conflictsPerPlacement >= 1 ? 1 : 3),
    cell(r.reroutesPerPlacement, 3),
    cell(r.fenceRefusalsPerPlacement, 3),
    cell(r.replicaCpuPercent),
    cell(r.replicaMaxRssMiB),
    cell(r.redisCpuPercent),
    r.target === null ? '' : `${r.target}: ${r.targetMet ? 'met' : 'NOT met'}`,
  ]);
}

export const RESULT_HEADERS = [
  'scenario', 'system', 'placements', 'time', 'per s', 'p50 ms', 'p99 ms', 'max ms', 'conflicts/pl',
  're-routes/pl', 'fence refusals/pl', 'replica CPU %', 'replica RSS MiB', 'Redis CPU %', 'target',
];

export async function runBench(options: BenchOptions): Promise<BenchResults> {
  const out = options.out;
  const started = Date.now();
  // The seed ran against a Redis without persistence; so do both systems here (see README).
  const { redisUrl, natsUrl, started: servers } = await serversFromEnv();
  const machine = machineDescription();
  out(`bench: ${machine.cpus} x ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node ${machine.node}; ${machine.redis}; ${machine.nats}`);
  out(`bench: Redis ${redisUrl}, NATS ${natsUrl}; scenarios: ${options.scenarios.join(', ')}`);
  const ctx: BenchContext = {
    redisUrl,
    natsUrl,
    redisPid: servers.find((s) => s.name === 'redis')?.pid,
    natsPid: servers.find((s) => s.name === 'nats')?.pid,
    baselineSeconds: options.baselineSeconds,
    out,
  };
  const results: ScenarioResult[] = [];
  try {
    for (const name of options.scenarios) {
      out(`\n== ${name}`);
      results.push(await SCENARIOS[name](ctx));
      // Each scenario starts from an empty Redis, so one's data does not slow the next.
      const redis = new Redis(redisUrl);
      if (servers.some((s) => s.name === 'redis')) await redis.flushall();
      redis.disconnect();
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
  const report: BenchResults = {
    version: 1,
    startedAt: new Date(started).toISOString(),
    durationSeconds: Math.round((Date.now() - started) / 1000),
    machine,
    scenarios: results,
  };
  mkdirSync(dirname(options.outFile), { recursive: true });
  writeFileSync(options.outFile, JSON.stringify(report, null, 2));
  out('');
  out(renderTable(RESULT_HEADERS, resultRows(results.flatMap((s) => s.rows))));
  out('');
  for (const row of results.flatMap((s) => s.rows)) if (row.note !== '') out(`${row.scenario} / ${row.system}: ${row.note}`);
  out(`\nbench: results written to ${options.outFile} (${report.durationSeconds} s)`);
  return report;
}
