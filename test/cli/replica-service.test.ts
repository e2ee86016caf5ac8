/**
 * infra/drover-replica.service, the systemd unit for a replica: systemd-analyze finds nothing wrong
 * with it (where that tool exists), and it runs the installed binary directly so that SIGTERM
 * reaches the replica, gives the graceful hand-over time, and restarts only on failure.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { findBinary } from '../../infra/servers.js';
import { REPLICA_NODE_ARGS } from '../../src/replica/process-cluster.js';

const run = promisify(execFile);
const unitPath = new URL('../../infra/drover-replica.service', import.meta.url).pathname;
const UNIT_NAME = 'drover-replica.service';
const INSTALLED_NODE = '/usr/bin/node';

/** Section name to key to every value given for it (a key may repeat, e.g. Wants=). */
type Unit = Map<string, Map<string, string[]>>;

/** The unit file's sections and keys; comments and blank lines dropped, continuation lines joined. */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | null = null;
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (const [index, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header !== null) {
      section = new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const assignment = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (assignment === null || section === null) throw new Error(`line ${index + 1} is neither a section nor a key: ${line}`);
    const values = section.get(assignment[1]!) ?? [];
    values.push(assignment[2]!.trim());
    section.set(assignment[1]!, values);
  }
  return unit;
}

/** The last value of a key (systemd's rule for single-valued settings), or undefined. */
function setting(unit: Unit, section: string, key: string): string | undefined {
  return unit.get(section)?.get(key)?.at(-1);
}

/** A systemd time span such as "60", "60s", "1min", "1min 30s", in seconds. */
function seconds(span: string): number {
  const units: Record<string, number> = { '': 1, s: 1, sec: 1, m: 60, min: 60, h: 3_600 };
  let total = 0;
  for (const part of span.trim().split(/\s+/)) {
    const match = /^(\d+)([a-z]*)$/.exec(part);
    const factor = match === null ? undefined : units[match[2]!];
    if (match === null || factor === undefined) throw new Error(`not a time span: ${span}`);
    total += Number(match[1]) * factor;
  }
  return total;
}

function systemdAnalyze(): string | null {
  try {
    return findBinary('systemd-analyze');
  } catch {
    return null;
  }
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const unit = parseUnit(readFileSync(unitPath, 'utf8'));

describe('infra/drover-replica.service', () => {
  it('runs the installed entry point with node, not through npx or npm', () => {
    const execStart = setting(unit, 'Service', 'ExecStart');
    expect(execStart).toBeDefined();
    expect(execStart).not.toMatch(/\bnpx\b|\bnpm\b/);
    const [program, ...args] = execStart!.split(/\s+/);
    expect(program).toMatch(/^\/\S*\/node$/);
    // With the node flags every replica runs with (the same list ProcessCluster starts them with).
    expect(args).toEqual([...REPLICA_NODE_ARGS, '/opt/drover/bin/drover.js', 'replica']);
  });

  it('stops with SIGTERM and leaves time for the graceful hand-over', () => {
    expect(setting(unit, 'Service', 'KillSignal')).toBe('SIGTERM');
    expect(['mixed', 'control-group']).toContain(setting(unit, 'Service', 'KillMode'));
    const timeout = setting(unit, 'Service', 'TimeoutStopSec');
    expect(timeout).toBeDefined();
    // At least the default lease TTL (10 s) several times over: in-flight work, then lease releases.
    expect(seconds(timeout!)).toBeGreaterThanOrEqual(30);
  });

  it('restarts on failure only, a few seconds apart, and gives up after repeated failures', () => {
    expect(setting(unit, 'Service', 'Restart')).toBe('on-failure');
    const restartSec = seconds(setting(unit, 'Service', 'RestartSec') ?? '0');
    expect(restartSec).toBeGreaterThanOrEqual(1);
    expect(restartSec).toBeLessThanOrEqual(30);
    expect(Number(setting(unit, 'Unit', 'StartLimitBurst'))).toBeGreaterThan(0);
  });

  it('reads its settings from /etc/drover/replica.env and runs unprivileged', () => {
    expect(setting(unit, 'Service', 'EnvironmentFile')).toBe('/etc/drover/replica.env');
    const user = setting(unit, 'Service', 'User');
    expect(user).toBeDefined();
    expect(user).not.toBe('root');
    expect(setting(unit, 'Service', 'NoNewPrivileges')).toBe('yes');
    expect(setting(unit, 'Service', 'ProtectSystem')).toBe('strict');
    // V8 needs writable executable memory for its compiler; node aborts without it.
    expect(setting(unit, 'Service', 'MemoryDenyWriteExecute') ?? 'no').toBe('no');
    expect(setting(unit, 'Install', 'WantedBy')).toBe('multi-user.target');
  });

  it('passes systemd-analyze verify', async (context) => {
    const analyze = systemdAnalyze();
    if (analyze === null) {
      context.skip('systemd-analyze is not installed; the checks above still ran');
      return;
    }
    // verify checks that ExecStart's program exists: on a machine whose node is not at the
    // installed path, verify a copy that names this node instead (the rest is the same file).
    const dir = mkdtempSync(join(tmpdir(), 'drover-unit-'));
    try {
      const checked = join(dir, UNIT_NAME);
      if (executable(INSTALLED_NODE)) copyFileSync(unitPath, checked);
      else writeFileSync(checked, readFileSync(unitPath, 'utf8').replace(`ExecStart=${INSTALLED_NODE} `, `ExecStart=${process.execPath} `));
      const { stdout, stderr } = await run(analyze, ['verify', checked]).catch((error: { stdout: string; stderr: string }) => {
        throw new Error(`systemd-analyze verify failed:\n${error.stdout}${error.stderr}`);
      });
      // verify exits 0 on an unknown key or a value it cannot parse; it only says so on stderr.
      const complaints = `${stdout}${stderr}`.split('\n').filter((line) => line.includes('drover-replica'));
      expect(complaints).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
