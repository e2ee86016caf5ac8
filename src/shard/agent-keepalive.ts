/**
 * Worker agents as one shard's owner sees them: their heartbeats (reports), what each report means
 * for the containers Drover placed on the worker, and the loss of a worker whose agent went silent.
 *
 * A report lists every container the agent runs or ran (and was not told to forget). The owner
 * compares it with what Redis says is on the worker and answers with instructions:
 *   Drover says   the agent says   then
 *   placed        running          placed -> running
 *   placed        exited           -> exited (exit code), capacity freed
 *   placed        nothing          an assignment: start it (with its command and env)
 *   running       exited           -> exited, capacity freed
 *   running       nothing          -> lost (NOT_RUNNING): the agent restarted without it
 *   stopping      running          stop it (again)
 *   stopping      exited/nothing   -> released, capacity freed (the stop is confirmed)
 *   (none/ended)  running          stop it: Drover does not know it, or it ended
 *   (none/ended)  exited           forget it
 * Every change goes through the shard's group commit (fenced, checked against the status Redis
 * holds, so a report racing with a release or another report cannot apply twice).
 *
 * Keepalive: an agent's worker silent for DROVER_WORKER_TTL_MS becomes lost. Its running
 * containers become lost (capacity freed); its stopping ones released; the placed ones it never
 * ran go back to the queue with their priority and queue time (commit_batch op Q, through the
 * shard's requeue outbox to their home shard's backlog). A new owner gives every agent a full TTL
 * from the moment it opened the shard, so a hand-over never loses a worker by itself.
 */
import { TERMINAL_STATUSES } from '../../actors/container-machine.js';
import type { AgentInstructions, ShardOpResult } from '../protocol/shard-messages.js';
import type { AgentReport, AgentContainerReport } from '../protocol/validate.js';
import type { ContainerRecord } from '../store/records.js';
import type { GroupCommit } from './group-commit.js';
import type { ShardOwnerOptions } from './shard-owner.js';
import type { ShardWorkers, WorkerActor } from './shard-workers.js';

/** Instructions of one reply, bounded like the report itself. */
const MAX_INSTRUCTIONS = 1_000;

export interface AgentKeepaliveHost {
  readonly options: ShardOwnerOptions;
  readonly workers: ShardWorkers;
  readonly commits: GroupCommit;
  /** The owner serves the shard (reports are answered, losses are acted on). */
  serving(): boolean;
  /** Move the worker to `available` (its agent reports) or `lost` (it went silent), as the owner's status ops do. */
  setStatus(workerId: string, action: 'activate' | 'lose'): Promise<ShardOpResult> | ShardOpResult;
}

export class AgentKeepalive {
  private readonly lastSeen = new Map<string, number>();
  /** Workers whose loss is being written now (one at a time per worker). */
  private readonly losing = new Set<string>();
  /** Silent workers already dealt with (lost, or disabled so they cannot be): not again until they report. */
  private readonly dealtWith = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly openedAt = Date.now();
  readonly stats = { reports: 0, lost: 0, requeued: 0 };

  constructor(private readonly host: AgentKeepaliveHost) {}

  get heartbeatMs(): number {
    return Math.max(100, Math.floor(this.host.options.workerTtlMs / 3));
  }

  start(): void {
    const every = Math.max(50, Math.floor(this.host.options.workerTtlMs / 4));
    this.timer = setInterval(() => this.check(), every);
    this.timer.unref();
    // Lost workers a previous owner did not finish with (it stopped half-way) are finished now.
    for (const [id, actor] of this.host.workers.entries()) {
      if (actor.getSnapshot().context.spec.agent === true && actor.getSnapshot().value === 'lost') void this.lose(id);
    }
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** An agent's report: note it alive, reconcile its containers, answer what it must do. */
  async report(report: AgentReport): Promise<ShardOpResult> {
    const { workers, options } = this.host;
    const actor = workers.get(report.workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${report.workerId} is not registered; register it first` };
    if (actor.getSnapshot().context.spec.agent !== true) {
      return { ok: false, code: 'CONFLICT', message: `worker ${report.workerId} was registered without an agent` };
    }
    this.stats.reports += 1;
    this.lastSeen.set(report.workerId, Date.now());
    this.dealtWith.delete(report.workerId);
    const status = actor.getSnapshot().value;
    if ((status === 'pending' || status === 'lost') && !this.losing.has(report.workerId)) {
      const activated = await this.host.setStatus(report.workerId, 'activate');
      if (!activated.ok && activated.code === 'UNAVAILABLE') return activated;
    }
    let records: Array<ContainerRecord | null>;
    let ids: string[];
    try {
      ids = await options.store.workerContainerIds(options.shard, report.workerId);
      records = await options.store.readContainers(ids);
    } catch (error) {
      options.redisWrites.fail(error, { shard: options.shard, worker: report.workerId, op: 'agent report (read)' });
      return { ok: false, code: 'UNAVAILABLE', message: 'Redis is unreachable from this replica; report again' };
    }
    const reported = new Map<string, AgentContainerReport>(report.containers.map((c) => [c.id, c]));
    const instructions: { assignments: AgentInstructions['assignments'][number][]; stops: string[]; forget: string[] } = { assignments: [], stops: [], forget: [] };
    const writes: Array<Promise<ShardOpResult>> = [];
    const known = new Set<string>();
    records.forEach((record, index) => {
      const id = ids[index]!;
      known.add(id);
      if (record === null || TERMINAL_STATUSES.has(record.status) || record.status === 'queued') return;
      const said = reported.get(id);
      switch (record.status) {
        case 'placed':
          if (said?.status === 'running') writes.push(this.transition(actor, id, ['placed'], 'running'));
          else if (said?.status === 'exited') writes.push(this.end(actor, id, 'exited', undefined, said.exitCode ?? undefined));
          else if (instructions.assignments.length < MAX_INSTRUCTIONS) instructions.assignments.push(assignment(record));
          break;
        case 'running':
          if (said?.status === 'exited') writes.push(this.end(actor, id, 'exited', undefined, said.exitCode ?? undefined));
          else if (said === undefined) writes.push(this.end(actor, id, 'lost', 'NOT_RUNNING'));
          break;
        case 'stopping':
          if (said?.status === 'running') instructions.stops.push(id);
          else writes.push(this.end(actor, id, 'released', 'RELEASED', said?.exitCode ?? undefined));
          break;
      }
    });
    for (const said of report.containers) {
      if (known.has(said.id)) {
        // Its exit is recorded by the writes above (or was before): the agent may forget it.
        if (said.status === 'exited') instructions.forget.push(said.id);
        continue;
      }
      if (said.status === 'running') instructions.stops.push(said.id);
      else instructions.forget.push(said.id);
    }
    const results = await Promise.all(writes);
    const failed = results.find((result) => !result.ok && result.code === 'UNAVAILABLE');
    if (failed !== undefined) return failed;
    return {
      ok: true,
      agent: {
        assignments: instructions.assignments,
        stops: instructions.stops.slice(0, MAX_INSTRUCTIONS),
        forget: instructions.forget.slice(0, MAX_INSTRUCTIONS),
        heartbeatMs: this.heartbeatMs,
      },
    };
  }

  private transition(actor: WorkerActor, containerId: string, from: ReadonlyArray<'placed' | 'running'>, to: 'running' | 'stopping'): Promise<ShardOpResult> {
    return this.host.commits.enqueue((resolve) => ({ kind: 'transition', actor, containerId, from, to, resolve }));
  }

  private end(actor: WorkerActor, containerId: string, final: 'released' | 'exited' | 'lost', reason?: 'RELEASED' | 'WORKER_LOST' | 'NOT_RUNNING', exitCode?: number): Promise<ShardOpResult> {
    return this.host.commits.enqueue((resolve) => ({ kind: 'release', actor, containerId, final, reason, exitCode, resolve }));
  }

  /** Find agents' workers silent for longer than the TTL and lose them. */
  private check(): void {
    if (!this.host.serving()) return;
    const now = Date.now();
    const ttl = this.host.options.workerTtlMs;
    for (const [id, actor] of this.host.workers.entries()) {
      const snapshot = actor.getSnapshot();
      if (snapshot.context.spec.agent !== true || this.dealtWith.has(id) || this.losing.has(id)) continue;
      const seen = this.lastSeen.get(id) ?? this.openedAt;
      if (now - seen > ttl) void this.lose(id);
    }
  }

  /**
   * The worker's agent went silent: the worker becomes lost and each of its containers ends or
   * goes back to the queue. Safe to repeat: every write checks the status Redis holds.
   */
  private async lose(workerId: string): Promise<void> {
    if (this.losing.has(workerId)) return;
    this.losing.add(workerId);
    const { options, workers } = this.host;
    try {
      const actor = workers.get(workerId);
      if (actor === undefined) return;
      if (actor.getSnapshot().value !== 'lost') {
        const lost = await this.host.setStatus(workerId, 'lose');
        if (!lost.ok && lost.code !== 'CONFLICT') return; // the next check tries again
        if (lost.ok) {
          this.stats.lost += 1;
          options.log.warn({ shard: options.shard, worker: workerId, ttlMs: options.workerTtlMs }, 'worker lost: its agent stopped reporting');
        }
      }
      const ids = await options.store.workerContainerIds(options.shard, workerId);
      const records = await options.store.readContainers(ids);
      const writes: Array<Promise<ShardOpResult>> = [];
      records.forEach((record, index) => {
        if (record === null) return;
        const id = ids[index]!;
        if (record.status === 'placed') {
          this.stats.requeued += 1;
          writes.push(this.host.commits.enqueue((resolve) => ({ kind: 'requeue', actor, containerId: id, resolve })));
        } else if (record.status === 'running') writes.push(this.end(actor, id, 'lost', 'WORKER_LOST'));
        else if (record.status === 'stopping') writes.push(this.end(actor, id, 'released', 'WORKER_LOST'));
      });
      const results = await Promise.all(writes);
      if (results.every((result) => result.ok || result.code === 'CONFLICT')) this.dealtWith.add(workerId);
    } catch (error) {
      options.redisWrites.fail(error, { shard: options.shard, worker: workerId, op: 'worker loss (retried at the next check)' });
    } finally {
      this.losing.delete(workerId);
    }
  }
}

function assignment(record: ContainerRecord): AgentInstructions['assignments'][number] {
  let command: string[] | null = null;
  let env: Record<string, string> | null = null;
  if (record.spec !== '') {
    // Written by Drover from a checked submit (validate.ts), so it parses; a record that does not
    // is run as a placeholder rather than not at all, and the error is the record's.
    try {
      const spec = JSON.parse(record.spec) as { command?: string[] | null; env?: Record<string, string> | null };
      command = spec.command ?? null;
      env = spec.env ?? null;
    } catch {
      command = null;
    }
  }
  return { id: record.id, cpu: record.cpu, memory: record.memory, gpuCount: record.gpuCount, command, env };
}
