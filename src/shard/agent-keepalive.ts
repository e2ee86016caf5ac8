/**
 * Worker agents as one shard's owner sees them: their reports (heartbeats), what each report means
 * for the containers Drover placed on the worker, and what a silent agent's worker becomes.
 *
 * A report lists every container the agent runs or ran (and was not told to forget). The owner
 * compares it with what Redis says is on the worker and answers with instructions:
 *   Drover says   the agent says   then
 *   placed        running          -> running
 *   placed        exited           -> exited (exit code), capacity freed
 *   placed        nothing          an assignment: marked delivered in Redis first, then sent
 *   unknown       running          -> running (the agent is back; it ran all along)
 *   unknown       exited           -> exited (or lost, when the agent's own fence stopped it)
 *   unknown       nothing          -> lost (NOT_RUNNING): it may have run, so it never runs again
 *   running       exited           -> exited (or lost, when the agent's fence stopped it)
 *   running       nothing          -> lost (NOT_RUNNING): the agent does not run it
 *   stopping      running          stop it (again)
 *   stopping      exited/nothing   -> released, capacity freed (the stop is confirmed)
 *   (none/ended)  running          stop it: Drover does not know it, or it ended
 *   (none/ended)  exited           forget it
 * Every change goes through the shard's group commit (fenced, checked against the status Redis
 * holds, so a report racing with a release or another report cannot apply twice).
 *
 * One worker has one live agent: a report carries the agent's incarnation, recorded on the worker
 * in Redis (commit_batch op A); another incarnation is refused (AGENT_CONFLICT) while the recorded
 * one may still run containers. Reports carry a rising sequence number: an older one than the last
 * seen (a retry that arrived late) is refused, and so is one whose agent stopped waiting for it.
 *
 * A silent agent (see agent-timing.ts for the clocks):
 * - after DROVER_WORKER_TTL_MS its worker is `unreachable` (no new placements); its containers
 *   that may be running (delivered, running) become `unknown`, never started elsewhere; those
 *   never delivered go back to the queue at once (op Q, which Redis refuses for a delivered one);
 * - after DROVER_WORKER_LOST_AFTER_MS plus the margin, when the agent has stopped them itself, the
 *   worker is `lost` and its unknown containers end `lost`; stopping ones end released.
 * A new owner counts every agent's silence from the moment it opened the shard, so a hand-over
 * never makes a worker unreachable or lost by itself.
 */
import { TERMINAL_STATUSES } from '../../actors/container-machine.js';
import { agentTiming, heartbeatMs, type AgentTiming } from '../protocol/agent-timing.js';
import type { AgentInstructions, ShardOpResult } from '../protocol/shard-messages.js';
import type { AgentReport, AgentContainerReport } from '../protocol/validate.js';
import type { ContainerRecord } from '../store/records.js';
import type { TransitionFrom, TransitionTo } from '../store/store.js';
import type { GroupCommit } from './group-commit.js';
import type { ShardOwnerOptions } from './shard-owner.js';
import type { ShardWorkers, WorkerActor } from './shard-workers.js';

/** Instructions of one reply, bounded like the report itself. */
const MAX_INSTRUCTIONS = 1_000;

export interface AgentKeepaliveHost {
  readonly options: ShardOwnerOptions;
  readonly workers: ShardWorkers;
  readonly commits: GroupCommit;
  /** The owner serves the shard (reports are answered, silences are acted on). */
  serving(): boolean;
  /** Move the worker to `available` (its agent reports), `unreachable` or `lost` (it went silent). */
  setStatus(workerId: string, action: 'activate' | 'unreachable' | 'lose'): Promise<ShardOpResult> | ShardOpResult;
}

/** How far the owner has dealt with a worker's silence (reset by its next report). */
type Silence = 'none' | 'unreachable' | 'lost';

/** What the owner knows of one agent, in memory (a new owner starts from nothing). */
interface AgentSeen {
  /** When its last accepted report arrived (or the shard opened), on this process's clock. */
  lastSeen: number;
  /** The incarnation recorded for the worker in Redis, once this owner has seen it. */
  incarnation: string | null;
  /** The highest report sequence number accepted from that incarnation. */
  seq: number;
  silence: Silence;
}

export class AgentKeepalive {
  private readonly seen = new Map<string, AgentSeen>();
  /** Workers whose silence is being written now (one at a time per worker). */
  private readonly acting = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly openedAt = performance.now();
  readonly timing: AgentTiming;
  readonly stats = { reports: 0, staleReports: 0, agentConflicts: 0, unreachable: 0, unknown: 0, lost: 0, requeued: 0 };

  constructor(private readonly host: AgentKeepaliveHost) {
    this.timing = agentTiming(host.options.workerTtlMs, host.options.workerLostAfterMs);
  }

  get heartbeatMs(): number {
    return heartbeatMs(this.timing.ttlMs);
  }

  start(): void {
    const every = Math.max(50, Math.floor(this.timing.ttlMs / 4));
    this.timer = setInterval(() => this.check(), every);
    this.timer.unref();
    // A worker a previous owner declared lost but did not finish with (it stopped half-way): its
    // agent fenced itself long ago, so what is left of it ends now, not a whole lost-after later.
    for (const [id, actor] of this.host.workers.entries()) {
      if (actor.getSnapshot().context.spec.agent === true && actor.getSnapshot().value === 'lost') void this.act(id, this.agentSeen(id), 'lost');
    }
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private agentSeen(workerId: string): AgentSeen {
    let seen = this.seen.get(workerId);
    if (seen === undefined) {
      seen = { lastSeen: this.openedAt, incarnation: null, seq: 0, silence: 'none' };
      this.seen.set(workerId, seen);
    }
    return seen;
  }

  /** An agent's report: check who sends it, note it alive, reconcile its containers, answer what to do. */
  async report(report: AgentReport, deadline: number): Promise<ShardOpResult> {
    const { workers } = this.host;
    const actor = workers.get(report.workerId);
    if (actor === undefined) return { ok: false, code: 'NOT_FOUND', message: `worker ${report.workerId} is not registered; register it first` };
    if (actor.getSnapshot().context.spec.agent !== true) {
      return { ok: false, code: 'CONFLICT', message: `worker ${report.workerId} was registered without an agent` };
    }
    // Its agent stopped waiting: acting on it now could undo what a newer report said.
    if (deadline > 0 && Date.now() > deadline) {
      this.stats.staleReports += 1;
      return { ok: false, code: 'CONFLICT', message: `report ${report.seq} of worker ${report.workerId} arrived after its deadline; not acted on` };
    }
    const seen = this.agentSeen(report.workerId);
    if (seen.incarnation !== report.incarnation) {
      const silent = performance.now() - seen.lastSeen > this.timing.ttlMs;
      const recorded = await this.host.commits.enqueue((resolve) => ({ kind: 'agent', actor, incarnation: report.incarnation, silent, resolve }));
      if (!recorded.ok) {
        if (recorded.code === 'AGENT_CONFLICT') this.stats.agentConflicts += 1;
        return recorded;
      }
      if (seen.incarnation !== report.incarnation) {
        seen.incarnation = report.incarnation;
        seen.seq = 0;
      }
    }
    if (report.seq <= seen.seq) {
      this.stats.staleReports += 1;
      return { ok: false, code: 'CONFLICT', message: `report ${report.seq} of worker ${report.workerId} is older than report ${seen.seq}; not acted on` };
    }
    seen.seq = report.seq;
    seen.lastSeen = performance.now();
    seen.silence = 'none';
    this.stats.reports += 1;
    return this.reconcile(actor, report);
  }

  private async reconcile(actor: WorkerActor, report: AgentReport): Promise<ShardOpResult> {
    const { options } = this.host;
    const status = actor.getSnapshot().value;
    if ((status === 'pending' || status === 'lost' || status === 'unreachable') && !this.acting.has(report.workerId)) {
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
    const stops: string[] = [];
    const forget: string[] = [];
    const writes: Array<Promise<ShardOpResult>> = [];
    /** Assignments, each sent only once Redis marked it delivered. */
    const deliveries: Array<Promise<AgentInstructions['assignments'][number] | null>> = [];
    const known = new Set<string>();
    records.forEach((record, index) => {
      const id = ids[index]!;
      known.add(id);
      if (record === null || TERMINAL_STATUSES.has(record.status) || record.status === 'queued') return;
      const said = reported.get(id);
      if (said?.status === 'exited' && record.status !== 'stopping') {
        writes.push(said.fenced ? this.end(actor, id, 'lost', 'WORKER_LOST', said.exitCode ?? undefined) : this.end(actor, id, 'exited', undefined, said.exitCode ?? undefined));
        return;
      }
      switch (record.status) {
        case 'placed':
          if (said?.status === 'running') writes.push(this.transition(actor, id, ['placed'], 'running'));
          else if (deliveries.length < MAX_INSTRUCTIONS) deliveries.push(this.deliver(actor, record, report.incarnation));
          break;
        case 'unknown':
        case 'running':
          if (said?.status === 'running') {
            if (record.status === 'unknown') writes.push(this.transition(actor, id, ['unknown'], 'running'));
          } else writes.push(this.end(actor, id, 'lost', 'NOT_RUNNING'));
          break;
        case 'stopping':
          if (said?.status === 'running') stops.push(id);
          else writes.push(this.end(actor, id, 'released', 'RELEASED', said?.exitCode ?? undefined));
          break;
      }
    });
    for (const said of report.containers) {
      if (known.has(said.id)) {
        // Its exit is recorded by the writes above (or was before): the agent may forget it.
        if (said.status === 'exited') forget.push(said.id);
        continue;
      }
      if (said.status === 'running') stops.push(said.id);
      else forget.push(said.id);
    }
    const [results, delivered] = await Promise.all([Promise.all(writes), Promise.all(deliveries)]);
    const failed = results.find((result) => !result.ok && result.code === 'UNAVAILABLE');
    if (failed !== undefined) return failed;
    const { timing } = this;
    return {
      ok: true,
      agent: {
        assignments: delivered.filter((assignment) => assignment !== null),
        stops: stops.slice(0, MAX_INSTRUCTIONS),
        forget: forget.slice(0, MAX_INSTRUCTIONS),
        heartbeatMs: this.heartbeatMs,
        seq: report.seq,
        ttlMs: timing.ttlMs,
        lostAfterMs: timing.lostAfterMs,
        fenceAfterMs: timing.fenceAfterMs,
      },
    };
  }

  /** Mark the container delivered in Redis, then hand out its assignment; null when Redis refused. */
  private async deliver(actor: WorkerActor, record: ContainerRecord, incarnation: string): Promise<AgentInstructions['assignments'][number] | null> {
    const delivered = await this.host.commits.enqueue((resolve) => ({ kind: 'deliver', actor, containerId: record.id, incarnation, resolve }));
    return delivered.ok ? assignment(record) : null;
  }

  private transition(actor: WorkerActor, containerId: string, from: readonly TransitionFrom[], to: TransitionTo): Promise<ShardOpResult> {
    return this.host.commits.enqueue((resolve) => ({ kind: 'transition', actor, containerId, from, to, resolve }));
  }

  private end(actor: WorkerActor, containerId: string, final: 'released' | 'exited' | 'lost', reason?: 'RELEASED' | 'WORKER_LOST' | 'NOT_RUNNING', exitCode?: number): Promise<ShardOpResult> {
    return this.host.commits.enqueue((resolve) => ({ kind: 'release', actor, containerId, final, reason, exitCode, resolve }));
  }

  /** Find agents silent for longer than the TTL, or than the lost-after time, and act on it. */
  private check(): void {
    if (!this.host.serving()) return;
    const now = performance.now();
    for (const [id, actor] of this.host.workers.entries()) {
      if (actor.getSnapshot().context.spec.agent !== true || this.acting.has(id)) continue;
      const seen = this.agentSeen(id);
      const silentFor = now - seen.lastSeen;
      if (silentFor > this.timing.declareLostAfterMs) {
        if (seen.silence !== 'lost') void this.act(id, seen, 'lost');
      } else if (silentFor > this.timing.ttlMs && seen.silence === 'none') {
        void this.act(id, seen, 'unreachable');
      }
    }
  }

  /**
   * Write what the silence means, for the worker and each of its containers. Safe to repeat: every
   * write checks the status Redis holds; done (not again until the agent reports) once all landed.
   */
  private async act(workerId: string, seen: AgentSeen, silence: Exclude<Silence, 'none'>): Promise<void> {
    this.acting.add(workerId);
    const { options, workers } = this.host;
    try {
      const actor = workers.get(workerId);
      if (actor === undefined) return;
      const status = actor.getSnapshot().value;
      if (silence === 'lost' && status !== 'lost') {
        const lost = await this.host.setStatus(workerId, 'lose');
        if (!lost.ok && lost.code !== 'CONFLICT') return; // the next check tries again
        if (lost.ok) {
          this.stats.lost += 1;
          options.log.warn({ shard: options.shard, worker: workerId, lostAfterMs: this.timing.declareLostAfterMs }, 'worker lost: its agent stopped reporting');
        }
      } else if (silence === 'unreachable' && status === 'available') {
        const unreachable = await this.host.setStatus(workerId, 'unreachable');
        if (!unreachable.ok && unreachable.code !== 'CONFLICT') return;
        if (unreachable.ok) {
          this.stats.unreachable += 1;
          options.log.warn({ shard: options.shard, worker: workerId, ttlMs: this.timing.ttlMs }, 'worker unreachable: its agent stopped reporting');
        }
      }
      const ids = await options.store.workerContainerIds(options.shard, workerId);
      const records = await options.store.readContainers(ids);
      const writes: Array<Promise<ShardOpResult>> = [];
      for (const record of records) {
        if (record === null) continue;
        const write = silence === 'lost' ? this.loseContainer(actor, record) : this.unreachableContainer(actor, record);
        if (write !== null) writes.push(write);
      }
      const results = await Promise.all(writes);
      if (results.every((result) => result.ok || result.code === 'CONFLICT')) seen.silence = silence;
    } catch (error) {
      options.redisWrites.fail(error, { shard: options.shard, worker: workerId, op: `worker ${silence} (retried at the next check)` });
    } finally {
      this.acting.delete(workerId);
    }
  }

  /** A placement never delivered to the agent cannot be running: back to the queue (null otherwise). */
  private requeueUndelivered(actor: WorkerActor, record: ContainerRecord): Promise<ShardOpResult> | null {
    if (record.status !== 'placed' || (record.deliveredAt ?? null) !== null) return null;
    this.stats.requeued += 1;
    return this.host.commits.enqueue((resolve) => ({ kind: 'requeue', actor, containerId: record.id, resolve }));
  }

  /** The worker is unreachable: what may run becomes unknown; what was never delivered is requeued. */
  private unreachableContainer(actor: WorkerActor, record: ContainerRecord): Promise<ShardOpResult> | null {
    const requeued = this.requeueUndelivered(actor, record);
    if (requeued !== null) return requeued;
    if (record.status === 'placed' || record.status === 'running') {
      this.stats.unknown += 1;
      return this.transition(actor, record.id, [record.status], 'unknown');
    }
    return null;
  }

  /** The worker is lost (its agent has stopped everything by now): nothing of it runs any more. */
  private loseContainer(actor: WorkerActor, record: ContainerRecord): Promise<ShardOpResult> | null {
    const requeued = this.requeueUndelivered(actor, record);
    if (requeued !== null) return requeued;
    if (record.status === 'placed' || record.status === 'running' || record.status === 'unknown') return this.end(actor, record.id, 'lost', 'WORKER_LOST');
    if (record.status === 'stopping') return this.end(actor, record.id, 'released', 'WORKER_LOST');
    return null;
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
