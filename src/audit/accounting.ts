/**
 * Exact accounting, read straight from Redis: for every worker, its free capacity must equal its
 * total minus what its live placements hold, and nothing may be negative. Used by the demo, the
 * tests and the chaos checker; it trusts nothing a replica believes.
 */
import type { DroverStore } from '../store/store.js';

/** The statuses of a container that holds capacity on its worker. */
const HOLDING: ReadonlySet<string> = new Set(['placed', 'running', 'stopping']);

export interface AccountingReport {
  readonly workers: number;
  readonly livePlacements: number;
  readonly violations: string[];
}

export async function auditAccounting(store: DroverStore, shards: number): Promise<AccountingReport> {
  const violations: string[] = [];
  let workers = 0;
  let livePlacements = 0;
  for (let shard = 0; shard < shards; shard += 1) {
    for (const worker of await store.loadShard(shard)) {
      workers += 1;
      const ids = await store.workerContainerIds(shard, worker.id);
      let cpu = 0;
      let memory = 0;
      let gpus = 0;
      const pipeline = store.redis.pipeline();
      for (const id of ids) pipeline.hmget(store.keys.container(id), 'status', 'workerId', 'cpu', 'memory', 'gpuCount');
      const replies = ids.length === 0 ? [] : ((await pipeline.exec()) ?? []);
      replies.forEach(([error, value], index) => {
        const id = ids[index]!;
        const [status, workerId, c, m, g] = (value ?? []) as Array<string | null>;
        // Placed, running (its agent confirmed it) and stopping (a release waiting for the agent) all hold capacity.
        if (error || !HOLDING.has(status ?? '') || workerId !== worker.id) {
          violations.push(`worker ${worker.id} lists container ${id}, which is ${status ?? 'missing'} on ${workerId ?? 'no worker'}`);
          return;
        }
        cpu += Number(c);
        memory += Number(m);
        gpus += Number(g);
        livePlacements += 1;
      });
      if (worker.freeCpu !== worker.cpu - cpu || worker.freeMemory !== worker.memory - memory || worker.freeGpuCount !== worker.gpuCount - gpus) {
        violations.push(
          `worker ${worker.id}: free cpu/memory/gpu ${worker.freeCpu}/${worker.freeMemory}/${worker.freeGpuCount} but ` +
            `total minus live placements is ${worker.cpu - cpu}/${worker.memory - memory}/${worker.gpuCount - gpus}`,
        );
      }
      if (worker.freeCpu < 0 || worker.freeMemory < 0 || worker.freeGpuCount < 0) {
        violations.push(`worker ${worker.id} is over-committed: free ${worker.freeCpu}/${worker.freeMemory}/${worker.freeGpuCount}`);
      }
    }
  }
  return { workers, livePlacements, violations };
}
