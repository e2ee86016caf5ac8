import { describe, expect, it } from 'vitest';
import { chooseWorker, placementRefusal, type PlacementRequest, type WorkerAvailability } from '../../actors/capacity.js';

const worker = (id: string, freeCpu: number, freeMemory: number, extra: Partial<WorkerAvailability['spec']> = {}, status: WorkerAvailability['status'] = 'available'): WorkerAvailability => ({
  spec: { id, shard: 0, cpu: 4_000, memory: 8_192, gpu: null, gpuCount: 0, pool: null, ...extra },
  status,
  freeCpu,
  freeMemory,
  freeGpuCount: extra.gpuCount ?? 0,
});
const request = (overrides: Partial<PlacementRequest> = {}): PlacementRequest => ({ cpu: 1_000, memory: 1_024, gpu: null, gpuCount: 0, pool: null, ...overrides });

describe('placementRefusal', () => {
  it.each([
    ['fits', worker('a', 1_000, 1_024), request(), null],
    ['not available', worker('a', 4_000, 8_192, {}, 'draining'), request(), 'not-available'],
    ['cpu short by one millicore', worker('a', 999, 8_192), request(), 'not-enough-cpu'],
    ['memory short by one MiB', worker('a', 4_000, 1_023), request(), 'not-enough-memory'],
    ['pool mismatch', worker('a', 4_000, 8_192, { pool: 'x' }), request({ pool: 'y' }), 'wrong-pool'],
    ['pool-less request takes any pool', worker('a', 4_000, 8_192, { pool: 'x' }), request(), null],
    ['gpu needed, none there', worker('a', 4_000, 8_192), request({ gpuCount: 1 }), 'wrong-gpu'],
    ['gpu type mismatch', worker('a', 4_000, 8_192, { gpu: 'a100', gpuCount: 2 }), request({ gpu: 'h100', gpuCount: 1 }), 'wrong-gpu'],
    ['too few gpus', worker('a', 4_000, 8_192, { gpu: 'a100', gpuCount: 2 }), request({ gpu: 'a100', gpuCount: 3 }), 'not-enough-gpu'],
    ['any gpu type', worker('a', 4_000, 8_192, { gpu: 'a100', gpuCount: 2 }), request({ gpuCount: 2 }), null],
  ] as const)('%s', (_, w, r, expected) => {
    expect(placementRefusal(w, r)).toBe(expected);
  });
});

describe('chooseWorker', () => {
  const workers = [worker('roomy', 4_000, 8_192), worker('tight', 1_200, 1_500), worker('full', 500, 8_192)];

  it('best fit picks the worker left with the least room', () => {
    expect(chooseWorker(workers, request(), 'best-fit')?.spec.id).toBe('tight');
  });

  it('spread picks the worker left with the most room', () => {
    expect(chooseWorker(workers, request(), 'spread')?.spec.id).toBe('roomy');
  });

  it('keeps CPU-only work off GPU workers while a CPU worker fits', () => {
    const mixed = [worker('gpu', 1_000, 1_024, { gpu: 'a100', gpuCount: 1 }), worker('cpu', 4_000, 8_192)];
    expect(chooseWorker(mixed, request(), 'best-fit')?.spec.id).toBe('cpu');
    expect(chooseWorker([mixed[0]!], request(), 'best-fit')?.spec.id).toBe('gpu');
  });

  it('returns null when nothing fits', () => {
    expect(chooseWorker(workers, request({ cpu: 5_000 }), 'best-fit')).toBeNull();
  });
});
