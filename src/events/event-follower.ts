/**
 * Following Drover's events from the stream (src/events/event-stream.ts): replay from a stream
 * sequence or a time, then keep following live, for one container or all. An ordered consumer
 * (ephemeral, no acks, recreated by the library after a gap or a reconnect) reads the stream, so a
 * consumer that was away asks for what it missed by the last stream sequence it saw, plus one.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, jetstream, type ConsumerMessages, type OrderedConsumerOptions } from '@nats-io/jetstream';
import type { PublishedContainerEvent } from './container-events.js';
import { eventStreamName, eventSubjects } from './event-stream.js';
import { Subjects } from '../protocol/subjects.js';

/** Where to start: the stream sequence, a time, or (neither) only what is published from now on. */
export interface FollowFrom {
  readonly streamSeq?: number;
  readonly since?: Date;
}

/**
 * An event as the stream kept it: the published body, the container's event subject, and the
 * stream sequence and stored time of the log message (a batch) that carried it. A consumer that
 * saw every event of stream sequence N resumes from N + 1.
 */
export interface StreamedEvent {
  readonly subject: string;
  readonly streamSeq: number;
  /** Its place in its log message (0 for the first event of the batch). */
  readonly index: number;
  /** When the stream stored it (the NATS server's clock). */
  readonly storedAt: Date;
  /** The published JSON; a container event has `id`, `status`, `seq`, `at`. */
  readonly event: Partial<PublishedContainerEvent> & Record<string, unknown>;
}

/** The prefix's stream is not there (no JetStream, or no replica has made it yet). */
export class NoEventStreamError extends Error {
  constructor(readonly stream: string, reason: string, options?: ErrorOptions) {
    super(`no event stream ${stream} to replay from (${reason}); the replicas log why (is JetStream enabled on the NATS server?)`, options);
    this.name = 'NoEventStreamError';
  }
}

export interface EventFollower {
  /** Resolves when the follower stops (stop(), or the connection closed). */
  readonly done: Promise<void>;
  stop(): void;
}

/** Events one log message may hold: a message with more is someone else's, shown raw. */
const MAX_EVENTS_PER_MESSAGE = 10_000;

/**
 * Replay and follow. `containerId`: only that container's events (the log is read whole and
 * filtered here: one container's events come from several replicas' logs); else every event of the
 * prefix. Throws NoEventStreamError when the stream cannot be read.
 */
export async function followEvents(
  nc: NatsConnection,
  prefix: string,
  containerId: string | null,
  from: FollowFrom,
  onEvent: (event: StreamedEvent) => void,
): Promise<EventFollower> {
  const stream = eventStreamName(prefix);
  const subjects = new Subjects(prefix);
  const options: Partial<OrderedConsumerOptions> = { filter_subjects: eventSubjects(prefix) };
  if (from.streamSeq !== undefined) Object.assign(options, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.streamSeq });
  else if (from.since !== undefined) Object.assign(options, { deliver_policy: DeliverPolicy.StartTime, opt_start_time: from.since.toISOString() });
  else Object.assign(options, { deliver_policy: DeliverPolicy.New });
  let messages: ConsumerMessages;
  try {
    const consumer = await jetstream(nc).consumers.get(stream, options);
    messages = await consumer.consume();
  } catch (error) {
    throw new NoEventStreamError(stream, error instanceof Error ? error.message : String(error), { cause: error });
  }
  const done = (async () => {
    for await (const message of messages) {
      let batch: unknown;
      try {
        batch = message.json<unknown>();
      } catch {
        batch = null;
      }
      if (!Array.isArray(batch) || batch.length > MAX_EVENTS_PER_MESSAGE) {
        // Not Drover's log (someone else published on the subject): shown as its raw text.
        if (containerId === null) onEvent({ subject: message.subject, streamSeq: message.seq, index: 0, storedAt: message.time, event: { raw: message.string() } });
        continue;
      }
      batch.forEach((item: unknown, index) => {
        if (item === null || typeof item !== 'object') return;
        const event = item as StreamedEvent['event'];
        if (containerId !== null && event.id !== containerId) return;
        const subject = typeof event.id === 'string' ? subjects.containerEvents(event.id) : message.subject;
        onEvent({ subject, streamSeq: message.seq, index, storedAt: message.time, event });
      });
    }
  })();
  return { done, stop: () => void messages.stop() };
}
