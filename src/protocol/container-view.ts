/** C in the public contract: what `containers.get` shows of a container. */
import type { ContainerReason, ContainerStatus } from '../../actors/container-machine.js';
import type { ContainerRecord } from '../store/records.js';

export interface ContainerView {
  readonly id: string;
  readonly status: ContainerStatus;
  readonly workerId: string | null;
  /** The worker's shard once placed; while queued (or if never placed), the backlog's home shard. */
  readonly shard: number;
  readonly cpu: number;
  readonly memory: number;
  readonly gpuCount: number;
  readonly priority: number;
  readonly queuedAt: number | null;
  readonly placedAt: number | null;
  readonly runningAt: number | null;
  readonly endedAt: number | null;
  readonly exitCode: number | null;
  /** Kept from the first contract: endedAt when the status is released, else null. */
  readonly releasedAt: number | null;
  readonly reason: ContainerReason | null;
  /** While queued: how long it has waited, and when it will fail with EXPIRED. */
  readonly ageMs: number | null;
  readonly expiresAt: number | null;
  /** Rises by one with every status write (each event carries it): a jump means an event was missed. */
  readonly seq: number;
}

export function containerView(record: ContainerRecord, now = Date.now()): ContainerView {
  const queued = record.status === 'queued';
  return {
    id: record.id,
    status: record.status,
    workerId: record.workerId,
    shard: record.shard,
    cpu: record.cpu,
    memory: record.memory,
    gpuCount: record.gpuCount,
    priority: record.priority ?? 0,
    queuedAt: record.queuedAt,
    placedAt: record.placedAt,
    runningAt: record.runningAt,
    endedAt: record.endedAt,
    exitCode: record.exitCode,
    releasedAt: record.status === 'released' ? record.endedAt : null,
    reason: record.reason,
    ageMs: queued && record.queuedAt !== null ? Math.max(0, now - record.queuedAt) : null,
    expiresAt: queued ? record.expiresAt : null,
    seq: record.seq,
  };
}
