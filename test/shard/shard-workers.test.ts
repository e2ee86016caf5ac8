/**
 * ShardWorkers.view builds the contract's worker view from an actor field by field; it must say
 * exactly what workerView says of the record the actor was restored from, for every status and
 * with or without agent, GPUs and pool.
 */
import { describe, expect, it } from 'vitest';
import type { WorkerRecord, WorkerStatus } from '../../actors/capacity.js';
import { workerView } from '../../src/protocol/shard-messages.js';
import { ShardWorkers } from '../../src/shard/shard-workers.js';

const STATUSES: readonly WorkerStatus[] = ['pending', 'available', 'draining', 'disabled', 'lost'];

describe('ShardWorkers.view', () => {
  it('equals workerView of the record, field for field and in the same order', () => {
    const workers = new ShardWorkers();
    let n = 0;
    for (const status of STATUSES) {
      for (const agent of [undefined, false, true]) {
        for (const [gpu, gpuCount] of [[null, 0], ['a100', 4]] as const) {
          for (const pool of [null, 'batch']) {
            n += 1;
            const record: WorkerRecord = {
              ...(agent === undefined ? {} : { agent }),
              id: `w${n}`, shard: 3, cpu: 16_000, memory: 65_536, gpu, gpuCount, pool,
              freeCpu: 1_000 * (n % 16), freeMemory: 4_096, freeGpuCount: gpuCount === 0 ? 0 : 2, status, resourceVersion: n,
            };
            const view = workers.view(workers.add(record));
            expect(view).toStrictEqual(workerView(record));
            expect(JSON.stringify(view)).toBe(JSON.stringify(workerView(record)));
          }
        }
      }
    }
    workers.clear();
  });
});
