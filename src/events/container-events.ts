/**
 * Container status events: every status change is published on
 * `<prefix>.events.containers.<id>` by the writer that committed it (the backlog for queued,
 * failed and cancelled; the shard owner for placed and released), after Redis has it. NATS core
 * delivers them at most once: a client that must not miss the end of a container subscribes first
 * and reads `containers.get` after (as `drover wait` does).
 *
 * The same events also go, in batches, to the replica's event log subject
 * (`<prefix>.eventlog.<replica id>`, a JSON array per message), which the JetStream stream keeps
 * for replay. Batches because the stream's cost is per message: one stored message per event cost
 * NATS about 4.5 µs of CPU each, 7-8 % of the batched throughput on a 2-core box; a batch is sent
 * once per turn of the event loop, or when it reaches MAX_LOG_EVENTS or MAX_LOG_BYTES.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { ContainerReason, ContainerStatus } from '../../actors/container-machine.js';
import type { Subjects } from '../protocol/subjects.js';

export interface ContainerEvent {
  readonly id: string;
  readonly status: ContainerStatus;
  readonly workerId?: string;
  readonly reason?: ContainerReason;
  readonly exitCode?: number;
  /** The record's seq after this status write (see commit_batch.lua): one more than the event before. */
  readonly seq: number;
}

/** The event as published: `at` is the publishing replica's clock (Unix ms). */
export interface PublishedContainerEvent extends ContainerEvent {
  readonly at: number;
}

export interface ContainerEventPublisher {
  publish(event: ContainerEvent): void;
}

/** Events one log message carries at most. */
export const MAX_LOG_EVENTS = 1_000;
/** Bytes of JSON one log message carries at most (far below NATS's default 1 MiB max_payload). */
export const MAX_LOG_BYTES = 256 * 1024;

export class NatsContainerEvents implements ContainerEventPublisher {
  published = 0;
  /** Log messages sent (each a batch of events). */
  logMessages = 0;
  /** Events published by this replica since it started, by status (the debug page draws them on the chart). */
  readonly byStatus: Partial<Record<ContainerStatus, number>> = {};
  private pending: string[] = [];
  private pendingBytes = 0;
  private flushScheduled = false;
  private readonly logSubject: string;

  constructor(
    private readonly nc: NatsConnection,
    private readonly subjects: Subjects,
    replicaId: string,
  ) {
    this.logSubject = subjects.eventLog(replicaId);
  }

  publish(event: ContainerEvent): void {
    if (this.nc.isClosed()) return;
    const published: PublishedContainerEvent = { ...event, at: Date.now() };
    const json = JSON.stringify(published);
    this.nc.publish(this.subjects.containerEvents(event.id), json);
    this.published += 1;
    this.byStatus[event.status] = (this.byStatus[event.status] ?? 0) + 1;
    if (this.pendingBytes + json.length + 1 > MAX_LOG_BYTES) this.flush();
    this.pending.push(json);
    this.pendingBytes += json.length + 1;
    if (this.pending.length >= MAX_LOG_EVENTS) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Send the events gathered so far as one log message (in publish order, after their own publishes). */
  flush(): void {
    this.flushScheduled = false;
    if (this.pending.length === 0 || this.nc.isClosed()) return;
    const batch = `[${this.pending.join(',')}]`;
    this.pending = [];
    this.pendingBytes = 0;
    this.nc.publish(this.logSubject, batch);
    this.logMessages += 1;
  }
}
