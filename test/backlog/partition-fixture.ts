/**
 * A backlog partition of one home shard against the test Redis, held under a fresh lease, for
 * tests that drive a BacklogScheduler by hand (the attempts answered by the test).
 */
import type { Redis } from 'ioredis';
import { BacklogPartition } from '../../src/backlog/backlog-partition.js';
import type { DroverStore } from '../../src/store/store.js';
import { Incident } from '../../src/util/incident.js';
import { silentLogger, type Logger } from '../../src/util/log.js';
import { storeFor, testPrefix } from '../support/cluster.js';

export async function openPartition(redis: Redis, label: string, shards: number, home: number): Promise<{ store: DroverStore; partition: BacklogPartition; log: Logger }> {
  const store = storeFor(redis, testPrefix(label), 0, shards);
  const { epoch } = await store.acquireLease(home, 'me', 30_000);
  const log = silentLogger();
  const partition = await BacklogPartition.open({
    store, shard: home, epoch, log, redisWrites: new Incident(log, 'test writes'), leaseHeld: () => true,
    onFenced: () => undefined, events: { publish: () => undefined }, maxQueuedOps: 1_000,
  });
  return { store, partition, log };
}
