/**
 * Redis key names. Every key of a shard carries the hash tag `{<prefix>:s<n>}`, so under Redis
 * Cluster a shard's epoch, lease, workers and history share one slot and a fenced write stays one
 * atomic script. Container records are keyed by container id alone (a container is found by id
 * before its shard is known), which is why Drover runs on one Redis primary for now (README).
 */
export class KeySpace {
  constructor(readonly prefix: string) {}

  private tag(shard: number): string {
    return `{${this.prefix}:s${shard}}`;
  }
  /** The shard's ownership epoch, bumped at every lease acquisition. */
  epoch(shard: number): string {
    return `${this.tag(shard)}:epoch`;
  }
  /** The shard's lease, held with redlock. */
  lease(shard: number): string {
    return `${this.tag(shard)}:lease`;
  }
  /** Set of the ids of the shard's workers. */
  shardWorkers(shard: number): string {
    return `${this.tag(shard)}:workers`;
  }
  /** Hash: a worker's spec, free capacity, status and ResourceVersion. */
  worker(shard: number, workerId: string): string {
    return `${this.tag(shard)}:worker:${workerId}`;
  }
  /** Set of the ids of the containers placed (and not released) on a worker. */
  workerContainers(shard: number, workerId: string): string {
    return `${this.tag(shard)}:worker:${workerId}:containers`;
  }
  /** Stream of every committed write of the shard, for audits and the chaos checker. */
  history(shard: number): string {
    return `${this.tag(shard)}:history`;
  }
  /**
   * Set of the ids of containers this shard's owner requeued (their worker was lost before running
   * them) that their home shard's backlog may not hold yet: the owner re-sends them until acked.
   */
  requeueOutbox(shard: number): string {
    return `${this.tag(shard)}:requeue`;
  }
  /** Sorted set of the ids of the containers queued in this home shard's backlog, scored by queue time. */
  backlog(shard: number): string {
    return `${this.tag(shard)}:backlog`;
  }
  /** Hash: a container's status, worker, shard and resources. */
  container(containerId: string): string {
    return `${this.prefix}:container:${containerId}`;
  }
  /** Sorted set of live replicas, scored by the Unix ms their last heartbeat expires. */
  members(): string {
    return `${this.prefix}:members`;
  }
  /** Hash of settings every replica must agree on (the shard count). */
  config(): string {
    return `${this.prefix}:config`;
  }
}
