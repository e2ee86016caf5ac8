/**
 * The HTTP side of a replica (and of `drover console`): read-only, loopback by default.
 *
 *   GET /metrics              Prometheus text format (replica only)
 *   GET /healthz              200 when the process runs and reaches Redis and NATS, else 503
 *   GET /readyz               200 when serving: a member, holding its desired shards, router subscribed
 *   GET /debug                the debug page (its own script and styles, nothing from elsewhere)
 *   GET /debug/snapshot       the JSON behind the page
 *   GET /debug/events         server-sent events: `snapshot` every PUSH_INTERVAL_MS while open,
 *                             `watch` when the watched worker or container (?watch=worker:ID) changes
 *   GET /debug/watch?kind=worker|container&id=ID   one look at one worker or container
 *   GET /debug/cluster        every replica's status, collected over NATS, labelled by replica
 *   GET /debug/charts/<machine>.svg   the state charts, drawn from the machines in actors/
 *
 * Anything else is 404; a method other than GET or HEAD is 405. Every response carries a
 * Content-Security-Policy allowing only this origin, so the page can load nothing from elsewhere.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { ReplicaStatus } from '../client/drover-client.js';
import { CHARTED_MACHINES, chartOfMachine, svgOf } from '../charts/charts.js';
import { toDot } from '../charts/dot.js';
import { packageRoot } from '../util/package-root.js';
import { PUSH_INTERVAL_MS, type DebugView } from './debug-view.js';
import type { ReplicaMetrics } from './metrics.js';
import { ID_PATTERN } from '../protocol/limits.js';

export const CONTENT_SECURITY_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Pages open at once per server (each holds one event stream); more are refused with 503. */
export const MAX_EVENT_STREAMS = 32;

export interface Probe {
  readonly ok: boolean;
  readonly checks: Record<string, { ok: boolean; detail: string }>;
}

export interface ObserveServerOptions {
  readonly host: string;
  readonly port: number;
  /** "replica <id>" or "console": said on every page and JSON answer. */
  readonly label: string;
  /** Absent for `drover console` (it has no replica of its own). */
  readonly replica?: {
    readonly metrics: ReplicaMetrics;
    readonly view: DebugView;
    health(): Probe;
    readiness(): Probe;
  };
  cluster(): Promise<ReplicaStatus[]>;
}

const STATIC_FILES: Record<string, string> = {
  '/debug': 'debug.html',
  '/debug/app.js': 'debug.js',
  '/debug/app.css': 'debug.css',
};
const CONTENT_TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

export class ObserveServer {
  private server: Server | null = null;
  private readonly streams = new Set<ServerResponse>();
  private readonly charts = new Map<string, Promise<string>>();

  constructor(private readonly options: ObserveServerOptions) {}

  /** Listen; resolves with the address actually bound (port 0 takes a free one). */
  async start(): Promise<AddressInfo> {
    const server = createServer((request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        if (!response.headersSent) this.send(response, 500, 'text/plain; charset=utf-8', `internal error: ${(error as Error).message}\n`);
        else response.destroy();
      });
    });
    // Idle keep-alive sockets must not hold a replica's shutdown.
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, this.options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    return server.address() as AddressInfo;
  }

  get address(): AddressInfo | null {
    return (this.server?.address() as AddressInfo | null) ?? null;
  }

  async stop(): Promise<void> {
    for (const stream of this.streams) stream.end();
    this.streams.clear();
    const server = this.server;
    this.server = null;
    if (server === null) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('Allow', 'GET, HEAD');
      this.send(response, 405, 'text/plain; charset=utf-8', 'read-only: GET and HEAD only\n');
      return;
    }
    const url = new URL(request.url ?? '/', 'http://localhost');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const replica = this.options.replica;
    if (path === '/') {
      response.setHeader('Location', '/debug');
      this.send(response, 302, 'text/plain; charset=utf-8', 'see /debug\n');
      return;
    }
    const file = STATIC_FILES[path];
    if (file !== undefined) {
      const body = await readFile(join(packageRoot(), 'src', 'observe', 'page', file), 'utf8');
      this.send(response, 200, CONTENT_TYPES[file.split('.').pop()!]!, body);
      return;
    }
    const chart = /^\/debug\/charts\/([a-z-]+)\.svg$/.exec(path);
    if (chart !== null) {
      const svg = await this.chart(chart[1]!);
      if (svg === null) this.notFound(response);
      else this.send(response, 200, 'image/svg+xml', svg);
      return;
    }
    switch (path) {
      case '/favicon.ico':
        // No icon: answered empty so a browser's automatic request is not an error.
        response.writeHead(204, this.headers());
        response.end();
        return;
      case '/healthz':
      case '/readyz': {
        if (replica === undefined) {
          this.json(response, 200, { ok: true, source: this.options.label, checks: { process: { ok: true, detail: 'console up' } } });
          return;
        }
        const probe = path === '/healthz' ? replica.health() : replica.readiness();
        this.json(response, probe.ok ? 200 : 503, { ...probe, source: this.options.label });
        return;
      }
      case '/metrics':
        if (replica === undefined) return this.notFound(response);
        this.send(response, 200, replica.metrics.contentType, await replica.metrics.text());
        return;
      case '/debug/snapshot':
        this.json(response, 200, replica === undefined ? { mode: 'console', source: this.options.label } : { mode: 'replica', ...replica.view.snapshot() });
        return;
      case '/debug/cluster': {
        const replicas = await this.options.cluster();
        this.json(response, 200, { source: `collected over NATS by ${this.options.label}`, at: Date.now(), replicas: replicas.sort((a, b) => a.replicaId.localeCompare(b.replicaId)) });
        return;
      }
      case '/debug/watch': {
        if (replica === undefined) return this.notFound(response);
        const target = parseWatch(url.searchParams.get('kind'), url.searchParams.get('id'));
        if (typeof target === 'string') {
          this.json(response, 400, { ok: false, error: { code: 'INVALID_REQUEST', message: target } });
          return;
        }
        const key = await replica.view.watch(target.kind, target.id);
        try {
          this.json(response, 200, { ok: true, source: this.options.label, watch: replica.view.current(key) });
        } finally {
          replica.view.unwatch(key);
        }
        return;
      }
      case '/debug/events':
        await this.events(request, response, url);
        return;
      default:
        this.notFound(response);
    }
  }

  /** The event stream of one open page: coalesced snapshots, and its watched actor's changes. */
  private async events(request: IncomingMessage, response: ServerResponse, url: URL): Promise<void> {
    const replica = this.options.replica;
    if (replica === undefined) return this.notFound(response);
    if (this.streams.size >= MAX_EVENT_STREAMS) {
      this.send(response, 503, 'text/plain; charset=utf-8', `${MAX_EVENT_STREAMS} pages are open on this replica already\n`);
      return;
    }
    let key: string | null = null;
    const watchParam = url.searchParams.get('watch');
    if (watchParam !== null && watchParam !== '') {
      const [kind, ...rest] = watchParam.split(':');
      const target = parseWatch(kind ?? null, rest.join(':'));
      if (typeof target === 'string') {
        this.json(response, 400, { ok: false, error: { code: 'INVALID_REQUEST', message: target } });
        return;
      }
      key = await replica.view.watch(target.kind, target.id);
    }
    response.writeHead(200, {
      ...this.headers(),
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
    });
    this.streams.add(response);
    const write = (event: string, data: unknown) => response.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    if (key !== null) write('watch', replica.view.current(key));
    let last = '';
    const push = () => {
      const snapshot = JSON.stringify(replica.view.snapshot());
      // Only what changed goes out; the clock alone changing is not a change.
      const comparable = snapshot.replace(/"at":\d+,/, '');
      if (comparable !== last) {
        last = comparable;
        response.write(`event: snapshot\ndata: ${snapshot}\n\n`);
      }
      if (key !== null) {
        const changed = replica.view.takeChanged(key);
        if (changed !== null) write('watch', changed);
      }
    };
    push();
    const timer = setInterval(push, PUSH_INTERVAL_MS);
    const close = () => {
      clearInterval(timer);
      this.streams.delete(response);
      if (key !== null) replica.view.unwatch(key);
      key = null;
    };
    request.on('close', close);
    response.on('close', close);
  }

  private chart(name: string): Promise<string> | null {
    const charted = CHARTED_MACHINES.find((machine) => machine.name === name);
    if (charted === undefined) return null;
    let svg = this.charts.get(name);
    if (svg === undefined) {
      svg = svgOf(toDot(chartOfMachine(charted), charted.title));
      this.charts.set(name, svg);
    }
    return svg;
  }

  private headers(): Record<string, string> {
    return {
      'Content-Security-Policy': CONTENT_SECURITY_POLICY,
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      'X-Drover-Source': this.options.label,
    };
  }

  private send(response: ServerResponse, status: number, contentType: string, body: string): void {
    response.writeHead(status, { ...this.headers(), 'Content-Type': contentType, 'Cache-Control': 'no-store' });
    response.end(response.req.method === 'HEAD' ? undefined : body);
  }

  private json(response: ServerResponse, status: number, body: unknown): void {
    this.send(response, status, 'application/json; charset=utf-8', `${JSON.stringify(body)}\n`);
  }

  private notFound(response: ServerResponse): void {
    this.send(response, 404, 'text/plain; charset=utf-8', 'not found; see /debug, /metrics, /healthz, /readyz\n');
  }
}

function parseWatch(kind: string | null, id: string | null): { kind: 'worker' | 'container'; id: string } | string {
  if (kind !== 'worker' && kind !== 'container') return 'kind must be worker or container';
  if (id === null || !ID_PATTERN.test(id)) return `id must match ${ID_PATTERN.source}`;
  return { kind, id };
}
