/**
 * The worker agent: one process per worker machine (`drover agent`). It registers the machine
 * (again after a restart), reports every container it runs or ran as its heartbeat, runs each
 * container it is assigned as a child process with its command and env, and stops what Drover
 * says to stop (SIGTERM, then SIGKILL after a grace period).
 *
 * It talks to Drover only over NATS, through the public subjects: `workers.register` (with
 * `"agent": true`) and `workers.report`. Each report's reply is the whole truth of what to do:
 * start these, stop those, forget these; so a lost message costs one heartbeat, never a container.
 * Drover pokes `<prefix>.agent.<id>` when something changed, and the agent reports at once.
 *
 * Its state (which containers it runs, their pids, how they ended) is a JSON file in its state
 * directory, written before each report. A restarted agent adopts the processes still running
 * (they were started in their own process groups and survive the agent) and reports the ones that
 * ended meanwhile with the exit code their wrapper recorded.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DroverClient, type WorkerSpecInput } from '../client/drover-client.js';
import type { AgentInstructions } from '../protocol/shard-messages.js';
import type { Logger } from '../util/log.js';
import { alive, ContainerProcess, exitFile, readExitCode } from './container-process.js';

export interface AgentOptions {
  readonly natsUrl: string;
  readonly prefix: string;
  readonly worker: WorkerSpecInput;
  readonly stateDir: string;
  /** Between SIGTERM and SIGKILL when a container is stopped. */
  readonly stopGraceMs: number;
  readonly log: Logger;
}

interface ContainerState {
  pid: number;
  status: 'running' | 'exited';
  exitCode: number | null;
  /** Drover asked to stop it (its end is a release, not an exit of its own). */
  stopping: boolean;
  startedAt: number;
}

interface StateFile {
  readonly workerId: string;
  readonly containers: Record<string, ContainerState>;
}

/** Until Drover says how often it wants reports (the first reply does). */
const FIRST_HEARTBEAT_MS = 1_000;
const REGISTER_RETRY_MS = 1_000;
/** Containers this agent runs at once; more assignments are left for the next report. */
const MAX_CONTAINERS = 1_000;

export class Agent {
  private readonly containers = new Map<string, ContainerState>();
  private readonly processes = new Map<string, ContainerProcess>();
  private heartbeatMs = FIRST_HEARTBEAT_MS;
  private timer: NodeJS.Timeout | null = null;
  private reporting = false;
  private reportAgain = false;
  private stopped = false;
  readonly stats = { reports: 0, started: 0, stopped: 0, exited: 0, failedReports: 0 };

  private constructor(
    private readonly options: AgentOptions,
    private readonly client: DroverClient,
  ) {}

  static async start(options: AgentOptions): Promise<Agent> {
    mkdirSync(options.stateDir, { recursive: true });
    const client = await DroverClient.connect(options.natsUrl, options.prefix, 5_000, `drover-agent-${options.worker.id}`);
    const agent = new Agent(options, client);
    try {
      agent.restore();
      await agent.register();
      client.nc.subscribe(client.subjects.agent(options.worker.id), { callback: () => agent.reportSoon() });
      await client.nc.flush();
      await agent.report();
      agent.schedule();
    } catch (error) {
      await agent.stop();
      throw error;
    }
    return agent;
  }

  get workerId(): string {
    return this.options.worker.id;
  }

  /** What the agent runs or ran, as it would report it. */
  snapshot(): Record<string, ContainerState> {
    return Object.fromEntries([...this.containers].map(([id, state]) => [id, { ...state }]));
  }

  /**
   * Stop reporting and leave. Containers keep running (a restarted agent adopts them) unless
   * `stopContainers`: then each is stopped first (SIGTERM, SIGKILL after the grace period).
   */
  async stop(stopContainers = false): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    if (stopContainers) {
      const running = [...this.processes.values()];
      for (const process_ of running) process_.stop(this.options.stopGraceMs);
      const deadline = Date.now() + this.options.stopGraceMs + 1_000;
      while ([...this.containers.values()].some((c) => c.status === 'running' && alive(c.pid)) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    for (const process_ of this.processes.values()) process_.detach();
    this.save();
    await this.client.close().catch(() => undefined);
  }

  private get stateFile(): string {
    return join(this.options.stateDir, 'state.json');
  }

  /** Read the state a previous run left, adopting what still runs and noting what ended. */
  private restore(): void {
    let state: StateFile;
    try {
      state = JSON.parse(readFileSync(this.stateFile, 'utf8')) as StateFile;
    } catch {
      return; // first run (or an unreadable file: Drover's next reply reassigns what is placed here)
    }
    if (state.workerId !== this.workerId) {
      throw new Error(`state directory ${this.options.stateDir} belongs to worker ${state.workerId}, not ${this.workerId}`);
    }
    for (const [id, container] of Object.entries(state.containers)) {
      this.containers.set(id, container);
      if (container.status !== 'running') continue;
      if (alive(container.pid)) {
        this.processes.set(id, ContainerProcess.adopt(id, container.pid, this.options.stateDir, (code) => this.exited(id, code)));
      } else {
        this.exited(id, readExitCode(this.options.stateDir, id) ?? 137);
      }
    }
    this.options.log.info({ worker: this.workerId, containers: this.containers.size, adopted: this.processes.size }, 'agent state restored');
  }

  private save(): void {
    const state: StateFile = { workerId: this.workerId, containers: Object.fromEntries(this.containers) };
    const temporary = `${this.stateFile}.tmp`;
    writeFileSync(temporary, JSON.stringify(state));
    renameSync(temporary, this.stateFile);
  }

  /** Register the machine (idempotent); retried while no replica answers. */
  private async register(): Promise<void> {
    for (;;) {
      if (this.stopped) throw new Error('agent stopped');
      let reply;
      try {
        reply = await this.client.registerWorker({ ...this.options.worker, agent: true });
      } catch (error) {
        this.options.log.warn({ err: error }, 'registration got no answer; retrying');
        await new Promise((resolve) => setTimeout(resolve, REGISTER_RETRY_MS));
        continue;
      }
      if (reply.ok) return;
      if (reply.error.code !== 'UNAVAILABLE') throw new Error(`registration refused: ${reply.error.code} ${reply.error.message}`);
      await new Promise((resolve) => setTimeout(resolve, REGISTER_RETRY_MS));
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.report().finally(() => this.schedule());
    }, this.heartbeatMs);
    this.timer.unref();
  }

  /** Report now (a poke, a start, an exit); one report in flight at a time, the next right after. */
  private reportSoon(): void {
    void this.report();
  }

  private async report(): Promise<void> {
    if (this.stopped) return;
    if (this.reporting) {
      this.reportAgain = true;
      return;
    }
    this.reporting = true;
    try {
      this.save();
      const containers = [...this.containers].map(([id, c]) =>
        c.status === 'running' ? { id, status: 'running' as const } : { id, status: 'exited' as const, exitCode: c.exitCode ?? 137 },
      );
      let reply;
      try {
        reply = await this.client.report(this.workerId, containers);
      } catch (error) {
        this.stats.failedReports += 1;
        this.options.log.warn({ err: error }, 'report got no answer');
        return;
      }
      this.stats.reports += 1;
      if (!reply.ok) {
        this.stats.failedReports += 1;
        // Not registered (removed, or Redis lost it): register again; the next report reconciles.
        if (reply.error.code === 'NOT_FOUND') await this.register().catch(() => undefined);
        else this.options.log.warn({ code: reply.error.code, message: reply.error.message }, 'report refused');
        return;
      }
      this.follow(reply);
    } finally {
      this.reporting = false;
      if (this.reportAgain && !this.stopped) {
        this.reportAgain = false;
        setImmediate(() => void this.report());
      }
    }
  }

  /** Do what the reply says: start the assignments, stop the stops, forget what Drover recorded. */
  private follow(instructions: AgentInstructions): void {
    this.heartbeatMs = instructions.heartbeatMs;
    let changed = false;
    for (const id of instructions.forget) {
      const container = this.containers.get(id);
      if (container !== undefined && container.status === 'exited') {
        this.containers.delete(id);
        rmSync(exitFile(this.options.stateDir, id), { force: true });
        changed = true;
      }
    }
    for (const id of instructions.stops) {
      const container = this.containers.get(id);
      const process_ = this.processes.get(id);
      if (container === undefined || process_ === undefined || container.status !== 'running') continue;
      container.stopping = true;
      this.stats.stopped += 1;
      process_.stop(this.options.stopGraceMs);
      changed = true;
    }
    for (const assignment of instructions.assignments) {
      if (this.containers.has(assignment.id) || this.containers.size >= MAX_CONTAINERS) continue;
      try {
        const process_ = ContainerProcess.launch(
          { id: assignment.id, workerId: this.workerId, command: assignment.command, env: assignment.env, stateDir: this.options.stateDir },
          (code) => this.exited(assignment.id, code),
        );
        this.processes.set(assignment.id, process_);
        this.containers.set(assignment.id, { pid: process_.pid, status: 'running', exitCode: null, stopping: false, startedAt: Date.now() });
        this.stats.started += 1;
        changed = true;
      } catch (error) {
        this.options.log.error({ err: error, container: assignment.id }, 'container did not start');
        this.containers.set(assignment.id, { pid: 0, status: 'exited', exitCode: 127, stopping: false, startedAt: Date.now() });
        changed = true;
      }
    }
    // Confirm at once what started (running) and what was stopped.
    if (changed) this.reportSoon();
  }

  private exited(id: string, exitCode: number): void {
    this.processes.delete(id);
    const container = this.containers.get(id);
    if (container === undefined) return;
    container.status = 'exited';
    container.exitCode = exitCode;
    this.stats.exited += 1;
    if (!this.stopped) this.reportSoon();
  }
}
