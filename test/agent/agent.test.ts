/**
 * Worker agents as real processes (`node bin/drover.js agent ...`) against a replica, real Redis
 * and NATS: they register, run containers' commands, report running and exited with the exit code,
 * stop what is released, adopt their containers after a restart, and a silent agent's worker is
 * lost: its running containers lost, the ones it never ran queued again and placed elsewhere.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive } from '../../src/agent/container-process.js';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, eventually, natsUrl, startReplica, testPrefix } from '../support/cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;
const WORKER_TTL_MS = 1_500;
let replica: Replica;
let client: DroverClient;
let prefix: string;
const agents: ChildProcess[] = [];
const stateDirs: string[] = [];
const events: ContainerEvent[] = [];

beforeAll(async () => {
  prefix = testPrefix('ag');
  replica = await startReplica({ prefix, shards: 4, workerTtlMs: WORKER_TTL_MS });
  client = await connectClient(prefix);
  client.nc.subscribe(`${prefix}.events.containers.>`, {
    callback: (error, msg) => {
      if (!error) events.push(msg.json<ContainerEvent>());
    },
  });
});

afterAll(async () => {
  for (const agent of agents) agent.kill('SIGKILL');
  // Whatever the tests left running (placeholders), by process group.
  for (const dir of stateDirs) {
    for (const pid of Object.values(containersOf(dir)).map((c) => c.pid)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
  await client.close();
  await replica.stop();
});

function startAgent(id: string, stateDir: string, cpu = 1_000): ChildProcess {
  const child = spawn(process.execPath, [bin, 'agent', '--id', id, '--cpu', String(cpu), '--memory', '1024', '--state-dir', stateDir, '--stop-grace-ms', '1000'], {
    env: { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: prefix, DROVER_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  agents.push(child);
  return child;
}

function newStateDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'drover-agent-'));
  stateDirs.push(dir);
  return dir;
}

function containersOf(stateDir: string): Record<string, { pid: number; status: string; exitCode: number | null }> {
  try {
    return (JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as { containers: Record<string, { pid: number; status: string; exitCode: number | null }> }).containers;
  } catch {
    return {};
  }
}

async function workerStatus(id: string): Promise<string | null> {
  const reply = await client.getWorker(id);
  return reply.ok ? reply.worker.status : null;
}

async function containerStatus(id: string): Promise<string> {
  const reply = await client.getContainer(id);
  return reply.ok ? reply.container.status : `error ${reply.error.code}`;
}

const statusesOf = (id: string) => events.filter((e) => e.id === id).map((e) => e.status);

describe('worker agent', () => {
  it('registers pending, becomes available on its first report, runs a command and reports its exit code', async () => {
    const dir = newStateDir();
    startAgent('agent-a', dir);
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
    const dir = stateDirs[0]!;
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
    const dir = stateDirs[0]!;
    expect(await client.submit({ id: 'job-adopt', cpu: 500, memory: 256 })).toMatchObject({ ok: true, status: 'placed' });
    await client.waitFor('job-adopt', 'running', 10_000);
    const pid = containersOf(dir)['job-adopt']!.pid;
    agents[0]!.kill('SIGKILL');
    await new Promise((resolve) => agents[0]!.once('exit', resolve));
    expect(alive(pid)).toBe(true);
    startAgent('agent-a', dir);
    // Back within the TTL: the worker is not lost and the container still runs, adopted.
    await new Promise((resolve) => setTimeout(resolve, WORKER_TTL_MS * 1.5));
    expect(await workerStatus('agent-a')).toBe('available');
    expect(await containerStatus('job-adopt')).toBe('running');
    expect(await client.release('job-adopt')).toMatchObject({ ok: true, status: 'stopping' });
    expect((await client.waitFor('job-adopt', 'terminal', 10_000)).status).toBe('released');
    expect(alive(pid)).toBe(false);
  });

  it('loses a silent worker: its running container is lost, the one it never ran is queued again and placed elsewhere', async () => {
    const dir = stateDirs[0]!;
    expect(await client.submit({ id: 'job-run', cpu: 500, memory: 256 })).toMatchObject({ ok: true, workerId: 'agent-a' });
    await client.waitFor('job-run', 'running', 10_000);
    const pid = containersOf(dir)['job-run']!.pid;
    // The machine dies: its agent and its containers.
    const agent = agents[agents.length - 1]!;
    agent.kill('SIGKILL');
    await new Promise((resolve) => agent.once('exit', resolve));
    process.kill(-pid, 'SIGKILL');
    // Placed before the TTL ran out (the worker still looks available), never run.
    expect(await client.submit({ id: 'job-never-ran', cpu: 500, memory: 256, priority: 7 })).toMatchObject({ ok: true, status: 'placed', workerId: 'agent-a' });
    await eventually(async () => (await workerStatus('agent-a')) === 'lost', WORKER_TTL_MS * 4, 'agent-a lost');
    await eventually(async () => (await containerStatus('job-run')) === 'lost', 5_000, 'job-run lost');
    expect(await client.getContainer('job-run')).toMatchObject({ ok: true, container: { reason: 'WORKER_LOST' } });
    await eventually(async () => (await containerStatus('job-never-ran')) === 'queued', 5_000, 'job-never-ran queued again');
    expect(await client.getContainer('job-never-ran')).toMatchObject({ ok: true, container: { status: 'queued', workerId: null, priority: 7 } });
    // Another machine comes up: the requeued container runs there.
    startAgent('agent-b', newStateDir());
    const end = await client.waitFor('job-never-ran', 'running', 15_000);
    expect(end.container).toMatchObject({ status: 'running', workerId: 'agent-b' });
    expect(statusesOf('job-never-ran')).toEqual(['placed', 'queued', 'placed', 'running']);
    expect(statusesOf('job-run')).toEqual(['placed', 'running', 'lost']);
    // The lost worker's capacity is all free (nothing leaks), and it comes back when its agent does.
    expect(await client.getWorker('agent-a')).toMatchObject({ ok: true, worker: { status: 'lost', freeCpu: 1_000 } });
    startAgent('agent-a', dir);
    await eventually(async () => (await workerStatus('agent-a')) === 'available', 10_000, 'agent-a back');
  });
});
