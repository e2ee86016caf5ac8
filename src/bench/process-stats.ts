/**
 * CPU time and resident memory of a process, read from Linux's /proc (the benchmark reports them
 * per replica, and for Redis and NATS). Clock ticks are 100 per second on Linux (USER_HZ).
 */
import { readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100;

export interface ProcessSample {
  readonly cpuSeconds: number;
  readonly rssBytes: number;
}

export function sampleProcess(pid: number | undefined): ProcessSample | null {
  if (pid === undefined) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the ")" closing the command name: state is field 3, utime 14, stime 15, rss 24.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+) kB/.exec(status);
    return { cpuSeconds, rssBytes: rss ? Number(rss[1]) * 1024 : 0 };
  } catch {
    return null; // the process has exited
  }
}

/** Watches processes during a measured phase: CPU used over the phase, and the highest RSS seen. */
export class ProcessWatch {
  private readonly pids: Record<string, number | undefined>;
  private readonly start = new Map<string, ProcessSample>();
  /** The last sample seen, so a process that exits during the phase keeps the CPU it used. */
  private readonly last = new Map<string, ProcessSample>();
  private readonly maxRss = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;
  private readonly began = performance.now();

  constructor(pids: Record<string, number | undefined>, intervalMs = 250) {
    this.pids = {};
    for (const [name, pid] of Object.entries(pids)) this.add(name, pid);
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  /** Watch one more process from now on (a replica that joins during the phase). */
  add(name: string, pid: number | undefined): void {
    this.pids[name] = pid;
    const sample = sampleProcess(pid);
    if (sample !== null) {
      this.start.set(name, sample);
      this.last.set(name, sample);
      this.maxRss.set(name, sample.rssBytes);
    }
  }

  private sample(): void {
    for (const [name, pid] of Object.entries(this.pids)) {
      const sample = sampleProcess(pid);
      if (sample === null) continue;
      this.last.set(name, sample);
      this.maxRss.set(name, Math.max(this.maxRss.get(name) ?? 0, sample.rssBytes));
    }
  }

  /** Per process: CPU seconds used, CPU as a percentage of one core, and the highest RSS in MiB. */
  stop(): Record<string, { cpuSeconds: number; cpuPercent: number; maxRssMiB: number }> {
    clearInterval(this.timer);
    this.sample();
    const seconds = (performance.now() - this.began) / 1000;
    const out: Record<string, { cpuSeconds: number; cpuPercent: number; maxRssMiB: number }> = {};
    for (const [name, pid] of Object.entries(this.pids)) {
      const first = this.start.get(name);
      const last = sampleProcess(pid) ?? this.last.get(name) ?? first;
      if (first === undefined || last === undefined) continue;
      const cpuSeconds = last.cpuSeconds - first.cpuSeconds;
      out[name] = {
        cpuSeconds: round(cpuSeconds, 2),
        cpuPercent: round((100 * cpuSeconds) / Math.max(seconds, 0.001), 0),
        maxRssMiB: round((this.maxRss.get(name) ?? 0) / 1024 / 1024, 1),
      };
    }
    return out;
  }
}

export function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
