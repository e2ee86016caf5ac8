/**
 * The worker actor, walked as a model: xstate/graph enumerates every reachable state (status x
 * reservations x committed capacity) and every event from each, and each transition is checked
 * against the specification below, written independently of the machine. Refused events
 * (does not fit, draining, disabled, ...) are transitions too: they must change nothing.
 */
import { describe, expect, it } from 'vitest';
import { createActor } from 'xstate';
import { getAdjacencyMap, getShortestPaths } from 'xstate/graph';
import { WORKER_STATUSES, type PlacementRequest, type WorkerRecord, type WorkerStatus } from '../../actors/capacity.js';
import { restoreWorkerActor, workerMachine, type WorkerContext, type WorkerEvent } from '../../actors/worker-machine.js';

const record = (status: WorkerStatus, overrides: Partial<WorkerRecord> = {}): WorkerRecord => ({
  id: 'w1',
  shard: 3,
  cpu: 2_000,
  memory: 4_096,
  gpu: 'a100',
  gpuCount: 2,
  pool: 'p1',
  freeCpu: 2_000,
  freeMemory: 4_096,
  freeGpuCount: 2,
  status,
  resourceVersion: 7,
  ...overrides,
});

const fits: PlacementRequest = { cpu: 1_000, memory: 1_024, gpu: 'a100', gpuCount: 1, pool: 'p1' };
const refusedRequests: Array<[string, PlacementRequest]> = [
  ['too much cpu', { ...fits, cpu: 2_001 }],
  ['too much memory', { ...fits, memory: 5_000 }],
  ['too many gpus', { ...fits, gpuCount: 3 }],
  ['wrong gpu type', { ...fits, gpu: 'h100' }],
  ['wrong pool', { ...fits, pool: 'p2' }],
];
const unit = { cpu: fits.cpu, memory: fits.memory, gpuCount: fits.gpuCount };

/** The events worth trying from a snapshot: commits only for reservations / placements that exist. */
function eventsFor(snapshot: { context: WorkerContext }): WorkerEvent[] {
  const c = snapshot.context;
  const events: WorkerEvent[] = [
    { type: 'RESERVE', containerId: 'c', request: fits },
    ...refusedRequests.map(([, request]) => ({ type: 'RESERVE' as const, containerId: 'c', request })),
    { type: 'ACTIVATE' },
    { type: 'DRAIN' },
    { type: 'DISABLE' },
    { type: 'ENABLE' },
    { type: 'MARK_LOST' },
    { type: 'MARK_UNREACHABLE' },
    ...WORKER_STATUSES.map((status) => ({ type: 'STATUS_COMMITTED' as const, status, resourceVersion: c.resourceVersion + 1 })),
    ...WORKER_STATUSES.map((status) => ({
      type: 'SYNCED' as const,
      record: record(status, { freeCpu: c.freeCpu, freeMemory: c.freeMemory, freeGpuCount: c.freeGpuCount, resourceVersion: c.resourceVersion + 1 }),
    })),
  ];
  if (c.reservations > 0) {
    events.push({ type: 'PLACEMENT_COMMITTED', resources: unit, count: 1, resourceVersion: c.resourceVersion + 1 });
    events.push({ type: 'PLACEMENT_ABORTED', resources: unit, count: 1 });
  }
  if (c.reservations > 1) {
    const two = { cpu: 2 * unit.cpu, memory: 2 * unit.memory, gpuCount: 2 * unit.gpuCount };
    events.push({ type: 'PLACEMENT_COMMITTED', resources: two, count: 2, resourceVersion: c.resourceVersion + 2 });
    events.push({ type: 'PLACEMENT_ABORTED', resources: two, count: 2 });
  }
  if (c.spec.cpu - c.freeCpu >= unit.cpu) events.push({ type: 'RELEASE_COMMITTED', resources: unit, resourceVersion: c.resourceVersion + 1 });
  return events;
}

// The version grows forever; leave it out of the state key so the walk is finite.
const serializeState = (snapshot: { value: unknown; context: WorkerContext }) => {
  const c = snapshot.context;
  return JSON.stringify([snapshot.value, c.freeCpu, c.freeMemory, c.freeGpuCount, c.reservedCpu, c.reservedMemory, c.reservedGpuCount, c.reservations]);
};

/** The specification of status changes: [from][event] -> to; anything missing changes nothing. */
const STATUS_SPEC: Record<WorkerStatus, Partial<Record<string, WorkerStatus>>> = {
  pending: { ACTIVATE: 'available', DISABLE: 'disabled', MARK_LOST: 'lost' },
  available: { DRAIN: 'draining', DISABLE: 'disabled', MARK_LOST: 'lost', MARK_UNREACHABLE: 'unreachable' },
  unreachable: { ACTIVATE: 'available', DRAIN: 'draining', DISABLE: 'disabled', MARK_LOST: 'lost' },
  draining: { ENABLE: 'available', DISABLE: 'disabled', MARK_LOST: 'lost' },
  disabled: { ENABLE: 'available' },
  lost: { ACTIVATE: 'available', DISABLE: 'disabled' },
};

interface Expected {
  status: WorkerStatus;
  context: Partial<WorkerContext>;
}

/** What the specification says `event` does from (status, context). */
function specify(status: WorkerStatus, c: WorkerContext, event: WorkerEvent): Expected {
  const same = { status, context: {} };
  switch (event.type) {
    case 'RESERVE': {
      const r = event.request;
      const freeCpu = c.freeCpu - c.reservedCpu;
      const freeMemory = c.freeMemory - c.reservedMemory;
      const freeGpu = c.freeGpuCount - c.reservedGpuCount;
      const accepted =
        status === 'available' &&
        (r.pool === null || r.pool === c.spec.pool) &&
        (r.gpuCount === 0 || (c.spec.gpu !== null && (r.gpu === null || r.gpu === c.spec.gpu) && freeGpu >= r.gpuCount)) &&
        freeCpu >= r.cpu &&
        freeMemory >= r.memory;
      if (!accepted) return same;
      return {
        status,
        context: {
          reservedCpu: c.reservedCpu + r.cpu,
          reservedMemory: c.reservedMemory + r.memory,
          reservedGpuCount: c.reservedGpuCount + r.gpuCount,
          reservations: c.reservations + 1,
        },
      };
    }
    case 'PLACEMENT_COMMITTED':
      return {
        status,
        context: {
          freeCpu: c.freeCpu - event.resources.cpu,
          freeMemory: c.freeMemory - event.resources.memory,
          freeGpuCount: c.freeGpuCount - event.resources.gpuCount,
          reservedCpu: c.reservedCpu - event.resources.cpu,
          reservedMemory: c.reservedMemory - event.resources.memory,
          reservedGpuCount: c.reservedGpuCount - event.resources.gpuCount,
          reservations: c.reservations - event.count,
          resourceVersion: event.resourceVersion,
        },
      };
    case 'PLACEMENT_ABORTED':
      return {
        status,
        context: {
          reservedCpu: c.reservedCpu - event.resources.cpu,
          reservedMemory: c.reservedMemory - event.resources.memory,
          reservedGpuCount: c.reservedGpuCount - event.resources.gpuCount,
          reservations: c.reservations - event.count,
        },
      };
    case 'RELEASE_COMMITTED':
      return {
        status,
        context: {
          freeCpu: c.freeCpu + event.resources.cpu,
          freeMemory: c.freeMemory + event.resources.memory,
          freeGpuCount: c.freeGpuCount + event.resources.gpuCount,
          resourceVersion: event.resourceVersion,
        },
      };
    case 'STATUS_COMMITTED':
      return { status: event.status, context: { resourceVersion: event.resourceVersion } };
    case 'SYNCED':
      return {
        status: event.record.status,
        context: {
          freeCpu: event.record.freeCpu,
          freeMemory: event.record.freeMemory,
          freeGpuCount: event.record.freeGpuCount,
          resourceVersion: event.record.resourceVersion,
          reservations: c.reservations,
        },
      };
    default:
      return { status: STATUS_SPEC[status][event.type] ?? status, context: {} };
  }
}

function checkInvariants(c: WorkerContext): void {
  expect(c.reservations).toBeGreaterThanOrEqual(0);
  expect(c.reservedCpu).toBeGreaterThanOrEqual(0);
  expect(c.freeCpu - c.reservedCpu).toBeGreaterThanOrEqual(0);
  expect(c.freeMemory - c.reservedMemory).toBeGreaterThanOrEqual(0);
  expect(c.freeGpuCount - c.reservedGpuCount).toBeGreaterThanOrEqual(0);
  expect(c.freeCpu).toBeLessThanOrEqual(c.spec.cpu);
}

describe('worker machine, walked as a model', () => {
  // limit bounds the walk: a broken machine with an unbounded state space fails instead of hanging.
  const traversal = { input: record('pending'), events: eventsFor, serializeState, limit: 2_000 };
  const adjacency = getAdjacencyMap(workerMachine, traversal);
  const states = Object.values(adjacency);

  it('reaches every status, with reservations and placements in play', () => {
    const statuses = new Set(states.map((entry) => String(entry.state.value)));
    expect([...statuses].sort()).toEqual([...WORKER_STATUSES].sort());
    expect(Math.max(...states.map((entry) => entry.state.context.reservations))).toBe(2);
    expect(Math.min(...states.map((entry) => entry.state.context.freeCpu))).toBe(0);
    // 6 statuses x the 6 ways to hold at most 2 containers' worth (placed p, reserved r, p + r <= 2).
    expect(states.length).toBe(36);
  });

  it('takes every transition exactly as the specification says, refusals included', () => {
    let checked = 0;
    let refusedReservations = 0;
    for (const { state, transitions } of states) {
      const steps = Object.values(transitions) as Array<{ event: WorkerEvent; state: typeof state }>;
      for (const { event, state: next } of steps) {
        const expected = specify(state.value as WorkerStatus, state.context, event);
        expect(next.value, `${String(state.value)} --${event.type}-->`).toBe(expected.status);
        expect(next.context).toMatchObject({ ...state.context, ...expected.context });
        checkInvariants(next.context);
        if (event.type === 'RESERVE' && next.context.reservations === state.context.reservations) refusedReservations += 1;
        checked += 1;
      }
    }
    expect(checked).toBeGreaterThan(500);
    expect(refusedReservations).toBeGreaterThan(100);
  });

  it('every shortest path replays on a live actor with the invariants holding at each step', () => {
    const paths = getShortestPaths(workerMachine, traversal);
    expect(paths.length).toBe(states.length);
    for (const path of paths) {
      const actor = createActor(workerMachine, { input: record('pending') }).start();
      for (const step of path.steps) {
        actor.send(step.event);
        checkInvariants(actor.getSnapshot().context);
      }
      expect(serializeState(actor.getSnapshot())).toBe(serializeState(path.state));
      actor.stop();
    }
  });
});

describe('worker machine, by hand', () => {
  it.each(WORKER_STATUSES)('is restored into the status Redis recorded: %s', (status) => {
    const actor = createActor(workerMachine, { input: record(status) }).start();
    expect(actor.getSnapshot().value).toBe(status);
  });

  it.each(WORKER_STATUSES)('restoreWorkerActor resolves the same snapshot the restoring step reaches: %s', (status) => {
    const recorded = record(status, { freeCpu: 1_250, freeGpuCount: 1, resourceVersion: 11 });
    const stepped = createActor(workerMachine, { input: recorded }).start().getSnapshot();
    const resolved = restoreWorkerActor(recorded).getSnapshot();
    expect(resolved.value).toBe(status);
    expect(resolved.status).toBe('active');
    expect(serializeState(resolved)).toBe(serializeState(stepped));
    // And it behaves the same afterwards: a reservation is decided by the same guard.
    const events: WorkerEvent[] = [{ type: 'RESERVE', containerId: 'c', request: fits }, { type: 'DRAIN' }, { type: 'ENABLE' }];
    const a = createActor(workerMachine, { input: recorded }).start();
    const b = restoreWorkerActor(recorded);
    for (const event of events) {
      a.send(event);
      b.send(event);
      expect(serializeState(b.getSnapshot())).toBe(serializeState(a.getSnapshot()));
    }
  });

  it.each(refusedRequests)('refuses a reservation with %s and changes nothing', (_, request) => {
    const actor = createActor(workerMachine, { input: record('available') }).start();
    const before = actor.getSnapshot().context;
    actor.send({ type: 'RESERVE', containerId: 'c', request });
    expect(actor.getSnapshot().context).toEqual(before);
  });

  it.each(['draining', 'disabled', 'pending', 'lost'] as const)('refuses every reservation while %s', (status) => {
    const actor = createActor(workerMachine, { input: record(status) }).start();
    actor.send({ type: 'RESERVE', containerId: 'c', request: fits });
    expect(actor.getSnapshot().context.reservations).toBe(0);
  });

  it('keeps in-flight reservations across a resync and commits them afterwards', () => {
    const actor = createActor(workerMachine, { input: record('available') }).start();
    actor.send({ type: 'RESERVE', containerId: 'c1', request: fits });
    actor.send({ type: 'SYNCED', record: record('draining', { freeCpu: 1_500, resourceVersion: 9 }) });
    let c = actor.getSnapshot().context;
    expect(actor.getSnapshot().value).toBe('draining');
    expect([c.freeCpu, c.reservedCpu, c.reservations, c.resourceVersion]).toEqual([1_500, 1_000, 1, 9]);
    actor.send({ type: 'PLACEMENT_COMMITTED', resources: unit, count: 1, resourceVersion: 10 });
    c = actor.getSnapshot().context;
    expect([c.freeCpu, c.reservedCpu, c.reservations, c.resourceVersion]).toEqual([500, 0, 0, 10]);
  });

  it('takes a committed status even when a resync moved it back while the write was in flight', () => {
    const actor = createActor(workerMachine, { input: record('disabled') }).start();
    actor.send({ type: 'ENABLE' });
    actor.send({ type: 'SYNCED', record: record('disabled', { resourceVersion: 8 }) });
    expect(actor.getSnapshot().value).toBe('disabled');
    actor.send({ type: 'STATUS_COMMITTED', status: 'available', resourceVersion: 9 });
    expect(actor.getSnapshot().value).toBe('available');
    expect(actor.getSnapshot().context.resourceVersion).toBe(9);
  });

  it('a CPU-only request may use a GPU worker; a GPU request of any type needs free GPUs', () => {
    const actor = createActor(workerMachine, { input: record('available') }).start();
    actor.send({ type: 'RESERVE', containerId: 'c1', request: { cpu: 100, memory: 100, gpu: null, gpuCount: 0, pool: null } });
    actor.send({ type: 'RESERVE', containerId: 'c2', request: { cpu: 100, memory: 100, gpu: null, gpuCount: 2, pool: null } });
    actor.send({ type: 'RESERVE', containerId: 'c3', request: { cpu: 100, memory: 100, gpu: null, gpuCount: 1, pool: null } });
    expect(actor.getSnapshot().context.reservations).toBe(2);
    expect(actor.getSnapshot().context.reservedGpuCount).toBe(2);
  });
});
