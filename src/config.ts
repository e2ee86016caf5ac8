/**
 * Replica configuration from the environment. Every value is checked at start-up with a message
 * that names the variable, so a typo fails fast instead of running a replica with odd settings.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { PlacementStrategy } from '../actors/capacity.js';
import { ID_PATTERN } from './protocol/limits.js';
import { DEFAULT_SHARDS, MAX_SHARDS } from './shard/shard-map.js';

export interface DroverConfig {
  readonly redisUrl: string;
  readonly natsUrl: string;
  /** First token of every NATS subject and Redis key. */
  readonly prefix: string;
  readonly shards: number;
  readonly replicaId: string;
  /** How long a shard lease lives without extension. A paused owner is fenced out after this. */
  readonly leaseTtlMs: number;
  /** How long a replica stays a member after its last heartbeat (heartbeats every quarter of it). */
  readonly memberTtlMs: number;
  /**
   * A link (to NATS or to Redis) with no round trip faster than half of this for this long counts
   * as cut: the replica gives up its shards and steps out of the members until it is back.
   */
  readonly linkTimeoutMs: number;
  /** How long a router waits for a shard owner before trying elsewhere. */
  readonly shardRequestTimeoutMs: number;
  readonly strategy: PlacementStrategy;
  readonly historyCap: number;
  readonly releasedRetentionSeconds: number;
  readonly logLevel: string;
  /** Writes queued per shard beyond which new ones are refused with UNAVAILABLE. */
  readonly maxQueuedOpsPerShard: number;
  /** Queued containers the whole backlog may hold (each home shard holds its share); more get BACKLOG_FULL. */
  readonly backlogMax: number;
  /**
   * An agent's worker that does not report for this long is unreachable: no new placements, its
   * containers `unknown` (agents report every third of it).
   */
  readonly workerTtlMs: number;
  /**
   * ... and lost after this long (plus a tenth of it as a margin): its unknown containers end lost.
   * Its agent stops them itself a margin before. At least 3 x workerTtlMs.
   */
  readonly workerLostAfterMs: number;
  /** A queued request waiting longer than this gets a worker held for it (protection from starvation). */
  readonly backlogHoldAfterMs: number;
  /** Each backlog partition compares its Redis set with memory this often (see backlog-partition.ts). */
  readonly backlogReconcileMs: number;
  /**
   * The replica's HTTP port (metrics, health, the debug page): DROVER_HTTP_PORT, default 9470; 0
   * takes a free port (shown by `drover status` and logged); "off" serves nothing.
   */
  readonly httpPort: number | null;
  /** The address it binds: DROVER_HTTP_HOST, default 127.0.0.1 (loopback only). */
  readonly httpHost: string;
  /** The event stream drops events older than this (DROVER_EVENTS_MAX_AGE_S; see src/events/event-stream.ts). */
  readonly eventsMaxAgeSeconds: number;
  /** ... and its oldest events once it holds this many bytes (DROVER_EVENTS_MAX_BYTES). */
  readonly eventsMaxBytes: number;
}

export const PREFIX_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/;

type Env = Record<string, string | undefined>;

function integerVar(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new Error(`${name} must be a whole number between ${min} and ${max}; got "${raw}"`);
  }
  return value;
}

export function defaultReplicaId(): string {
  const host = hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40) || 'replica';
  return `${host}-${process.pid}-${randomBytes(3).toString('hex')}`.replace(/^[^A-Za-z0-9]/, 'r');
}

export function loadConfig(env: Env = process.env, overrides: Partial<DroverConfig> = {}): DroverConfig {
  const prefix = overrides.prefix ?? env.DROVER_PREFIX ?? 'drover';
  if (!PREFIX_PATTERN.test(prefix)) throw new Error(`DROVER_PREFIX must match ${PREFIX_PATTERN.source}; got "${prefix}"`);
  const replicaId = overrides.replicaId ?? env.DROVER_REPLICA_ID ?? defaultReplicaId();
  if (!ID_PATTERN.test(replicaId)) throw new Error(`DROVER_REPLICA_ID must match ${ID_PATTERN.source}; got "${replicaId}"`);
  const strategy = overrides.strategy ?? env.DROVER_STRATEGY ?? 'best-fit';
  if (strategy !== 'best-fit' && strategy !== 'spread') throw new Error(`DROVER_STRATEGY must be best-fit or spread; got "${strategy}"`);
  const leaseTtlMs = overrides.leaseTtlMs ?? integerVar(env, 'DROVER_LEASE_TTL_MS', 10_000, 500, 600_000);
  const workerTtlMs = overrides.workerTtlMs ?? integerVar(env, 'DROVER_WORKER_TTL_MS', 10_000, 300, 3_600_000);
  return {
    redisUrl: overrides.redisUrl ?? env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    natsUrl: overrides.natsUrl ?? env.NATS_URL ?? 'nats://127.0.0.1:4222',
    prefix,
    shards: overrides.shards ?? integerVar(env, 'DROVER_SHARDS', DEFAULT_SHARDS, 1, MAX_SHARDS),
    replicaId,
    leaseTtlMs,
    memberTtlMs: overrides.memberTtlMs ?? integerVar(env, 'DROVER_MEMBER_TTL_MS', leaseTtlMs, 200, 600_000),
    linkTimeoutMs: overrides.linkTimeoutMs ?? integerVar(env, 'DROVER_LINK_TIMEOUT_MS', Math.min(leaseTtlMs, Math.max(1_000, Math.floor(leaseTtlMs / 3))), 200, leaseTtlMs),
    shardRequestTimeoutMs: overrides.shardRequestTimeoutMs ?? integerVar(env, 'DROVER_SHARD_TIMEOUT_MS', 2_000, 50, 60_000),
    strategy,
    historyCap: overrides.historyCap ?? integerVar(env, 'DROVER_HISTORY_CAP', 10_000, 0, 100_000_000),
    releasedRetentionSeconds: overrides.releasedRetentionSeconds ?? integerVar(env, 'DROVER_RELEASED_RETENTION_S', 3_600, 0, 31_536_000),
    logLevel: overrides.logLevel ?? env.DROVER_LOG_LEVEL ?? 'info',
    maxQueuedOpsPerShard: overrides.maxQueuedOpsPerShard ?? integerVar(env, 'DROVER_MAX_QUEUED_OPS', 20_000, 1, 1_000_000),
    backlogMax: overrides.backlogMax ?? integerVar(env, 'DROVER_BACKLOG_MAX', 1_000_000, 1, 100_000_000),
    workerTtlMs,
    workerLostAfterMs: overrides.workerLostAfterMs ?? integerVar(env, 'DROVER_WORKER_LOST_AFTER_MS', Math.max(DEFAULT_WORKER_LOST_AFTER_MS, 3 * workerTtlMs), 3 * workerTtlMs, 86_400_000),
    backlogHoldAfterMs: overrides.backlogHoldAfterMs ?? integerVar(env, 'DROVER_BACKLOG_HOLD_AFTER_MS', 30_000, 100, 86_400_000),
    backlogReconcileMs: overrides.backlogReconcileMs ?? integerVar(env, 'DROVER_BACKLOG_RECONCILE_MS', 30_000, 200, 3_600_000),
    httpPort: overrides.httpPort !== undefined ? overrides.httpPort : env.DROVER_HTTP_PORT === 'off' ? null : integerVar(env, 'DROVER_HTTP_PORT', DEFAULT_HTTP_PORT, 0, 65_535),
    httpHost: overrides.httpHost ?? httpHostVar(env.DROVER_HTTP_HOST),
    eventsMaxAgeSeconds: overrides.eventsMaxAgeSeconds ?? integerVar(env, 'DROVER_EVENTS_MAX_AGE_S', DEFAULT_EVENTS_MAX_AGE_S, 1, MAX_EVENTS_MAX_AGE_S),
    eventsMaxBytes: overrides.eventsMaxBytes ?? integerVar(env, 'DROVER_EVENTS_MAX_BYTES', DEFAULT_EVENTS_MAX_BYTES, MIN_EVENTS_MAX_BYTES, MAX_EVENTS_MAX_BYTES),
  };
}

/**
 * How long an agent's worker may be silent before its containers end lost: five minutes, as Nomad's
 * typical max_client_disconnect, so a control-plane outage or a NATS restart stops no running work.
 */
export const DEFAULT_WORKER_LOST_AFTER_MS = 300_000;

/**
 * The event stream keeps a day of events: a consumer away overnight (a restarted dashboard, a
 * client that lost its link) replays what it missed; anything older is history, which the shard
 * history streams in Redis keep. At most a year.
 */
export const DEFAULT_EVENTS_MAX_AGE_S = 86_400;
export const MAX_EVENTS_MAX_AGE_S = 31_536_000;
/**
 * ... and at most 1 GiB of them: an event is about 150 bytes of JSON plus JetStream's per-message
 * overhead (subject, headers, index), so some 4 million events, a day at ~50 status changes a
 * second. JetStream reserves max_bytes against the server's file store when the stream is made,
 * so it is bounded (at least 1 KiB, at most 1 TiB) rather than unlimited.
 */
export const DEFAULT_EVENTS_MAX_BYTES = 1_073_741_824;
export const MIN_EVENTS_MAX_BYTES = 1_024;
export const MAX_EVENTS_MAX_BYTES = 1_099_511_627_776;

/** The replica's HTTP port unless DROVER_HTTP_PORT says otherwise (Prometheus exporters' range). */
export const DEFAULT_HTTP_PORT = 9470;

/** An IP address or host name to bind, checked here so a typo fails at start-up with the variable's name. */
export function httpHostVar(value: string | undefined, name = 'DROVER_HTTP_HOST'): string {
  if (value === undefined || value === '') return '127.0.0.1';
  if (!/^[A-Za-z0-9.:\-\[\]]{1,253}$/.test(value)) throw new Error(`${name} must be an address or host name; got "${value}"`);
  return value;
}
