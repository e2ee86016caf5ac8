/**
 * The demo's second part: the scheduling loop with real worker agents. Four `drover agent`
 * processes join; more containers are submitted than fit, so most wait in the backlog; each runs a
 * short command and exits, and the backlog drains into the room that frees. Two machines die
 * (SIGKILL of the agent and its containers): agent-4 just before the submits, so the containers
 * placed on it in the TTL window never run and go back to the queue to run elsewhere; agent-3
 * midway, so its running containers are `unknown` after the TTL (never started elsewhere) and
 * `lost` after DROVER_WORKER_LOST_AFTER_MS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerEvent, DroverClient } from '../client/drover-client.js';
import { packageRoot } from '../util/package-root.js';
import { renderTable } from '../util/table.js';

const AGENTS = 4;
const CONTAINERS = 30;
/** How long the demo waits for every container to end. */
const LOOP_TIMEOUT_MS = Number(process.env.DROVER_DEMO_LOOP_TIMEOUT_MS ?? 90_000);

export interface LoopDemoOptions {
  readonly client: DroverClient;
  readonly natsUrl: string;
  readonly prefix: string;
  readonly workerTtlMs: number;
  readonly workerLostAfterMs: number;
  readonly out: NodeJS.WriteStream;
}

export async function runLoopDemo(options: LoopDemoOptions): Promise<boolean> {
  const { client, out } = options;
  const bin = join(packageRoot(), 'bin', 'drover.js');
  const stateRoot = mkdtempSync(join(tmpdir(), 'drover-demo-agents-'));
  const agents = new Map<string, ChildProcess>();
  const last = new Map<string, ContainerEvent>();
  let requeued = 0;
  const subscription = client.nc.subscribe(`${options.prefix}.events.containers.>`, {
    callback: (error, msg) => {
      if (error) return;
      const event = msg.json<ContainerEvent>();
      const before = last.get(event.id);
      if (event.status === 'queued' && before !== undefined && before.status !== 'queued') requeued += 1;
      last.set(event.id, event);
    },
  });
  const startAgent = (id: string) => {
    const child = spawn(process.execPath, [bin, 'agent', '--id', id, '--cpu', '2000', '--memory', '2048', '--pool', 'loop',
      '--state-dir', join(stateRoot, id), '--stop-grace-ms', '1000', '--stop-containers-on-exit'], {
      env: { ...process.env, NATS_URL: options.natsUrl, DROVER_PREFIX: options.prefix, DROVER_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'inherit'],
      detached: false,
    });
    agents.set(id, child);
  };
  try {
    out.write(`\nthe scheduling loop: ${AGENTS} agents (real processes, 2 cores each), ${CONTAINERS} containers of half a core ` +
      `running 'sleep 2' (16 fit at once), worker TTL ${options.workerTtlMs} ms, lost after ${options.workerLostAfterMs} ms\n`);
    for (let i = 1; i <= AGENTS; i += 1) startAgent(`agent-${i}`);
    for (let waited = 0; ; waited += 100) {
      const workers = await Promise.all([...agents.keys()].map((id) => client.getWorker(id)));
      if (workers.every((w) => w.ok && w.worker.status === 'available')) break;
      if (waited > 15_000) throw new Error('the agents did not come up within 15 s');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    out.write(`agents up: ${[...agents.keys()].join(', ')}\n`);
    // A machine dies as the work arrives: Drover does not know yet, and places containers there.
    agents.get('agent-4')!.kill('SIGKILL');
    out.write('SIGKILL agent-4 (its worker still looks available for up to one TTL)\n');
    for (let i = 0; i < CONTAINERS; i += 1) {
      const reply = await client.submit({ id: `loop-${String(i).padStart(2, '0')}`, cpu: 500, memory: 256, pool: 'loop', command: ['sh', '-c', 'sleep 2'] });
      if (!reply.ok) throw new Error(`submit: ${reply.error.code} ${reply.error.message}`);
    }
    const count = () => {
      const counts: Record<string, number> = {};
      for (const event of last.values()) counts[event.status] = (counts[event.status] ?? 0) + 1;
      return counts;
    };
    const line = (label: string) => {
      const c = count();
      const cells = ['queued', 'placed', 'running', 'unknown', 'stopping', 'exited', 'lost', 'released', 'failed'].map((s) => `${s} ${c[s] ?? 0}`);
      out.write(`  ${label.padEnd(22)} ${cells.join('  ')}  (requeued ${requeued})\n`);
    };
    const started = Date.now();
    let killed = false;
    let nextLine = 0;
    for (;;) {
      const elapsed = Date.now() - started;
      if (elapsed >= nextLine) {
        line(`${(elapsed / 1000).toFixed(1)} s`);
        nextLine += 1_000;
      }
      if (!killed && elapsed > 2_500) {
        // A machine dies: its agent and everything it runs, at once.
        const victim = agents.get('agent-3')!;
        victim.kill('SIGKILL');
        for (const event of last.values()) if (event.workerId === 'agent-3' && event.status === 'running') killContainer(stateRoot, event.id);
        killed = true;
        out.write(`  ${(elapsed / 1000).toFixed(1).padStart(4)} s  SIGKILL agent-3 and its containers\n`);
      }
      const c = count();
      const ended = (c.exited ?? 0) + (c.lost ?? 0) + (c.released ?? 0) + (c.failed ?? 0);
      if (ended === CONTAINERS) break;
      if (elapsed > LOOP_TIMEOUT_MS) {
        out.write(`  not every container ended within ${LOOP_TIMEOUT_MS / 1000} s; still waiting: ` +
          [...last.values()].filter((e) => !['exited', 'lost', 'released', 'failed'].includes(e.status)).map((e) => `${e.id} (${e.status}${e.workerId ? ` on ${e.workerId}` : ''})`).join(', ') + '\n');
        return false;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    line('all ended');
    const c = count();
    const lostWorker = await client.getWorker('agent-3');
    const lostEarly = await client.getWorker('agent-4');
    out.write(renderTable(['loop result', 'value'], [
      ['containers submitted', CONTAINERS],
      ['exited (exit code 0)', [...last.values()].filter((e) => e.status === 'exited' && e.exitCode === 0).length],
      ['lost with agent-3', c.lost ?? 0],
      ['requeued from agent-4 (never ran there), then run elsewhere', requeued],
      ['agent-3', lostWorker.ok ? `${lostWorker.worker.status}, ${lostWorker.worker.freeCpu} of ${lostWorker.worker.cpu} millicores free` : 'unknown'],
      ['agent-4', lostEarly.ok ? `${lostEarly.worker.status}, ${lostEarly.worker.freeCpu} of ${lostEarly.worker.cpu} millicores free` : 'unknown'],
    ]) + '\n');
    return (c.exited ?? 0) + (c.lost ?? 0) === CONTAINERS && requeued > 0;
  } finally {
    subscription.unsubscribe();
    for (const child of agents.values()) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => child.once('exit', resolve));
      }
    }
    rmSync(stateRoot, { recursive: true, force: true });
  }
}

/** Kill a container's process group by the pid its agent recorded (the machine died with it). */
function killContainer(stateRoot: string, containerId: string): void {
  try {
    const state = JSON.parse(readFileSync(join(stateRoot, 'agent-3', 'state.json'), 'utf8')) as { containers: Record<string, { pid: number }> };
    const pid = state.containers[containerId]?.pid;
    if (pid !== undefined) process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
