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
 * At most one copy of a container runs, whatever happens to this agent, Drover or the links:
 * - Incarnation: the agent's identity, a token kept in its state directory. A second agent with the
 *   same worker id (another state directory) is refused by Drover (AGENT_CONFLICT) and exits; a
 *   second one on the same state directory is refused by the directory's lock. An agent restarted
 *   on its state directory is the same incarnation and adopts what still runs.
 * - Fence: when no report has completed for `fenceAfterMs` (Drover says how long in each reply),
 *   the agent stops every container and starts nothing until a report completes again, because
 *   Drover will soon declare them lost (see src/protocol/agent-timing.ts).
 * - No stale reply: a report carries a rising sequence number (kept across restarts) and the agent
 *   acts only on the reply to its latest report, and only when that reply came back within the
 *   worker TTL of sending; otherwise (it was paused, the link stalled) it reports again first.
 * - A container is written to the state file as `starting` before its process is spawned, and the
 *   process writes its pid file first thing: an agent killed in between finds it after a restart.
 *
 * Its state (incarnation, sequence, containers, pids, how they ended) is a JSON file in its state
 * directory, written before each report. A restarted agent adopts the processes still running
 * (they were started in their own process groups and survive the agent) and reports the ones that
 * ended meanwhile with the exit code their wrapper recorded.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DroverClient, type WorkerSpecInput } from '../client/drover-client.js';
import type { AgentInstructions } from '../protocol/shard-messages.js';
import type { Logger } from '../util/log.js';
import { StateDirectoryLock } from './state-lock.js';
import { alive, ContainerProcess, exitFile, pidFile, readExitCode, readPid } from './container-process.js';

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
  /** Its process group's id; 0 while `starting` (written before the spawn). */
  pid: number;
  status: 'starting' | 'running' | 'exited';
  exitCode: number | null;
  /** Drover asked to stop it (its end is a release, not an exit of its own). */
  stopping: boolean;
  /** This agent's fence stopped it (no report completed for too long). */
  fenced: boolean;
  startedAt: number;
}

interface StateFile {
  readonly workerId: string;
  readonly incarnation: string;
  /** The last report sequence number sent. */
  readonly seq: number;
  /** Wall-clock ms when the last answered report was sent, and the fence time that answer gave. */
  readonly answeredAt: number | null;
  readonly fenceAfterMs: number | null;
  readonly lostAfterMs: number | null;
  readonly containers: Record<string, ContainerState>;
}

/** Until Drover says how often it wants reports (the first reply does). */
const FIRST_HEARTBEAT_MS = 1_000;
const REGISTER_RETRY_MS = 1_000;
/** Containers this agent runs at once; more assignments are left for the next report. */
const MAX_CONTAINERS = 1_000;
/** How often the fence is checked. */
const FENCE_CHECK_MS = 100;
/** A fence check this late means the process was paused. */
const PAUSE_GAP_MS = 1_000;
/** How long a restarted agent waits for the pid file of a container it was starting when it died. */
const STARTING_PID_WAIT_MS = 1_000;

/** Drover refused this agent for good (another live agent runs the worker): it must exit. */
export class AgentRefusedError extends Error {
  override readonly name = 'AgentRefusedError';
}

export class Agent {
  private readonly containers = new Map<string, ContainerState>();
  private readonly processes = new Map<string, ContainerProcess>();
  private incarnation = `i${randomBytes(12).toString('hex')}`;
  private seq = 0;
  private heartbeatMs = FIRST_HEARTBEAT_MS;
  /** When (monotonic ms) the last answered report was sent; null before the first answer. */
  private answeredSentAt: number | null = null;
  private answeredWallAt: number | null = null;
  private timing: Pick<AgentInstructions, 'lostAfterMs' | 'fenceAfterMs'> | null = null;
  private fenced = false;
  private timer: NodeJS.Timeout | null = null;
  private fenceTimer: NodeJS.Timeout | null = null;
  private reporting = false;
  private reportAgain = false;
  /**
   * Bumped when the agent finds it was paused (its fence check ran late): the answer to a report
   * sent before is ignored, and a new report goes out at once instead of waiting for it.
   */
  private generation = 0;
  private lastTick = performance.now();
  private stopped = false;
  private refusal: AgentRefusedError | null = null;
  private finish: (code: number) => void = () => undefined;
  /** Resolves with the exit code when the agent ended by itself (refused by Drover). */
  readonly done = new Promise<number>((resolve) => (this.finish = resolve));
  readonly stats = { reports: 0, started: 0, stopped: 0, exited: 0, failedReports: 0, staleReplies: 0, fences: 0 };

  private constructor(
    private readonly options: AgentOptions,
    private readonly client: DroverClient,
    private readonly lock: StateDirectoryLock,
  ) {}

  static async start(options: AgentOptions): Promise<Agent> {
    mkdirSync(options.stateDir, { recursive: true });
    const lock = StateDirectoryLock.take(options.stateDir);
    let client: DroverClient;
    try {
      client = await DroverClient.connect(options.natsUrl, options.prefix, 5_000, `drover-agent-${options.worker.id}`);
    } catch (error) {
      lock.release();
      throw error;
    }
    const agent = new Agent(options, client, lock);
    try {
      await agent.restore();
      agent.fenceTimer = setInterval(() => agent.checkFence(), FENCE_CHECK_MS);
      agent.fenceTimer.unref();
      await agent.register();
      client.nc.subscribe(client.subjects.agent(options.worker.id), { callback: () => agent.reportSoon() });
      await client.nc.flush();
      await agent.report();
      if (agent.refusal !== null) throw agent.refusal;
      agent.schedule();
    } catch (error) {
      await agent.stop(agent.refusal !== null);
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
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.fenceTimer !== null) clearInterval(this.fenceTimer);
    if (stopContainers) await this.stopAll(this.options.stopGraceMs, false);
    for (const process_ of this.processes.values()) process_.detach();
    this.save();
    this.lock.release();
    await this.client.close().catch(() => undefined);
  }

  /** Stop every running container and wait (bounded) until they are gone. */
  private async stopAll(graceMs: number, fenced: boolean): Promise<void> {
    for (const [id, process_] of this.processes) {
      const container = this.containers.get(id);
      if (container === undefined || container.status !== 'running') continue;
      container.stopping = true;
      container.fenced = container.fenced || fenced;
      process_.stop(graceMs);
    }
    const deadline = Date.now() + graceMs + 1_000;
    while ([...this.containers.values()].some((c) => c.status === 'running' && alive(c.pid)) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  private get stateFile(): string {
    return join(this.options.stateDir, 'state.json');
  }

  /** Read the state a previous run left, adopting what still runs and noting what ended. */
  private async restore(): Promise<void> {
    let state: StateFile;
    try {
      state = JSON.parse(readFileSync(this.stateFile, 'utf8')) as StateFile;
    } catch {
      return; // first run (or an unreadable file: Drover's next reply reassigns what is placed here)
    }
    if (state.workerId !== this.workerId) {
      throw new Error(`state directory ${this.options.stateDir} belongs to worker ${state.workerId}, not ${this.workerId}`);
    }
    if (typeof state.incarnation === 'string' && state.incarnation !== '') this.incarnation = state.incarnation;
    this.seq = Number.isSafeInteger(state.seq) ? state.seq : 0;
    if (typeof state.answeredAt === 'number' && typeof state.fenceAfterMs === 'number' && typeof state.lostAfterMs === 'number') {
      // Continue the fence clock from the previous run's last answer (wall clock, the only one
      // that survives a restart): an agent down for longer stops what it adopts at once.
      this.answeredSentAt = performance.now() - Math.max(0, Date.now() - state.answeredAt);
      this.answeredWallAt = state.answeredAt;
      this.timing = { lostAfterMs: state.lostAfterMs, fenceAfterMs: state.fenceAfterMs };
    }
    for (const [id, container] of Object.entries(state.containers)) {
      if (container.status === 'starting') {
        const found = await this.findStarted(id);
        if (found === null) continue; // never started: Drover assigns it again
        container.pid = found;
        container.status = 'running';
      }
      container.fenced = container.fenced === true;
      this.containers.set(id, container);
      if (container.status !== 'running') continue;
      if (alive(container.pid)) {
        this.processes.set(id, ContainerProcess.adopt(id, container.pid, this.options.stateDir, (code) => this.exited(id, code)));
      } else {
        this.exited(id, readExitCode(this.options.stateDir, id) ?? 137);
      }
    }
    this.options.log.info({ worker: this.workerId, incarnation: this.incarnation, containers: this.containers.size, adopted: this.processes.size }, 'agent state restored');
  }

  /** The pid of a container that was starting when the previous run died, or null if it never started. */
  private async findStarted(id: string): Promise<number | null> {
    const until = Date.now() + STARTING_PID_WAIT_MS;
    for (;;) {
      const pid = readPid(this.options.stateDir, id);
      if (pid !== null) return pid;
      if (readExitCode(this.options.stateDir, id) !== null || Date.now() >= until) return null;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  private save(): void {
    const state: StateFile = {
      workerId: this.workerId,
      incarnation: this.incarnation,
      seq: this.seq,
      answeredAt: this.answeredWallAt,
      fenceAfterMs: this.timing?.fenceAfterMs ?? null,
      lostAfterMs: this.timing?.lostAfterMs ?? null,
      containers: Object.fromEntries(this.containers),
    };
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

  /**
   * No report answered for `fenceAfterMs`: Drover is about to declare this worker's containers
   * lost, so none may run any more. Stop them all and start nothing until a report completes.
   */
  private checkFence(): void {
    const now = performance.now();
    const gap = now - this.lastTick;
    this.lastTick = now;
    if (!this.stopped && gap > PAUSE_GAP_MS) {
      // This process was paused (SIGSTOP, a stalled VM): whatever is in flight describes the past.
      this.generation += 1;
      this.reporting = false;
      this.options.log.warn({ pausedForMs: Math.round(gap) }, 'woke from a pause: reconciling before acting on anything');
      this.reportSoon();
    }
    if (this.stopped || this.fenced || this.timing === null || this.answeredSentAt === null) return;
    const silentFor = performance.now() - this.answeredSentAt;
    if (silentFor <= this.timing.fenceAfterMs) return;
    this.fenced = true;
    this.stats.fences += 1;
    const running = [...this.containers.values()].filter((c) => c.status === 'running').length;
    this.options.log.error({ silentForMs: Math.round(silentFor), fenceAfterMs: this.timing.fenceAfterMs, running },
      'no report completed for too long: fencing (stopping every container, starting nothing until Drover answers)');
    // The stops must be done before Drover declares the worker lost: SIGKILL within half the margin.
    const marginMs = Math.max(0, this.timing.lostAfterMs - this.timing.fenceAfterMs);
    void this.stopAll(Math.max(1, Math.min(this.options.stopGraceMs, Math.floor(marginMs / 2))), true).then(() => this.save());
  }

  private async report(): Promise<void> {
    if (this.stopped) return;
    if (this.reporting) {
      this.reportAgain = true;
      return;
    }
    this.reporting = true;
    const generation = this.generation;
    try {
      this.seq += 1;
      const seq = this.seq;
      this.save();
      const containers = [...this.containers]
        .filter(([, c]) => c.status !== 'starting')
        .map(([id, c]) =>
          c.status === 'running'
            ? { id, status: 'running' as const }
            : { id, status: 'exited' as const, exitCode: c.exitCode ?? 137, ...(c.fenced ? { fenced: true } : {}) },
        );
      const sentAt = performance.now();
      const sentWallAt = Date.now();
      let reply;
      try {
        reply = await this.client.report(this.workerId, containers, this.incarnation, seq);
      } catch (error) {
        if (generation !== this.generation) return;
        this.stats.failedReports += 1;
        this.options.log.warn({ err: error }, 'report got no answer');
        return;
      }
      if (generation !== this.generation) {
        this.stats.staleReplies += 1;
        return; // sent before a pause: a newer report is out
      }
      this.stats.reports += 1;
      if (!reply.ok) {
        this.stats.failedReports += 1;
        // Not registered (removed, or Redis lost it): register again; the next report reconciles.
        if (reply.error.code === 'NOT_FOUND') await this.register().catch(() => undefined);
        else if (reply.error.code === 'AGENT_CONFLICT') this.refused(reply.error.message);
        else this.options.log.warn({ code: reply.error.code, message: reply.error.message }, 'report refused');
        return;
      }
      // Only the answer to this report, and only while it is fresh: one that took longer than the
      // TTL (this process was paused, the link stalled) may describe a past Drover has moved on
      // from. Report again first.
      const ageMs = performance.now() - sentAt;
      if (reply.seq !== seq || ageMs > reply.ttlMs) {
        this.stats.staleReplies += 1;
        this.options.log.warn({ seq, replySeq: reply.seq, ageMs: Math.round(ageMs), ttlMs: reply.ttlMs }, 'stale reply ignored; reporting again');
        this.reportAgain = true;
        return;
      }
      this.answeredSentAt = sentAt;
      this.answeredWallAt = sentWallAt;
      this.timing = { lostAfterMs: reply.lostAfterMs, fenceAfterMs: reply.fenceAfterMs };
      if (this.fenced) {
        this.fenced = false;
        this.options.log.warn('a report completed again: fence lifted');
      }
      this.follow(reply);
    } finally {
      // A report from before a pause no longer owns the flag: the one sent after the pause does.
      if (generation === this.generation) {
        this.reporting = false;
        if (this.reportAgain && !this.stopped) {
          this.reportAgain = false;
          setImmediate(() => void this.report());
        }
      }
    }
  }

  /** Another live agent runs this worker: stop every container, and end (the process exits non-zero). */
  private refused(message: string): void {
    if (this.refusal !== null) return;
    this.refusal = new AgentRefusedError(`Drover refused this agent (AGENT_CONFLICT): ${message}. Another agent with id ${this.workerId} is running (state directory ${this.options.stateDir}, incarnation ${this.incarnation}); stop it, or wait until its worker is lost`);
    this.options.log.error({ incarnation: this.incarnation }, this.refusal.message);
    // Started already (not refused at its first report): its containers are no longer Drover's.
    if (this.timer !== null) void this.stop(true).then(() => this.finish(1));
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
        rmSync(pidFile(this.options.stateDir, id), { force: true });
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
      if (this.fenced || this.containers.has(assignment.id) || this.containers.size >= MAX_CONTAINERS) continue;
      this.launch(assignment);
      changed = true;
    }
    // Confirm at once what started (running) and what was stopped.
    if (changed) this.reportSoon();
  }

  private launch(assignment: AgentInstructions['assignments'][number]): void {
    const container: ContainerState = { pid: 0, status: 'starting', exitCode: null, stopping: false, fenced: false, startedAt: Date.now() };
    this.containers.set(assignment.id, container);
    // On disk before the process exists: a restart after a crash right here looks for its pid file.
    this.save();
    try {
      const process_ = ContainerProcess.launch(
        { id: assignment.id, workerId: this.workerId, command: assignment.command, env: assignment.env, stateDir: this.options.stateDir },
        (code) => this.exited(assignment.id, code),
      );
      this.processes.set(assignment.id, process_);
      container.pid = process_.pid;
      container.status = 'running';
      this.stats.started += 1;
    } catch (error) {
      this.options.log.error({ err: error, container: assignment.id }, 'container did not start');
      container.status = 'exited';
      container.exitCode = 127;
    }
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
