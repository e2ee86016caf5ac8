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
import { PUSH_INTERVAL_MS, WatchLimitError, type DebugView } from './debug-view.js';
import type { ReplicaMetrics } from './metrics.js';
import { ID_PATTERN } from '../protocol/limits.js';

export const CONTENT_SECURITY_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Pages open at once per server (each holds one event stream); more are refused with 503. */
export const MAX_EVENT_STREAMS = 32;
/** Longer request URLs are refused (414): nothing this server serves needs more. */
const MAX_URL_LENGTH = 2_048;
/** How long the cluster view (every replica's status over NATS) is reused across pages. */
const CLUSTER_CACHE_MS = 1_000;
const LOOPBACK_BINDS = new Set(['127.0.0.1', '::1', 'localhost']);
const LOOPBACK_NAMES = new Set(['127.0.0.1', 'localhost', '[::1]']);

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
  /** Open event streams and how to close each. */
  private readonly streams = new Map<ServerResponse, () => void>();
  private cluster: { at: number; statuses: Promise<ReplicaStatus[]> } | null = null;
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
    for (const close of [...this.streams.values()]) close();
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
    if (!this.hostAllowed(request.headers.host)) {
      // A page elsewhere that points a name it controls at 127.0.0.1 (DNS rebinding) is not this page.
      this.send(response, 421, 'text/plain; charset=utf-8', 'this server answers to its own address only (Host header refused)\n');
      return;
    }
    if ((request.url ?? '').length > MAX_URL_LENGTH) {
      this.send(response, 414, 'text/plain; charset=utf-8', `URL longer than ${MAX_URL_LENGTH} characters\n`);
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
        const replicas = [...(await this.clusterStatus())];
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
        let key: string;
        try {
          key = await replica.view.watch(target.kind, target.id);
        } catch (error) {
          if (!(error instanceof WatchLimitError)) throw error;
          this.json(response, 503, { ok: false, error: { code: 'UNAVAILABLE', message: error.message } });
          return;
        }
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

  /** The event stream of one open page: the shared snapshot every PUSH_INTERVAL_MS, and its watched actor's changes. */
  private async events(request: IncomingMessage, response: ServerResponse, url: URL): Promise<void> {
    const replica = this.options.replica;
    if (replica === undefined) return this.notFound(response);
    if (request.method === 'HEAD') {
      response.writeHead(200, { ...this.headers(), 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store' });
      response.end();
      return;
    }
    if (this.streams.size >= MAX_EVENT_STREAMS) {
      this.send(response, 503, 'text/plain; charset=utf-8', `${MAX_EVENT_STREAMS} pages are open on this replica already\n`);
      return;
    }
    const watchParam = url.searchParams.get('watch');
    let target: { kind: 'worker' | 'container'; id: string } | null = null;
    if (watchParam !== null && watchParam !== '') {
      const [kind, ...rest] = watchParam.split(':');
      const parsed = parseWatch(kind ?? null, rest.join(':'));
      if (typeof parsed === 'string') {
        this.json(response, 400, { ok: false, error: { code: 'INVALID_REQUEST', message: parsed } });
        return;
      }
      target = parsed;
    }
    // The slot and the clean-up are taken before anything is awaited: a page that leaves while its
    // watch is being set up is cleaned up all the same.
    let key: string | null = null;
    let timer: NodeJS.Timeout | null = null;
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      if (timer !== null) clearInterval(timer);
      this.streams.delete(response);
      if (key !== null) replica.view.unwatch(key);
      key = null;
      if (response.headersSent && !response.writableEnded) response.end();
    };
    this.streams.set(response, close);
    // The response closes when the page goes away (the connection ends) or when this server stops.
    response.on('close', close);
    if (target !== null) {
      let watched: string;
      try {
        watched = await replica.view.watch(target.kind, target.id);
      } catch (error) {
        close();
        if (error instanceof WatchLimitError) this.json(response, 503, { ok: false, error: { code: 'UNAVAILABLE', message: error.message } });
        else throw error;
        return;
      }
      if (closed) {
        replica.view.unwatch(watched);
        return;
      }
      key = watched;
    }
    response.writeHead(200, {
      ...this.headers(),
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
    });
    let sentVersion = 0;
    const push = () => {
      response.write(`event: snapshot\ndata: ${replica.view.snapshotJson()}\n\n`);
      if (key !== null) {
        const changed = replica.view.changedSince(key, sentVersion);
        if (changed !== null) {
          sentVersion = changed.version;
          response.write(`event: watch\ndata: ${JSON.stringify(changed.view)}\n\n`);
        }
      }
    };
    push();
    timer = setInterval(push, PUSH_INTERVAL_MS);
    timer.unref();
  }

  /** Every replica's status over NATS, asked at most once a second however many pages poll. */
  private clusterStatus(): Promise<ReplicaStatus[]> {
    const now = Date.now();
    if (this.cluster === null || now - this.cluster.at >= CLUSTER_CACHE_MS) {
      this.cluster = { at: now, statuses: this.options.cluster() };
    }
    return this.cluster.statuses;
  }

  /**
   * Bound to loopback (the default), only loopback names are accepted as Host; bound to another
   * address, the operator chose to expose it, and any Host is.
   */
  private hostAllowed(host: string | undefined): boolean {
    if (!LOOPBACK_BINDS.has(this.options.host)) return true;
    if (host === undefined) return false;
    const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.split(':')[0]!;
    return LOOPBACK_NAMES.has(name.toLowerCase());
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
