/**
 * A replica's Redis client (src/replica/redis-client.ts), against a real Redis through the fault
 * proxy: a start while the link is slow for longer than the command timeout still connects (its
 * readiness check is not bound by the command timeout: that failed replacement replicas in the
 * chaos suite with "Connection is closed"); every command after it is bound; and a Redis that never
 * answers fails the start with a clear error within the start timeout.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy } from '../../src/chaos/fault-proxy.js';
import { connectReplicaRedis, redisCommandTimeoutMs } from '../../src/replica/redis-client.js';
import { silentLogger } from '../../src/util/log.js';
import { redisUrl } from '../support/cluster.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

async function proxy(): Promise<FaultProxy> {
  const started = await startFaultProxy({ targetPort: Number(new URL(redisUrl()).port) });
  cleanups.push(() => started.close());
  return started;
}

// Lease TTL 1500 ms: commands time out after 500 ms.
const config = (url: string) => ({ redisUrl: url, leaseTtlMs: 1_500, linkTimeoutMs: 1_000, replicaId: 'redis-client-test' });

describe("a replica's Redis client", () => {
  it('connects over a link slower than its command timeout, then bounds every command', async () => {
    const link = await proxy();
    link.setLatency(300); // 600 ms a round trip, over the 500 ms command timeout
    const redis = await connectReplicaRedis(config(link.url('redis')), silentLogger());
    cleanups.push(async () => redis.disconnect());
    expect(redis.status).toBe('ready');
    expect(redis.options.commandTimeout).toBe(redisCommandTimeoutMs({ leaseTtlMs: 1_500 }));
    await expect(redis.ping()).rejects.toThrow(/timed out/);
    link.setLatency(0);
    expect(await redis.ping()).toBe('PONG');
  });

  it('fails the start with a clear error when Redis never answers', async () => {
    const link = await proxy();
    link.blackhole();
    await expect(connectReplicaRedis(config(link.url('redis')), silentLogger(), 1_500)).rejects.toThrow(/cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+: no answer within 1500 ms/);
  });
});
