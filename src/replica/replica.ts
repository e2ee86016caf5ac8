/**
 * A Drover replica: one process's share of the cluster. It holds shard leases, runs the owners of
 * the shards it holds (their worker actors and group commits), serves those shards' subjects,
 * publishes their capacity, and runs a router on the public subjects.
 *
 * Life of a shard here: lease acquired (epoch bumped) -> owner built from Redis -> subscribed to
 * the shard subject -> capacity published. It ends by hand-over (unsubscribe, drain, release), by
 * losing the lease (close at once), or by being fenced (Redis refused our epoch: close at once).
 *
 * Partitions. A replica watches its links to NATS and to Redis (LinkMonitor). While either is cut,
 * it cannot serve the shards it would own, so it gives them up (closes their owners, releases the
 * leases when Redis answers) and steps out of the members, so the others take the shards within
 * about a lease TTL instead of the shards staying dark for as long as the cut lasts. While Redis
 * is cut, its router also leaves the public queue group, so the NATS server hands clients'
 * requests to routers that can answer them. When both links are back, it steps back in and the
 * shards are balanced again as after a join.
 */
import { connect, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { Redis } from 'ioredis';
import type { DroverConfig } from '../config.js';
import { ShardLeases } from '../lease/shard-leases.js';
import { Membership } from '../membership/membership.js';
import { PeerWatch } from '../membership/peer-watch.js';
import { connectReplicaRedis, START_CONNECT_TIMEOUT_MS } from './redis-client.js';
import { desiredShards } from '../membership/ownership.js';
import {
  parseReplicaOpsRequest,
  parseShardRequest,
  type InvalidShardOp,
  type ReplicaOpsReply,
  type ShardCapacity,
  type ShardOp,
  type ShardOpResult,
  type ShardReply,
} from '../protocol/shard-messages.js';
import { Subjects } from '../protocol/subjects.js';
import { replyFromError } from '../protocol/errors.js';
import { parseStatusRequest } from '../protocol/validate.js';
import { Router } from '../router/router.js';
import { ShardOwner } from '../shard/shard-owner.js';
import type { AgentKeepalive } from '../shard/agent-keepalive.js';
import { DroverStore } from '../store/store.js';
import { Incident } from '../util/incident.js';
import { silentLogger, type Logger } from '../util/log.js';
import { LinkMonitor } from './link-monitor.js';
import { BacklogPartition, maxWaitOf, type QueuedEntry } from '../backlog/backlog-partition.js';
import { BacklogScheduler, type AttemptOutcome } from '../backlog/backlog-scheduler.js';
import { NatsContainerEvents } from '../events/container-events.js';
import { ensureEventStream, logEnsureOutcome, type EnsureOutcome } from '../events/event-stream.js';
import { ShardEndpoint } from './shard-endpoint.js';
import { DroverClient } from '../client/drover-client.js';
import { containerView } from '../protocol/container-view.js';
import { shardOf } from '../shard/shard-map.js';
import { DebugView, type DebugSource, type ShardFacts } from '../observe/debug-view.js';
import { ObserveServer, type Probe } from '../observe/http-server.js';
import { ReplicaMetrics } from '../observe/metrics.js';

/** Capacity changes are coalesced for this long before being published. */
const CAPACITY_COALESCE_MS = 10;
/** Every owned shard's capacity is republished this often, so new routers and lost messages heal. */
const CAPACITY_HEARTBEAT_MS = 1_000;
/** Round trips in a row, each under the slow bound, before a cut link counts as back. */
const LINK_BACK_AFTER = 2;
/** Capacity summaries carried on one replica-ops reply, at most (bytes of JSON). */
const REPLY_CAPACITY_BYTES = 128 * 1024;
/** How long a status report reuses a memory reading (see Replica.memoryUsage). */
const MEMORY_READING_MS = 1_000;
/** Every op's result when a reply was too large to send: the ops ran, the router cannot know how. */
const tooLarge: ShardOpResult = { ok: false, code: 'UNAVAILABLE', message: 'the reply was too large to send; the outcome is unknown', unknown: true };
/** How long the debug page's cluster view waits for every replica's status over NATS. */
const CLUSTER_STATUS_WAIT_MS = 300;
/**
 * Requeued containers handed to their home backlog: the first retry after this, doubling up to the
 * max, for as long as the ownership lasts (no final give-up); at most this many in flight per
 * replica (the outbox keeps the rest, and the sweep every OUTBOX_SWEEP_MS hands them over).
 */
const REQUEUE_RETRY_FIRST_MS = 250;
const REQUEUE_RETRY_MAX_MS = 5_000;
const MAX_REQUEUES_HANDED = 10_000;
const OUTBOX_SWEEP_MS = 5_000;

interface ServedShard {
  readonly owner: ShardOwner;
  readonly backlog: BacklogPartition;
  readonly endpoint: ShardEndpoint;
  readonly subscription: Subscription;
  capacity: ShardCapacity | null;
}

type LinkName = 'nats' | 'redis';

export interface ReplicaStats {
  readonly replicaId: string;
  readonly shards: number[];
  readonly workers: number;
  readonly router: Router['stats'];
  readonly owners: { batches: number; committedOps: number; fenceRefusals: number; versionConflicts: number; resyncs: number };
  readonly leases: ShardLeases['stats'];
  readonly backlog: BacklogScheduler['stats'] & { queued: number; fenceRefusals: number };
  /** What the shard owners saw of worker agents: reports, refusals, and silences acted on. */
  readonly agents: AgentKeepalive['stats'];
}

export class Replica {
  readonly subjects: Subjects;
  readonly store: DroverStore;
  readonly router: Router;
  readonly leases: ShardLeases;
  readonly membership: Membership;
  readonly links: Record<LinkName, LinkMonitor>;
  readonly peers: PeerWatch;
  readonly backlog: BacklogScheduler;
  readonly events: NatsContainerEvents;
  /** Prometheus metrics (served on /metrics). */
  readonly metrics: ReplicaMetrics;
  /** What the debug page shows (served on /debug). */
  readonly debug: DebugView;
  /** The HTTP server (metrics, health, debug page), or null when DROVER_HTTP_PORT is off. */
  private http: ObserveServer | null = null;
  private handOverCount = 0;
  /**
   * Settles with a message when this replica must stop on its own (another process took its
   * replica id while it was paused); the command exits 1 with it.
   */
  readonly fatal: Promise<string>;
  private reportFatal: (message: string) => void = () => undefined;
  private readonly started = Date.now();
  /** Hand-overs in progress, one per shard (graceful, in the background). */
  private readonly handingOver = new Map<number, Promise<void>>();
  private readonly served = new Map<number, ServedShard>();
  private readonly subscriptions: Subscription[] = [];
  private capacitySeq = 0;
  private readonly dirtyShards = new Set<number>();
  private capacityTimer: NodeJS.Timeout | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private stopping: Promise<void> | null = null;
  /** Links that are cut right now; the replica serves only while this is empty. */
  private readonly cutLinks = new Set<LinkName>();
  /** Serialises stepping out and back in, so a flapping link cannot interleave them. */
  private transition: Promise<void> = Promise.resolve();
  /** Shared by every shard owner of this replica (one log line per outage, not per shard). */
  private readonly redisWrites: Incident;
  private memoryReading: { at: number; usage: NodeJS.MemoryUsage } | null = null;
  /** Shards grown by registrations of this turn, and the announcement their replies wait for. */
  private readonly grownShards = new Set<number>();
  private growthAnnounced: Promise<void> | null = null;
  /** Owner counters survive the owners themselves (shards come and go). */
  private readonly retiredOwnerStats = { batches: 0, committedOps: 0, fenceRefusals: 0, versionConflicts: 0, resyncs: 0 };
  private retiredBacklogFenceRefusals = 0;
  private readonly retiredAgentStats: AgentKeepalive['stats'] = { reports: 0, staleReports: 0, agentConflicts: 0, unreachable: 0, unknown: 0, lost: 0, requeued: 0 };
  /** The event stream as ensured at start (null before): `drover status` says whether events are kept. */
  private eventStream: EnsureOutcome | null = null;
  /** Requeued containers being handed to their home backlog now, as "<shard>:<id>". */
  private readonly handingRequeued = new Set<string>();
  private outboxTimer: NodeJS.Timeout | null = null;
  /** Requeues handed over (and acked), and outbox ids the sweeps found. */
  readonly requeueStats = { handed: 0, swept: 0 };

  private constructor(
    readonly config: DroverConfig,
    readonly redis: Redis,
    readonly nc: NatsConnection,
    private readonly watchNc: NatsConnection,
    readonly log: Logger,
  ) {
    this.redisWrites = new Incident(log, 'Redis writes of the shard owners');
    this.fatal = new Promise((resolve) => {
      this.reportFatal = resolve;
    });
    this.subjects = new Subjects(config.prefix);
    this.store = new DroverStore(redis, {
      prefix: config.prefix,
      shards: config.shards,
      historyCap: config.historyCap,
      releasedRetentionSeconds: config.releasedRetentionSeconds,
      maxQueuedPerShard: Math.ceil(config.backlogMax / config.shards),
    });
    this.events = new NatsContainerEvents(nc, this.subjects, config.replicaId);
    this.router = new Router({
      nc,
      store: this.store,
      config,
      subjects: this.subjects,
      log,
      localOwner: (shard) => this.served.get(shard)?.endpoint ?? null,
      localCapacity: (shard) => this.capacityOf(shard),
      onAttempt: (result, seconds) => this.metrics.observeAttempt(result, seconds),
      onScheduled: (seconds) => this.metrics.observeScheduled(seconds),
      onShardReleased: (shard) => {
        if (this.leases.isDesired(shard) && !this.served.has(shard)) this.leases.acquireSoon();
      },
    });
    this.backlog = new BacklogScheduler({
      view: this.router.view,
      replicaId: config.replicaId,
      attempt: (entry, prefer) => this.attemptQueued(entry, prefer),
      holdAfterMs: config.backlogHoldAfterMs,
      hold: async (entry, shard, until) => {
        const result = await this.router.ask(shard, { k: 'hold', id: entry.id, request: entry.request, until });
        return result.ok && 'held' in result ? { held: result.held, fits: result.fits } : null;
      },
      placeOn: (entry, shard) => this.placeHeld(entry, shard),
      log,
    });
    this.metrics = new ReplicaMetrics({
      replicaId: config.replicaId,
      counters: () => {
        const stats = this.stats();
        return {
          placed: stats.router.placed,
          staleViewReroutes: stats.router.staleViewReroutes,
          unavailableReroutes: stats.router.unavailableReroutes,
          backlogReroutes: stats.router.backlogReroutes,
          backlogPlaced: stats.backlog.placed,
          backlogUnavailable: stats.backlog.unavailable,
          backlogNotOurs: stats.backlog.notOurs,
          fenceRefusals: stats.owners.fenceRefusals + stats.backlog.fenceRefusals,
          versionConflicts: stats.owners.versionConflicts,
          leasesAcquired: stats.leases.acquired,
          leasesLost: stats.leases.lost,
          handOvers: this.handOverCount,
          queuedOnSubmit: stats.router.queued,
          wakes: stats.backlog.wakes,
          requeuedNoRoom: stats.backlog.noRoom,
          backoffs: stats.backlog.unavailable,
          agents: stats.agents,
        };
      },
      shardsOwned: () => this.served.size,
      backlogDepth: () => this.backlog.depthByQueue(),
      forEachWorker: (visit) => {
        for (const { owner } of this.served.values()) owner.forEachWorker(visit);
      },
    });
    this.debug = new DebugView({
      replicaId: config.replicaId,
      prefix: config.prefix,
      shardCount: config.shards,
      status: () => this.status(false) as ReturnType<DebugSource['status']>,
      placed: () => this.router.stats.placed,
      shards: () => this.shardFacts(),
      backlogDepth: () => this.backlog.depthByQueue(),
      containerEventsByStatus: () => ({ ...this.events.byStatus }),
      findWorker: (id) => {
        const shard = shardOf(id, config.shards);
        const actor = this.served.get(shard)?.owner.actorOf(id) ?? null;
        return { shard, actor, ownerReplica: this.served.has(shard) ? config.replicaId : this.router.view.ownerOf(shard) };
      },
      readContainer: async (id) => {
        const record = await this.store.readContainer(id);
        return record === null ? null : containerView(record);
      },
      subscribeContainer: (id, onEvent) => {
        const subscription = this.nc.subscribe(this.subjects.containerEvents(id), {
          callback: (error, msg) => {
            if (error) return;
            try {
              onEvent(msg.json<Record<string, unknown>>());
            } catch {
              // a malformed event is not shown
            }
          },
        });
        return () => subscription.unsubscribe();
      },
    });
    this.membership = new Membership({
      store: this.store,
      nc,
      subjects: this.subjects,
      replicaId: config.replicaId,
      ttlMs: config.memberTtlMs,
      log,
      onChange: (members) => {
        this.peers.setMembers(members);
        this.rebalance();
      },
      onLeaveNotice: (peer) => this.peers.forget(peer),
      onDuplicate: (message) => {
        log.error(message);
        this.reportFatal(message);
      },
    });
    this.leases = new ShardLeases({
      redis,
      store: this.store,
      replicaId: config.replicaId,
      ttlMs: config.leaseTtlMs,
      log,
      handlers: {
        onAcquired: (shard, epoch) => this.openShard(shard, epoch),
        onLost: (shard, reason) => this.dropShard(shard, reason),
      },
    });
    const link = (name: LinkName, label: string, probe: () => Promise<unknown>) =>
      new LinkMonitor({
        name: label,
        probe,
        intervalMs: Math.max(50, Math.floor(config.linkTimeoutMs / 4)),
        cutAfterMs: config.linkTimeoutMs,
        slowMs: Math.max(100, Math.floor(config.linkTimeoutMs / 2)),
        backAfter: LINK_BACK_AFTER,
        log,
        onCut: () => this.linkCut(name),
        onBack: () => this.linkBack(name),
      });
    this.links = {
      nats: link('nats', 'NATS', () => nc.rtt()),
      redis: link('redis', 'Redis', () => redis.ping()),
    };
    this.peers = new PeerWatch({
      nc,
      watchNc,
      subjects: this.subjects,
      replicaId: config.replicaId,
      timeoutMs: Math.max(100, Math.floor(config.linkTimeoutMs / 2)),
      natsLinkUp: () => !this.links.nats.cut,
      refreshMembers: () => void this.membership.beat(),
      log,
    });
  }

  /** Connect, join the members, take the shards this replica should own, start routing. */
  static async start(config: DroverConfig, log: Logger = silentLogger()): Promise<Replica> {
    const redis = await connectReplicaRedis(config, log);
    let nc: NatsConnection | null = null;
    let watchNc: NatsConnection;
    try {
      nc = await connectNats(config, `drover-${config.replicaId}`);
      // The peer watch probes and sends ballast on a connection of its own: the NATS server stalls
      // a connection that publishes to a slow consumer (up to a second), and this one's link
      // check, requests and replies must not wait behind that (src/membership/peer-watch.ts).
      watchNc = await connectNats(config, `drover-${config.replicaId}-watch`);
    } catch (error) {
      await nc?.close().catch(() => undefined);
      redis.disconnect();
      throw new Error(`cannot reach NATS at ${config.natsUrl}: ${(error as Error).message}`);
    }
    const replica = new Replica(config, redis, nc, watchNc, log.child({ replica: config.replicaId }));
    try {
      await replica.begin();
    } catch (error) {
      replica.debug.stop();
      await replica.http?.stop();
      await replica.closeConnections();
      throw error;
    }
    return replica;
  }

  private async begin(): Promise<void> {
    await this.store.ensureShardCount(this.config.shards);
    // Before anything is published: events from the first write on are kept. Never throws (a
    // server without JetStream is logged, and the replica runs without replay).
    const streamSettings = { prefix: this.config.prefix, maxAgeSeconds: this.config.eventsMaxAgeSeconds, maxBytes: this.config.eventsMaxBytes };
    this.eventStream = await ensureEventStream(this.nc, streamSettings);
    logEnsureOutcome(this.log, this.eventStream, streamSettings);
    // HTTP first: a port that cannot be bound fails the start before this replica joins anything.
    // Until it has joined and holds its shards, /readyz says so.
    await this.startHttp();
    this.debug.start();
    this.subscriptions.push(
      this.nc.subscribe(this.subjects.capacityRefresh, { callback: () => this.publishAllCapacity() }),
      this.nc.subscribe(this.subjects.backlogPartitions, {
        callback: (error, msg) => {
          if (!error) msg.respond(JSON.stringify(this.backlog.describe()));
        },
      }),
      this.nc.subscribe(this.subjects.status, {
        callback: (error, msg) => {
          if (error) return;
          let reply: unknown;
          try {
            parseStatusRequest(msg.data);
            reply = { ok: true, ...this.status() };
          } catch (failure) {
            reply = replyFromError(failure);
          }
          msg.respond(JSON.stringify(reply));
        },
      }),
    );
    this.backlog.start();
    await this.membership.start();
    // After membership refused a second process with this replica id (it would never get here), and
    // in a queue group all the same: a paused twin that wakes still subscribed gets no copy of a
    // request the real holder also runs (it answers notServed alone, and the router resends).
    this.subscriptions.push(
      this.nc.subscribe(this.subjects.replicaOps(this.config.replicaId), {
        queue: this.subjects.replicaOpsQueue(this.config.replicaId),
        callback: (error, msg) => {
          if (!error) this.serveReplicaOps(msg);
        },
      }),
    );
    this.leases.setDesired(this.desired());
    await this.leases.tick();
    this.leases.start();
    this.heartbeatTimer = setInterval(() => this.publishAllCapacity(), CAPACITY_HEARTBEAT_MS);
    this.outboxTimer = setInterval(() => void this.sweepRequeueOutboxes(), OUTBOX_SWEEP_MS);
    this.outboxTimer.unref();
    await this.router.start();
    this.links.nats.start();
    this.links.redis.start();
    this.peers.start();
    this.log.info({ shards: this.servedShards(), of: this.config.shards, http: this.httpAddress() }, 'replica started');
  }

  /** The shards this replica should own, by rendezvous hashing over the live members. */
  private desired(): number[] {
    if (this.cutLinks.size > 0) return [];
    return desiredShards(this.config.replicaId, this.membership.members, this.config.shards);
  }

  /**
   * Membership changed: want the new set, give up (gracefully, in the background) what another
   * member should own now, and try to take what is ours. Hand-over order: the current owner
   * releases, announces the shard as unowned, and the new owner acquires on that announcement.
   */
  private rebalance(): void {
    if (this.stopping !== null) return;
    const desired = new Set(this.desired());
    this.leases.setDesired(desired);
    const leaving = [...this.served.keys()].filter((shard) => !desired.has(shard));
    if (leaving.length > 0) this.log.info({ shards: leaving }, 'handing shards over');
    for (const shard of leaving) void this.handOver(shard);
    this.leases.acquireSoon();
  }

  private linkCut(link: LinkName): void {
    const wasServing = this.cutLinks.size === 0;
    this.cutLinks.add(link);
    if (this.stopping !== null) return;
    this.transition = this.transition.then(async () => {
      if (link === 'redis') await this.router.withdraw();
      if (!wasServing) return;
      // Give up every shard at once: nobody can be served through this replica now, and the
      // others can only take the shards once the leases are free (released here if Redis still
      // answers; expired after the lease TTL if not).
      const wanted = this.leases.desired();
      this.leases.setDesired([]);
      const shards = this.servedShards();
      for (const shard of shards) this.dropShard(shard, `cut off from ${link === 'nats' ? 'NATS' : 'Redis'}`);
      await this.leases.releaseAll(wanted);
      await this.membership.suspend();
      this.log.warn({ link, shards }, 'stepped out of the members until the link is back; shards given up');
    });
  }

  private linkBack(link: LinkName): void {
    this.cutLinks.delete(link);
    if (this.stopping !== null) return;
    this.transition = this.transition.then(async () => {
      if (link === 'redis' && !this.cutLinks.has('redis')) await this.router.rejoin();
      if (this.cutLinks.size > 0) return;
      // Summaries received while cut off are stale by now: ask every owner for a fresh one.
      if (!this.nc.isClosed()) this.nc.publish(this.subjects.capacityRefresh);
      await this.membership.resume();
      this.rebalance();
      this.log.info('links to NATS and Redis are up; back among the members');
    });
  }

  /** What `drover status` and the debug page show. `collect`: under --expose-gc, collect garbage first (not on the page's 250 ms pushes). */
  status(collect = true): Record<string, unknown> {
    // Under --expose-gc (the benchmark's memory scenario) report live memory, not garbage.
    const gc = (globalThis as { gc?: () => void }).gc;
    if (gc !== undefined && collect) gc();
    const memory = this.memoryUsage(gc !== undefined && collect);
    return {
      uptimeMs: Date.now() - this.started,
      memory: { rss: memory.rss, heapUsed: memory.heapUsed, external: memory.external, arrayBuffers: memory.arrayBuffers },
      members: this.membership.members,
      desired: this.desired(),
      links: { nats: this.links.nats.describe(), redis: this.links.redis.describe() },
      peers: this.peers.stats,
      steppedOut: this.membership.suspended,
      eventStream: this.eventStream === null ? null
        : this.eventStream.ok ? { name: this.eventStream.stream, kept: true }
          : { name: this.eventStream.stream, kept: false, reason: this.eventStream.reason },
      routing: this.router.routing,
      http: this.httpAddress(),
      shardClient: this.router.shardClient.stats,
      ...this.stats(),
    };
  }

  /**
   * process.memoryUsage() reads /proc and walks the heap's spaces: a status polled many times a
   * second (the benchmark's drain watch, several pages) reuses a reading under MEMORY_READING_MS
   * old, unless garbage was just collected for an exact figure.
   */
  private memoryUsage(fresh: boolean): NodeJS.MemoryUsage {
    const now = Date.now();
    if (fresh || this.memoryReading === null || now - this.memoryReading.at >= MEMORY_READING_MS) {
      this.memoryReading = { at: now, usage: process.memoryUsage() };
    }
    return this.memoryReading.usage;
  }

  servedShards(): number[] {
    return [...this.served.keys()].sort((a, b) => a - b);
  }

  owner(shard: number): ShardOwner | null {
    return this.served.get(shard)?.owner ?? null;
  }

  stats(): ReplicaStats {
    const owners = { ...this.retiredOwnerStats };
    let workers = 0;
    for (const { owner } of this.served.values()) {
      workers += owner.workerCount;
      for (const key of Object.keys(owners) as Array<keyof typeof owners>) owners[key] += owner.stats[key];
    }
    let queued = 0;
    for (const { backlog } of this.served.values()) queued += backlog.entries.size;
    const agents = { ...this.retiredAgentStats };
    for (const { owner } of this.served.values()) addCounts(agents, owner.agentStats);
    return {
      replicaId: this.config.replicaId,
      shards: this.servedShards(),
      workers,
      router: this.router.stats,
      owners,
      leases: this.leases.stats,
      backlog: { ...this.backlog.stats, queued, fenceRefusals: this.backlogFenceRefusals() },
      agents,
    };
  }

  /** Where this replica serves HTTP (metrics, health, debug page), or null. */
  httpAddress(): { host: string; port: number; url: string } | null {
    const address = this.http?.address ?? null;
    if (address === null) return null;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return { host: address.address, port: address.port, url: `http://${host}:${address.port}/debug` };
  }

  private async startHttp(): Promise<void> {
    if (this.config.httpPort === null) return;
    const server = new ObserveServer({
      host: this.config.httpHost,
      port: this.config.httpPort,
      label: `replica ${this.config.replicaId}`,
      replica: { metrics: this.metrics, view: this.debug, health: () => this.health(), readiness: () => this.readiness() },
      cluster: () => new DroverClient(this.nc, this.config.prefix).clusterStatus(CLUSTER_STATUS_WAIT_MS),
    });
    try {
      await server.start();
    } catch (error) {
      throw new Error(`cannot serve HTTP on ${this.config.httpHost}:${this.config.httpPort} (DROVER_HTTP_PORT / DROVER_HTTP_HOST): ${(error as Error).message}`);
    }
    this.http = server;
  }

  /** /healthz: the process runs and its links to Redis and NATS answer. */
  health(): Probe {
    const redis = this.links.redis.describe();
    const nats = this.links.nats.describe();
    const link = (state: typeof redis) => ({
      ok: !state.cut,
      detail: state.cut ? `cut: no round trip for ${state.sinceGoodMs} ms` : `last round trip ${state.lastRoundTripMs ?? '-'} ms`,
    });
    const checks = { process: { ok: true, detail: `up ${Math.round((Date.now() - this.started) / 1000)} s` }, redis: link(redis), nats: link(nats) };
    return { ok: checks.redis.ok && checks.nats.ok && !this.nc.isClosed(), checks };
  }

  /** /readyz: serving — a member, holding every shard it should own, its router in the public queue group. */
  readiness(): Probe {
    const desired = this.desired();
    const missing = desired.filter((shard) => !this.served.has(shard));
    const member = this.membership.members.includes(this.config.replicaId) && !this.membership.suspended;
    const checks = {
      joined: { ok: member, detail: member ? `one of ${this.membership.members.length} members` : 'not among the members (joining, or stepped out while a link is cut)' },
      shards: { ok: desired.length > 0 && missing.length === 0, detail: desired.length === 0 ? 'owns no shard yet' : missing.length === 0 ? `holds its ${desired.length} shards` : `waiting for ${missing.length} of its ${desired.length} shards` },
      router: { ok: this.router.routing, detail: this.router.routing ? 'subscribed to the public subjects' : 'not in the public queue group (Redis cut off?)' },
    };
    return { ok: checks.joined.ok && checks.shards.ok && checks.router.ok && this.stopping === null, checks };
  }

  /** Per shard: epoch, lease expiry, workers by state, queued containers (for the debug page). */
  private shardFacts(): ShardFacts[] {
    return this.servedShards().map((shard) => {
      const served = this.served.get(shard)!;
      return { shard, epoch: served.owner.epoch, leaseExpiresAt: this.leases.expiresAt(shard), workers: served.owner.countByStatus(), queued: served.backlog.entries.size };
    });
  }

  private backlogFenceRefusals(): number {
    let refusals = this.retiredBacklogFenceRefusals;
    for (const { backlog } of this.served.values()) refusals += backlog.stats.fenceRefusals;
    return refusals;
  }

  /**
   * A container requeued by shard `shard`'s owner under `epoch` (its worker was lost before running
   * it): its home shard's backlog takes it again, then the requeue outbox forgets it. Tried for as
   * long as this ownership lasts, with a backoff while the home shard cannot answer, and with no
   * final give-up: a requeued container must reach a backlog that can place, expire and cancel it.
   * It may be called while the shard is still opening (the owner resends its outbox from open): it
   * waits until the shard is served. When this ownership ends, the outbox keeps the id and the next
   * owner resends it; the outbox sweep (every OUTBOX_SWEEP_MS) resends what is left meanwhile.
   */
  private async handRequeued(shard: number, epoch: number, containerId: string): Promise<void> {
    const key = `${shard}:${containerId}`;
    // One hand-over per id at a time, and a bounded number in all (the sweep takes the rest later).
    if (this.handingRequeued.has(key) || this.handingRequeued.size >= MAX_REQUEUES_HANDED) return;
    this.handingRequeued.add(key);
    try {
      for (let attempt = 0; ; attempt += 1) {
        if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, Math.min(REQUEUE_RETRY_MAX_MS, REQUEUE_RETRY_FIRST_MS * 2 ** Math.min(attempt - 1, 8))));
        if (this.stopping !== null || this.leases.epochOf(shard) !== epoch) return; // the next owner resends it
        const served = this.served.get(shard);
        if (served === undefined) continue; // still opening under this epoch
        if (served.owner.epoch !== epoch || served.owner.state !== 'serving') return;
        if (!(await this.router.requeue(containerId))) continue;
        const acked = await served.owner.ackRequeue(containerId);
        if (acked.ok) {
          this.requeueStats.handed += 1;
          return;
        }
      }
    } finally {
      this.handingRequeued.delete(key);
    }
  }

  /** The outbox sweep: every served shard's requeue outbox is handed over again (what is in flight is not). */
  private async sweepRequeueOutboxes(): Promise<void> {
    for (const [shard, served] of this.served) {
      if (served.owner.state !== 'serving') continue;
      let ids: string[];
      try {
        ids = await this.store.requeueOutbox(shard);
      } catch (error) {
        this.redisWrites.fail(error, { shard, op: 'requeue outbox sweep (tried again at the next sweep)' });
        return;
      }
      this.requeueStats.swept += ids.length;
      for (const id of ids) void this.handRequeued(shard, served.owner.epoch, id);
    }
  }

  /** A starving container placed on the worker held for it in `shard` (the owner's choice allows only it there). */
  private async placeHeld(entry: QueuedEntry, shard: number): Promise<AttemptOutcome> {
    const outcome = await this.askHeld(entry, shard);
    // A backlog attempt (counted by the backlog's own counters), and these are the longest waits:
    // the SLI must include them.
    if (outcome.outcome === 'placed') this.metrics.observeScheduled((Date.now() - entry.queuedAt) / 1_000);
    return outcome;
  }

  private async askHeld(entry: QueuedEntry, shard: number): Promise<AttemptOutcome> {
    const result = await this.router.ask(shard, {
      k: 'place',
      id: entry.id,
      request: entry.request,
      requestKey: entry.requestKey,
      deadline: Date.now() + this.config.shardRequestTimeoutMs,
      spec: '',
      priority: entry.priority,
      maxWaitMs: maxWaitOf(entry),
    });
    if (result.ok) {
      const placed = result as { workerId: string; unqueued?: true };
      return { outcome: 'placed', workerId: placed.workerId, unqueued: placed.unqueued === true };
    }
    switch (result.code) {
      case 'ALREADY_PLACED':
        return result.requestKey === entry.requestKey ? { outcome: 'placed', workerId: result.workerId ?? '' } : { outcome: 'not-ours', message: result.message };
      case 'NOT_PLACEABLE':
        return { outcome: 'not-ours', message: result.message };
      case 'NO_FIT':
        return { outcome: 'no-room' };
      default:
        return { outcome: 'unavailable' };
    }
  }

  /** One placement attempt of a queued container, through this replica's router like a submit. */
  private async attemptQueued(entry: QueuedEntry, prefer: number | null): Promise<AttemptOutcome> {
    const request = { id: entry.id, ...entry.request, priority: entry.priority, maxWaitMs: maxWaitOf(entry) };
    const reply = await this.router.place(request, null, entry.requestKey, '', prefer, 'backlog');
    if (reply.ok) {
      if (!this.router.isRepeat(reply)) this.metrics.observeScheduled((Date.now() - entry.queuedAt) / 1_000);
      return { outcome: 'placed', workerId: reply.workerId, shard: shardOf(reply.workerId, this.config.shards), unqueued: this.router.isUnqueued(reply) };
    }
    switch (reply.error.code) {
      case 'NO_CAPACITY':
        return { outcome: 'no-room' };
      case 'ALREADY_PLACED':
      case 'CONFLICT':
        return { outcome: 'not-ours', message: reply.error.message };
      default:
        return { outcome: 'unavailable' };
    }
  }

  /**
   * Graceful stop: routers elsewhere take the public subjects; in-flight requests finish; each shard
   * stops taking ops, finishes its queued writes, and releases its lease for the next owner.
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.log.info({ shards: this.servedShards() }, 'stopping: handing shards over');
    this.links.nats.stop();
    this.links.redis.stop();
    await this.transition;
    this.leases.setDesired([]);
    // Leave first, so the others start wanting our shards and take each one as it is released.
    await this.membership.leave();
    await this.router.stop();
    await Promise.all(this.servedShards().map((shard) => this.handOver(shard)));
    // An acquisition that was under way may have opened a shard since: hand that over too.
    await this.leases.stop();
    await Promise.all(this.servedShards().map((shard) => this.handOver(shard)));
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    if (this.outboxTimer !== null) clearInterval(this.outboxTimer);
    if (this.capacityTimer !== null) clearTimeout(this.capacityTimer);
    this.backlog.stop();
    this.debug.stop();
    await this.http?.stop();
    await this.closeConnections();
    this.log.info('stopped');
  }

  /** Give one shard up gracefully: stop taking ops, finish queued writes, release the lease. */
  handOver(shard: number): Promise<void> {
    const running = this.handingOver.get(shard);
    if (running !== undefined) return running;
    const served = this.served.get(shard);
    if (served === undefined) return Promise.resolve();
    const startedAt = Date.now();
    const handOver = (async () => {
      await served.subscription.drain().catch(() => undefined);
      await Promise.all([served.owner.drain(), served.backlog.drain()]);
      // The lease may have been lost (and the shard even re-taken) while draining: only this
      // ownership is ours to retire and release.
      if (this.served.get(shard) !== served) return;
      this.retire(shard, served);
      if (this.leases.epochOf(shard) === served.owner.epoch) await this.leases.release(shard);
      const durationMs = Date.now() - startedAt;
      this.handOverCount += 1;
      this.metrics.observeHandOver(durationMs / 1_000);
      this.debug.recordHandOver({ shard, kind: 'handed-over', at: Date.now(), epoch: served.owner.epoch, durationMs });
    })().finally(() => this.handingOver.delete(shard));
    this.handingOver.set(shard, handOver);
    return handOver;
  }

  private async closeConnections(): Promise<void> {
    this.peers.stop();
    this.links.nats.stop();
    this.links.redis.stop();
    // Events still gathered for the log go out before the connection drains.
    this.events.flush();
    await this.nc.drain().catch(() => undefined);
    await this.watchNc.close().catch(() => undefined);
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  private async openShard(shard: number, epoch: number): Promise<void> {
    // Redis refused this ownership's epoch (in a worker write or a backlog write): another replica has the shard.
    const onFenced = (fencedShard: number) => {
      this.debug.recordRefusal({ kind: 'fence', shard: fencedShard, workerId: null, code: 'FENCED', at: Date.now() });
      this.leases.forget(fencedShard);
      this.dropShard(fencedShard, 'fenced by a newer epoch');
    };
    const owner = await ShardOwner.open({
      store: this.store,
      shard,
      shards: this.config.shards,
      epoch,
      strategy: this.config.strategy,
      log: this.log,
      redisWrites: this.redisWrites,
      maxQueuedOps: this.config.maxQueuedOpsPerShard,
      leaseHeld: () => this.leases.holds(shard),
      onFenced,
      onCapacityChange: (changed, grew) => this.markCapacityDirty(changed, grew),
      announceGrowth: (grown) => this.announceGrowth(grown),
      events: this.events,
      workerTtlMs: this.config.workerTtlMs,
      workerLostAfterMs: this.config.workerLostAfterMs,
      pokeAgent: (workerId) => {
        if (!this.nc.isClosed()) this.nc.publish(this.subjects.agent(workerId));
      },
      onRequeued: (containerId) => void this.handRequeued(shard, epoch, containerId),
      onRefusal: (refusal) => this.debug.recordRefusal(refusal),
    });
    let backlog: BacklogPartition;
    try {
      backlog = await BacklogPartition.open({
        store: this.store,
        shard,
        epoch,
        log: this.log,
        redisWrites: this.redisWrites,
        leaseHeld: () => this.leases.holds(shard),
        onFenced,
        events: this.events,
        maxQueuedOps: this.config.maxQueuedOpsPerShard,
        reconcileEveryMs: this.config.backlogReconcileMs,
      });
    } catch (error) {
      owner.close();
      throw error;
    }
    const endpoint = new ShardEndpoint(owner, backlog, this.backlog, this.config.shards, this.store);
    const subscription = this.nc.subscribe(this.subjects.shard(shard), {
      queue: this.subjects.shardQueue,
      callback: (error, msg) => {
        if (!error) this.serveShard(shard, msg);
      },
    });
    this.served.set(shard, { owner, backlog, endpoint, subscription, capacity: null });
    this.backlog.add(backlog);
    this.log.debug({ shard, epoch, workers: owner.workerCount }, 'shard opened');
    this.debug.recordHandOver({ shard, kind: 'acquired', at: Date.now(), epoch });
    this.publishCapacity(shard);
    // Membership may have moved on while the shard was loading: give it to its new owner.
    if (!this.leases.isDesired(shard)) void this.handOver(shard);
  }

  /** Lease lost, fenced or link cut: stop serving the shard at once, without waiting for anything. */
  private dropShard(shard: number, reason: string): void {
    const served = this.served.get(shard);
    if (served === undefined) return;
    // Logged by the caller once for all the shards it drops (lease loss, link cut); per shard at debug.
    this.log.debug({ shard, reason }, 'shard dropped');
    this.debug.recordHandOver({ shard, kind: 'dropped', at: Date.now(), epoch: served.owner.epoch, reason });
    served.subscription.unsubscribe();
    served.owner.close();
    this.retire(shard, served);
  }

  private retire(shard: number, served: ServedShard): void {
    for (const key of Object.keys(this.retiredOwnerStats) as Array<keyof typeof this.retiredOwnerStats>) {
      this.retiredOwnerStats[key] += served.owner.stats[key];
    }
    this.served.delete(shard);
    addCounts(this.retiredAgentStats, served.owner.agentStats);
    this.retiredBacklogFenceRefusals += served.backlog.stats.fenceRefusals;
    served.backlog.close();
    this.backlog.remove(shard);
    this.dirtyShards.delete(shard);
    // Tell routers the shard has no owner here, so they stop choosing it until the next owner
    // speaks. The summary of its last capacity goes with it: nothing changes a shard while nobody
    // owns it, so routers may still use it to prove that a container fits nowhere.
    const unowned: ShardCapacity = {
      shard,
      owner: null,
      epoch: served.owner.epoch,
      seq: ++this.capacitySeq,
      groups: served.capacity?.groups ?? served.owner.capacity(),
    };
    if (!this.nc.isClosed()) this.nc.publish(this.subjects.capacity(shard), JSON.stringify(unowned));
    this.router.view.update(unowned);
  }

  private serveShard(shard: number, msg: Msg): void {
    let ops;
    try {
      ops = parseShardRequest(msg.json()).ops;
    } catch (error) {
      this.log.warn({ err: error, shard }, 'malformed shard request');
      msg.respond(JSON.stringify({ results: [], capacity: null } satisfies ShardReply));
      return;
    }
    const results = ops.map((op) => this.executeOp(shard, op));
    Promise.all(results).then(
      (settled) => {
        const reply: ShardReply = { results: settled, capacity: this.capacityOf(shard) };
        this.respond(msg, JSON.stringify(reply), () => JSON.stringify({ results: ops.map(() => tooLarge), capacity: null } satisfies ShardReply));
      },
      (error: unknown) => {
        // Owners answer every op with a result; reaching here is a bug. Answer, never hang.
        this.log.error({ err: error, shard }, 'shard request failed');
        const failed: ShardOpResult = { ok: false, code: 'UNAVAILABLE', message: `shard ${shard} failed the request` };
        msg.respond(JSON.stringify({ results: ops.map(() => failed), capacity: null } satisfies ShardReply));
      },
    );
  }

  /**
   * Ops for several shards, sent to this replica because it announced it owns them. Each runs only
   * if this replica serves its shard now (the same check as being subscribed to the shard's
   * subject); otherwise it is answered `notServed` and the router sends it on the shard's subject.
   */
  private serveReplicaOps(msg: Msg): void {
    let ops;
    try {
      ops = parseReplicaOpsRequest(msg.json(), this.config.shards);
    } catch (error) {
      this.log.warn({ err: error }, 'malformed replica ops request');
      msg.respond(JSON.stringify({ results: [], capacities: [] } satisfies ReplicaOpsReply));
      return;
    }
    const results = ops.map(({ shard, op }): ShardOpResult | Promise<ShardOpResult> => {
      if (op.k !== 'invalid' && !this.served.has(shard)) {
        return { ok: false, code: 'UNAVAILABLE', message: `replica ${this.config.replicaId} does not serve shard ${shard}`, notServed: true };
      }
      return this.executeOp(shard, op);
    });
    Promise.all(results).then(
      (settled) => {
        // The capacities are a courtesy (routers also get them on the capacity subjects): only as
        // many as keep the reply within REPLY_CAPACITY_BYTES go with it.
        const capacities: ShardCapacity[] = [];
        let budget = REPLY_CAPACITY_BYTES;
        for (const shard of new Set(ops.map((entry) => entry.shard))) {
          const capacity = shard < 0 ? null : this.capacityOf(shard);
          if (capacity === null) continue;
          budget -= JSON.stringify(capacity).length;
          if (budget < 0) break;
          capacities.push(capacity);
        }
        this.respond(msg, JSON.stringify({ results: settled, capacities } satisfies ReplicaOpsReply), () =>
          JSON.stringify({ results: ops.map(() => tooLarge), capacities: [] } satisfies ReplicaOpsReply));
      },
      (error: unknown) => {
        this.log.error({ err: error }, 'replica ops request failed');
        const failed: ShardOpResult = { ok: false, code: 'UNAVAILABLE', message: 'the replica failed the request' };
        msg.respond(JSON.stringify({ results: ops.map(() => failed), capacities: [] } satisfies ReplicaOpsReply));
      },
    );
  }

  /**
   * Answer a shard request. A reply the NATS server would refuse (over its maximum payload) is
   * replaced by a small one saying so for every op, so the router is answered instead of waiting
   * for its timeout; the ops did run (their outcome is unknown to the router, as after a timeout).
   */
  private respond(msg: Msg, body: string, tooLargeBody: () => string): void {
    if (this.nc.isClosed()) return;
    const maxPayload = this.nc.info?.max_payload ?? Number.POSITIVE_INFINITY;
    const fits = Buffer.byteLength(body) <= maxPayload;
    if (!fits) this.log.error({ bytes: body.length, maxPayload }, 'shard reply too large to send; answered UNAVAILABLE (outcome unknown) instead');
    try {
      msg.respond(fits ? body : tooLargeBody());
    } catch (error) {
      // The connection is closing: the router's request times out and it treats the outcome as unknown.
      this.log.warn({ err: error }, 'could not answer a shard request');
    }
  }

  /** One received op on one shard of this replica: its result, never a throw. */
  private executeOp(shard: number, op: ShardOp | InvalidShardOp): ShardOpResult | Promise<ShardOpResult> {
    if (op.k === 'invalid') return { ok: false, code: 'INVALID_REQUEST', message: op.message };
    const served = this.served.get(shard);
    if (served === undefined) return { ok: false, code: 'UNAVAILABLE', message: `this replica does not serve shard ${shard}` };
    try {
      return served.endpoint.execute(op);
    } catch (error) {
      this.log.error({ err: error, shard, op: op.k }, 'shard op failed');
      return { ok: false, code: 'UNAVAILABLE', message: `shard ${shard} failed the op: ${(error as Error).message}` };
    }
  }

  private capacityOf(shard: number): ShardCapacity | null {
    const served = this.served.get(shard);
    if (served === undefined) return null;
    if (served.capacity === null) {
      served.capacity = {
        shard,
        owner: this.config.replicaId,
        epoch: served.owner.epoch,
        seq: ++this.capacitySeq,
        groups: served.owner.capacity(),
      };
    }
    return served.capacity;
  }

  /**
   * A shard's capacity changed. When it grew (a release, a registration, an enable), the summary is
   * published at once, before the owner's replies go out: a client told "released" that then
   * submits through another router finds that router already knowing about the freed room (one
   * NATS server delivers one connection's messages in order). Shrinking is coalesced: a router
   * that has not heard yet only tries a shard that cannot fit and is told so.
   */
  private markCapacityDirty(shard: number, grew: boolean): void {
    const served = this.served.get(shard);
    if (served !== undefined) served.capacity = null;
    if (grew) {
      this.dirtyShards.delete(shard);
      this.publishCapacity(shard);
      return;
    }
    this.dirtyShards.add(shard);
    if (this.capacityTimer === null) {
      this.capacityTimer = setTimeout(() => {
        this.capacityTimer = null;
        const shards = [...this.dirtyShards];
        this.dirtyShards.clear();
        for (const dirty of shards) this.publishCapacity(dirty);
      }, CAPACITY_COALESCE_MS);
    }
  }

  /**
   * Registrations grow shards by the hundred when a fleet comes up: every shard grown in this turn
   * of the event loop is published in one callback (one socket write for all of them, rather than
   * a timer and a write per shard), and the registrations' replies wait for it.
   */
  private announceGrowth(shard: number): Promise<void> {
    this.grownShards.add(shard);
    this.growthAnnounced ??= new Promise((resolve) => {
      setImmediate(() => {
        const shards = [...this.grownShards];
        this.grownShards.clear();
        this.growthAnnounced = null;
        for (const grown of shards) this.markCapacityDirty(grown, true);
        resolve();
      });
    });
    return this.growthAnnounced;
  }

  private publishCapacity(shard: number): void {
    const capacity = this.capacityOf(shard);
    if (capacity === null || this.nc.isClosed()) return;
    this.router.view.update(capacity);
    this.nc.publish(this.subjects.capacity(shard), JSON.stringify(capacity));
  }

  private publishAllCapacity(): void {
    for (const shard of this.served.keys()) this.publishCapacity(shard);
  }
}

/** A replica's NATS connection: reconnects for ever, and notices a silently cut link within seconds. */
function connectNats(config: DroverConfig, name: string): Promise<NatsConnection> {
  return connect({
    servers: config.natsUrl,
    name,
    noAsyncTraces: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // A silently cut connection is noticed by the client within a few ping intervals and
    // replaced (the default interval is two minutes); the link monitor acts on it sooner.
    pingInterval: Math.max(250, Math.floor(config.linkTimeoutMs / 2)),
    maxPingOut: 2,
    // The first connect only: a start under load may take a while; the link monitor watches the
    // connection from then on (the same bound as for Redis, see redis-client.ts).
    timeout: START_CONNECT_TIMEOUT_MS,
  });
}

/** Add every counter of `from` to `into` (counters of owners that come and go, summed per replica). */
function addCounts<T extends Record<string, number>>(into: T, from: Readonly<T>): void {
  for (const key of Object.keys(into) as Array<keyof T>) (into[key] as number) += from[key];
}
