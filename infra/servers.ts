/**
 * Starts private redis-server and nats-server processes on free ports, for tests, the demo and
 * the benchmark. They are the Debian packages' binaries (`infra/setup.sh` installs them), run with
 * this folder's config files; each instance gets its own data directory and can be stopped,
 * killed, paused and restarted on the same port (the chaos suite does all four).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { packageRoot } from '../src/util/package-root.js';

export interface ServerProcess {
  readonly name: 'redis' | 'nats';
  readonly port: number;
  readonly url: string;
  readonly dataDir: string;
  /** SIGTERM and wait for exit. Removes the data directory unless `keepData`. */
  stop(options?: { keepData?: boolean }): Promise<void>;
  /** Send a signal without waiting (SIGKILL, SIGSTOP, SIGCONT). */
  signal(signal: NodeJS.Signals): void;
  /** Start again on the same port with the same data directory (after stop({keepData}) or a kill). */
  restart(): Promise<void>;
  readonly pid: number | undefined;
}

const READY_TIMEOUT_MS = 10_000;

/** Find a binary on PATH or in the sbin directories Debian installs servers to. */
export function findBinary(name: string): string {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/usr/bin', '/usr/local/bin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error(`${name} not found on PATH or in /usr/sbin; run: bash infra/setup.sh`);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** Connect, send `probe` (if any) and resolve once the reply contains `expect`. */
function probeOnce(port: number, probe: string | null, expect: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    let buffer = '';
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.on('error', () => done(false));
    socket.on('data', (chunk) => {
      buffer += chunk.toString();
      if (buffer.includes(expect)) done(true);
    });
    socket.connect(port, '127.0.0.1', () => {
      if (probe !== null) socket.write(probe);
    });
  });
}

async function waitReady(name: string, child: ChildProcess, port: number, probe: string | null, expect: string, stderr: () => string): Promise<void> {
  const started = Date.now();
  while (Date.now() - started < READY_TIMEOUT_MS) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}: ${stderr()}`);
    if (await probeOnce(port, probe, expect)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`${name} did not become ready on port ${port} within ${READY_TIMEOUT_MS} ms: ${stderr()}`);
}

interface Spec {
  readonly name: 'redis' | 'nats';
  readonly binary: string;
  readonly args: (port: number, dataDir: string) => string[];
  readonly probe: string | null;
  readonly expect: string;
  readonly url: (port: number) => string;
}

async function startServer(spec: Spec, requestedPort?: number): Promise<ServerProcess> {
  const port = requestedPort ?? (await freePort());
  const dataDir = mkdtempSync(join(tmpdir(), `drover-${spec.name}-`));
  let child: ChildProcess;
  let output = '';

  const launch = async () => {
    output = '';
    child = spawn(spec.binary, spec.args(port, dataDir), { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-4_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    await waitReady(spec.name, child, port, spec.probe, spec.expect, () => output);
  };
  await launch();

  const exited = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });

  const server: ServerProcess = {
    name: spec.name,
    port,
    url: spec.url(port),
    dataDir,
    get pid() {
      return child.pid;
    },
    async stop(options = {}) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited();
        clearTimeout(timer);
      }
      if (!options.keepData) rmSync(dataDir, { recursive: true, force: true });
    },
    signal(signal) {
      child.kill(signal);
    },
    async restart() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGCONT');
        child.kill('SIGKILL');
        await exited();
      }
      await launch();
    },
  };
  return server;
}

export interface RedisServerOptions {
  readonly port?: number;
  /** Append-only file with fsync on every write (the chaos suite restarts Redis and needs it). */
  readonly persistent?: boolean;
}

export function startRedis(options: RedisServerOptions = {}): Promise<ServerProcess> {
  const config = join(packageRoot(), 'infra', 'redis.conf');
  return startServer(
    {
      name: 'redis',
      binary: findBinary('redis-server'),
      args: (port, dir) => [
        config,
        '--port', String(port),
        '--bind', '127.0.0.1',
        '--dir', dir,
        '--appendonly', options.persistent ? 'yes' : 'no',
        '--daemonize', 'no',
        '--logfile', '',
      ],
      probe: 'PING\r\n',
      expect: '+PONG',
      url: (port) => `redis://127.0.0.1:${port}`,
    },
    options.port,
  );
}

export interface LocalServers {
  readonly redisUrl: string;
  readonly natsUrl: string;
  /** The servers started here (to stop at the end); empty when both URLs were given. */
  readonly started: ServerProcess[];
}

/**
 * REDIS_URL and NATS_URL when set; otherwise private servers on free ports (the demo, the
 * benchmark and the tests all work this way).
 */
export async function serversFromEnv(env: Record<string, string | undefined> = process.env): Promise<LocalServers> {
  const started: ServerProcess[] = [];
  let redisUrl = env.REDIS_URL;
  let natsUrl = env.NATS_URL;
  try {
    if (redisUrl === undefined || redisUrl === '') {
      const redis = await startRedis();
      started.push(redis);
      redisUrl = redis.url;
    }
    if (natsUrl === undefined || natsUrl === '') {
      const nats = await startNats();
      started.push(nats);
      natsUrl = nats.url;
    }
  } catch (error) {
    await Promise.all(started.map((s) => s.stop()));
    throw error;
  }
  return { redisUrl, natsUrl, started };
}

export interface NatsServerOptions {
  readonly port?: number;
  /** Run with JetStream (default true); false plays a NATS_URL given from outside without it. */
  readonly jetstream?: boolean;
}

export function startNats(options: NatsServerOptions = {}): Promise<ServerProcess> {
  const config = join(packageRoot(), 'infra', 'nats.conf');
  return startServer(
    {
      name: 'nats',
      binary: findBinary('nats-server'),
      // JetStream (the event stream) stores in this instance's own temporary directory.
      args: (port, dir) => options.jetstream === false
        ? ['-c', config, '-a', '127.0.0.1', '-p', String(port), '--js=false']
        : ['-c', config, '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir],
      probe: null,
      expect: 'INFO',
      url: (port) => `nats://127.0.0.1:${port}`,
    },
    options.port,
  );
}
