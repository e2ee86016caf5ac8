/**
 * The event log (src/events/container-events.ts): container events go to the stream in batches,
 * because the stream's cost is per message. Many placements committed together become a few log
 * messages, bounded by MAX_LOG_EVENTS; replay still gives every event once, in order, with the
 * stream sequence of its batch and its place in it; a replica's last batch goes out when it stops.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import { MAX_LOG_EVENTS, NatsContainerEvents } from '../../src/events/container-events.js';
import { followEvents, type StreamedEvent } from '../../src/events/event-follower.js';
import { Subjects } from '../../src/protocol/subjects.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;

beforeAll(async () => {
  replica = await startReplica({ shards: 4, eventsMaxBytes: 4 * 1024 * 1024 });
  client = await connectClient(replica.config.prefix);
  expect((await client.registerWorker({ id: 'log-w', cpu: 1_000_000, memory: 1_000_000 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
});

describe('event log', () => {
  it('stores a batch of placements as a few log messages, and replays every event once, in order', async () => {
    const before = { events: replica.events.published, messages: replica.events.logMessages };
    const reply = await client.submitBatch(Array.from({ length: 300 }, (_, i) => ({ id: `log-${i}`, cpu: 10, memory: 10 })));
    expect(reply.ok && reply.results.every((r) => r.ok)).toBe(true);
    const events = replica.events.published - before.events;
    const messages = replica.events.logMessages - before.messages;
    expect(events).toBe(300);
    expect(messages).toBeLessThanOrEqual(30);
    const seen: StreamedEvent[] = [];
    const follower = await followEvents(client.nc, replica.config.prefix, null, { streamSeq: 1 }, (event) => seen.push(event));
    await eventually(() => seen.length >= 300, 10_000, 'every event replayed');
    follower.stop();
    expect(new Set(seen.map((e) => e.event.id)).size).toBe(300);
    expect(seen.every((e) => e.event.status === 'placed' && e.event.seq === 1)).toBe(true);
    expect(new Set(seen.map((e) => e.streamSeq)).size).toBe(messages);
    // In stream order, and in publish order within a batch.
    for (let i = 1; i < seen.length; i += 1) {
      const [a, b] = [seen[i - 1]!, seen[i]!];
      expect(b.streamSeq > a.streamSeq || (b.streamSeq === a.streamSeq && b.index === a.index + 1)).toBe(true);
    }
    expect(seen[0]!.subject).toBe(new Subjects(replica.config.prefix).containerEvents(seen[0]!.event.id as string));
  });

  it('cuts a batch at MAX_LOG_EVENTS, and flush sends what is gathered', async () => {
    const prefix = testPrefix('lg');
    const subjects = new Subjects(prefix);
    const sizes: number[] = [];
    const subscription = client.nc.subscribe(subjects.eventLog('r1'), { callback: (error, msg) => { if (!error) sizes.push(msg.json<unknown[]>().length); } });
    await client.nc.flush();
    const log = new NatsContainerEvents(client.nc, subjects, 'r1');
    for (let i = 0; i < 2 * MAX_LOG_EVENTS + 5; i += 1) log.publish({ id: `c-${i}`, status: 'placed', seq: 1 });
    log.flush();
    await client.nc.flush();
    await eventually(() => sizes.reduce((a, b) => a + b, 0) === 2 * MAX_LOG_EVENTS + 5, 5_000, 'every event in the log');
    expect(sizes).toEqual([MAX_LOG_EVENTS, MAX_LOG_EVENTS, 5]);
    subscription.unsubscribe();
  });
});
