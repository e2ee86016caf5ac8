/**
 * The worker actor: one per worker machine, owned by the replica that holds the worker's shard
 * lease. It is the only place inside a replica where a worker's capacity changes, one event at a
 * time, so two placements on one worker never race locally.
 *
 * The actor never talks to Redis. The shard owner asks it to RESERVE capacity for a placement (the
 * guard decides), writes the placement to Redis with a fenced Lua script, then tells the actor how
 * the write ended (PLACEMENT_COMMITTED or PLACEMENT_ABORTED). Status changes work the same way: the
 * actor moves at once (so a draining worker stops taking work immediately) and the owner records
 * STATUS_COMMITTED once Redis has it. SYNCED replaces everything with what Redis holds; the owner
 * sends it after a refused write, because Redis is the source of truth.
 */
import { assign, createActor, setup, type Actor } from 'xstate';
import {
  placementRefusal,
  type PlacementRequest,
  type WorkerAvailability,
  type WorkerRecord,
  type WorkerSpec,
  type WorkerStatus,
} from './capacity.js';

export interface WorkerContext {
  readonly spec: WorkerSpec;
  /** Free capacity as last committed in Redis. */
  readonly freeCpu: number;
  readonly freeMemory: number;
  readonly freeGpuCount: number;
  /** Capacity held by placements whose Redis write is still in flight. */
  readonly reservedCpu: number;
  readonly reservedMemory: number;
  readonly reservedGpuCount: number;
  readonly reservations: number;
  /** The worker's ResourceVersion as last seen in Redis; every fenced write must quote it. */
  readonly resourceVersion: number;
  /** The status Redis held when this actor was restored; only read by the `restoring` state. */
  readonly restoredStatus: WorkerStatus;
}

export interface Resources {
  readonly cpu: number;
  readonly memory: number;
  readonly gpuCount: number;
}

export type WorkerEvent =
  | { type: 'RESERVE'; containerId: string; request: PlacementRequest }
  /** `count` placements whose summed resources are `resources` (one event per worker per batch). */
  | { type: 'PLACEMENT_COMMITTED'; resources: Resources; count: number; resourceVersion: number }
  | { type: 'PLACEMENT_ABORTED'; resources: Resources; count: number }
  | { type: 'RELEASE_COMMITTED'; resources: Resources; resourceVersion: number }
  | { type: 'ACTIVATE' }
  | { type: 'DRAIN' }
  | { type: 'DISABLE' }
  | { type: 'ENABLE' }
  | { type: 'MARK_LOST' }
  /** Its agent has not reported for DROVER_WORKER_TTL_MS: no new placements until it does. */
  | { type: 'MARK_UNREACHABLE' }
  /** Redis now has `status`: the actor takes it even if a resync moved it back meanwhile. */
  | { type: 'STATUS_COMMITTED'; status: WorkerStatus; resourceVersion: number }
  | { type: 'SYNCED'; record: WorkerRecord };

/** The status-changing events and the state each leads to. */
export const STATUS_EVENT_TARGET = {
  ACTIVATE: 'available',
  DRAIN: 'draining',
  DISABLE: 'disabled',
  ENABLE: 'available',
  MARK_LOST: 'lost',
  MARK_UNREACHABLE: 'unreachable',
} as const satisfies Record<string, WorkerStatus>;
export type StatusEventType = keyof typeof STATUS_EVENT_TARGET;

export function contextFromRecord(record: WorkerRecord): WorkerContext {
  const { freeCpu, freeMemory, freeGpuCount, status, resourceVersion, ...spec } = record;
  return {
    spec,
    freeCpu,
    freeMemory,
    freeGpuCount,
    reservedCpu: 0,
    reservedMemory: 0,
    reservedGpuCount: 0,
    reservations: 0,
    resourceVersion,
    restoredStatus: status,
  };
}

/** What the worker can still promise: committed free capacity minus in-flight reservations. */
export function availability(context: WorkerContext, status: WorkerStatus): WorkerAvailability {
  return {
    spec: context.spec,
    status,
    freeCpu: context.freeCpu - context.reservedCpu,
    freeMemory: context.freeMemory - context.reservedMemory,
    freeGpuCount: context.freeGpuCount - context.reservedGpuCount,
  };
}

/**
 * A resync or a committed status enters the state Redis named. Guards are named and parameterized
 * (not inline functions) so the chart drawn from the machine shows which condition picks each target.
 */
const syncTo = (status: WorkerStatus) => ({
  guard: { type: 'syncedAs', params: status } as const,
  target: `.${status}`,
  actions: 'applyRecord' as const,
});

const committedAs = (status: WorkerStatus) => ({
  guard: { type: 'committedAs', params: status } as const,
  target: `.${status}`,
  actions: 'recordVersion' as const,
});

export const workerMachine = setup({
  types: {
    context: {} as WorkerContext,
    events: {} as WorkerEvent,
    input: {} as WorkerRecord,
  },
  guards: {
    fits: ({ context, event }) =>
      event.type === 'RESERVE' && placementRefusal(availability(context, 'available'), event.request) === null,
    restoredAs: ({ context }, status: WorkerStatus) => context.restoredStatus === status,
    /** A SYNCED event whose record is in `status`. */
    syncedAs: ({ event }, status: WorkerStatus) => event.type === 'SYNCED' && event.record.status === status,
    /** A STATUS_COMMITTED event for `status`. */
    committedAs: ({ event }, status: WorkerStatus) => event.type === 'STATUS_COMMITTED' && event.status === status,
  },
  actions: {
    reserve: assign(({ context, event }) => {
      if (event.type !== 'RESERVE') return {};
      return {
        reservedCpu: context.reservedCpu + event.request.cpu,
        reservedMemory: context.reservedMemory + event.request.memory,
        reservedGpuCount: context.reservedGpuCount + event.request.gpuCount,
        reservations: context.reservations + 1,
      };
    }),
    commitPlacement: assign(({ context, event }) => {
      if (event.type !== 'PLACEMENT_COMMITTED') return {};
      const { cpu, memory, gpuCount } = event.resources;
      return {
        freeCpu: context.freeCpu - cpu,
        freeMemory: context.freeMemory - memory,
        freeGpuCount: context.freeGpuCount - gpuCount,
        reservedCpu: context.reservedCpu - cpu,
        reservedMemory: context.reservedMemory - memory,
        reservedGpuCount: context.reservedGpuCount - gpuCount,
        reservations: context.reservations - event.count,
        resourceVersion: event.resourceVersion,
      };
    }),
    abortPlacement: assign(({ context, event }) => {
      if (event.type !== 'PLACEMENT_ABORTED') return {};
      const { cpu, memory, gpuCount } = event.resources;
      return {
        reservedCpu: context.reservedCpu - cpu,
        reservedMemory: context.reservedMemory - memory,
        reservedGpuCount: context.reservedGpuCount - gpuCount,
        reservations: context.reservations - event.count,
      };
    }),
    commitRelease: assign(({ context, event }) => {
      if (event.type !== 'RELEASE_COMMITTED') return {};
      const { cpu, memory, gpuCount } = event.resources;
      return {
        freeCpu: context.freeCpu + cpu,
        freeMemory: context.freeMemory + memory,
        freeGpuCount: context.freeGpuCount + gpuCount,
        resourceVersion: event.resourceVersion,
      };
    }),
    recordVersion: assign(({ event }) => (event.type === 'STATUS_COMMITTED' ? { resourceVersion: event.resourceVersion } : {})),
    applyRecord: assign(({ event }) => {
      if (event.type !== 'SYNCED') return {};
      const r = event.record;
      // Reservations in flight stay: their writes are still queued and will be answered.
      return { freeCpu: r.freeCpu, freeMemory: r.freeMemory, freeGpuCount: r.freeGpuCount, resourceVersion: r.resourceVersion };
    }),
  },
}).createMachine({
  id: 'worker',
  context: ({ input }) => contextFromRecord(input),
  initial: 'restoring',
  // Events every state accepts: the outcome of writes already in flight, and a resync from Redis.
  on: {
    PLACEMENT_COMMITTED: { actions: 'commitPlacement' },
    PLACEMENT_ABORTED: { actions: 'abortPlacement' },
    RELEASE_COMMITTED: { actions: 'commitRelease' },
    STATUS_COMMITTED: [committedAs('pending'), committedAs('available'), committedAs('unreachable'), committedAs('draining'), committedAs('disabled'), committedAs('lost')],
    SYNCED: [syncTo('pending'), syncTo('available'), syncTo('unreachable'), syncTo('draining'), syncTo('disabled'), syncTo('lost')],
  },
  states: {
    /** Transient: enter the state Redis recorded for this worker. */
    restoring: {
      always: [
        { guard: { type: 'restoredAs', params: 'available' }, target: 'available' },
        { guard: { type: 'restoredAs', params: 'unreachable' }, target: 'unreachable' },
        { guard: { type: 'restoredAs', params: 'draining' }, target: 'draining' },
        { guard: { type: 'restoredAs', params: 'disabled' }, target: 'disabled' },
        { guard: { type: 'restoredAs', params: 'lost' }, target: 'lost' },
        { target: 'pending' },
      ],
    },
    /** Known but not yet ready (for example provisioned, not yet reporting). Takes no placements. */
    pending: {
      on: { ACTIVATE: 'available', DISABLE: 'disabled', MARK_LOST: 'lost' },
    },
    /** The only state in which placements are reserved. */
    available: {
      on: {
        RESERVE: { guard: 'fits', actions: 'reserve' },
        DRAIN: 'draining',
        DISABLE: 'disabled',
        MARK_LOST: 'lost',
        MARK_UNREACHABLE: 'unreachable',
      },
    },
    /**
     * Its agent has not reported for DROVER_WORKER_TTL_MS: takes nothing new; what it runs may
     * still run (its containers are `unknown`). Available again when the agent reports; lost after
     * DROVER_WORKER_LOST_AFTER_MS.
     */
    unreachable: {
      on: { ACTIVATE: 'available', DRAIN: 'draining', DISABLE: 'disabled', MARK_LOST: 'lost' },
    },
    /** Finishes what it runs, takes nothing new. */
    draining: {
      on: { ENABLE: 'available', DISABLE: 'disabled', MARK_LOST: 'lost' },
    },
    /** Switched off by an operator: takes nothing new until enabled. */
    disabled: {
      on: { ENABLE: 'available' },
    },
    /** Stopped reporting. Its placements stay accounted for until they are released. */
    lost: {
      on: { ACTIVATE: 'available', DISABLE: 'disabled' },
    },
  },
});

export type WorkerMachine = typeof workerMachine;

/**
 * A started actor for a worker Redis holds, already in the recorded status: the state `restoring`
 * would reach through its eventless transitions, resolved directly (a fleet registering or a shard
 * reloading creates thousands at once, and the transient step is most of an actor's creation
 * cost). The worker-machine model test checks both ways give the same snapshot for every status.
 */
export function restoreWorkerActor(record: WorkerRecord): Actor<WorkerMachine> {
  const snapshot = workerMachine.resolveState({ value: record.status, context: contextFromRecord(record) });
  return createActor(workerMachine, { snapshot, input: record }).start();
}
