/**
 * Worker agents as real processes (`node bin/drover.js agent ...`) against a replica, real Redis
 * and NATS: they register, run containers' commands, report running and exited with the exit code,
 * stop what is released, adopt their containers after a restart, and a silent agent's worker is
 * lost: its running containers lost, the ones it never ran queued again and placed elsewhere.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive } from '../../src/agent/container-process.js';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { AGENT_TEST_TIMING, AgentProcesses, containerStatus as statusOfContainer, recordEvents, workerStatus as statusOfWorker, containersOf, type AgentProcess } from '../support/agents.js';
import { liveContainerCopies } from '../../src/chaos/container-processes.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const { workerTtlMs: WORKER_TTL_MS, workerLostAfterMs: WORKER_LOST_AFTER_MS } = AGENT_TEST_TIMING;
let replica: Replica;
let client: DroverClient;
let prefix: string;
const agents = new AgentProcesses(() => prefix);
let events: ContainerEvent[] = [];
let agentA: AgentProcess;
let dirA: string;

beforeAll(async () => {
  prefix = testPrefix('ag');
  replica = await startReplica({ prefix, shards: 4, workerTtlMs: WORKER_TTL_MS, workerLostAfterMs: WORKER_LOST_AFTER_MS });
  client = await connectClient(prefix);
  events = recordEvents(client, prefix);
});

afterAll(async () => {
  await agents.cleanUp();
  await client.close();
  await replica.stop();
});

const workerStatus = (id: string) => statusOfWorker(client, id);

const containerStatus = (id: string) => statusOfContainer(client, id);

const statusesOf = (id: string) => events.filter((e) => e.id === id).map((e) => e.status);

describe('worker agent', () => {
  it('registers pending, becomes available on its first report, runs a command and reports its exit code', async () => {
    dirA = agents.newStateDir();
    const dir = dirA;
    agentA = agents.start('agent-a', dir);
    await eventually(async () => (await workerStatus('agent-a')) === 'available', 10_000, 'agent-a available');
    expect(await client.getWorker('agent-a')).toMatchObject({ ok: true, worker: { agent: true } });
    expect(await client.submit({ id: 'job-exit3', cpu: 500, memory: 256, command: ['sh', '-c', 'echo hello; sleep 0.5; exit 3'] })).toMatchObject({ ok: true, status: 'placed', workerId: 'agent-a' });
    const end = await client.waitFor('job-exit3', 'terminal', 10_000);
    expect(end.status).toBe('exited');
    expect(end.container).toMatchObject({ status: 'exited', exitCode: 3, workerId: 'agent-a' });
    expect(end.container?.runningAt).not.toBeNull();
    await eventually(() => statusesOf('job-exit3').length === 3, 2_000, 'three events');
    expect(statusesOf('job-exit3')).toEqual(['placed', 'running', 'exited']);
    expect(readFileSync(join(dir, 'job-exit3.log'), 'utf8')).toBe('hello\n');
    // Its capacity is free again, and the agent was told to forget it.
    expect(await client.getWorker('agent-a')).toMatchObject({ ok: true, worker: { freeCpu: 1_000 } });
    await eventually(() => containersOf(dir)['job-exit3'] === undefined, 5_000, 'the agent forgets the recorded exit');
  });

  it('stops a released container (stopping, then released once the agent confirms) and frees its capacity', async () => {
    const dir = dirA;
    expect(await client.submit({ id: 'job-sleep', cpu: 500, memory: 256 })).toMatchObject({ ok: true, status: 'placed', workerId: 'agent-a' });
    await client.waitFor('job-sleep', 'running', 10_000);
    const pid = containersOf(dir)['job-sleep']!.pid;
    expect(alive(pid)).toBe(true);
    expect(await client.release('job-sleep')).toMatchObject({ ok: true, status: 'stopping' });
    const end = await client.waitFor('job-sleep', 'terminal', 10_000);
    expect(end.container).toMatchObject({ status: 'released', reason: 'RELEASED' });
    expect(alive(pid)).toBe(false);
    expect(await client.getWorker('agent-a')).toMatchObject({ ok: true, worker: { freeCpu: 1_000 } });
  });

  it('adopts its running containers after a restart (SIGKILL), and can still stop them', async () => {
    const dir = dirA;
    expect(await client.submit({ id: 'job-adopt', cpu: 500, memory: 256 })).toMatchObject({ ok: true, status: 'placed' });
    await client.waitFor('job-adopt', 'running', 10_000);
    const pid = containersOf(dir)['job-adopt']!.pid;
    await agents.kill(agentA);
    expect(alive(pid)).toBe(true);
    agentA = agents.start('agent-a', dir);
    // Back within the TTL: the same incarnation adopts it at once; nothing was unknown or lost.
    await new Promise((resolve) => setTimeout(resolve, WORKER_TTL_MS * 1.5));
    expect(await workerStatus('agent-a')).toBe('available');
    expect(await containerStatus('job-adopt')).toBe('running');
    expect(statusesOf('job-adopt')).toEqual(['placed', 'running']);
    expect(liveContainerCopies('job-adopt').map((copy) => copy.group)).toEqual([pid]);
    expect(await client.release('job-adopt')).toMatchObject({ ok: true, status: 'stopping' });
    expect((await client.waitFor('job-adopt', 'terminal', 10_000)).status).toBe('released');
    expect(alive(pid)).toBe(false);
  });

  it('a machine that dies: unreachable after the TTL (its running container unknown, never started elsewhere; the undelivered one requeued at once), lost after DROVER_WORKER_LOST_AFTER_MS', async () => {
    const dir = dirA;
    expect(await client.submit({ id: 'job-run', cpu: 500, memory: 256 })).toMatchObject({ ok: true, workerId: 'agent-a' });
    await client.waitFor('job-run', 'running', 10_000);
    const pid = containersOf(dir)['job-run']!.pid;
    // The machine dies: its agent and its containers.
    await agents.kill(agentA);
    process.kill(-pid, 'SIGKILL');
    const killedAt = Date.now();
    // Placed before the TTL ran out (the worker still looks available), never delivered.
    expect(await client.submit({ id: 'job-never-ran', cpu: 500, memory: 256, priority: 7 })).toMatchObject({ ok: true, status: 'placed', workerId: 'agent-a' });
    await eventually(async () => (await workerStatus('agent-a')) === 'unreachable', WORKER_TTL_MS * 3, 'agent-a unreachable');
    await eventually(async () => (await containerStatus('job-run')) === 'unknown', 3_000, 'job-run unknown');
    await eventually(async () => (await containerStatus('job-never-ran')) === 'queued', 3_000, 'job-never-ran queued again');
    expect(await client.getContainer('job-never-ran')).toMatchObject({ ok: true, container: { status: 'queued', workerId: null, priority: 7 } });
    // Another machine comes up: the requeued container runs there; the unknown one does not.
    agents.start('agent-b', agents.newStateDir());
    const end = await client.waitFor('job-never-ran', 'running', 15_000);
    expect(end.container).toMatchObject({ status: 'running', workerId: 'agent-b' });
    expect(await containerStatus('job-run')).toBe('unknown');
    expect(liveContainerCopies('job-run')).toEqual([]);
    // Lost only after DROVER_WORKER_LOST_AFTER_MS plus the margin, counted from its last report.
    await eventually(async () => (await containerStatus('job-run')) === 'lost', WORKER_LOST_AFTER_MS + 5_000, 'job-run lost');
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(WORKER_LOST_AFTER_MS);
    expect(await client.getContainer('job-run')).toMatchObject({ ok: true, container: { reason: 'WORKER_LOST' } });
    expect(statusesOf('job-never-ran')).toEqual(['placed', 'queued', 'placed', 'running']);
    expect(statusesOf('job-run')).toEqual(['placed', 'running', 'unknown', 'lost']);
    // The lost worker's capacity is all free (nothing leaks), and it comes back when its agent does.
    expect(await client.getWorker('agent-a')).toMatchObject({ ok: true, worker: { status: 'lost', freeCpu: 1_000 } });
    agentA = agents.start('agent-a', dir);
    await eventually(async () => (await workerStatus('agent-a')) === 'available', 10_000, 'agent-a back');
  });
});
