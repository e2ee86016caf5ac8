/**
 * Liveness under partitions. Three replicas in this process, each reaching NATS and Redis through
 * its own TCP fault proxy (src/chaos/fault-proxy.ts): a silent blackhole or added latency on one
 * replica's link must not black out the cluster. Within the lease TTL plus two seconds, every
 * shard is served by the others; requests for shards the faulty replica did not own keep being
 * answered; when the link heals, the replica rejoins and the shards balance again.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy } from '../../src/chaos/fault-proxy.js';
import { DroverClient } from '../../src/client/drover-client.js';
import { loadConfig } from '../../src/config.js';
import { DuplicateReplicaError } from '../../src/membership/membership.js';
import { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { silentLogger } from '../../src/util/log.js';
import { delay, eventually, natsUrl, redisUrl, testPrefix } from '../support/cluster.js';

const SHARDS = 12;
const TTL = 2_000;
/** The bound: a shard unanswerable for at most the lease TTL plus two seconds. */
const DARK_BOUND_MS = TTL + 2_000;

interface Node {
  readonly replica: Replica;
  readonly nats: FaultProxy;
  readonly redis: FaultProxy;
}

const nodes: Node[] = [];
const proxies: FaultProxy[] = [];
const clients: DroverClient[] = [];

afterEach(async () => {
  for (const proxy of proxies) proxy.heal();
  await Promise.all(nodes.splice(0).map((n) => n.replica.stop().catch(() => undefined)));
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});

const port = (url: string) => Number(new URL(url).port);

async function startNode(prefix: string, replicaId: string, log = silentLogger()): Promise<Node> {
  const nats = await startFaultProxy({ targetPort: port(natsUrl()) });
  const redis = await startFaultProxy({ targetPort: port(redisUrl()) });
  proxies.push(nats, redis);
  const config = loadConfig({}, { httpPort: null, prefix, shards: SHARDS, leaseTtlMs: TTL, replicaId, natsUrl: nats.url('nats'), redisUrl: redis.url('redis') });
  const node = { replica: await Replica.start(config, log), nats, redis };
  nodes.push(node);
  return node;
}

/** Three replicas, balanced; one worker per shard; a client that does not go through any proxy. */
async function cluster(): Promise<{ prefix: string; client: DroverClient; workers: string[] }> {
  const prefix = testPrefix('pt');
  for (const id of ['pt-a', 'pt-b', 'pt-c']) await startNode(prefix, id);
  await eventually(() => balanced(nodes), 10_000, 'three replicas balanced');
  const client = await DroverClient.connect(natsUrl(), prefix, 1_000, 'partition-probe');
  clients.push(client);
  const workers: string[] = [];
  for (let shard = 0; shard < SHARDS; shard += 1) {
    let n = 0;
    while (shardOf(`pw-${n}`, SHARDS) !== shard) n += 1;
    workers.push(`pw-${n}`);
    expect((await client.registerWorker({ id: `pw-${n}`, cpu: 4_000, memory: 4_096 })).ok).toBe(true);
  }
  return { prefix, client, workers };
}

function balanced(among: readonly Node[]): boolean {
  const counts = among.map((n) => n.replica.servedShards().length);
  const all = among.flatMap((n) => n.replica.servedShards());
  return new Set(all).size === SHARDS && all.length === SHARDS && Math.max(...counts) - Math.min(...counts) <= 1;
}

function ownedBy(among: readonly Node[]): boolean {
  const all = among.flatMap((n) => n.replica.servedShards());
  return new Set(all).size === SHARDS;
}

/**
 * Probe every shard through its owner (a no-op enable goes router -> owner) every 100 ms until
 * `durationMs` is over; per shard, the longest span without a successful answer, and the answers
 * for the shards in `watch` after `from` ms.
 */
async function probe(client: DroverClient, workers: string[], durationMs: number, watch: ReadonlySet<number>, fromMs: number) {
  const start = Date.now();
  const lastOk = workers.map(() => start);
  const longestDark = workers.map(() => 0);
  let watched = 0;
  let failed = 0;
  const lanes = workers.map(async (worker, shard) => {
    while (Date.now() - start < durationMs) {
      const sent = Date.now();
      let ok = false;
      try {
        ok = (await client.enableWorker(worker)).ok;
      } catch {
        ok = false;
      }
      if (ok) {
        longestDark[shard] = Math.max(longestDark[shard]!, sent - lastOk[shard]!);
        lastOk[shard] = sent;
      }
      if (watch.has(shard) && sent - start >= fromMs) {
        watched += 1;
        if (!ok) failed += 1;
      }
      await delay(Math.max(0, 100 - (Date.now() - sent)));
    }
    longestDark[shard] = Math.max(longestDark[shard]!, Date.now() - lastOk[shard]!);
  });
  await Promise.all(lanes);
  return { longestDark: Math.max(...longestDark), watched, failed };
}

describe('partitions', () => {
  it('a replica cut off from NATS (silently) gives its shards up within the lease TTL and rejoins after', async () => {
    const { client, workers } = await cluster();
    const [cut, ...others] = nodes as [Node, ...Node[]];
    const theirs = new Set(others.flatMap((n) => n.replica.servedShards()));
    cut.nats.blackhole();
    const result = await probe(client, workers, TTL + 5_000, theirs, TTL);
    expect(ownedBy(others)).toBe(true);
    expect(cut.replica.servedShards()).toEqual([]);
    expect(cut.replica.membership.suspended).toBe(true);
    expect(result.longestDark, 'longest time a shard did not answer').toBeLessThanOrEqual(DARK_BOUND_MS);
    // The cut replica's router is a ghost in the queue group until the NATS server drops it.
    expect(result.failed / result.watched, `${result.failed} of ${result.watched} probes failed`).toBeLessThan(0.05);
    // It stepped out through Redis, so to the others it is a ghost: they sent the large ballast.
    expect(others.some((n) => n.replica.peers.stats.ghostBallasts > 0)).toBe(true);
    cut.nats.heal();
    await eventually(() => balanced(nodes), 15_000, 'the healed replica balanced back in');
    expect(cut.replica.membership.suspended).toBe(false);
  }, 40_000);

  it('a replica cut off from Redis (silently) leaves the queue group and its shards move within the lease TTL', async () => {
    const { client, workers } = await cluster();
    const [cut, ...others] = nodes as [Node, ...Node[]];
    const theirs = new Set(others.flatMap((n) => n.replica.servedShards()));
    cut.redis.blackhole();
    const result = await probe(client, workers, TTL + 5_000, theirs, TTL);
    expect(ownedBy(others)).toBe(true);
    expect(cut.replica.servedShards()).toEqual([]);
    expect(cut.replica.router.routing).toBe(false);
    expect(result.longestDark).toBeLessThanOrEqual(DARK_BOUND_MS);
    expect(result.failed / result.watched, `${result.failed} of ${result.watched} probes failed`).toBeLessThan(0.05);
    cut.redis.heal();
    await eventually(() => balanced(nodes) && cut.replica.router.routing, 15_000, 'the healed replica balanced back in');
  }, 40_000);

  it('a replica whose Redis link is slow steps out instead of leaving its shards unowned', async () => {
    const { client, workers } = await cluster();
    const [slow, ...others] = nodes as [Node, ...Node[]];
    // 400 ms each way: every Redis command of this replica now outlasts its command timeout
    // (a third of the TTL), while landing in Redis all the same.
    slow.redis.setLatency(400);
    const result = await probe(client, workers, TTL + 5_000, new Set(), 0);
    expect(ownedBy(others)).toBe(true);
    expect(slow.replica.servedShards()).toEqual([]);
    expect(result.longestDark).toBeLessThanOrEqual(DARK_BOUND_MS);
    slow.redis.setLatency(0);
    await eventually(() => balanced(nodes), 15_000, 'the replica balanced back in');
  }, 40_000);

  it('says once what happened: one line per incident, not one per shard per retry', async () => {
    const lines: Array<{ level: number; msg: string }> = [];
    const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as { level: number; msg: string }) });
    const prefix = testPrefix('pl');
    const node = await startNode(prefix, 'pl-a', log);
    await eventually(() => node.replica.servedShards().length === SHARDS, 10_000, 'all shards served');
    const before = lines.length;
    node.redis.blackhole();
    await delay(TTL * 2);
    node.redis.heal();
    await eventually(() => node.replica.servedShards().length === SHARDS, 15_000, 'shards back');
    await delay(200);
    const incident = lines.slice(before);
    const warnings = incident.filter((l) => l.level >= 40);
    const count = (pattern: RegExp) => incident.filter((l) => pattern.test(l.msg)).length;
    expect(count(/^cut off from Redis/)).toBe(1);
    expect(count(/^link to Redis is back/)).toBe(1);
    expect(count(/^shards acquired/)).toBeLessThanOrEqual(2);
    // 12 shards, a retry loop every few hundred ms: one line each per shard per retry would be
    // well over a hundred. What is left is a handful of distinct facts.
    expect(warnings.length, warnings.map((l) => l.msg).join(' | ')).toBeLessThanOrEqual(8);
    expect(incident.length, incident.map((l) => l.msg).join(' | ')).toBeLessThanOrEqual(20);
  }, 30_000);

  it('refuses a second replica started with the same replica id', async () => {
    const prefix = testPrefix('pd');
    await startNode(prefix, 'twin');
    const config = loadConfig({}, { httpPort: null, prefix, shards: SHARDS, leaseTtlMs: TTL, replicaId: 'twin', natsUrl: natsUrl(), redisUrl: redisUrl() });
    const started = Date.now();
    await expect(Replica.start(config, silentLogger())).rejects.toThrow(DuplicateReplicaError);
    // It waited for the first one's entry to expire (a crashed predecessor would have), saw it renewed, and gave up.
    expect(Date.now() - started).toBeLessThan(TTL * 2 + 1_000);
    expect(nodes[0]!.replica.membership.members).toEqual(['twin']);
    expect(nodes[0]!.replica.servedShards()).toHaveLength(SHARDS);
  }, 20_000);
});
