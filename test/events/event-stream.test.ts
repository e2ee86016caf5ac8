/**
 * Events you can follow (issue 18): every status write adds one to the container's `seq`, each
 * event carries it, `containers.get` shows it; a requeue publishes `queued`; the JetStream stream
 * keeps the events so a consumer that was away replays what it missed, from a stream sequence or a
 * time; the stream is bounded by bytes (the oldest go first) and age; and a replica on a NATS
 * server without JetStream runs on, saying why there is no replay.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNats, type ServerProcess } from '../../infra/servers.js';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import { followEvents, type StreamedEvent } from '../../src/events/event-follower.js';
import { eventStreamName } from '../../src/events/event-stream.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, delay, eventually, natsUrl, redisUrl, startReplica, testPrefix } from '../support/cluster.js';

const SHARDS = 4;

/** Every container event of a prefix as a plain subscriber sees it, in arrival order. */
function collect(nc: NatsConnection, prefix: string): ContainerEvent[] {
  const seen: ContainerEvent[] = [];
  nc.subscribe(`${prefix}.events.containers.>`, { callback: (error, msg) => { if (!error) seen.push(msg.json<ContainerEvent>()); } });
  return seen;
}

describe('seq across a whole lifecycle, a requeue and unknown included', () => {
  const TTL_MS = 600;
  let replica: Replica;
  let client: DroverClient;
  let events: ContainerEvent[];
  const seqs: Record<string, number> = {};
  const report = (worker: string, containers: Parameters<DroverClient['report']>[1]) =>
    client.report(worker, containers, `${worker}-incarnation`, (seqs[worker] = (seqs[worker] ?? 0) + 1));

  beforeAll(async () => {
    replica = await startReplica({ shards: SHARDS, workerTtlMs: TTL_MS, workerLostAfterMs: 3 * TTL_MS });
    client = await connectClient(replica.config.prefix);
    events = collect(client.nc, replica.config.prefix);
    await client.nc.flush();
  });

  afterAll(async () => {
    await client.close();
    await replica.stop();
  });

  const read = async (id: string) => {
    const reply = await client.getContainer(id);
    if (!reply.ok) throw new Error(`containers.get ${id}: ${reply.error.code}`);
    return reply.container;
  };
  const statusIs = (id: string, status: string) => async () => (await read(id)).status === status;

  it('rises by one per status write, in the record and in each event; the requeue publishes queued', async () => {
    // Worker A's agent (played here) reports once, then goes silent before taking its assignment:
    // the container, never delivered, goes back to the queue.
    expect((await client.registerWorker({ id: 'sq-a', cpu: 1_000, memory: 1_024, pool: 'sq', agent: true })).ok).toBe(true);
    expect(await report('sq-a', [])).toMatchObject({ ok: true });
    await delay(60);
    expect(await client.submit({ id: 'sq-1', cpu: 500, memory: 256, pool: 'sq' })).toMatchObject({ ok: true, status: 'placed', workerId: 'sq-a' });
    expect((await read('sq-1')).seq).toBe(1);
    await eventually(statusIs('sq-1', 'queued'), 10_000, 'sq-1 requeued');
    expect((await read('sq-1')).seq).toBe(2);

    // Worker B takes it, runs it, goes silent (unknown), comes back (running), and is told to stop it.
    expect((await client.registerWorker({ id: 'sq-b', cpu: 1_000, memory: 1_024, pool: 'sq', agent: true })).ok).toBe(true);
    expect(await report('sq-b', [])).toMatchObject({ ok: true });
    await eventually(statusIs('sq-1', 'placed'), 10_000, 'sq-1 placed on sq-b');
    expect(await read('sq-1')).toMatchObject({ workerId: 'sq-b', seq: 3 });
    const assignment = await report('sq-b', []);
    expect(assignment.ok && assignment.assignments.map((a) => a.id)).toEqual(['sq-1']);
    expect(await report('sq-b', [{ id: 'sq-1', status: 'running' }])).toMatchObject({ ok: true });
    expect(await read('sq-1')).toMatchObject({ status: 'running', seq: 4 });
    await eventually(statusIs('sq-1', 'unknown'), 10_000, 'sq-1 unknown');
    expect((await read('sq-1')).seq).toBe(5);
    expect(await report('sq-b', [{ id: 'sq-1', status: 'running' }])).toMatchObject({ ok: true });
    await eventually(statusIs('sq-1', 'running'), 10_000, 'sq-1 running again');
    expect((await read('sq-1')).seq).toBe(6);
    expect(await client.release('sq-1')).toMatchObject({ ok: true, status: 'stopping' });
    expect((await read('sq-1')).seq).toBe(7);
    expect(await report('sq-b', [])).toMatchObject({ ok: true });
    // Ended: the tombstone keeps the seq.
    expect(await read('sq-1')).toMatchObject({ status: 'released', seq: 8 });

    await eventually(() => events.filter((e) => e.id === 'sq-1').length >= 8, 5_000, 'eight events of sq-1');
    const mine = events.filter((e) => e.id === 'sq-1').sort((a, b) => a.seq - b.seq);
    expect(mine.map((e) => [e.seq, e.status])).toEqual([
      [1, 'placed'], [2, 'queued'], [3, 'placed'], [4, 'running'], [5, 'unknown'], [6, 'running'], [7, 'stopping'], [8, 'released'],
    ]);
    expect(mine[2]).toMatchObject({ workerId: 'sq-b' });
  });

  it('queued, then ended without a placement: 1, 2 (backlog_commit counts too)', async () => {
    expect(await client.submit({ id: 'sq-2', cpu: 100, memory: 100, pool: 'sq-none' })).toMatchObject({ ok: true, status: 'queued' });
    expect((await read('sq-2')).seq).toBe(1);
    expect(await client.release('sq-2')).toMatchObject({ ok: true, status: 'released' });
    expect(await read('sq-2')).toMatchObject({ status: 'released', reason: 'CANCELLED', seq: 2 });
    await eventually(() => events.filter((e) => e.id === 'sq-2').length >= 2, 5_000, 'two events of sq-2');
    expect(events.filter((e) => e.id === 'sq-2').map((e) => [e.seq, e.status])).toEqual([[1, 'queued'], [2, 'released']]);
  });
});

describe('the event stream', () => {
  let replica: Replica;
  let client: DroverClient;

  beforeAll(async () => {
    replica = await startReplica({ shards: SHARDS });
    client = await connectClient(replica.config.prefix);
    expect((await client.registerWorker({ id: 'es-w', cpu: 100_000, memory: 100_000 })).ok).toBe(true);
  });

  afterAll(async () => {
    await client.close();
    await replica.stop();
  });

  /** Place and release `count` containers: two events each. */
  async function churn(label: string, count: number): Promise<void> {
    for (let i = 0; i < count; i += 1) {
      expect(await client.submit({ id: `${label}-${i}`, cpu: 10, memory: 10 })).toMatchObject({ ok: true, status: 'placed' });
      expect(await client.release(`${label}-${i}`)).toMatchObject({ ok: true });
    }
  }

  it('a consumer that was away replays what it missed, from a stream sequence and from a time', async () => {
    const prefix = replica.config.prefix;
    const first = await connect({ servers: natsUrl() });
    const seen: StreamedEvent[] = [];
    const follower = await followEvents(first, prefix, null, { streamSeq: 1 }, (event) => seen.push(event));
    await churn('before', 3);
    await eventually(() => seen.length >= 6, 5_000, 'six events followed live');
    expect(seen.map((e) => e.event.id)).toEqual(['before-0', 'before-0', 'before-1', 'before-1', 'before-2', 'before-2']);
    expect(seen.map((e) => e.event.seq)).toEqual([1, 2, 1, 2, 1, 2]);
    // Away: the connection goes, events go on.
    follower.stop();
    await first.close();
    const lastSeen = seen[seen.length - 1]!;
    const awayAt = new Date();
    await delay(20);
    await churn('away', 4);

    const back = await connect({ servers: natsUrl() });
    try {
      const bySeq: StreamedEvent[] = [];
      const fromSeq = await followEvents(back, prefix, null, { streamSeq: lastSeen.streamSeq + 1 }, (event) => bySeq.push(event));
      await eventually(() => bySeq.length >= 8, 5_000, 'the eight missed events, by sequence');
      await delay(200);
      fromSeq.stop();
      expect(bySeq.map((e) => `${e.event.id} ${e.event.status} ${e.event.seq}`)).toEqual(
        [0, 1, 2, 3].flatMap((i) => [`away-${i} placed 1`, `away-${i} released 2`]),
      );
      expect(bySeq[0]!.streamSeq).toBe(lastSeen.streamSeq + 1);

      const byTime: StreamedEvent[] = [];
      const fromTime = await followEvents(back, prefix, null, { since: awayAt }, (event) => byTime.push(event));
      await eventually(() => byTime.length >= 8, 5_000, 'the eight missed events, by time');
      await delay(200);
      fromTime.stop();
      expect(byTime.map((e) => e.streamSeq)).toEqual(bySeq.map((e) => e.streamSeq));

      // One container's subject only, then live: what comes next arrives too.
      const one: StreamedEvent[] = [];
      const oneFollower = await followEvents(back, prefix, 'away-2', { streamSeq: 1 }, (event) => one.push(event));
      await eventually(() => one.length >= 2, 5_000, 'away-2 replayed');
      expect(one.map((e) => e.event.status)).toEqual(['placed', 'released']);
      oneFollower.stop();
    } finally {
      await back.close();
    }
  });

  it('is bounded: a tiny max_bytes keeps only the newest events, and the settings are the stream\'s', async () => {
    const tiny = await startReplica({ shards: SHARDS, eventsMaxBytes: 1_024, eventsMaxAgeSeconds: 600 });
    const tinyClient = await connectClient(tiny.config.prefix);
    try {
      expect((await tinyClient.registerWorker({ id: 'tb-w', cpu: 100_000, memory: 100_000 })).ok).toBe(true);
      for (let i = 0; i < 20; i += 1) {
        expect(await tinyClient.submit({ id: `tb-${i}`, cpu: 10, memory: 10 })).toMatchObject({ ok: true, status: 'placed' });
        expect(await tinyClient.release(`tb-${i}`)).toMatchObject({ ok: true });
      }
      const jsm = await jetstreamManager(tinyClient.nc);
      const info = await jsm.streams.info(eventStreamName(tiny.config.prefix));
      expect(info.config).toMatchObject({ max_bytes: 1_024, max_age: 600 * 1_000_000_000, storage: 'file', discard: 'old', subjects: [`${tiny.config.prefix}.eventlog.>`] });
      await eventually(async () => (await jsm.streams.info(eventStreamName(tiny.config.prefix))).state.last_seq === 40, 5_000, '40 events stored');
      const state = (await jsm.streams.info(eventStreamName(tiny.config.prefix))).state;
      expect(state.bytes).toBeLessThanOrEqual(1_024);
      expect(state.first_seq).toBeGreaterThan(1);
      // A replay from the start begins at the oldest event kept: the last ones, in order.
      const replayed: StreamedEvent[] = [];
      const follower = await followEvents(tinyClient.nc, tiny.config.prefix, null, { streamSeq: 1 }, (event) => replayed.push(event));
      await eventually(() => replayed.length === state.messages, 5_000, 'the kept events replayed');
      follower.stop();
      expect(replayed[0]!.streamSeq).toBe(state.first_seq);
      expect(replayed[replayed.length - 1]!.event).toMatchObject({ id: 'tb-19', status: 'released' });
    } finally {
      await tinyClient.close();
      await tiny.stop();
    }
  });

  it('replicas starting at once with other settings: each start succeeds, the stream ends with one of them', async () => {
    const prefix = testPrefix('es');
    const started = await Promise.all([1_000_000, 2_000_000, 3_000_000].map((eventsMaxBytes) => startReplica({ prefix, shards: SHARDS, eventsMaxBytes })));
    try {
      for (const r of started) expect(r.status()).toMatchObject({ eventStream: { name: eventStreamName(prefix), kept: true } });
      const jsm = await jetstreamManager(client.nc);
      expect([1_000_000, 2_000_000, 3_000_000]).toContain((await jsm.streams.info(eventStreamName(prefix))).config.max_bytes);
    } finally {
      await Promise.all(started.map((r) => r.stop()));
    }
  });
});

describe('a NATS server without JetStream', () => {
  let nats: ServerProcess;
  beforeAll(async () => {
    nats = await startNats({ jetstream: false });
  });
  afterAll(async () => {
    await nats.stop();
  });

  it('the replica starts, says events are not kept, and still publishes them', async () => {
    const replica = await startReplica({ shards: SHARDS, natsUrl: nats.url, redisUrl: redisUrl() });
    const other = await connect({ servers: nats.url });
    try {
      expect(replica.status()).toMatchObject({ eventStream: { kept: false, reason: expect.stringMatching(/JetStream/) } });
      const seen: ContainerEvent[] = [];
      other.subscribe(`${replica.config.prefix}.events.containers.>`, { callback: (error, msg) => { if (!error) seen.push(msg.json<ContainerEvent>()); } });
      await other.flush();
      const { DroverClient } = await import('../../src/client/drover-client.js');
      const local = await DroverClient.connect(nats.url, replica.config.prefix);
      expect(await local.submit({ id: 'nj-1', cpu: 10, memory: 10, pool: 'none' })).toMatchObject({ ok: true, status: 'queued' });
      await eventually(() => seen.length === 1, 5_000, 'the queued event');
      expect(seen[0]).toMatchObject({ id: 'nj-1', status: 'queued', seq: 1 });
      await expect(followEvents(other, replica.config.prefix, null, { streamSeq: 1 }, () => undefined)).rejects.toThrow(/no event stream/);
      await local.close();
    } finally {
      await other.close();
      await replica.stop();
    }
  });
});
