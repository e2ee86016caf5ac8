/**
 * Container status events: every status change is published on
 * `<prefix>.events.containers.<id>` by the writer that committed it (the backlog for queued,
 * failed and cancelled; the shard owner for placed and released), after Redis has it. NATS core
 * delivers them at most once: a client that must not miss the end of a container subscribes first
 * and reads `containers.get` after (as `drover wait` does).
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

export class NatsContainerEvents implements ContainerEventPublisher {
  published = 0;
  /** Events published by this replica since it started, by status (the debug page draws them on the chart). */
  readonly byStatus: Partial<Record<ContainerStatus, number>> = {};

  constructor(
    private readonly nc: NatsConnection,
    private readonly subjects: Subjects,
  ) {}

  publish(event: ContainerEvent): void {
    if (this.nc.isClosed()) return;
    const published: PublishedContainerEvent = { ...event, at: Date.now() };
    this.nc.publish(this.subjects.containerEvents(event.id), JSON.stringify(published));
    this.published += 1;
    this.byStatus[event.status] = (this.byStatus[event.status] ?? 0) + 1;
  }
}
