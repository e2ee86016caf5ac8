/**
 * The CLI's client commands as a person meets them, run as `node bin/drover.js ...`: a request
 * that gets no reply says why (NATS unreachable, no replica on the prefix, timeout) and exits 1
 * within seconds; a mistyped command line exits 2 naming the flag, before anything is sent; and
 * `workers remove` works against a replica.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../infra/servers.js';
import type { Replica } from '../../src/replica/replica.js';
import { natsUrl, startReplica, testPrefix } from '../support/cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;
/** A command that hangs is killed after this, so a hang shows up as a failed assertion, not a stuck run. */
const KILL_AFTER_MS = 25_000;

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run the CLI with NATS_URL and DROVER_PREFIX set; never rejects, whatever the exit code. */
function cli(env: { natsUrl: string; prefix: string }, ...args: string[]): Promise<Outcome> {
  const started = Date.now();
  const childEnv = { ...process.env, NATS_URL: env.natsUrl, DROVER_PREFIX: env.prefix };
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env: childEnv, timeout: KILL_AFTER_MS }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

describe('no reply: the CLI says what failed and exits 1', () => {
  it('names the NATS URL when nothing listens there, at once', async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const outcome = await cli({ natsUrl: url, prefix: testPrefix('e') }, 'workers', 'get', '--id', 'w1');
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toBe(`drover: cannot reach NATS at ${url}: connection refused\n`);
    expect(outcome.stdout).toBe('');
    expect(outcome.ms).toBeLessThan(5_000);
  });

  describe('a server that accepts the connection but never speaks NATS', () => {
    let silent: Server;
    const sockets: Socket[] = [];
    let url: string;

    beforeAll(async () => {
      silent = createServer((socket) => sockets.push(socket));
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const address = silent.address();
      url = `nats://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
    });
    afterAll(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    });

    // nats.js alone would wait 20 s for the server's INFO; the first connect is bounded at 5 s.
    it('gives up within the connect timeout', async () => {
      const outcome = await cli({ natsUrl: url, prefix: testPrefix('e') }, 'submit', '--id', 'c1', '--cpu', '1', '--memory', '1');
      expect(outcome.code).toBe(1);
      expect(outcome.stderr).toBe(`drover: cannot reach NATS at ${url}: no answer within 5000 ms\n`);
      expect(outcome.ms).toBeLessThan(9_000);
    });
  });

  it('hides the password of a NATS URL', async () => {
    const port = await freePort();
    const outcome = await cli({ natsUrl: `nats://drover:hunter2@127.0.0.1:${port}`, prefix: testPrefix('e') }, 'workers');
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toBe(`drover: cannot reach NATS at nats://***@127.0.0.1:${port}: connection refused\n`);
  });

  it('says no replica serves the prefix when NATS has no responders', async () => {
    const prefix = testPrefix('none');
    const env = { natsUrl: natsUrl(), prefix };
    const get = await cli(env, 'workers', 'get', '--id', 'w1');
    expect(get.code).toBe(1);
    expect(get.stderr).toBe(`drover: no Drover replica answered on ${prefix}.workers.get (is a replica running with DROVER_PREFIX=${prefix}?)\n`);
    expect(get.stdout).toBe('');
    expect(get.ms).toBeLessThan(5_000);
    // status collects replies from every replica rather than awaiting one: none is the same error.
    const status = await cli(env, 'status');
    expect(status.code).toBe(1);
    expect(status.stderr).toBe(`drover: no Drover replica answered on ${prefix}.status (is a replica running with DROVER_PREFIX=${prefix}?)\n`);
  });

  describe('a responder that never answers', () => {
    let nc: NatsConnection;
    const prefix = testPrefix('mute');

    beforeAll(async () => {
      nc = await connect({ servers: natsUrl() });
      nc.subscribe(`${prefix}.release`, { callback: () => undefined });
      await nc.flush();
    });
    afterAll(() => nc.close());

    it('reports the subject and --timeout, and waits no longer than it', async () => {
      const outcome = await cli({ natsUrl: natsUrl(), prefix }, 'release', '--id', 'c1', '--timeout', '300');
      expect(outcome.code).toBe(1);
      expect(outcome.stderr).toBe(`drover: no reply on ${prefix}.release within 300 ms\n`);
      expect(outcome.stdout).toBe('');
      // The default timeout is 10 s: finishing well before it shows --timeout was used.
      expect(outcome.ms).toBeLessThan(5_000);
    });
  });
});

describe('usage errors exit 2 before anything is sent', () => {
  // NATS_URL points where nothing listens: a command line that got as far as connecting would exit 1.
  let env: { natsUrl: string; prefix: string };
  beforeAll(async () => {
    env = { natsUrl: `nats://127.0.0.1:${await freePort()}`, prefix: testPrefix('u') };
  });

  const cases: { name: string; args: string[]; message: string }[] = [
    { name: 'a word for --cpu', args: ['submit', '--id', 'c1', '--cpu', 'abc', '--memory', '1'], message: '--cpu must be a whole number (millicores); got "abc"' },
    { name: 'a fraction with a unit for --memory', args: ['submit', '--id', 'c1', '--cpu', '1', '--memory', '1.5x'], message: '--memory must be a whole number (MiB); got "1.5x"' },
    { name: 'a fraction for --memory', args: ['workers', 'register', '--id', 'w1', '--cpu', '1', '--memory', '1.5'], message: '--memory must be a whole number (MiB); got "1.5"' },
    {
      name: 'a word for --gpu-count',
      args: ['workers', 'register', '--id', 'w1', '--cpu', '1', '--memory', '1', '--gpu', 'a100', '--gpu-count', 'two'],
      message: '--gpu-count must be a whole number (GPUs); got "two"',
    },
    { name: 'a word for --timeout', args: ['workers', '--timeout', 'soon'], message: '--timeout must be a whole number from 1 to 600000; got "soon"' },
    { name: 'zero for --timeout', args: ['release', '--id', 'c1', '--timeout', '0'], message: '--timeout must be a whole number from 1 to 600000; got "0"' },
    { name: 'too long a --timeout', args: ['release', '--id', 'c1', '--timeout', '600001'], message: '--timeout must be a whole number from 1 to 600000; got "600001"' },
    { name: 'a flag given twice', args: ['workers', 'get', '--id', 'a', '--id', 'b'], message: '--id is given more than once' },
    { name: 'a flag given twice, once with =', args: ['submit', '--id=a', '--cpu', '1', '--memory', '1', '--id', 'a'], message: '--id is given more than once' },
    { name: 'a stray word after submit', args: ['submit', 'extra', '--id', 'c1', '--cpu', '1', '--memory', '1'], message: 'unexpected "extra" after "submit"' },
    { name: 'a stray word after workers register', args: ['workers', 'register', 'foo', '--id', 'w1', '--cpu', '1', '--memory', '1'], message: 'unexpected "foo" after "workers register"' },
    { name: 'a stray word after status', args: ['status', 'now'], message: 'unexpected "now" after "status"' },
    { name: 'an unknown command', args: ['frobnicate'], message: 'unknown command "frobnicate"' },
    { name: 'an unknown workers action', args: ['workers', 'evict', '--id', 'w1'], message: 'unknown workers action "evict"' },
    { name: 'an unknown flag', args: ['submit', '--id', 'c1', '--cpu', '1', '--memroy', '1'], message: "Unknown option '--memroy'" },
    { name: 'workers remove without --id', args: ['workers', 'remove'], message: '--id is required' },
  ];

  it.each(cases)('$name', async ({ args, message }) => {
    const outcome = await cli(env, ...args);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toContain(message);
    expect(outcome.stderr.startsWith('drover: ')).toBe(true);
    expect(outcome.stderr).toContain('usage:');
    expect(outcome.stdout).toBe('');
  });

  it('lists workers remove and --timeout in the usage text', async () => {
    const outcome = await cli(env, 'help');
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toContain('drover workers get|drain|disable|enable|remove --id ID');
    expect(outcome.stdout).toContain('--timeout MS');
  });
});

describe('against a replica', () => {
  let replica: Replica;
  let env: { natsUrl: string; prefix: string };

  beforeAll(async () => {
    replica = await startReplica();
    env = { natsUrl: natsUrl(), prefix: replica.config.prefix };
  });
  afterAll(() => replica.stop());

  const json = (outcome: Outcome) => JSON.parse(outcome.stdout) as unknown;

  it('workers remove takes out a drained worker and refuses an available one', async () => {
    expect((await cli(env, 'workers', 'register', '--id', 'gone', '--cpu', '1000', '--memory', '1024')).code).toBe(0);
    expect((await cli(env, 'workers', 'register', '--id', 'busy', '--cpu', '1000', '--memory', '1024')).code).toBe(0);
    expect((await cli(env, 'workers', 'drain', '--id', 'gone')).code).toBe(0);

    const removed = await cli(env, 'workers', 'remove', '--id', 'gone');
    expect(removed.code).toBe(0);
    expect(json(removed)).toEqual({ ok: true, id: 'gone', status: 'removed' });
    const lookup = await cli(env, 'workers', 'get', '--id', 'gone');
    expect(lookup.code).toBe(1);
    expect(json(lookup)).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });

    const refused = await cli(env, 'workers', 'remove', '--id', 'busy');
    expect(refused.code).toBe(1);
    expect(json(refused)).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
  });

  // The CLI checks a number's form; its range is the replica's to judge (and to name in the reply).
  it('sends whole numbers out of range to the replica, which answers INVALID_REQUEST', async () => {
    for (const args of [
      ['submit', '--id', 'c0', '--cpu', '0', '--memory', '1'],
      ['submit', '--id', 'c0', '--cpu=-5', '--memory', '1'],
      ['submit', '--id', 'c0', '--cpu', '1', '--memory', '99999999999999999999999'],
      ['workers', 'register', '--id', 'w0', '--cpu', '1', '--memory', '1', '--gpu', 'a100', '--gpu-count', '65'],
    ]) {
      const outcome = await cli(env, ...args);
      expect(outcome.code, args.join(' ')).toBe(1);
      expect(json(outcome)).toMatchObject({ ok: false, error: { code: 'INVALID_REQUEST' } });
    }
  });

  it('answers within --timeout when the replica is there', async () => {
    const outcome = await cli(env, 'workers', 'get', '--id', 'busy', '--timeout', '5000');
    expect(outcome.code).toBe(0);
    expect(json(outcome)).toMatchObject({ ok: true, worker: { id: 'busy', status: 'available' } });
  });
});
