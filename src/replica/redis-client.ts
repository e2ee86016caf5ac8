/**
 * A replica's Redis client: connected once at start, then every command bounded.
 *
 * Commands time out well within a lease period (a half-open connection must not hold a shard's
 * writes), but the connection's own readiness check (an INFO that ioredis sends before anything
 * else) must not: with the command timeout applied to it, a replica started while Redis or the
 * link was slow for half a second failed to start with "Connection is closed" (seen in the chaos
 * suite: a replacement replica started during load, against an append-only Redis). So the
 * command timeout is set once the client is ready, and the start as a whole is bounded instead.
 */
import { Redis } from 'ioredis';
import type { DroverConfig } from '../config.js';
import type { Logger } from '../util/log.js';
import { withTimeout } from '../util/with-timeout.js';

/** A replica start that cannot get Redis (or NATS) to answer within this fails with a clear error. */
export const START_CONNECT_TIMEOUT_MS = 10_000;

/** The command timeout a replica's Redis client runs with once connected. */
export function redisCommandTimeoutMs(config: Pick<DroverConfig, 'leaseTtlMs'>): number {
  return Math.max(500, Math.floor(config.leaseTtlMs / 3));
}

export async function connectReplicaRedis(
  config: Pick<DroverConfig, 'redisUrl' | 'leaseTtlMs' | 'linkTimeoutMs' | 'replicaId'>,
  log: Logger,
  startTimeoutMs = START_CONNECT_TIMEOUT_MS,
): Promise<Redis> {
  const redis = new Redis(config.redisUrl, {
    enableAutoPipelining: true,
    // A write whose connection broke is reported as failed (outcome unknown), never queued or
    // silently resent later: the owner then resyncs from Redis before writing again.
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    connectTimeout: Math.max(1_000, config.linkTimeoutMs),
    lazyConnect: true,
    connectionName: `drover-${config.replicaId}`,
  });
  // ioredis reports every failed reconnect attempt; the Redis link monitor logs the outage once.
  redis.on('error', (error) => log.debug({ err: error }, 'redis connection error'));
  try {
    await withTimeout(redis.connect(), startTimeoutMs, `no answer within ${startTimeoutMs} ms`);
  } catch (error) {
    redis.disconnect();
    throw new Error(`cannot reach Redis at ${config.redisUrl}: ${(error as Error).message}`);
  }
  // From now on a command that hangs (a half-open connection) fails well within a lease period,
  // so a lost lease is noticed and the shard dropped instead of waiting on a dead socket.
  redis.options.commandTimeout = redisCommandTimeoutMs(config);
  return redis;
}
