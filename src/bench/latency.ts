/** Latency percentiles with an HDR histogram (microsecond resolution, 3 significant digits). */
import hdr from 'hdr-histogram-js';
import { round } from './process-stats.js';

export interface LatencySummary {
  readonly count: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export class Latency {
  private readonly histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: 3 });

  /** Record one latency in milliseconds (`count` times: every container of a batch shares it). */
  record(ms: number, count = 1): void {
    this.histogram.recordValueWithCount(Math.max(1, Math.round(ms * 1000)), count);
  }

  summary(): LatencySummary {
    const h = this.histogram;
    return {
      count: h.totalCount,
      p50Ms: round(h.getValueAtPercentile(50) / 1000, 2),
      p99Ms: round(h.getValueAtPercentile(99) / 1000, 2),
      maxMs: round(h.maxValue / 1000, 2),
    };
  }
}
