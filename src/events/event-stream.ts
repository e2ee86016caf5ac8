/**
 * The events' JetStream stream: it keeps every replica's event log (`<prefix>.eventlog.>`, the
 * container events in batches, see container-events.ts) so a consumer that was away can replay from
 * a stream sequence (a batch) or a time. Publishers use plain publishes: a stream whose subjects
 * cover core subjects stores them.
 *
 * Every replica ensures the stream at start (the natural owner would be "whoever starts first",
 * which is not knowable, and several start at once). Ensuring is idempotent and race-safe: an add
 * with the same configuration succeeds whoever made the stream; an add that finds another
 * configuration updates the stream to this replica's settings (the last replica started wins, as
 * with any setting an operator changes by restarting). A NATS server without JetStream (a NATS_URL
 * given from outside) is logged once, clearly, and the replica runs without replay: events are
 * still published, only not kept.
 *
 * Durability (nats-server 2.9): file storage, written to the OS at once and fsynced every two
 * minutes by default (`sync_interval` is configurable only from 2.10 on). A crash of the server's
 * machine (not of the process) can lose what was stored since the last sync; so can a disk
 * failure, with one replica of the stream. Replay is a convenience on top of `containers.get`,
 * which stays the source of truth.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { DiscardPolicy, jetstreamManager, JetStreamApiError, RetentionPolicy, StorageType, type StreamConfig } from '@nats-io/jetstream';
import type { Logger } from '../util/log.js';

/** The stream's name for a prefix (stream names take no dots; a prefix has none). */
export function eventStreamName(prefix: string): string {
  return `${prefix}_events`;
}

/** The subjects the stream keeps: every replica's event log (`<prefix>.eventlog.<replica id>`, batches of events). */
export function eventSubjects(prefix: string): string {
  return `${prefix}.eventlog.>`;
}

export interface EventStreamSettings {
  readonly prefix: string;
  /** Events older than this are dropped (DROVER_EVENTS_MAX_AGE_S). */
  readonly maxAgeSeconds: number;
  /** ... and the oldest are dropped once the stream holds this many bytes (DROVER_EVENTS_MAX_BYTES). */
  readonly maxBytes: number;
}

export type EnsureOutcome =
  /** 'ready': made now or found as asked (the server does not tell the two apart); 'updated': changed to these settings. */
  | { readonly ok: true; readonly action: 'ready' | 'updated'; readonly stream: string }
  | { readonly ok: false; readonly stream: string; readonly reason: string };

/** An add or update that lost a race with another replica's is tried again, this many times at most. */
const MAX_ENSURE_ATTEMPTS = 3;
/** How long each JetStream API request may take (the replica's start waits for it). */
const API_TIMEOUT_MS = 5_000;
/** "stream name already in use with a different configuration" (nats-server's JSStreamNameExistErr). */
const STREAM_NAME_EXISTS = 10058;

const NANOS_PER_SECOND = 1_000_000_000;

function streamConfig(settings: EventStreamSettings): Partial<StreamConfig> & { name: string } {
  return {
    name: eventStreamName(settings.prefix),
    subjects: [eventSubjects(settings.prefix)],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: settings.maxAgeSeconds * NANOS_PER_SECOND,
    max_bytes: settings.maxBytes,
    num_replicas: 1,
  };
}

/** Whether the stream as found already has what these settings ask for. */
function matches(found: StreamConfig, wanted: ReturnType<typeof streamConfig>): boolean {
  return found.max_age === wanted.max_age && found.max_bytes === wanted.max_bytes && found.storage === wanted.storage
    && found.discard === wanted.discard && found.subjects?.length === 1 && found.subjects[0] === wanted.subjects![0];
}

function describe(error: unknown): string {
  if (error instanceof JetStreamApiError) return `${error.message} (JetStream error ${error.code})`;
  return error instanceof Error ? error.message : String(error);
}

/**
 * Make sure the prefix's event stream exists with these settings. Never throws: a failure comes
 * back as `{ok: false, reason}` for the caller to log (the replica runs on without replay).
 */
export async function ensureEventStream(nc: NatsConnection, settings: EventStreamSettings): Promise<EnsureOutcome> {
  const wanted = streamConfig(settings);
  const stream = wanted.name;
  let jsm;
  try {
    // checkAPI asks the server for the account's JetStream info: a server without JetStream says so here.
    jsm = await jetstreamManager(nc, { timeout: API_TIMEOUT_MS, checkAPI: true });
  } catch (error) {
    return { ok: false, stream, reason: `JetStream is not available on this NATS server: ${describe(error)}` };
  }
  let lastError: unknown = null;
  for (let attempt = 0; attempt < MAX_ENSURE_ATTEMPTS; attempt += 1) {
    try {
      await jsm.streams.add(wanted);
      // The server answers an add that matches an existing stream with that stream.
      return { ok: true, action: 'ready', stream };
    } catch (error) {
      lastError = error;
      if (!(error instanceof JetStreamApiError) || error.code !== STREAM_NAME_EXISTS) break;
    }
    // Another configuration: another replica (or an earlier version) made it. Update it to ours
    // unless it already is (a concurrent update may have done it meanwhile).
    try {
      const info = await jsm.streams.info(stream);
      if (matches(info.config, wanted)) return { ok: true, action: 'ready', stream };
      await jsm.streams.update(stream, { ...wanted });
      return { ok: true, action: 'updated', stream };
    } catch (error) {
      // Deleted or changed under us between the two calls: try again from the add.
      lastError = error;
    }
  }
  return { ok: false, stream, reason: describe(lastError) };
}

/** Log what ensuring came to: a warning that says what is lost when the stream could not be made. */
export function logEnsureOutcome(log: Logger, outcome: EnsureOutcome, settings: EventStreamSettings): void {
  if (outcome.ok) {
    log.info({ stream: outcome.stream, action: outcome.action, maxAgeS: settings.maxAgeSeconds, maxBytes: settings.maxBytes }, 'event stream ready');
    return;
  }
  log.warn(
    { stream: outcome.stream, reason: outcome.reason },
    `no event stream: events are published but not kept, so \`drover events --since/--seq\` cannot replay them ` +
      `(run nats-server with JetStream enabled, e.g. -js -sd DIR, and restart this replica)`,
  );
}
