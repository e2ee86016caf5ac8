/**
 * The checker is itself checked. A clean run must pass. Then the fault it guards against, for
 * real: a seed-style scheduler process (the lock-plus-version path with no epoch,
 * src/chaos/unfenced-writer.ts) holds a shard's lease, checks a placement, and is stopped with
 * SIGSTOP before its write, past its lock and its lease; a Drover replica takes the shard and
 * fills the worker; on SIGCONT the old process writes anyway. The checker must report the double
 * placement and the over-commit.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkRun } from '../../src/chaos/checker.js';
import { RequestLog } from '../../src/chaos/request-log.js';
import type { UnfencedWriteJob } from '../../src/chaos/unfenced-writer.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { packageRoot } from '../../src/util/package-root.js';
import { connectClient, delay, eventually, redisUrl, startReplica } from '../support/cluster.js';

const replicas: Replica[] = [];
let client: DroverClient;
const log = new RequestLog();
const TTL = 1_000;
const SHARDS = 4;

beforeAll(async () => {
  replicas.push(await startReplica({ shards: SHARDS, leaseTtlMs: TTL, historyCap: 1_000_000 }));
  client = await connectClient(replicas[0]!.config.prefix);
  expect((await client.registerWorker({ id: 'w1', cpu: 1_000, memory: 1_000 })).ok).toBe(true);
  await delay(50);
});

afterAll(async () => {
  await client.close();
  await Promise.all(replicas.map((r) => r.stop()));
});

/** Submit through the real cluster and record it as the chaos load does. */
async function submit(id: string, cpu: number): Promise<void> {
  const record = log.begin('fenced-client', 'submit', id, cpu, cpu);
  const reply = await client.submit({ id, cpu, memory: cpu, queue: false });
  const outcome = reply.ok && reply.status === 'placed' ? { kind: 'placed' as const, workerId: reply.workerId } : { kind: 'error' as const, code: reply.ok ? 'INTERNAL' as const : reply.error.code };
  record.attempts.push({ at: Date.now(), outcome });
  record.final = outcome;
  record.endedAt = Date.now();
}

/** The unfenced writer as its own OS process; `next(event)` waits for its next JSON line of that event. */
function startUnfencedWriter(job: UnfencedWriteJob) {
  const child = spawn(process.execPath, [join(packageRoot(), 'dist', 'src', 'chaos', 'unfenced-writer.js')], {
    env: { ...process.env, DROVER_UNFENCED_WRITE: JSON.stringify(job) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const events: Array<Record<string, unknown>> = [];
  createInterface({ input: child.stdout! }).on('line', (line) => events.push(JSON.parse(line) as Record<string, unknown>));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const next = async (event: string): Promise<Record<string, unknown>> => {
    await eventually(() => events.some((e) => e.event === event || e.event === 'failed'), 10_000, `the unfenced writer to say ${event}`);
    const found = events.find((e) => e.event === event);
    if (found === undefined) throw new Error(`the unfenced writer failed: ${JSON.stringify(events)}`);
    return found;
  };
  return { child, next, exited };
}

describe('chaos checker', () => {
  it('passes a clean run', async () => {
    await submit('warmup', 100);
    const report = await checkRun(replicas[0]!.store, SHARDS, log.records);
    expect(report.violations).toEqual([]);
    expect(report.counts.placedAcks).toBe(1);
    await client.release('warmup');
    log.records.length = 0;
  });

  it('reports the double placement and over-commit of a seed-style writer stopped past its lease', async () => {
    const prefix = replicas[0]!.config.prefix;
    const shard = shardOf('w1', SHARDS);
    // The Drover replica leaves (releasing its leases), so the seed-style process can take w1's shard.
    await replicas[0]!.stop();
    const writer = startUnfencedWriter({
      redisUrl: redisUrl(),
      prefix,
      placement: { containerId: 'c1', shard, workerId: 'w1', cpu: 1_000, memory: 1_000 },
      leaseTtlMs: TTL,
      // Long enough that SIGSTOP surely lands before the write, even on a loaded machine; once
      // resumed, the timer has long expired and the write goes out at once.
      holdMs: 2_000,
    });
    const unfenced = log.begin('unfenced-replica', 'submit', 'c1', 1_000, 1_000);
    await writer.next('checked');
    // Stopped between its checks and its write, as by a long GC pause or a frozen VM.
    writer.child.kill('SIGSTOP');
    try {
      // A Drover replica takes every shard; w1's only once the stopped process's lease has run out.
      const next = await startReplica({ prefix, shards: SHARDS, leaseTtlMs: TTL, historyCap: 1_000_000 });
      replicas.push(next);
      await eventually(() => next.servedShards().includes(shard), 5 * TTL, `the new replica to take shard ${shard}`);
      // The client retried c1 elsewhere and Drover placed it, filling w1.
      await submit('c1', 1_000);
      expect(log.records.at(-1)?.final).toEqual({ kind: 'placed', workerId: 'w1' });
    } finally {
      writer.child.kill('SIGCONT');
    }
    const placed = await writer.next('placed');
    expect(await writer.exited).toBe(0);
    unfenced.attempts.push({ at: Date.now(), outcome: { kind: 'placed', workerId: String(placed.workerId) } });
    unfenced.final = { kind: 'placed', workerId: String(placed.workerId) };

    const report = await checkRun(replicas[1]!.store, SHARDS, log.records);
    const kinds = new Set(report.violations.map((v) => v.kind));
    expect(kinds.has('double-placement')).toBe(true);
    expect(kinds.has('over-commit')).toBe(true);
    expect(report.violations.find((v) => v.kind === 'double-placement')?.message).toMatch(/container c1 was placed twice/);
    expect(report.violations.find((v) => v.kind === 'over-commit')?.message).toMatch(/worker w1 held cpu 2000\/1000/);
  });
});
