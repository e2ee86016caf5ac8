/**
 * The chaos suite's eyes on the machine: it samples the container processes that really run
 * (/proc, see container-processes.ts) while faults hit agents, replicas and links, and reports:
 *
 * - running-twice: a container id with two live process groups at once;
 * - runs-elsewhere: a live process of a container whose record puts it on another worker, or on
 *   none (queued again while it still ran: the bug this suite was extended to catch);
 * - terminal-running: a live process of a container whose record has ended, still there a TTL
 *   (plus a second of slack) after its agent could act (a frozen agent cannot: the clock starts
 *   when it is woken).
 */
import type { DroverClient } from '../client/drover-client.js';
import { TERMINAL_STATUSES } from '../../actors/container-machine.js';
import type { Violation } from './checker.js';
import { liveContainerCopies, type ContainerCopy } from './container-processes.js';

/** /proc is read this often. */
const SAMPLE_MS = 200;
/** Records are read every this many samples, for at most this many containers each time. */
const RECORD_EVERY = 3;
const MAX_RECORD_READS = 50;
const SLACK_MS = 1_000;
const MAX_VIOLATIONS_PER_KIND = 20;

export interface ContainerWatchOptions {
  /** Only containers whose ids start with this (the agent load's). */
  readonly idPrefix: string;
  readonly observer: DroverClient;
  /** The worker TTL: how long an agent that can act may take to stop what ended. */
  readonly ttlMs: number;
}

export class ContainerWatch {
  readonly violations: Violation[] = [];
  /** Samples taken and the most copies seen at once, for the report. */
  readonly stats = { samples: 0, recordReads: 0, maxLive: 0 };
  private timer: NodeJS.Timeout | null = null;
  private sampling = false;
  /** Workers whose agent cannot act (frozen), and since when those that woke can. */
  private readonly frozen = new Set<string>();
  private readonly ableSince = new Map<string, number>();
  /** Container ids already reported, per kind (one report per container and kind). */
  private readonly reported = new Set<string>();
  /** When a live process of an ended container was first seen (per process group). */
  private readonly endedButLive = new Map<string, number>();

  constructor(private readonly options: ContainerWatchOptions) {}

  start(): void {
    this.timer = setInterval(() => void this.sample(), SAMPLE_MS);
  }

  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    while (this.sampling) await new Promise((resolve) => setTimeout(resolve, 20));
  }

  /** The agent of `workerId` is frozen (true) or woken (false). */
  agentFrozen(workerId: string, frozen: boolean): void {
    if (frozen) this.frozen.add(workerId);
    else {
      this.frozen.delete(workerId);
      this.ableSince.set(workerId, Date.now());
    }
  }

  /** One sample now (also used at the end, after every container should have ended). */
  async sample(readRecords = false): Promise<ContainerCopy[]> {
    if (this.sampling) return [];
    this.sampling = true;
    try {
      this.stats.samples += 1;
      const copies = liveContainerCopies(this.options.idPrefix);
      this.stats.maxLive = Math.max(this.stats.maxLive, copies.length);
      const byId = new Map<string, ContainerCopy[]>();
      for (const copy of copies) byId.set(copy.containerId, [...(byId.get(copy.containerId) ?? []), copy]);
      for (const [id, list] of byId) {
        if (list.length > 1) {
          this.report('running-twice', id, `container ${id} runs ${list.length} times at once: ${list.map((c) => `group ${c.group} on ${c.workerId}`).join(', ')}`);
        }
      }
      if (readRecords || this.stats.samples % RECORD_EVERY === 0) await this.checkRecords(copies.slice(0, MAX_RECORD_READS));
      return copies;
    } finally {
      this.sampling = false;
    }
  }

  private async checkRecords(copies: readonly ContainerCopy[]): Promise<void> {
    const seen = new Set<string>();
    await Promise.all(copies.map(async (copy) => {
      const key = `${copy.containerId}/${copy.group}`;
      seen.add(key);
      let reply;
      try {
        reply = await this.options.observer.getContainer(copy.containerId);
      } catch {
        return; // no answer now (a fault): the next sample looks again
      }
      this.stats.recordReads += 1;
      if (!reply.ok) return;
      const record = reply.container;
      if (!TERMINAL_STATUSES.has(record.status)) {
        this.endedButLive.delete(key);
        if (record.workerId !== copy.workerId) {
          this.report('runs-elsewhere', copy.containerId,
            `container ${copy.containerId} runs on ${copy.workerId} (group ${copy.group}) while its record says ${record.status} on ${record.workerId ?? 'no worker'}`);
        }
        return;
      }
      if (this.frozen.has(copy.workerId)) return;
      const now = Date.now();
      const first = Math.max(this.endedButLive.get(key) ?? now, this.ableSince.get(copy.workerId) ?? 0);
      this.endedButLive.set(key, this.endedButLive.get(key) ?? now);
      if (now - first > this.options.ttlMs + SLACK_MS) {
        this.report('terminal-running', copy.containerId,
          `container ${copy.containerId} is ${record.status} but still runs on ${copy.workerId} (group ${copy.group}) ${now - first} ms after its agent could act`);
      }
    }));
    for (const key of this.endedButLive.keys()) if (!seen.has(key) && copies.length < MAX_RECORD_READS) this.endedButLive.delete(key);
  }

  private report(kind: 'running-twice' | 'runs-elsewhere' | 'terminal-running', id: string, message: string): void {
    const key = `${kind}/${id}`;
    if (this.reported.has(key)) return;
    this.reported.add(key);
    if (this.violations.filter((v) => v.kind === kind).length < MAX_VIOLATIONS_PER_KIND) this.violations.push({ kind, message });
  }
}
