/**
 * `drover events` and `drover wait` as processes (`node bin/drover.js ...`) against a replica:
 * events replays from a stream sequence or a time and follows live, one line per event (or JSON),
 * for one container or all, and exits 0 on SIGINT; wait notices a gap in a container's seq and reads
 * the record at once. Bad flags and bad DROVER_EVENTS_* values are refused with their names.
 */
import { execFile, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, eventually, natsUrl, startReplica } from '../support/cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;
let replica: Replica;
let client: DroverClient;

function env(): NodeJS.ProcessEnv {
  return { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: replica.config.prefix };
}

function cli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env: env(), timeout: 25_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

/** A long-running CLI process whose output is read as it comes. */
function follow(...args: string[]) {
  const child = spawn(process.execPath, [bin, ...args], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines = () => stdout.split('\n').filter((line) => line !== '');
  return { child, exited, lines, stderr: () => stderr };
}

beforeAll(async () => {
  replica = await startReplica({ shards: 4 });
  client = await connectClient(replica.config.prefix);
  expect((await client.registerWorker({ id: 'ev-w', cpu: 100_000, memory: 100_000 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
});

describe('drover events', () => {
  it('replays from a stream sequence, follows live, and exits 0 on SIGINT', async () => {
    expect(await client.submit({ id: 'ev-1', cpu: 10, memory: 10 })).toMatchObject({ ok: true, status: 'placed' });
    expect(await client.release('ev-1')).toMatchObject({ ok: true });
    const events = follow('events', '--seq', '1');
    try {
      await eventually(() => events.lines().length >= 2, 10_000, 'the two stored events');
      expect(await client.submit({ id: 'ev-2', cpu: 10, memory: 10 })).toMatchObject({ ok: true, status: 'placed' });
      await eventually(() => events.lines().length >= 3, 10_000, 'a live event');
      const lines = events.lines();
      // Each request here commits on its own, so each event is its own log message (#seq.index).
      expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\S+Z  #1\.0  ev-1  placed    seq 1  on ev-w$/);
      expect(lines[1]).toMatch(/  #2\.0  ev-1  released  seq 2  on ev-w \(RELEASED\)$/);
      expect(lines[2]).toMatch(/  #3\.0  ev-2  placed    seq 1  on ev-w$/);
      events.child.kill('SIGINT');
      expect(await events.exited).toBe(0);
    } finally {
      events.child.kill('SIGKILL');
    }
  });

  it('--id and --since: one container, from a time; --json prints the stored event', async () => {
    expect(await client.release('ev-2')).toMatchObject({ ok: true });
    const events = follow('events', '--id', 'ev-2', '--since', '10m', '--json');
    try {
      await eventually(() => events.lines().length >= 2, 10_000, 'ev-2\'s two events');
      const [placed, released] = events.lines().map((line) => JSON.parse(line));
      expect(placed).toMatchObject({ streamSeq: 3, subject: `${replica.config.prefix}.events.containers.ev-2`, event: { id: 'ev-2', status: 'placed', seq: 1, workerId: 'ev-w', at: expect.any(Number) } });
      expect(released).toMatchObject({ event: { id: 'ev-2', status: 'released', seq: 2, reason: 'RELEASED' } });
      events.child.kill('SIGTERM');
      expect(await events.exited).toBe(0);
      expect(events.lines()).toHaveLength(2);
    } finally {
      events.child.kill('SIGKILL');
    }
  });

  const bad: Array<[string[], RegExp]> = [
    [['--seq', '0'], /--seq must be a stream sequence from 1 to 9007199254740991; got "0"/],
    [['--seq', '1.5'], /--seq must be a stream sequence/],
    [['--seq', '99999999999999999'], /--seq must be a stream sequence/],
    [['--since', 'yesterday'], /--since must be a time such as 2026-01-31T12:00:00Z or a duration before now such as 90s, 10m, 2h, 1d; got "yesterday"/],
    [['--since', '2026-01-31'], /--since must be a time/],
    [['--since', '10w'], /--since must be a time/],
    [['--since', '2999-01-01T00:00:00Z'], /--since is in the future: 2999-01-01T00:00:00Z/],
    [['--since', '1m', '--seq', '3'], /--since and --seq both say where to start; give one/],
    [['--id', 'a.b'], /--id must match/],
    [['--id', '>'], /--id must match/],
    [['--seq'], /argument missing/],
    [['stray'], /unexpected "stray" after "events"/],
  ];
  it.each(bad)('refuses %j with exit 2', async (args, message) => {
    const outcome = await cli('events', ...args);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toMatch(message);
    expect(outcome.stdout).toBe('');
  });
});

describe('drover wait notices a gap in seq', () => {
  it('reads the record at once when an event skips seqs, and says which it missed', async () => {
    expect(await client.submit({ id: 'gap-1', cpu: 10, memory: 10 })).toMatchObject({ ok: true, status: 'placed' });
    const wait = follow('wait', '--id', 'gap-1', '--for', 'terminal');
    try {
      // Subscribed first, then the record read: seq 1.
      await eventually(() => wait.stderr().includes('drover wait: gap-1 is placed (seq 1)'), 10_000, 'the wait\'s first reading');
      // The release's event (seq 2) is lost: the record is ended behind the publisher's back,
      // through the shard's own fenced script, and a later event (seq 3, forged here) arrives.
      const worker = await client.getWorker('ev-w');
      if (!worker.ok) throw new Error('ev-w not found');
      const shard = worker.worker.shard;
      const ended = await replica.store.commitBatch(shard, await replica.store.currentEpoch(shard), [
        { kind: 'release', containerId: 'gap-1', workerId: 'ev-w', expectedVersion: worker.worker.resourceVersion },
      ]);
      expect(ended.fenced === false && ended.outcomes[0]).toMatchObject({ code: 'RELEASED', seq: 2 });
      client.nc.publish(client.subjects.containerEvents('gap-1'), JSON.stringify({ id: 'gap-1', status: 'placed', workerId: 'ev-w', seq: 4, at: Date.now() }));
      expect(await wait.exited).toBe(0);
      expect(wait.stderr()).toMatch(/drover wait: missed seqs 2-3 of gap-1; reading its record again/);
      expect(wait.lines().join('\n')).toMatch(/"status": "released"/);
    } finally {
      wait.child.kill('SIGKILL');
    }
  });
});

describe('DROVER_EVENTS_MAX_AGE_S and DROVER_EVENTS_MAX_BYTES', () => {
  it('default to a day and 1 GiB', () => {
    expect(loadConfig({})).toMatchObject({ eventsMaxAgeSeconds: 86_400, eventsMaxBytes: 1_073_741_824 });
    expect(loadConfig({ DROVER_EVENTS_MAX_AGE_S: '60', DROVER_EVENTS_MAX_BYTES: '1024' })).toMatchObject({ eventsMaxAgeSeconds: 60, eventsMaxBytes: 1_024 });
  });

  it.each([
    ['DROVER_EVENTS_MAX_AGE_S', '0', /DROVER_EVENTS_MAX_AGE_S must be a whole number between 1 and 31536000; got "0"/],
    ['DROVER_EVENTS_MAX_AGE_S', '31536001', /DROVER_EVENTS_MAX_AGE_S must be a whole number between 1 and 31536000/],
    ['DROVER_EVENTS_MAX_AGE_S', '1h', /DROVER_EVENTS_MAX_AGE_S must be a whole number/],
    ['DROVER_EVENTS_MAX_BYTES', '1023', /DROVER_EVENTS_MAX_BYTES must be a whole number between 1024 and 1099511627776; got "1023"/],
    ['DROVER_EVENTS_MAX_BYTES', '1099511627777', /DROVER_EVENTS_MAX_BYTES must be a whole number between 1024 and 1099511627776/],
    ['DROVER_EVENTS_MAX_BYTES', '1GB', /DROVER_EVENTS_MAX_BYTES must be a whole number/],
  ])('%s=%s is refused at start-up', (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });
});
