/**
 * The checker is itself checked: a run with an unfenced write (the seed's lock-plus-version path,
 * from a writer paused past its lock and lease between its checks and its write) must be reported
 * as a double placement and an over-commit; the same cluster before that write must be clean.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkRun } from '../../src/chaos/checker.js';
import { RequestLog } from '../../src/chaos/request-log.js';
import { placeUnfenced } from '../../src/chaos/unfenced-writer.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, delay, startReplica } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;
const log = new RequestLog();
const TTL = 1_000;

beforeAll(async () => {
  replica = await startReplica({ shards: 4, leaseTtlMs: TTL, historyCap: 1_000_000 });
  client = await connectClient(replica.config.prefix);
  for (const id of ['w1', 'w2']) expect((await client.registerWorker({ id, cpu: 1_000, memory: 1_000 })).ok).toBe(true);
  await delay(50);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
});

/** Submit through the real cluster and record it as the chaos load does. */
async function submit(id: string, cpu: number): Promise<void> {
  const record = log.begin('fenced-client', 'submit', id, cpu, cpu);
  const reply = await client.submit({ id, cpu, memory: cpu });
  record.attempts.push({ at: Date.now(), outcome: reply.ok ? { kind: 'placed', workerId: reply.workerId } : { kind: 'error', code: reply.error.code } });
  record.final = reply.ok ? { kind: 'placed', workerId: reply.workerId } : { kind: 'error', code: reply.error.code };
  record.endedAt = Date.now();
}

describe('chaos checker', () => {
  it('passes a clean run', async () => {
    await submit('warmup', 100);
    const report = await checkRun(replica.store, replica.config.shards, log.records);
    expect(report.violations).toEqual([]);
    expect(report.counts.placedAcks).toBe(1);
    await client.release('warmup');
    log.records.length = 0;
  });

  it('reports the double placement and over-commit an unfenced write causes', async () => {
    const shard = shardOf('w1', replica.config.shards);
    const unfenced = log.begin('unfenced-replica', 'submit', 'c1', 1_000, 1_000);
    // The unfenced writer checks everything for c1 on w1, then pauses past its lock and lease ...
    const late = placeUnfenced(replica.store, { containerId: 'c1', shard, workerId: 'w1', cpu: 1_000, memory: 1_000 }, async () => {
      // ... while the fenced cluster places c1 (the client retried elsewhere) and c2, filling both workers.
      await submit('c1', 1_000);
      await submit('c2', 1_000);
      await delay(TTL * 2);
    });
    const workerId = await late;
    unfenced.attempts.push({ at: Date.now(), outcome: { kind: 'placed', workerId } });
    unfenced.final = { kind: 'placed', workerId };

    const report = await checkRun(replica.store, replica.config.shards, log.records);
    const kinds = new Set(report.violations.map((v) => v.kind));
    expect(kinds.has('double-placement')).toBe(true);
    expect(kinds.has('over-commit')).toBe(true);
    expect(report.violations.find((v) => v.kind === 'double-placement')?.message).toMatch(/container c1 was placed twice/);
    expect(report.violations.find((v) => v.kind === 'over-commit')?.message).toMatch(/worker w1 held cpu 2000\/1000/);
  });
});
