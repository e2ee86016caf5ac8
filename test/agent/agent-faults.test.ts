/**
 * Agent faults, with real agent processes, a real replica, Redis and NATS, judged by the processes
 * that really run on the machine (/proc), not only by Drover's records:
 * - an agent frozen (SIGSTOP of the agent alone, its container running) past the TTL and woken
 *   before the fence: the container is `unknown` meanwhile, never started elsewhere, and back to
 *   `running` with the same process;
 * - frozen past DROVER_WORKER_LOST_AFTER_MS: the record ends lost, and the woken agent stops the
 *   process at once (its fence) instead of running on;
 * - a twin agent with the same worker id (another state directory) is refused and exits non-zero;
 *   a second agent on the same state directory too;
 * - a report older than the last one, or from another incarnation, is refused;
 * - a control-plane outage longer than the TTL (the replica stopped, then a new one) stops nothing
 *   and every record ends `running`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive } from '../../src/agent/container-process.js';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { AGENT_TEST_TIMING, AgentProcesses, containerStatus as statusOfContainer, recordEvents, workerStatus as statusOfWorker, containersOf, identityOf } from '../support/agents.js';
import { containersRunningTwice, liveContainerCopies } from '../../src/chaos/container-processes.js';
import { connectClient, delay, eventually, startReplica, testPrefix } from '../support/cluster.js';

const { workerTtlMs: WORKER_TTL_MS, workerLostAfterMs: WORKER_LOST_AFTER_MS } = AGENT_TEST_TIMING;
let replica: Replica;
let client: DroverClient;
let prefix: string;
const agents = new AgentProcesses(() => prefix);
let events: ContainerEvent[] = [];
/** Sampled every 100 ms for the whole file: any container id with two live process groups. */
const twice = new Set<string>();
let sampler: NodeJS.Timeout;

const config = () => ({ prefix, shards: 4, workerTtlMs: WORKER_TTL_MS, workerLostAfterMs: WORKER_LOST_AFTER_MS });

beforeAll(async () => {
  prefix = testPrefix('af');
  replica = await startReplica(config());
  client = await connectClient(prefix);
  events = recordEvents(client, prefix);
  sampler = setInterval(() => {
    for (const id of containersRunningTwice(`${prefix}-`).keys()) twice.add(id);
  }, 100);
});

afterAll(async () => {
  clearInterval(sampler);
  await agents.cleanUp();
  await client.close();
  await replica.stop();
});

const statusesOf = (id: string) => events.filter((e) => e.id === id).map((e) => e.status);

const containerStatus = (id: string) => statusOfContainer(client, id);

const workerStatus = (id: string) => statusOfWorker(client, id);

async function available(...ids: string[]): Promise<void> {
  for (const id of ids) await eventually(async () => (await workerStatus(id)) === 'available', 10_000, `${id} available`);
}

describe('agent faults', () => {
  it('a frozen agent: its container is unknown (never started elsewhere, nothing new placed there), then running again with the same process', async () => {
    const pool = 'freeze';
    const dir = agents.newStateDir();
    const agent = agents.start('fz-1', dir, { pool, cpu: 1_100 });
    await available('fz-1');
    const id = `${prefix}-frozen`;
    expect(await client.submit({ id, cpu: 600, memory: 256, pool })).toMatchObject({ ok: true, status: 'placed', workerId: 'fz-1' });
    await client.waitFor(id, 'running', 10_000);
    agents.start('fz-2', agents.newStateDir(), { pool });
    await available('fz-2');
    const pid = containersOf(dir)[id]!.pid;
    const workerId = 'fz-1';
    const before = replica.stats().agents;
    agent.child.kill('SIGSTOP');

    await eventually(async () => (await containerStatus(id)) === 'unknown', WORKER_TTL_MS * 3, 'unknown');
    expect(await workerStatus(workerId)).toBe('unreachable');
    expect(replica.stats().agents.unreachable - before.unreachable).toBe(1);
    expect(replica.stats().agents.unknown - before.unknown).toBe(1);
    // A submit that fits is placed on the other worker; one that fits only the frozen one waits.
    const other = 'fz-2';
    expect(await client.submit({ id: `${prefix}-fits`, cpu: 600, memory: 256, pool })).toMatchObject({ ok: true, status: 'placed', workerId: other });
    // 450 fits only the frozen worker (500 free there, 400 on fz-2): it waits, nothing goes there.
    expect(await client.submit({ id: `${prefix}-waits`, cpu: 450, memory: 256, pool })).toMatchObject({ ok: true, status: 'queued' });
    await delay(500);
    expect(liveContainerCopies(id).map((copy) => copy.group)).toEqual([pid]);

    // Woken before its fence (5 s after its last answered report): nothing was stopped.
    agent.child.kill('SIGCONT');
    await eventually(async () => (await containerStatus(id)) === 'running', 5_000, 'running again');
    expect(await workerStatus(workerId)).toBe('available');
    expect(alive(pid)).toBe(true);
    expect(statusesOf(id)).toEqual(['placed', 'running', 'unknown', 'running']);
    // The waiting one now fits the woken worker.
    expect((await client.waitFor(`${prefix}-waits`, 'running', 10_000)).container).toMatchObject({ workerId });
    expect(twice).toEqual(new Set());
  });

  it('frozen past DROVER_WORKER_LOST_AFTER_MS: the record ends lost and the woken agent stops the process at once (its fence)', async () => {
    const dir = agents.newStateDir();
    const agent = agents.start('fl-1', dir, { pool: 'frozen-long' });
    await available('fl-1');
    const id = `${prefix}-long`;
    expect(await client.submit({ id, cpu: 500, memory: 256, pool: 'frozen-long' })).toMatchObject({ ok: true, workerId: 'fl-1' });
    await client.waitFor(id, 'running', 10_000);
    const pid = containersOf(dir)[id]!.pid;
    agent.child.kill('SIGSTOP');
    const frozenAt = Date.now();
    await eventually(async () => (await containerStatus(id)) === 'lost', WORKER_LOST_AFTER_MS * 2, 'lost');
    expect(Date.now() - frozenAt).toBeGreaterThanOrEqual(WORKER_LOST_AFTER_MS);
    expect(await workerStatus('fl-1')).toBe('lost');
    // A frozen agent cannot act: its process still runs until it wakes.
    expect(alive(pid)).toBe(true);
    agent.child.kill('SIGCONT');
    const wokenAt = Date.now();
    await eventually(() => !alive(pid), 3_000, 'the fenced process gone');
    expect(Date.now() - wokenAt).toBeLessThan(3_000);
    // It reports again (the exit as fenced), the worker comes back, the record stays lost.
    await available('fl-1');
    expect(await client.getContainer(id)).toMatchObject({ ok: true, container: { status: 'lost', reason: 'WORKER_LOST' } });
    expect(statusesOf(id)).toEqual(['placed', 'running', 'unknown', 'lost']);
  });

  it('a twin agent (same worker id, another state directory) is refused and exits non-zero; so is a second agent on one state directory', async () => {
    const dir = agents.newStateDir();
    agents.start('tw-1', dir, { pool: 'twin' });
    await available('tw-1');
    const id = `${prefix}-twin`;
    expect(await client.submit({ id, cpu: 500, memory: 256, pool: 'twin' })).toMatchObject({ ok: true, workerId: 'tw-1' });
    await client.waitFor(id, 'running', 10_000);

    const twin = agents.start('tw-1', agents.newStateDir(), { pool: 'twin' });
    expect(await twin.exited).not.toBe(0);
    expect(twin.stderr()).toContain('AGENT_CONFLICT');
    const sameDir = agents.start('tw-1', dir, { pool: 'twin' });
    expect(await sameDir.exited).not.toBe(0);
    expect(sameDir.stderr()).toContain('in use by another agent');

    await delay(WORKER_TTL_MS);
    expect(liveContainerCopies(id)).toHaveLength(1);
    expect(await containerStatus(id)).toBe('running');
    expect(await workerStatus('tw-1')).toBe('available');
  });

  it('refuses a report older than the last one, and a report from another incarnation', async () => {
    const dir = agents.newStateDir();
    agents.start('st-1', dir, { pool: 'stale' });
    await available('st-1');
    const { incarnation, seq } = identityOf(dir);
    const before = replica.stats().agents;
    expect(seq).toBeGreaterThan(0);
    const old = await client.report('st-1', [], incarnation, 1);
    expect(old).toMatchObject({ ok: false, error: { code: 'CONFLICT' } });
    expect(JSON.stringify(old)).toContain('older than');
    const other = await client.report('st-1', [], 'another-incarnation', 1);
    expect(other).toMatchObject({ ok: false, error: { code: 'AGENT_CONFLICT' } });
    expect(await workerStatus('st-1')).toBe('available');
    // Counted where an operator looks (drover status, /metrics).
    const counted = replica.stats().agents;
    expect(counted.staleReports - before.staleReports).toBe(1);
    expect(counted.agentConflicts - before.agentConflicts).toBe(1);
    const metrics = await replica.metrics.text();
    expect(metrics).toContain(`drover_agent_events_total{event="stale_report",replica="${replica.config.replicaId}"} ${counted.staleReports}`);
    expect(metrics).toContain(`drover_agent_events_total{event="agent_conflict",replica="${replica.config.replicaId}"} ${counted.agentConflicts}`);
  });

  it('a control-plane outage longer than the TTL (the replica gone, then back) stops nothing: every record ends running', async () => {
    const dir = agents.newStateDir();
    agents.start('out-1', dir, { pool: 'outage', cpu: 2_000 });
    await available('out-1');
    const ids = [`${prefix}-out-a`, `${prefix}-out-b`];
    for (const id of ids) expect(await client.submit({ id, cpu: 500, memory: 256, pool: 'outage' })).toMatchObject({ ok: true, workerId: 'out-1' });
    for (const id of ids) await client.waitFor(id, 'running', 10_000);
    const pids = ids.map((id) => containersOf(dir)[id]!.pid);

    await replica.stop();
    // Longer than the TTL, shorter than the agent's fence (5 s).
    await delay(WORKER_TTL_MS * 2.5);
    replica = await startReplica(config());
    for (const id of ids) await eventually(async () => (await containerStatus(id)) === 'running', 10_000, `${id} running`);
    await delay(WORKER_TTL_MS * 1.5);
    for (const id of ids) expect(await containerStatus(id)).toBe('running');
    for (const pid of pids) expect(alive(pid)).toBe(true);
    for (const id of ids) expect(statusesOf(id)).toEqual(['placed', 'running']);
    expect(twice).toEqual(new Set());
  });
});
