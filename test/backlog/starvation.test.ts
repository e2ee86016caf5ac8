/**
 * A large request must not starve under a stream of small ones that keep taking the room that
 * frees: past DROVER_BACKLOG_HOLD_AFTER_MS it gets a worker held for it, the smalls go elsewhere (or
 * are refused), the worker empties, and the large one is placed there.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, delay, startReplica, testPrefix } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;

beforeAll(async () => {
  replica = await startReplica({ prefix: testPrefix('sv'), shards: 4, backlogHoldAfterMs: 500 });
  client = await connectClient(replica.config.prefix);
  expect(await client.registerWorker({ id: 'sv-w1', cpu: 1_000, memory: 1_000, pool: 'sv' })).toMatchObject({ ok: true });
});

afterAll(async () => {
  await client.close();
  await replica.stop();
});

describe('starvation', () => {
  it('places a large request on a held worker while small ones keep coming and going', async () => {
    // Two streams, each submitting a small container every 50 ms and releasing it 300 ms later:
    // the worker stays nearly full of small ones, and the room never reaches 1,000 millicores on
    // its own (room that frees is taken again within a few milliseconds).
    let running = true;
    let placedSmall = 0;
    const lane = async (name: string) => {
      for (let i = 0; running; i += 1) {
        const id = `sv-${name}-${i}`;
        const reply = await client.submit({ id, cpu: 300, memory: 300, pool: 'sv', queue: false });
        if (reply.ok) {
          placedSmall += 1;
          setTimeout(() => void client.release(id), 300);
        }
        await delay(50);
      }
    };
    const stream = Promise.all([lane('a'), lane('b')]);
    await delay(300);
    expect(await client.submit({ id: 'sv-large', cpu: 1_000, memory: 1_000, pool: 'sv' })).toMatchObject({ ok: true, status: 'queued' });
    const started = Date.now();
    let status = 'queued';
    while (status !== 'placed' && Date.now() - started < 8_000) {
      await delay(100);
      const reply = await client.getContainer('sv-large');
      status = reply.ok ? reply.container.status : 'unknown';
    }
    const waited = Date.now() - started;
    running = false;
    await stream;
    expect(status).toBe('placed');
    expect(placedSmall).toBeGreaterThan(3);
    // One worker was held for it (with holds switched off, it is still queued after 8 s: seen).
    expect(replica.backlog.stats.holds).toBe(1);
    expect(waited).toBeLessThan(8_000);
  });
});
