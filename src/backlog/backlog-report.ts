/**
 * The backlog report behind `drover.backlog` and `drover backlog`: each replica describes the
 * partitions it holds (backlog-scheduler.ts); the answering router merges what every replica sent
 * within the wait and names the shards nobody answered for.
 */
import type { PlacementRequest } from '../../actors/capacity.js';

export interface BacklogReport {
  /** Which replica answered, and for which home shards. */
  readonly replicaId: string;
  readonly shards: number[];
  readonly depth: number;
  readonly oldestAgeMs: number | null;
  readonly pools: Array<{ pool: string | null; depth: number; oldestAgeMs: number }>;
  readonly shapes: Array<PlacementRequest & { depth: number; oldestAgeMs: number }>;
  readonly attemptsInFlight: number;
}

export interface ClusterBacklog {
  readonly depth: number;
  readonly oldestAgeMs: number | null;
  readonly pools: Array<{ pool: string | null; depth: number; oldestAgeMs: number }>;
  /** The deepest shapes (at most MAX_MERGED_SHAPES). */
  readonly shapes: Array<PlacementRequest & { depth: number; oldestAgeMs: number }>;
  readonly replicas: Array<{ replicaId: string; shards: number; depth: number }>;
  /** Home shards no replica reported: their queued containers are not counted above. */
  readonly missingShards: number[];
}

const MAX_MERGED_SHAPES = 50;
/** A report bigger than this is not one a replica made. */
const MAX_REPORT_ENTRIES = 4_096;

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** A replica's report as received (anyone can publish on the bus): null when anything is off. */
export function parseBacklogReport(value: unknown): BacklogReport | null {
  if (value === null || typeof value !== 'object') return null;
  const report = value as Record<string, unknown>;
  if (typeof report.replicaId !== 'string' || !Array.isArray(report.shards) || !report.shards.every(isCount)) return null;
  if (!isCount(report.depth) || !Array.isArray(report.pools) || !Array.isArray(report.shapes)) return null;
  if (report.pools.length > MAX_REPORT_ENTRIES || report.shapes.length > MAX_REPORT_ENTRIES || report.shards.length > MAX_REPORT_ENTRIES) return null;
  for (const entry of [...report.pools, ...report.shapes] as unknown[]) {
    const e = entry as Record<string, unknown> | null;
    if (e === null || typeof e !== 'object' || !isCount(e.depth) || !isCount(e.oldestAgeMs)) return null;
  }
  return report as unknown as BacklogReport;
}

export function mergeBacklogReports(reports: readonly BacklogReport[], shardCount: number): ClusterBacklog {
  const covered = new Set<number>();
  const pools = new Map<string, { pool: string | null; depth: number; oldestAgeMs: number }>();
  const shapes = new Map<string, PlacementRequest & { depth: number; oldestAgeMs: number }>();
  let depth = 0;
  let oldest: number | null = null;
  const replicas: ClusterBacklog['replicas'] = [];
  for (const report of reports) {
    // A shard reported twice (a hand-over in progress) is counted once: the first report wins.
    if (report.shards.some((shard) => covered.has(shard))) continue;
    for (const shard of report.shards) covered.add(shard);
    replicas.push({ replicaId: report.replicaId, shards: report.shards.length, depth: report.depth });
    depth += report.depth;
    if (report.oldestAgeMs !== null) oldest = Math.max(oldest ?? 0, report.oldestAgeMs);
    for (const p of report.pools) {
      const key = p.pool ?? '';
      const merged = pools.get(key) ?? { pool: p.pool, depth: 0, oldestAgeMs: 0 };
      merged.depth += p.depth;
      merged.oldestAgeMs = Math.max(merged.oldestAgeMs, p.oldestAgeMs);
      pools.set(key, merged);
    }
    for (const s of report.shapes) {
      const key = `${s.cpu}/${s.memory}/${s.gpu ?? ''}/${s.gpuCount}/${s.pool ?? ''}`;
      const merged = shapes.get(key) ?? { cpu: s.cpu, memory: s.memory, gpu: s.gpu, gpuCount: s.gpuCount, pool: s.pool, depth: 0, oldestAgeMs: 0 };
      merged.depth += s.depth;
      merged.oldestAgeMs = Math.max(merged.oldestAgeMs, s.oldestAgeMs);
      shapes.set(key, merged);
    }
  }
  const missingShards: number[] = [];
  for (let shard = 0; shard < shardCount; shard += 1) if (!covered.has(shard)) missingShards.push(shard);
  return {
    depth,
    oldestAgeMs: oldest,
    pools: [...pools.values()].sort((a, b) => b.depth - a.depth),
    shapes: [...shapes.values()].sort((a, b) => b.depth - a.depth).slice(0, MAX_MERGED_SHAPES),
    replicas: replicas.sort((a, b) => a.replicaId.localeCompare(b.replicaId)),
    missingShards,
  };
}
