/**
 * Worker agents as real processes (`node bin/drover.js agent ...`) for integration tests: each with
 * its own state directory, killed (with everything it left running) when the test file ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import { natsUrl } from './cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;

export interface AgentProcess {
  readonly child: ChildProcess;
  readonly stateDir: string;
  /** What it printed on stderr so far. */
  stderr(): string;
  /** Resolves with its exit code (or 128 + signal number) when it ends. */
  readonly exited: Promise<number>;
}

export interface StartAgentOptions {
  readonly cpu?: number;
  readonly memory?: number;
  readonly pool?: string;
  readonly stopGraceMs?: number;
}

export type StoredContainer = { pid: number; status: string; exitCode: number | null; fenced?: boolean };

export class AgentProcesses {
  private readonly started: AgentProcess[] = [];
  private readonly stateDirs: string[] = [];

  constructor(private readonly prefix: () => string) {}

  newStateDir(): string {
    const dir = mkdtempSync(join(tmpdir(), 'drover-agent-'));
    this.stateDirs.push(dir);
    return dir;
  }

  start(id: string, stateDir: string, options: StartAgentOptions = {}): AgentProcess {
    const args = [bin, 'agent', '--id', id, '--cpu', String(options.cpu ?? 1_000), '--memory', String(options.memory ?? 1_024),
      '--state-dir', stateDir, '--stop-grace-ms', String(options.stopGraceMs ?? 1_000)];
    if (options.pool !== undefined) args.push('--pool', options.pool);
    const child = spawn(process.execPath, args, {
      env: { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: this.prefix(), DROVER_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal === 'SIGKILL' ? 137 : 143))));
    const agent: AgentProcess = { child, stateDir, stderr: () => stderr, exited };
    this.started.push(agent);
    return agent;
  }

  /** SIGKILL the agent and wait for it (its containers keep running, as when an agent crashes). */
  async kill(agent: AgentProcess): Promise<void> {
    if (agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGKILL');
    await agent.exited;
  }

  /** Kill every agent and every container process any of them left behind; remove the state directories. */
  async cleanUp(): Promise<void> {
    for (const agent of this.started) {
      agent.child.kill('SIGCONT');
      agent.child.kill('SIGKILL');
    }
    await Promise.all(this.started.map((agent) => agent.exited));
    for (const dir of this.stateDirs) {
      for (const { pid } of Object.values(containersOf(dir))) {
        try {
          if (pid > 0) process.kill(-pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

/** The containers an agent's state file lists. */
export function containersOf(stateDir: string): Record<string, StoredContainer> {
  try {
    return (JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as { containers: Record<string, StoredContainer> }).containers;
  } catch {
    return {};
  }
}

/** The agent's incarnation and last report sequence number, from its state file. */
export function identityOf(stateDir: string): { incarnation: string; seq: number } {
  const state = JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as { incarnation: string; seq: number };
  return { incarnation: state.incarnation, seq: state.seq };
}

/**
 * The worker timing of the agent test files: unreachable after 1.5 s of silence, lost after 6 s
 * plus the 1 s margin (the agent fences 5 s after its last answered report, the owner declares the
 * worker lost at 7 s).
 */
export const AGENT_TEST_TIMING = { workerTtlMs: 1_500, workerLostAfterMs: 6_000 } as const;

/** Every container event under `prefix`, in arrival order (subscribed before anything happens). */
export function recordEvents(client: DroverClient, prefix: string): ContainerEvent[] {
  const events: ContainerEvent[] = [];
  client.nc.subscribe(`${prefix}.events.containers.>`, {
    callback: (error, msg) => {
      if (!error) events.push(msg.json<ContainerEvent>());
    },
  });
  return events;
}

export async function containerStatus(client: DroverClient, id: string): Promise<string> {
  const reply = await client.getContainer(id);
  return reply.ok ? reply.container.status : `error ${reply.error.code}`;
}

export async function workerStatus(client: DroverClient, id: string): Promise<string | null> {
  const reply = await client.getWorker(id);
  return reply.ok ? reply.worker.status : null;
}
