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

/** An event as the stream kept it: the published body, its subject, stream sequence and stored time. */
export interface StreamedEvent {
  readonly subject: string;
  readonly streamSeq: number;
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

/**
 * Replay and follow. `containerId`: only that container's subject; else every event subject of the
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
  const filter = containerId === null ? eventSubjects(prefix) : new Subjects(prefix).containerEvents(containerId);
  const options: Partial<OrderedConsumerOptions> = { filter_subjects: filter };
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
      let event: StreamedEvent['event'];
      try {
        event = message.json<StreamedEvent['event']>();
      } catch {
        // Not Drover's JSON (someone else published on the subject): shown as its raw text.
        event = { raw: message.string() };
      }
      onEvent({ subject: message.subject, streamSeq: message.seq, storedAt: message.time, event });
    }
  })();
  return { done, stop: () => void messages.stop() };
}
