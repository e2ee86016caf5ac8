/**
 * `drover events [--id ID] [--since TIME | --seq N] [--json]`: replay the event stream from a time
 * or a stream sequence, then follow it live, one line per event, until SIGINT or SIGTERM (exit 0).
 * Without --since or --seq it shows what is published from now on; when the stream is missing
 * (NATS without JetStream) that much still works, from a plain subscription, and it says so.
 */
import type { DroverClient } from '../client/drover-client.js';
import type { PublishedContainerEvent } from '../events/container-events.js';
import { followEvents, NoEventStreamError, type EventFollower, type StreamedEvent } from '../events/event-follower.js';
import { ID_PATTERN } from '../protocol/limits.js';

export interface EventsOptions {
  readonly id: string | null;
  readonly since: Date | null;
  readonly streamSeq: number | null;
  readonly json: boolean;
}

/** A relative --since: a whole number of seconds, minutes, hours or days before now. */
const RELATIVE = /^(\d{1,9})([smhd])$/;
const UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** An absolute --since: an ISO 8601 date-time (Date.parse accepts more; only this form is taken). */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;
/** A stream sequence is a JetStream uint64; JavaScript counts exactly up to 2^53 - 1. */
const MAX_STREAM_SEQ = Number.MAX_SAFE_INTEGER;

/** Checks the flags; a message (a usage error) for the first one that is wrong. */
export function eventsOptions(values: { id?: string; since?: string; seq?: string; json?: boolean }, now = Date.now()): EventsOptions | string {
  if (values.id !== undefined && !ID_PATTERN.test(values.id)) return `--id must match ${ID_PATTERN.source}; got "${values.id}"`;
  if (values.since !== undefined && values.seq !== undefined) return '--since and --seq both say where to start; give one';
  let since: Date | null = null;
  if (values.since !== undefined) {
    const relative = RELATIVE.exec(values.since);
    if (relative !== null) since = new Date(now - Number(relative[1]) * UNIT_MS[relative[2]!]!);
    else if (ISO_TIME.test(values.since) && Number.isFinite(Date.parse(values.since))) since = new Date(Date.parse(values.since));
    else return `--since must be a time such as 2026-01-31T12:00:00Z or a duration before now such as 90s, 10m, 2h, 1d; got "${values.since}"`;
    if (since.getTime() > now + 1_000) return `--since is in the future: ${values.since}`;
  }
  let streamSeq: number | null = null;
  if (values.seq !== undefined) {
    streamSeq = /^\d{1,16}$/.test(values.seq) ? Number(values.seq) : Number.NaN;
    if (!Number.isSafeInteger(streamSeq) || streamSeq < 1 || streamSeq > MAX_STREAM_SEQ) return `--seq must be a stream sequence from 1 to ${MAX_STREAM_SEQ}; got "${values.seq}"`;
  }
  return { id: values.id ?? null, since, streamSeq, json: values.json === true };
}

/** One readable line: stored time, stream sequence, container, status, its seq and the details. */
export function eventLine(streamed: StreamedEvent): string {
  const event = streamed.event as Partial<PublishedContainerEvent>;
  const head = `${streamed.storedAt.toISOString()}  #${streamed.streamSeq}.${streamed.index}`;
  if (typeof event.id !== 'string' || typeof event.status !== 'string') return `${head}  ${streamed.subject}  ${JSON.stringify(streamed.event)}`;
  const details = [
    event.workerId !== undefined ? `on ${event.workerId}` : '',
    event.reason !== undefined ? `(${event.reason})` : '',
    event.exitCode !== undefined ? `exit ${event.exitCode}` : '',
  ].filter((part) => part !== '').join(' ');
  return `${head}  ${event.id}  ${event.status.padEnd(8)}  seq ${event.seq ?? '-'}${details === '' ? '' : `  ${details}`}`;
}

function printer(json: boolean): (streamed: StreamedEvent) => void {
  return (streamed) => {
    const line = json ? JSON.stringify({ streamSeq: streamed.streamSeq, index: streamed.index, subject: streamed.subject, event: streamed.event }) : eventLine(streamed);
    process.stdout.write(`${line}\n`);
  };
}

/** Follow until SIGINT or SIGTERM; 0 then, 1 when the replay asked for cannot be had. */
export async function eventsCommand(client: DroverClient, options: EventsOptions): Promise<number> {
  const prefix = client.subjects.prefix;
  const print = printer(options.json);
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  let follower: EventFollower;
  try {
    const from = options.streamSeq !== null ? { streamSeq: options.streamSeq } : options.since !== null ? { since: options.since } : {};
    follower = await followEvents(client.nc, prefix, options.id, from, print);
  } catch (error) {
    if (!(error instanceof NoEventStreamError) || options.since !== null || options.streamSeq !== null) throw error;
    // Live events need no stream: a plain subscription (stream sequences then read 0).
    process.stderr.write(`drover events: ${error.message}; following live events only\n`);
    const subject = options.id === null ? client.subjects.containerEvents('*') : client.subjects.containerEvents(options.id);
    const subscription = client.nc.subscribe(subject, {
      callback: (failure, msg) => {
        if (failure) return;
        let event: StreamedEvent['event'];
        try {
          event = msg.json<StreamedEvent['event']>();
        } catch {
          event = { raw: msg.string() };
        }
        print({ subject: msg.subject, streamSeq: 0, index: 0, storedAt: new Date(), event });
      },
    });
    await stopped;
    subscription.unsubscribe();
    return 0;
  }
  // The follower also ends when the connection closes (NATS gone for good): exit then too.
  await Promise.race([stopped, follower.done]);
  follower.stop();
  return 0;
}
