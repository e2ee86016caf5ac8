/**
 * A replica's Prometheus metrics (prom-client, text format on /metrics). Names follow
 * kube-scheduler's where the meaning matches ("pod" there is a container here); the rest are
 * `drover_*`. Every series carries the replica id as a default label, and no label names a worker
 * or a container (their number is unbounded): per-worker facts are aggregated by pool and status,
 * and worker utilization is a histogram.
 *
 * Counters that Drover already keeps (router, owners, leases, backlog) are read when scraped, so
 * the hot paths pay nothing for them; only durations are observed as they happen.
 *
 * What the seed's audit asked to watch, from these:
 *   conflict ratio      sum(rate(drover_conflicts_total[5m])) / sum(rate(drover_placements_total[5m])):
 *                       version and fence refusals and re-routes caused by a stale view, per
 *                       placement. The backlog's retries (drover_backlog_attempts_total, re-routes
 *                       with cause="backlog") are counted apart: they are waiting, not conflicts.
 *                       scheduler_schedule_attempts_total counts clients' attempts only.
 *   time to schedule    scheduler_pod_scheduling_sli_duration_seconds (submit or queue -> placed)
 *   utilization         drover_worker_utilization (distribution), drover_pool_allocated / drover_pool_capacity
 *   backlog over time   scheduler_pending_pods{queue}
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { WorkerView } from '../protocol/shard-messages.js';

export type AttemptResult = 'scheduled' | 'unschedulable' | 'error';

/** What the metrics read from the replica when scraped. */
export interface MetricsSource {
  readonly replicaId: string;
  counters(): {
    readonly placed: number;
    readonly staleViewReroutes: number;
    readonly unavailableReroutes: number;
    readonly backlogReroutes: number;
    readonly backlogPlaced: number;
    readonly backlogUnavailable: number;
    readonly backlogNotOurs: number;
    readonly fenceRefusals: number;
    readonly versionConflicts: number;
    readonly leasesAcquired: number;
    readonly leasesLost: number;
    readonly handOvers: number;
    readonly queuedOnSubmit: number;
    readonly wakes: number;
    readonly requeuedNoRoom: number;
    readonly backoffs: number;
    /** The shard owners' agent counters (see AgentKeepalive.stats). */
    readonly agents: {
      readonly reports: number;
      readonly staleReports: number;
      readonly agentConflicts: number;
      readonly unreachable: number;
      readonly unknown: number;
      readonly lost: number;
      readonly requeued: number;
    };
  };
  shardsOwned(): number;
  backlogDepth(): { active: number; backoff: number; unschedulable: number; inFlight: number };
  forEachWorker(visit: (worker: WorkerView) => void): void;
}

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1_800, 3_600];
const SHARE_BUCKETS = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1];
/** Distinct pools shown as labels; beyond this they are summed under pool="(other)" (bounded series). */
const MAX_POOL_LABELS = 100;

export class ReplicaMetrics {
  readonly registry = new Registry();
  private readonly attemptDuration: Histogram<'result'>;
  private readonly attempts: Counter<'result'>;
  private readonly endToEnd: Histogram;
  private readonly handOverDuration: Histogram;
  /** Counts `text` calls, so per-scrape reads know when a new scrape began. */
  private scrape = 0;
  private readonly byResult = new Map<AttemptResult, { attempts: { inc(): void }; duration: { observe(value: number): void } }>();

  constructor(private readonly source: MetricsSource) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ replica: source.replicaId });
    collectDefaultMetrics({ register: this.registry });

    this.attempts = new Counter({
      name: 'scheduler_schedule_attempts_total',
      help: 'Placement attempts of clients\' submits by result: scheduled, unschedulable (no worker has room), error (owners unavailable, refused). The backlog\'s attempts are drover_backlog_attempts_total.',
      labelNames: ['result'],
      registers,
    });
    for (const result of ['scheduled', 'unschedulable', 'error'] as const) this.attempts.inc({ result }, 0);
    this.attemptDuration = new Histogram({
      name: 'scheduler_scheduling_attempt_duration_seconds',
      help: 'Duration of one client placement attempt through this replica\'s router, re-routes included.',
      labelNames: ['result'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.endToEnd = new Histogram({
      name: 'scheduler_pod_scheduling_sli_duration_seconds',
      help: 'From a container\'s submit (or its queueing) until it is placed, backlog wait included.',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.handOverDuration = new Histogram({
      name: 'drover_handover_duration_seconds',
      help: 'Graceful shard hand-overs: from giving the shard up until its writes drained and its lease was released.',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });

    // Each scrape reads the counters and walks the workers once, however many collectors use them.
    const counters = this.perScrape(() => source.counters());
    const workerPass = this.perScrape(() => passOver(source));

    const counter = (name: string, help: string, read: (c: ReturnType<MetricsSource['counters']>) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read(counters()));
        },
      });
    counter('drover_placements_total', 'Containers placed through this replica\'s router (submits and backlog attempts).', (c) => c.placed);
    new Counter({
      name: 'drover_reroutes_total',
      help: 'Placements the router sent to another shard, by cause: stale_view (an owner refused a client\'s placement its view said fits: a conflict), unavailable (the owner did not answer), backlog (within the backlog\'s attempts: retries, not conflicts).',
      labelNames: ['cause'],
      registers,
      collect() {
        const c = counters();
        this.reset();
        this.inc({ cause: 'stale_view' }, c.staleViewReroutes);
        this.inc({ cause: 'unavailable' }, c.unavailableReroutes);
        this.inc({ cause: 'backlog' }, c.backlogReroutes);
      },
    });
    new Counter({
      name: 'drover_conflicts_total',
      help: 'Conflicts, by kind: version (Redis refused a write, the worker changed under the actor), fence (Redis refused an older epoch), stale_view (an owner refused a client\'s placement the router\'s view said fits). The backlog\'s retries are not conflicts.',
      labelNames: ['kind'],
      registers,
      collect() {
        const c = counters();
        this.reset();
        this.inc({ kind: 'version' }, c.versionConflicts);
        this.inc({ kind: 'fence' }, c.fenceRefusals);
        this.inc({ kind: 'stale_view' }, c.staleViewReroutes);
      },
    });
    new Counter({
      name: 'drover_backlog_attempts_total',
      help: 'The backlog\'s placement attempts of queued containers, by result: scheduled, no_room (put back to sleep), unavailable (owners did not answer; backed off), not_ours (placed or ended by another request).',
      labelNames: ['result'],
      registers,
      collect() {
        const c = counters();
        this.reset();
        this.inc({ result: 'scheduled' }, c.backlogPlaced);
        this.inc({ result: 'no_room' }, c.requeuedNoRoom);
        this.inc({ result: 'unavailable' }, c.backlogUnavailable);
        this.inc({ result: 'not_ours' }, c.backlogNotOurs);
        // Attempts still in flight have no result yet: each is counted when it ends.
      },
    });
    counter('drover_fence_refusals_total', 'Writes Redis refused because another replica holds a newer lease epoch for the shard.', (c) => c.fenceRefusals);
    counter('drover_version_conflicts_total', 'Writes Redis refused because the worker\'s ResourceVersion or capacity was not what the actor held.', (c) => c.versionConflicts);
    counter('drover_lease_acquisitions_total', 'Shard leases this replica acquired.', (c) => c.leasesAcquired);
    counter('drover_lease_losses_total', 'Shard leases this replica lost (expired or refused extension).', (c) => c.leasesLost);
    counter('drover_handovers_total', 'Shards this replica handed over gracefully (rebalancing).', (c) => c.handOvers);
    new Counter({
      name: 'drover_agent_events_total',
      help: 'What this replica\'s shard owners saw of worker agents, by event: report (accepted), stale_report (older than the last, or past its deadline: refused), agent_conflict (another live incarnation: refused), unreachable (a worker whose agent went silent for the TTL), unknown (a container that may still run there), lost (a worker silent past DROVER_WORKER_LOST_AFTER_MS), requeued (a placement never delivered, queued again).',
      labelNames: ['event'],
      registers,
      collect() {
        const a = counters().agents;
        this.reset();
        this.inc({ event: 'report' }, a.reports);
        this.inc({ event: 'stale_report' }, a.staleReports);
        this.inc({ event: 'agent_conflict' }, a.agentConflicts);
        this.inc({ event: 'unreachable' }, a.unreachable);
        this.inc({ event: 'unknown' }, a.unknown);
        this.inc({ event: 'lost' }, a.lost);
        this.inc({ event: 'requeued' }, a.requeued);
      },
    });
    new Counter({
      name: 'scheduler_queue_incoming_pods_total',
      help: 'Backlog queue movements seen by this replica, by event: submitted (submits this router queued, in whichever replica\'s backlog), wake (a class of queued containers woken because capacity appeared: counts classes, not containers), no_room (a container tried and put back to sleep), backoff (a container put back after its owners did not answer).',
      labelNames: ['event'],
      registers,
      collect() {
        const c = counters();
        this.reset();
        this.inc({ event: 'submitted' }, c.queuedOnSubmit);
        this.inc({ event: 'wake' }, c.wakes);
        this.inc({ event: 'no_room' }, c.requeuedNoRoom);
        this.inc({ event: 'backoff' }, c.backoffs);
      },
    });
    new Gauge({
      name: 'scheduler_pending_pods',
      help: 'Queued containers in this replica\'s backlog partitions, by queue: active, backoff, unschedulable (asleep until capacity appears), in_flight.',
      labelNames: ['queue'],
      registers,
      collect() {
        const depth = source.backlogDepth();
        this.set({ queue: 'active' }, depth.active);
        this.set({ queue: 'backoff' }, depth.backoff);
        this.set({ queue: 'unschedulable' }, depth.unschedulable);
        this.set({ queue: 'in_flight' }, depth.inFlight);
      },
    });
    new Gauge({
      name: 'drover_shards_owned',
      help: 'Shards whose lease this replica holds and serves.',
      registers,
      collect() {
        this.set(source.shardsOwned());
      },
    });

    // Workers, capacity and utilization: from the scrape's one pass over this replica's workers.
    new Gauge({
      name: 'drover_workers',
      help: 'Workers of the shards this replica owns, by pool and status.',
      labelNames: ['pool', 'status'],
      registers,
      collect() {
        this.reset();
        for (const [key, count] of workerPass().workers) {
          const [pool, status] = key.split('\u0000') as [string, string];
          this.set({ pool, status }, count);
        }
      },
    });
    const resources = (name: string, help: string, pick: (pool: PoolTotals) => [number, number, number]) =>
      new Gauge({
        name,
        help,
        labelNames: ['pool', 'resource'],
        registers,
        collect() {
          this.reset();
          for (const [pool, totals] of workerPass().pools) {
            const [cpu, memory, gpu] = pick(totals);
            this.set({ pool, resource: 'cpu_millicores' }, cpu);
            this.set({ pool, resource: 'memory_mib' }, memory);
            this.set({ pool, resource: 'gpu' }, gpu);
          }
        },
      });
    resources('drover_pool_capacity', 'Capacity of the workers this replica owns that take placements (available or draining), by pool.', (t) => [t.cpu, t.memory, t.gpu]);
    resources('drover_pool_allocated', 'Capacity allocated to containers on those workers, by pool (utilization = allocated / capacity).', (t) => [t.allocatedCpu, t.allocatedMemory, t.allocatedGpu]);
    new Histogram({
      name: 'drover_worker_utilization',
      help: 'Share of each worker\'s capacity allocated (the higher of CPU and memory), over the workers this replica owns, taken at scrape time.',
      buckets: SHARE_BUCKETS,
      registers,
      collect() {
        this.reset();
        for (const share of workerPass().utilization) this.observe(share);
      },
    });
  }

  /** One placement attempt ended (a submit's, or a backlog attempt's). On the placement path: label children are resolved once. */
  observeAttempt(result: AttemptResult, seconds: number): void {
    let children = this.byResult.get(result);
    if (children === undefined) {
      children = { attempts: this.attempts.labels(result), duration: this.attemptDuration.labels(result) };
      this.byResult.set(result, children);
    }
    children.attempts.inc();
    children.duration.observe(seconds);
  }

  /** A container was placed `seconds` after it was submitted (its whole wait, backlog included). */
  observeScheduled(seconds: number): void {
    this.endToEnd.observe(Math.max(0, seconds));
  }

  observeHandOver(seconds: number): void {
    this.handOverDuration.observe(seconds);
  }

  async text(): Promise<string> {
    this.scrape += 1;
    return this.registry.metrics();
  }

  /** `read` at most once per scrape (`text` call): the collectors of one scrape share its result. */
  private perScrape<T>(read: () => T): () => T {
    let memo: { scrape: number; value: T } | null = null;
    return () => {
      if (memo === null || memo.scrape !== this.scrape) memo = { scrape: this.scrape, value: read() };
      return memo.value;
    };
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

interface PoolTotals {
  cpu: number;
  memory: number;
  gpu: number;
  allocatedCpu: number;
  allocatedMemory: number;
  allocatedGpu: number;
}

interface WorkerPass {
  /** "<pool>\0<status>" -> count. */
  readonly workers: Map<string, number>;
  readonly pools: Map<string, PoolTotals>;
  readonly utilization: number[];
}

function passOver(source: MetricsSource): WorkerPass {
  const workers = new Map<string, number>();
  const pools = new Map<string, PoolTotals>();
  const utilization: number[] = [];
  const seenPools = new Set<string>();
  source.forEachWorker((worker) => {
    let pool = worker.pool ?? '';
    // Every series with a pool label counts against the bound, whatever the workers' status.
    if (!seenPools.has(pool)) {
      if (seenPools.size >= MAX_POOL_LABELS) pool = '(other)';
      seenPools.add(pool);
    }
    const key = `${pool}\u0000${worker.status}`;
    workers.set(key, (workers.get(key) ?? 0) + 1);
    if (worker.status !== 'available' && worker.status !== 'draining') return;
    let totals = pools.get(pool);
    if (totals === undefined) pools.set(pool, (totals = { cpu: 0, memory: 0, gpu: 0, allocatedCpu: 0, allocatedMemory: 0, allocatedGpu: 0 }));
    totals.cpu += worker.cpu;
    totals.memory += worker.memory;
    totals.gpu += worker.gpuCount;
    totals.allocatedCpu += worker.cpu - worker.freeCpu;
    totals.allocatedMemory += worker.memory - worker.freeMemory;
    totals.allocatedGpu += worker.gpuCount - worker.freeGpuCount;
    const cpuShare = worker.cpu > 0 ? (worker.cpu - worker.freeCpu) / worker.cpu : 0;
    const memoryShare = worker.memory > 0 ? (worker.memory - worker.freeMemory) / worker.memory : 0;
    utilization.push(Math.max(cpuShare, memoryShare));
  });
  return { workers, pools, utilization };
}
