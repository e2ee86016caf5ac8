/**
 * Optional request header: the Unix ms after which the client no longer waits for the answer. A
 * router does not start a request past it, and a placement is never written after it (the Lua
 * script checks it on Redis's clock), so a client that retries after a timeout cannot have its
 * earlier attempt land later, behind an answer it already got.
 */
export const DEADLINE_HEADER = 'Drover-Deadline';

/**
 * Optional request header on submit, submit.batch and release: the client's name for this request,
 * the same on every retry of it. It is stored with the placement (and the release), so a retry
 * whose first attempt was placed but whose reply was lost gets the same "placed" reply instead of
 * ALREADY_PLACED. Keys are compared per container id: one key may serve a whole batch.
 */
export const REQUEST_KEY_HEADER = 'Drover-Request-Key';
/** Letters, digits, `_`, `-`, `.`, `:`; 1-128 characters (no spaces: tombstones are space-separated). */
export const REQUEST_KEY_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;

/**
 * NATS subjects. Public subjects are what clients use; shard subjects are internal (router to the
 * shard's lease holder); capacity subjects carry each shard's free capacity from owner to routers.
 */
export class Subjects {
  constructor(readonly prefix: string) {}

  get submit(): string { return `${this.prefix}.submit`; }
  get submitBatch(): string { return `${this.prefix}.submit.batch`; }
  get release(): string { return `${this.prefix}.release`; }
  get containersGet(): string { return `${this.prefix}.containers.get`; }
  get workersRegister(): string { return `${this.prefix}.workers.register`; }
  get workersRegisterBatch(): string { return `${this.prefix}.workers.register.batch`; }
  get workersGet(): string { return `${this.prefix}.workers.get`; }
  get workersList(): string { return `${this.prefix}.workers.list`; }
  get workersDrain(): string { return `${this.prefix}.workers.drain`; }
  get workersDisable(): string { return `${this.prefix}.workers.disable`; }
  get workersEnable(): string { return `${this.prefix}.workers.enable`; }
  get workersRemove(): string { return `${this.prefix}.workers.remove`; }
  /** A worker agent's heartbeat and report of its containers (see src/agent/agent.ts). */
  get workersReport(): string { return `${this.prefix}.workers.report`; }
  /** To one worker's agent: "report now" (an assignment or a stop is waiting for it). */
  agent(workerId: string): string { return `${this.prefix}.agent.${workerId}`; }
  /** Depth of the backlog by pool and by shape, and its oldest request (collected from every replica). */
  get backlog(): string { return `${this.prefix}.backlog`; }
  /** A container's status changes, one subject per container (see src/events/container-events.ts). */
  containerEvents(containerId: string): string { return `${this.prefix}.events.containers.${containerId}`; }
  /**
   * The event log a replica appends to: its container events in batches (a JSON array per message),
   * which the JetStream stream keeps (see src/events/event-stream.ts).
   */
  eventLog(replicaId: string): string { return `${this.prefix}.eventlog.${replicaId}`; }
  /** Every replica answers (no queue group): collect replies for a cluster view. */
  get status(): string { return `${this.prefix}.status`; }

  /** Internal: ops for one shard, served by its lease holder only. */
  shard(shard: number): string { return `${this.prefix}.shard.${shard}`; }
  /** Internal: a shard's capacity summary, published by its owner. */
  capacity(shard: number): string { return `${this.prefix}.capacity.${shard}`; }
  get capacityAll(): string { return `${this.prefix}.capacity.*`; }
  /** Internal: routers ask owners to republish every summary (a router that just started). */
  get capacityRefresh(): string { return `${this.prefix}.control.capacity-refresh`; }
  /** Internal: every replica answers with the backlog partitions it holds. */
  get backlogPartitions(): string { return `${this.prefix}.control.backlog`; }
  /** Internal: replica membership heartbeats. */
  get membership(): string { return `${this.prefix}.control.membership`; }
  /**
   * Internal: ops for several shards at once, to the replica that announced it owns them (a router
   * groups a turn's ops by owner: one message per owner instead of one per shard). The replica runs
   * each op only if it serves the op's shard now; otherwise it answers `notServed` and the router
   * sends that op on the shard's own subject.
   */
  replicaOps(replicaId: string): string { return `${this.prefix}.ops.replica.${replicaId}`; }
  /** Internal: one replica's own control subject (peer probes; see src/membership/peer-watch.ts). */
  replicaControl(replicaId: string): string { return `${this.prefix}.control.replica.${replicaId}`; }

  /** Queue group on a replica's ops subject: a twin with the same id never gets a copy too. */
  replicaOpsQueue(replicaId: string): string { return `${this.prefix}-ops-${replicaId}`; }
  /** Queue group of the routers on the public subjects. */
  get routerQueue(): string { return `${this.prefix}-routers`; }
  /** Queue group on shard subjects: during a hand-over two holders may briefly subscribe; one gets each op. */
  get shardQueue(): string { return `${this.prefix}-shards`; }
}
