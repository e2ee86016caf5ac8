/**
 * The chaos suite's container watch, shown to fire on each fault it guards, with real processes
 * planted on this machine (as an agent would start them: their own process group, the container
 * and worker ids in their environment) and real records in a replica: a container running twice,
 * one running where its record does not put it, and one running on after its record ended
 * (unless its agent is frozen and cannot act). Healthy copies raise nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import { ContainerWatch } from '../../src/chaos/container-watch.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, delay, startReplica, testPrefix } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;
let prefix: string;
const planted: ChildProcess[] = [];

beforeAll(async () => {
  prefix = testPrefix('cw');
  replica = await startReplica({ prefix, shards: 4 });
  client = await connectClient(prefix);
  for (const id of ['cw-w1', 'cw-w2', 'cw-w3']) expect(await client.registerWorker({ id, cpu: 4_000, memory: 4_096, pool: prefix })).toMatchObject({ ok: true });
});

afterAll(async () => {
  for (const child of planted) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await client.close();
  await replica.stop();
});

/** A process as an agent starts one: its own group, the ids in its environment. */
function plant(containerId: string, workerId: string): ChildProcess {
  const child = spawn('sleep', ['60'], { detached: true, stdio: 'ignore', env: { PATH: process.env.PATH, DROVER_CONTAINER_ID: containerId, DROVER_WORKER_ID: workerId } });
  planted.push(child);
  return child;
}

/** Place a container that takes most of a worker; the worker it went to. */
async function place(id: string): Promise<string> {
  const reply = await client.submit({ id, cpu: 3_000, memory: 256, pool: prefix, queue: false });
  expect(reply).toMatchObject({ ok: true, status: 'placed' });
  return (reply as { workerId: string }).workerId;
}

const WORKERS = ['cw-w1', 'cw-w2', 'cw-w3'];

describe('container watch', () => {
  it('fires on a container running twice, running elsewhere, and running on after it ended; not on healthy copies or a frozen agent', async () => {
    const watch = new ContainerWatch({ idPrefix: `${prefix}-`, observer: client, ttlMs: 500 });
    const healthy = `${prefix}-healthy`;
    const twice = `${prefix}-twice`;
    const ended = `${prefix}-ended`;
    const healthyOn = await place(healthy);
    const twiceOn = await place(twice);
    const endedOn = await place(ended);
    plant(healthy, healthyOn);
    plant(twice, twiceOn);
    plant(twice, twiceOn);
    plant(ended, endedOn);
    const elsewhere = `${prefix}-elsewhere`;
    await delay(100);
    await watch.sample(true);
    expect(watch.violations.map((v) => v.kind).sort()).toEqual(['running-twice']);
    expect(watch.violations[0]!.message).toContain(twice);

    // A copy on a worker its record does not name.
    expect(await client.release(healthy)).toMatchObject({ ok: true });
    const elsewhereOn = await place(elsewhere);
    plant(elsewhere, WORKERS.find((w) => w !== elsewhereOn)!);
    await watch.sample(true);
    expect(watch.violations.map((v) => v.kind).sort()).toEqual(['running-twice', 'runs-elsewhere']);

    // Ended while its process runs on: a frozen agent cannot act, so nothing yet; once woken, a TTL
    // (plus a second) later it is reported.
    watch.agentFrozen(endedOn, true);
    expect(await client.release(ended)).toMatchObject({ ok: true, status: 'released' });
    await watch.sample(true);
    await delay(2_000);
    await watch.sample(true);
    expect(watch.violations.filter((v) => v.kind === 'terminal-running' && v.message.includes(ended))).toEqual([]);
    watch.agentFrozen(endedOn, false);
    await watch.sample(true);
    await delay(1_700);
    await watch.sample(true);
    // healthy was released too and still runs (its worker was never frozen): both are reported.
    const terminal = watch.violations.filter((v) => v.kind === 'terminal-running').map((v) => v.message);
    expect(terminal.some((m) => m.includes(ended))).toBe(true);
    expect(terminal.some((m) => m.includes(healthy))).toBe(true);
  });
});
