/**
 * Drover replicas as real OS processes (`node bin/drover.js replica`), for the chaos suite: each
 * can be SIGKILLed, SIGSTOPped and resumed, or stopped with SIGTERM, exactly as in production.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../util/package-root.js';

export interface ReplicaProcessOptions {
  readonly id: string;
  readonly env: Record<string, string>;
  /** Extra node flags (after REPLICA_NODE_ARGS), for example --cpu-prof for profiling under the benchmark. */
  readonly nodeArgs?: readonly string[];
  /** Also append everything the replica logs to this file (the chaos suite's `--logs DIR`). */
  readonly logFile?: string;
}

const START_TIMEOUT_MS = 20_000;

/**
 * Node flags every replica runs with (here, and in infra/drover-replica.service). A replica
 * allocates short-lived objects by the million under load (messages, replies, actor snapshots):
 * a young generation of up to 32 MiB per semi-space (V8's default is 16) halves the scavenges.
 * Measured with `npm run bench -- backlog`, alternating with and without: the drain 6-7 % faster,
 * `scale` 2-3 % faster; RSS under load grows by at most the extra young generation.
 */
export const REPLICA_NODE_ARGS: readonly string[] = ['--max-semi-space-size=32'];

export class ReplicaProcess {
  readonly id: string;
  private readonly child: ChildProcess;
  private logTail = '';
  private readonly logFile: WriteStream | null;
  private startedLine = false;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  paused = false;

  constructor(options: ReplicaProcessOptions) {
    this.id = options.id;
    this.child = spawn(process.execPath, [...REPLICA_NODE_ARGS, ...(options.nodeArgs ?? []), join(packageRoot(), 'bin', 'drover.js'), 'replica'], {
      // Readiness is read from the "replica started" log line, so the level is at least info.
      // Many replicas on one machine: each serves HTTP on a free port unless told otherwise.
      env: { ...process.env, ...options.env, DROVER_HTTP_PORT: options.env.DROVER_HTTP_PORT ?? '0', DROVER_REPLICA_ID: options.id, DROVER_LOG_LEVEL: options.env.DROVER_LOG_LEVEL === 'debug' ? 'debug' : 'info' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.logFile = options.logFile === undefined ? null : createWriteStream(options.logFile, { flags: 'a' });
    // A log file that cannot be written loses the copy, never the replica.
    this.logFile?.on('error', () => undefined);
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.logFile?.write(chunk);
      const text = chunk.toString();
      if (!this.startedLine && text.includes('"replica started"')) this.startedLine = true;
      this.logTail = (this.logTail + text).slice(-20_000);
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => this.logFile?.end());
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The last lines the replica logged (pino JSON), for failure messages. */
  get logs(): string {
    return this.logTail;
  }

  async waitStarted(): Promise<void> {
    const started = Date.now();
    while (!this.startedLine) {
      if (!this.running) throw new Error(`replica ${this.id} exited before starting:\n${this.logTail}`);
      if (Date.now() - started > START_TIMEOUT_MS) throw new Error(`replica ${this.id} did not start in ${START_TIMEOUT_MS} ms:\n${this.logTail}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  signal(signal: NodeJS.Signals): void {
    if (!this.running) return;
    this.child.kill(signal);
    if (signal === 'SIGSTOP') this.paused = true;
    if (signal === 'SIGCONT') this.paused = false;
  }

  /** SIGTERM and wait for the exit code (the graceful path). */
  async terminate(timeoutMs = 30_000): Promise<number | null> {
    if (!this.running) return (await this.exited).code;
    if (this.paused) this.signal('SIGCONT');
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const { code } = await this.exited;
    clearTimeout(timer);
    return code;
  }

  async kill(): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

export class ProcessCluster {
  readonly replicas: ReplicaProcess[] = [];
  private counter = 0;

  /**
   * `envFor`: settings of one replica on top of `env` (the chaos suite gives each replica its own
   * fault proxies to Redis and NATS, so one replica's links can be cut).
   */
  constructor(
    private readonly env: Record<string, string>,
    private readonly nodeArgs: readonly string[] = [],
    private readonly envFor: (replicaId: string) => Promise<Record<string, string>> = async () => ({}),
    /** A directory to write each replica's full log to (`<replica id>.log`); none by default. */
    private readonly logDir: string | null = null,
  ) {}

  /** Start a replica process and wait until it logs that it started. */
  async add(): Promise<ReplicaProcess> {
    this.counter += 1;
    const id = `replica-${this.counter}`;
    const replica = new ReplicaProcess({
      id, env: { ...this.env, ...(await this.envFor(id)) }, nodeArgs: this.nodeArgs,
      ...(this.logDir === null ? {} : { logFile: join(this.logDir, `${id}.log`) }),
    });
    this.replicas.push(replica);
    await replica.waitStarted();
    return replica;
  }

  /** Replicas that are running and not paused. */
  live(): ReplicaProcess[] {
    return this.replicas.filter((r) => r.running && !r.paused);
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.replicas.map((r) => (r.running ? r.terminate(15_000) : Promise.resolve(null))));
  }
}
