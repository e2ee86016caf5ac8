/**
 * Worker agents for the chaos suite: real `drover agent` processes, each with its own state
 * directory, that a fault can SIGKILL and restart (the restarted agent adopts what still runs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../util/package-root.js';

export interface AgentFleetOptions {
  readonly natsUrl: string;
  readonly prefix: string;
  readonly pool: string;
  readonly count: number;
  readonly cpu: number;
  readonly memory: number;
}

export class AgentFleet {
  readonly ids: string[];
  private readonly processes = new Map<string, ChildProcess>();
  private readonly root = mkdtempSync(join(tmpdir(), 'drover-chaos-agents-'));

  constructor(private readonly options: AgentFleetOptions) {
    this.ids = Array.from({ length: options.count }, (_, i) => `chaos-agent-${i}`);
  }

  startAll(): void {
    for (const id of this.ids) this.start(id);
  }

  start(id: string): void {
    const child = spawn(process.execPath, [
      join(packageRoot(), 'bin', 'drover.js'), 'agent', '--id', id, '--cpu', String(this.options.cpu), '--memory', String(this.options.memory),
      '--pool', this.options.pool, '--state-dir', join(this.root, id), '--stop-grace-ms', '500',
    ], {
      env: { ...process.env, NATS_URL: this.options.natsUrl, DROVER_PREFIX: this.options.prefix, DROVER_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'ignore'],
    });
    this.processes.set(id, child);
  }

  /** SIGKILL the agent (its containers keep running, as on a machine whose agent crashed). */
  async kill(id: string): Promise<void> {
    const child = this.processes.get(id);
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  /** Stop every agent, and every container process any of them left behind. */
  async stopAll(): Promise<void> {
    await Promise.all(this.ids.map((id) => this.kill(id)));
    for (const id of this.ids) {
      try {
        const state = JSON.parse(readFileSync(join(this.root, id, 'state.json'), 'utf8')) as { containers: Record<string, { pid: number }> };
        for (const { pid } of Object.values(state.containers)) {
          try {
            process.kill(-pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      } catch {
        // no state written
      }
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}
