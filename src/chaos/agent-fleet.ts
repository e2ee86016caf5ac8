/**
 * Worker agents for the chaos suite: real `drover agent` processes, each with its own state
 * directory and its own TCP fault proxy to NATS, that a fault can SIGKILL and restart on the same
 * state directory (the restarted agent adopts what still runs), freeze and wake (SIGSTOP of the
 * agent alone; its containers keep running), cut off silently, kill together with every container
 * it runs (a machine that dies, back later as a new machine), or shadow with a twin (a second
 * agent with the same worker id, which Drover must refuse).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../util/package-root.js';
import { killWorkerContainers } from './container-processes.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';

export interface AgentFleetOptions {
  readonly natsUrl: string;
  readonly prefix: string;
  readonly pool: string;
  readonly count: number;
  readonly cpu: number;
  readonly memory: number;
}

/** How long a twin agent may take to be refused and exit. */
const TWIN_EXIT_TIMEOUT_MS = 20_000;

export class AgentFleet {
  readonly ids: string[];
  private readonly processes = new Map<string, ChildProcess>();
  private readonly links = new Map<string, FaultProxy>();
  /** Each agent's current state directory (a machine that died comes back with a new one). */
  private readonly stateDirs = new Map<string, string>();
  private readonly root = mkdtempSync(join(tmpdir(), 'drover-chaos-agents-'));
  private generation = 0;

  constructor(private readonly options: AgentFleetOptions) {
    this.ids = Array.from({ length: options.count }, (_, i) => `chaos-agent-${i}`);
  }

  async startAll(): Promise<void> {
    for (const id of this.ids) {
      this.links.set(id, await startFaultProxy({ targetPort: Number(new URL(this.options.natsUrl).port) }));
      this.stateDirs.set(id, this.newStateDir(id));
      this.start(id);
    }
  }

  /** The agent's NATS link (through its fault proxy). */
  link(id: string): FaultProxy {
    return this.links.get(id)!;
  }

  stateDir(id: string): string {
    return this.stateDirs.get(id)!;
  }

  private newStateDir(id: string): string {
    this.generation += 1;
    const dir = join(this.root, `${id}-${this.generation}`);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  private spawnAgent(id: string, stateDir: string, stderr: boolean): ChildProcess {
    return spawn(process.execPath, [
      join(packageRoot(), 'bin', 'drover.js'), 'agent', '--id', id, '--cpu', String(this.options.cpu), '--memory', String(this.options.memory),
      '--pool', this.options.pool, '--state-dir', stateDir, '--stop-grace-ms', '500',
    ], {
      env: { ...process.env, NATS_URL: this.link(id).url('nats'), DROVER_PREFIX: this.options.prefix, DROVER_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', stderr ? 'pipe' : 'ignore'],
    });
  }

  /** Start (or restart) the agent on its current state directory. */
  start(id: string): void {
    this.processes.set(id, this.spawnAgent(id, this.stateDir(id), false));
  }

  /** SIGKILL the agent (its containers keep running, as on a machine whose agent crashed). */
  async kill(id: string): Promise<void> {
    const child = this.processes.get(id);
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exited;
  }

  /** SIGSTOP (true) or SIGCONT (false) the agent alone. */
  freeze(id: string, frozen: boolean): void {
    this.processes.get(id)?.kill(frozen ? 'SIGSTOP' : 'SIGCONT');
  }

  /** The machine dies: its agent and every container process it ran. Its state directory is gone too. */
  async killMachine(id: string): Promise<void> {
    await this.kill(id);
    killContainers(this.stateDir(id));
    killWorkerContainers(id);
  }

  /** The machine comes back as a new one: the same worker id, a new state directory (a new incarnation). */
  startFresh(id: string): void {
    this.stateDirs.set(id, this.newStateDir(id));
    this.start(id);
  }

  /**
   * A second agent with the id of a running one (another state directory): it must be refused and
   * exit non-zero. Resolves with its exit code and what it printed, or null if it kept running.
   */
  async twin(id: string): Promise<{ code: number; stderr: string } | null> {
    const child = this.spawnAgent(id, this.newStateDir(id), true);
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), TWIN_EXIT_TIMEOUT_MS);
      child.once('exit', (exitCode) => {
        clearTimeout(timer);
        resolve(exitCode ?? 1);
      });
    });
    if (code === null) {
      child.kill('SIGKILL');
      return null;
    }
    return { code, stderr };
  }

  /** Stop every agent, and every container process any of them left behind. */
  async stopAll(): Promise<void> {
    for (const link of this.links.values()) link.heal();
    await Promise.all(this.ids.map((id) => this.kill(id)));
    for (const id of this.ids) if (this.stateDirs.has(id)) killContainers(this.stateDir(id));
    await Promise.all([...this.links.values()].map((link) => link.close()));
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** SIGKILL every container process group an agent's state file lists. */
function killContainers(stateDir: string): void {
  try {
    const state = JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as { containers: Record<string, { pid: number }> };
    for (const { pid } of Object.values(state.containers)) {
      try {
        if (pid > 0) process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  } catch {
    // no state written
  }
}
