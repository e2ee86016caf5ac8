/**
 * A replica's HTTP side against real Redis and NATS: /metrics in Prometheus format with the
 * metrics the README lists (and no label per worker or container), /healthz and /readyz,
 * read-only and bounded answers, the Content-Security-Policy, the debug snapshot and watch, the
 * cluster view collected over NATS, and `drover status` agreeing with the page.
 */
import { execFile } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Replica } from '../../src/replica/replica.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import { CONTENT_SECURITY_POLICY } from '../../src/observe/http-server.js';
import { serverSentEvents } from '../../src/observe/event-stream.js';
import { connectClient, eventually, natsUrl, startReplica, testPrefix } from '../support/cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;
let replica: Replica;
let client: DroverClient;
let prefix: string;
let base: string;

/** Every metric the README's metrics table lists (a test below checks the dashboard's queries against /metrics too). */
export const DOCUMENTED_METRICS = [
  'scheduler_schedule_attempts_total',
  'scheduler_scheduling_attempt_duration_seconds',
  'scheduler_pod_scheduling_sli_duration_seconds',
  'scheduler_pending_pods',
  'scheduler_queue_incoming_pods_total',
  'drover_placements_total',
  'drover_reroutes_total',
  'drover_conflicts_total',
  'drover_backlog_attempts_total',
  'drover_fence_refusals_total',
  'drover_version_conflicts_total',
  'drover_lease_acquisitions_total',
  'drover_lease_losses_total',
  'drover_handovers_total',
  'drover_handover_duration_seconds',
  'drover_shards_owned',
  'drover_workers',
  'drover_pool_capacity',
  'drover_pool_allocated',
  'drover_worker_utilization',
  'process_cpu_seconds_total',
  'nodejs_eventloop_lag_seconds',
];

/** A JSON answer, loosely typed: the assertions below say what it must hold. */
async function json(response: Promise<Response>): Promise<any> {
  return (await response).json();
}

beforeAll(async () => {
  prefix = testPrefix('http');
  replica = await startReplica({ prefix, shards: 4, httpPort: 0 });
  client = await connectClient(prefix);
  base = `http://127.0.0.1:${replica.httpAddress()!.port}`;
  for (let i = 0; i < 6; i += 1) {
    const reply = await client.registerWorker({ id: `hw-${i}`, cpu: 2_000, memory: 4_096, pool: i < 3 ? 'blue' : 'green' });
    expect(reply.ok).toBe(true);
  }
  for (let i = 0; i < 4; i += 1) expect((await client.submit({ id: `hc-${i}`, cpu: 1_000, memory: 1_024, pool: 'blue' })).ok).toBe(true);
  // Nothing has room for this one: an unschedulable attempt, then a queued container.
  expect(await client.submit({ id: 'hc-big', cpu: 64_000, memory: 1_024 })).toMatchObject({ ok: true, status: 'queued' });
});

afterAll(async () => {
  await client.close();
  await replica.stop();
});

describe('replica HTTP', () => {
  it('binds loopback and says where in `drover status`', async () => {
    const [status] = await client.clusterStatus(500, 1);
    expect(status?.http).toMatchObject({ host: '127.0.0.1', port: replica.httpAddress()!.port, url: `${base}/debug` });
  });

  it('serves Prometheus metrics with the replica as a label and no per-worker or per-container label', async () => {
    const response = await fetch(`${base}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    for (const name of DOCUMENTED_METRICS) expect(text, name).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
    const sample = (line: RegExp) => Number(line.exec(text)?.[1]);
    const replicaLabel = `replica="${replica.config.replicaId}"`;
    expect(sample(new RegExp(`^scheduler_schedule_attempts_total\\{result="scheduled",${replicaLabel}\\} (\\d+)`, 'm'))).toBe(4);
    expect(sample(new RegExp(`^scheduler_schedule_attempts_total\\{result="unschedulable",${replicaLabel}\\} (\\d+)`, 'm'))).toBeGreaterThanOrEqual(1);
    expect(sample(new RegExp(`^drover_workers\\{pool="blue",status="available",${replicaLabel}\\} (\\d+)`, 'm'))).toBe(3);
    expect(sample(new RegExp(`^drover_pool_allocated\\{pool="blue",resource="cpu_millicores",${replicaLabel}\\} (\\d+)`, 'm'))).toBe(4_000);
    expect(sample(new RegExp(`^drover_pool_capacity\\{pool="blue",resource="cpu_millicores",${replicaLabel}\\} (\\d+)`, 'm'))).toBe(6_000);
    expect(sample(new RegExp(`^drover_shards_owned\\{${replicaLabel}\\} (\\d+)`, 'm'))).toBe(4);
    expect(sample(new RegExp(`^drover_worker_utilization_count\\{${replicaLabel}\\} (\\d+)`, 'm'))).toBe(6);
    expect(sample(new RegExp(`^scheduler_pod_scheduling_sli_duration_seconds_count\\{${replicaLabel}\\} (\\d+)`, 'm'))).toBe(4);
    // The queued container is in the backlog: unschedulable (asleep) or active, not lost from the gauge.
    const pending = [...text.matchAll(/^scheduler_pending_pods\{queue="(\w+)",replica="[^"]+"\} (\d+)/gm)].reduce((sum, m) => sum + Number(m[2]), 0);
    expect(pending).toBe(1);
    for (const line of text.split('\n').filter((l) => !l.startsWith('#'))) {
      expect(line).not.toMatch(/(worker|container|id)="/);
      expect(line).not.toMatch(/hw-\d|hc-/);
    }
  });

  it('healthz and readyz say what they checked', async () => {
    const health = await fetch(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ ok: true, checks: { process: { ok: true }, redis: { ok: true }, nats: { ok: true } } });
    await eventually(async () => (await fetch(`${base}/readyz`)).status === 200, 5_000, 'ready');
    expect(await json(fetch(`${base}/readyz`))).toMatchObject({ ok: true, checks: { joined: { ok: true }, shards: { ok: true, detail: 'holds its 4 shards' }, router: { ok: true } } });
  });

  it('is read-only, answers unknown paths 404, and sends its CSP on every answer', async () => {
    for (const path of ['/debug', '/debug/app.js', '/debug/app.css', '/metrics', '/nope']) {
      const response = await fetch(`${base}${path}`);
      expect(response.headers.get('content-security-policy'), path).toBe(CONTENT_SECURITY_POLICY);
      expect(response.headers.get('x-content-type-options')).toBe('nosniff');
      await response.arrayBuffer();
    }
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const response = await fetch(`${base}/debug/snapshot`, { method });
      expect(response.status, method).toBe(405);
      expect(response.headers.get('allow')).toBe('GET, HEAD');
    }
    const page = await (await fetch(`${base}/debug`)).text();
    // Nothing from elsewhere: its script and styles are its own.
    expect(page).not.toMatch(/https?:\/\//);
    expect(page).toContain('<script src="/debug/app.js" defer></script>');
  });

  it('refuses a malformed watch with a stable code', async () => {
    for (const query of ['kind=pod&id=x', 'kind=worker&id=', 'kind=worker&id=..%2Fetc', `kind=worker&id=${'x'.repeat(200)}`]) {
      const response = await fetch(`${base}/debug/watch?${query}`);
      expect(response.status, query).toBe(400);
      expect(await response.json()).toMatchObject({ ok: false, error: { code: 'INVALID_REQUEST' } });
    }
    const events = await fetch(`${base}/debug/events?watch=robot:1`);
    expect(events.status).toBe(400);
  });

  it('shows one worker with its state and context, and a container with its status', async () => {
    const worker = await json(fetch(`${base}/debug/watch?kind=worker&id=hw-0`));
    expect(worker.watch).toMatchObject({ kind: 'worker', id: 'hw-0', found: true, state: 'available', context: { spec: { id: 'hw-0', pool: 'blue' } } });
    const missing = await json(fetch(`${base}/debug/watch?kind=worker&id=nobody`));
    expect(missing.watch).toMatchObject({ found: false });
    expect(missing.watch.message).toMatch(/not registered/);
    const container = await json(fetch(`${base}/debug/watch?kind=container&id=hc-big`));
    expect(container.watch).toMatchObject({ kind: 'container', id: 'hc-big', found: true, state: 'queued' });
  });

  it('streams coalesced snapshots and the watched worker\'s events', async () => {
    const controller = new AbortController();
    const response = await fetch(`${base}/debug/events?watch=worker:hw-1`, { signal: controller.signal });
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = serverSentEvents(response.body!);
    const seen: Array<{ event: string; data: { state?: string; events?: Array<{ type: string }> } }> = [];
    const read = async (until: () => boolean) => {
      const deadline = Date.now() + 5_000;
      while (!until() && Date.now() < deadline) {
        const next = await events.next();
        if (next.done) break;
        seen.push(next.value as (typeof seen)[number]);
      }
    };
    await read(() => seen.some((s) => s.event === 'snapshot') && seen.some((s) => s.event === 'watch'));
    expect(seen.find((s) => s.event === 'watch')?.data.state).toBe('available');
    expect((await client.drainWorker('hw-1')).ok).toBe(true);
    await read(() => seen.some((s) => s.event === 'watch' && s.data.state === 'draining'));
    const drained = seen.filter((s) => s.event === 'watch').pop()!;
    expect(drained.data.state).toBe('draining');
    expect(drained.data.events?.map((e) => e.type)).toContain('DRAIN');
    controller.abort();
    await client.enableWorker('hw-1');
    // The watch ends with the last page: inspection is detached.
    await eventually(() => (replica.debug.snapshot() as { watches: number }).watches === 0, 3_000, 'watch released');
  });

  it('collects the cluster over NATS, labelled with who collected it', async () => {
    const cluster = await json(fetch(`${base}/debug/cluster`));
    expect(cluster.source).toBe(`collected over NATS by replica ${replica.config.replicaId}`);
    expect(cluster.replicas.map((r: { replicaId: string }) => r.replicaId)).toEqual([replica.config.replicaId]);
  });

  it('agrees with `drover status`', async () => {
    const snapshot = await json(fetch(`${base}/debug/snapshot`));
    const printed = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [bin, 'status', '--json'], { env: { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: prefix } }, (error, stdout) =>
        error === null ? resolve(stdout) : reject(error),
      );
    });
    const [status] = JSON.parse(printed);
    for (const field of ['replicaId', 'shards', 'workers', 'members', 'desired', 'routing', 'http'] as const) {
      expect(snapshot.status[field], field).toEqual(status[field]);
    }
    for (const group of ['router', 'owners', 'leases'] as const) expect(snapshot.status[group], group).toEqual(status[group]);
    expect(snapshot.status.backlog.queued).toBe(status.backlog.queued);
    // And the page's own figures are that status: workers by state add up to the workers there.
    const byState = Object.values(snapshot.workerStates as Record<string, number>).reduce((a, b) => a + b, 0);
    expect(byState).toBe(status.workers);
    expect(snapshot.shards.map((s: { shard: number }) => s.shard)).toEqual(status.shards);
  });
});

describe('drover console', () => {
  it('serves the cluster over NATS with no replica of its own, and says so', async () => {
    const { startConsole } = await import('../../src/observe/console.js');
    const { server, address } = await startConsole(client, '127.0.0.1', 0);
    try {
      const consoleBase = `http://127.0.0.1:${address.port}`;
      expect(await json(fetch(`${consoleBase}/debug/snapshot`))).toEqual({ mode: 'console', source: `console (prefix ${prefix})` });
      const cluster = await json(fetch(`${consoleBase}/debug/cluster`));
      expect(cluster.source).toBe(`collected over NATS by console (prefix ${prefix})`);
      expect(cluster.replicas).toHaveLength(1);
      expect(cluster.replicas[0]).toMatchObject({ replicaId: replica.config.replicaId, http: { url: `${base}/debug` } });
      // A console has no metrics or replica to inspect of its own.
      expect((await fetch(`${consoleBase}/metrics`)).status).toBe(404);
      expect((await fetch(`${consoleBase}/debug/watch?kind=worker&id=hw-0`)).status).toBe(404);
      expect((await fetch(`${consoleBase}/debug`)).headers.get('content-security-policy')).toBe(CONTENT_SECURITY_POLICY);
    } finally {
      await server.stop();
    }
  });

  it('runs as `drover console` and stops on SIGTERM', async () => {
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, [bin, 'console', '--port', '0'], { env: { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: prefix } });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    await eventually(() => /drover console: http:\/\/127\.0\.0\.1:\d+\/debug/.test(out), 10_000, 'console started');
    const url = /(http:\/\/127\.0\.0\.1:\d+)\/debug/.exec(out)![1]!;
    const cluster = await json(fetch(`${url}/debug/cluster`));
    expect(cluster.replicas.map((r: { replicaId: string }) => r.replicaId)).toEqual([replica.config.replicaId]);
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it('refuses a bad --host or --port with a usage error', async () => {
    for (const args of [['--port', '70000'], ['--host', 'not a host!']]) {
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        execFile(process.execPath, [bin, 'console', ...args], { env: { ...process.env, NATS_URL: natsUrl(), DROVER_PREFIX: prefix } }, (error, _stdout, stderr) =>
          resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stderr }),
        );
      });
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(/--(port|host)/);
    }
  });
});

describe('replica HTTP limits', () => {
  it('answers only loopback Host names while bound to loopback (DNS rebinding), and refuses long URLs', async () => {
    const { request } = await import('node:http');
    const get = (headers: Record<string, string>, path = '/debug/snapshot') =>
      new Promise<number>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: replica.httpAddress()!.port, path, headers }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end();
      });
    expect(await get({ Host: 'evil.example:80' })).toBe(421);
    expect(await get({ Host: 'attacker.test' })).toBe(421);
    expect(await get({ Host: `localhost:${replica.httpAddress()!.port}` })).toBe(200);
    expect(await get({ Host: `127.0.0.1:${replica.httpAddress()!.port}` })).toBe(200);
    expect(await get({ Host: '[::1]' })).toBe(200);
    expect(await get({ Host: 'localhost' }, `/debug/watch?kind=worker&id=${'a'.repeat(3_000)}`)).toBe(414);
  });

  it('gives every page watching the same worker each change, and HEAD opens no stream', async () => {
    const head = await fetch(`${base}/debug/events`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    const controllers = [new AbortController(), new AbortController()];
    const seen: string[][] = [[], []];
    const readers = controllers.map(async (controller, index) => {
      const response = await fetch(`${base}/debug/events?watch=worker:hw-2`, { signal: controller.signal });
      for await (const { event, data } of serverSentEvents(response.body!)) {
        if (event === 'watch') seen[index]!.push((data as { state: string }).state);
      }
    });
    await eventually(() => seen.every((states) => states.includes('available')), 5_000, 'both pages see the worker');
    expect((await client.drainWorker('hw-2')).ok).toBe(true);
    await eventually(() => seen.every((states) => states.includes('draining')), 5_000, 'both pages see the drain');
    for (const controller of controllers) controller.abort();
    await Promise.all(readers);
    await client.enableWorker('hw-2');
    await eventually(() => (replica.debug.snapshot() as { watches: number }).watches === 0, 3_000, 'watch released');
  });
});
