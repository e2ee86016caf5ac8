/**
 * `drover submit` (queued, with a command after `--`), `drover backlog` and `drover wait`, run as
 * `node bin/drover.js ...` against a replica: wait prints each status change and exits 0 when the
 * container gets there, 1 when the time runs out.
 */
import { execFile } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Replica } from '../../src/replica/replica.js';
import { natsUrl, startReplica, testPrefix } from '../support/cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;
let replica: Replica;
let prefix: string;

function cli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env = { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: prefix };
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env, timeout: 25_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

beforeAll(async () => {
  prefix = testPrefix('cb');
  replica = await startReplica({ prefix, shards: 4 });
});

afterAll(async () => {
  await replica.stop();
});

describe('backlog commands', () => {
  it('submit queues, backlog shows it, wait follows it to its end', async () => {
    const submitted = await cli('submit', '--id', 'cli-q1', '--cpu', '500', '--memory', '256', '--pool', 'cli', '--priority', '4', '--', 'sleep', '30');
    expect(submitted.code).toBe(0);
    expect(JSON.parse(submitted.stdout)).toEqual({ ok: true, status: 'queued', id: 'cli-q1' });

    const backlog = await cli('backlog');
    expect(backlog.code).toBe(0);
    expect(backlog.stdout).toMatch(/^queued: 1, oldest \d+\.\d s \(from .*: 4 shards\)/);
    expect(backlog.stdout).toMatch(/\ncli +1 +\d+\.\d s\n/);

    const waitPlaced = cli('wait', '--id', 'cli-q1', '--for', 'placed');
    const waitEnd = cli('wait', '--id', 'cli-q1');
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect((await cli('workers', 'register', '--id', 'cli-w1', '--cpu', '1000', '--memory', '1024', '--pool', 'cli')).code).toBe(0);
    const placed = await waitPlaced;
    expect(placed.code).toBe(0);
    expect(placed.stderr).toMatch(/cli-q1 placed on cli-w1/);
    expect(JSON.parse(placed.stdout)).toMatchObject({ id: 'cli-q1', status: 'placed', workerId: 'cli-w1', priority: 4 });
    expect((await cli('release', '--id', 'cli-q1')).code).toBe(0);
    const ended = await waitEnd;
    expect(ended.code).toBe(0);
    expect(JSON.parse(ended.stdout)).toMatchObject({ id: 'cli-q1', status: 'released', reason: 'RELEASED' });
  });

  it('wait exits 1 when the time runs out, and 2 on a bad --for', async () => {
    expect((await cli('submit', '--id', 'cli-q2', '--cpu', '500', '--memory', '256', '--pool', 'nowhere')).code).toBe(0);
    const timedOut = await cli('wait', '--id', 'cli-q2', '--for', 'running', '--timeout', '500');
    expect(timedOut.code).toBe(1);
    expect(timedOut.stderr).toMatch(/drover wait: .*500 ms/);
    const bad = await cli('wait', '--id', 'cli-q2', '--for', 'soon');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--for must be one of placed, running, terminal/);
    expect((await cli('submit', '--id', 'cli-q3', '--cpu', '1', '--memory', '1', '--')).code).toBe(2);
  });
});
