/**
 * The short form of `npm run chaos`, inside `npm test`: three replica processes under continuous
 * load, each fault once (SIGKILL, SIGSTOP past twice the lease TTL, join, SIGTERM leave, NATS
 * restart, Redis restart, and a replica stopped while Redis restarts), then two mixed faults; the checker must find nothing and every fault
 * must recover. Beside the main load, a backlog load keeps a small pool overfull, so requests
 * queue, wait, are cancelled and are placed through every fault; each must end, and its events
 * must come in an order its lifecycle allows. The long form runs more faults for longer with the same code.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ALL_FAULTS, runChaos } from '../../src/chaos/run.js';

describe('chaos (short form)', () => {
  it('survives every fault with no double placement, no over-commit and nothing lost', async () => {
    const lines: string[] = [];
    const logDir = mkdtempSync(join(tmpdir(), 'drover-chaos-logs-'));
    const result = await runChaos({
      replicas: 3,
      workers: 300,
      shards: 16,
      leaseTtlMs: 1_500,
      scenarios: ALL_FAULTS,
      mixedFaults: 2,
      settleMs: 1_500,
      clients: 3,
      lanesPerClient: 4,
      seed: 7,
      resultsFile: null,
      logDir,
      out: (line) => {
        lines.push(line);
        console.log(line);
      },
    });
    expect(result.report.violations).toEqual([]);
    expect(result.problems).toEqual([]);
    expect(result.faults.map((f) => f.fault)).toEqual([...ALL_FAULTS, expect.any(String), expect.any(String)]);
    for (const fault of result.faults) expect(fault.ok, `${fault.fault}: ${JSON.stringify(fault.timings)}`).toBe(true);
    // The load was real: thousands of requests, most placed or released, through every fault.
    expect(result.report.counts.requests).toBeGreaterThan(2_000);
    expect(result.report.counts.placedAcks).toBeGreaterThan(1_000);
    expect(result.report.counts.releasedAcks).toBeGreaterThan(500);
    // Requests that waited, through every fault: each ended (none stuck), events in a valid order.
    expect(result.backlog.queued).toBeGreaterThan(200);
    expect(result.backlog.events).toBeGreaterThan(result.backlog.submitted);
    expect(lines.at(-1)).toBe('chaos: PASS');
    // Every replica's whole log was kept. Only a replica whose NATS link a fault cut may find
    // itself cut off from NATS: the peer watch's ballast once made healthy replicas step out too
    // (their own link check stalled behind it), which this catches.
    const logs = readdirSync(logDir).map((file) => readFileSync(join(logDir, file), 'utf8'));
    expect(logs.length).toBeGreaterThanOrEqual(3);
    for (const log of logs) expect(log).toContain('"replica started"');
    const cutOff = logs.join('').split('\n').filter((line) => line.includes('"msg":"cut off from NATS:')).length;
    expect(cutOff, 'replicas that found themselves cut off from NATS').toBe(result.faults.filter((f) => f.fault === 'nats-cut').length);
    rmSync(logDir, { recursive: true, force: true });
  }, 600_000);
});
