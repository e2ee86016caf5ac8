/** Helpers for integration tests: unique prefixes, replicas, clients and Redis snapshots. */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { inject } from 'vitest';
import { DroverClient } from '../../src/client/drover-client.js';
import { loadConfig, type DroverConfig } from '../../src/config.js';
import { Replica } from '../../src/replica/replica.js';
import { DroverStore } from '../../src/store/store.js';
import { silentLogger } from '../../src/util/log.js';

export function redisUrl(): string {
  return inject('redisUrl');
}

export function natsUrl(): string {
  return inject('natsUrl');
}

/** A prefix no other test uses, so files can share one Redis and NATS. */
export function testPrefix(label = 't'): string {
  return `${label}${randomBytes(4).toString('hex')}`;
}

export function testConfig(overrides: Partial<DroverConfig> = {}): DroverConfig {
  // A small event stream: JetStream reserves its max_bytes on the shared test server, once per prefix.
  return loadConfig({}, { redisUrl: redisUrl(), natsUrl: natsUrl(), prefix: testPrefix(), shards: 8, leaseTtlMs: 3_000, httpPort: null, eventsMaxBytes: 4 * 1024 * 1024, ...overrides });
}

export async function startReplica(overrides: Partial<DroverConfig> = {}): Promise<Replica> {
  return Replica.start(testConfig(overrides), silentLogger());
}

export async function connectClient(prefix: string): Promise<DroverClient> {
  return DroverClient.connect(natsUrl(), prefix, 15_000);
}

export function connectRedis(): Redis {
  return new Redis(redisUrl(), { maxRetriesPerRequest: 2 });
}

export function storeFor(redis: Redis, prefix: string, historyCap = 10_000, shards = 8): DroverStore {
  return new DroverStore(redis, { prefix, shards, historyCap, releasedRetentionSeconds: 0 });
}

/**
 * Every key under a prefix with its full content (DUMP), for "nothing was written" assertions.
 * Lease keys and the member set are left out: the lease loop and the heartbeat rewrite them on
 * their own schedule, and they hold no capacity.
 */
export async function snapshotKeys(redis: Redis, prefix: string): Promise<Map<string, string>> {
  const snapshot = new Map<string, string>();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `*${prefix}*`, 'COUNT', 1000);
    cursor = next;
    for (const key of keys) {
      if (key.endsWith(':lease') || key.endsWith(':members')) continue;
      const dumped = await redis.dumpBuffer(key);
      if (dumped !== null) snapshot.set(key, dumped.toString('base64'));
    }
  } while (cursor !== '0');
  return snapshot;
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll until `check` returns true or the time runs out (for asynchronous propagation). */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await check()) return;
    await delay(20);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
