/**
 * A container's lifecycle, from the request that asked for it to its end.
 *
 *   queued ──PLACED──▶ placed ──STARTED──▶ running ──EXITED──▶ exited
 *     │                  │ │                  │ │
 *     │ EXPIRED          │ └─STOP_REQUESTED─▶ stopping ──RELEASED / EXITED / WORKER_LOST──▶ released
 *     │ CANCELLED        │ RELEASED (no agent)  │ WORKER_LOST ──▶ lost
 *     ▼                  │ WORKER_LOST ──▶ queued again (never delivered to its agent: it never ran)
 *   failed / released    │
 *                        └─ WORKER_UNREACHABLE (placed and delivered, or running) ─▶ unknown
 *
 *   unknown: its worker's agent stopped reporting; the container may still run there, so it is
 *   never started elsewhere. STARTED ─▶ running (the agent reports it again), EXITED ─▶ exited,
 *   STOP_REQUESTED ─▶ stopping, WORKER_LOST ─▶ lost (after DROVER_WORKER_LOST_AFTER_MS, when the
 *   agent has fenced itself, or at once when its agent is back and does not run it: NOT_RUNNING).
 *   A container that may have run is never queued again.
 *
 * The machine is the specification of which status may follow which: the backlog, the shard
 * owners and the worker agent's reports all ask it (`containerTransition`) before they write a
 * status change, and the Lua scripts check the same "from" statuses inside the fenced write. A
 * replica keeps no actor per container (there may be a million): the pure `transition` function
 * of XState answers from a snapshot restored from the status Redis holds.
 *
 * Guards and actions are named, so the chart drawn from this definition is the machine that runs.
 */
import { assign, setup, transition } from 'xstate';

export const CONTAINER_STATUSES = ['queued', 'placed', 'running', 'unknown', 'stopping', 'exited', 'released', 'failed', 'lost'] as const;
export type ContainerStatus = (typeof CONTAINER_STATUSES)[number];
export const TERMINAL_STATUSES: ReadonlySet<ContainerStatus> = new Set(['exited', 'released', 'failed', 'lost']);

export function isContainerStatus(value: unknown): value is ContainerStatus {
  return typeof value === 'string' && (CONTAINER_STATUSES as readonly string[]).includes(value);
}

/** Why a container ended the way it did (failed, released or lost), in the public contract. */
export type ContainerReason = 'EXPIRED' | 'CANCELLED' | 'RELEASED' | 'WORKER_LOST' | 'NOT_RUNNING';

export interface ContainerContext {
  readonly status: ContainerStatus;
  readonly workerId: string | null;
  readonly reason: ContainerReason | null;
  readonly exitCode: number | null;
}

export type ContainerEvent =
  /** The placement was committed on `workerId` (capacity reserved there). */
  | { type: 'PLACED'; workerId: string }
  /** Its maxWaitMs passed while it was queued. */
  | { type: 'EXPIRED' }
  /** A client released it while it was still queued. */
  | { type: 'CANCELLED' }
  /** The worker's agent started its process. */
  | { type: 'STARTED' }
  /** A client released it while its worker runs it: the agent is told to stop it. */
  | { type: 'STOP_REQUESTED' }
  /** Its capacity was freed on its worker (released without an agent, or the agent confirmed the stop). */
  | { type: 'RELEASED' }
  /** Its process ended on its own. */
  | { type: 'EXITED'; exitCode: number }
  /**
   * Its worker was declared lost (no report for DROVER_WORKER_LOST_AFTER_MS): a placement never
   * delivered goes back to the queue; anything its agent may have run ends.
   */
  | { type: 'WORKER_LOST' }
  /** Its worker's agent has not reported for DROVER_WORKER_TTL_MS: it may still run, nobody knows. */
  | { type: 'WORKER_UNREACHABLE' };

export const containerMachine = setup({
  types: {
    context: {} as ContainerContext,
    events: {} as ContainerEvent,
    input: {} as ContainerContext,
  },
  guards: {
    restoredAs: ({ context }, status: ContainerStatus) => context.status === status,
  },
  actions: {
    recordWorker: assign(({ event }) => (event.type === 'PLACED' ? { workerId: event.workerId } : {})),
    recordExpired: assign({ reason: 'EXPIRED' as const }),
    recordCancelled: assign({ reason: 'CANCELLED' as const }),
    recordReleased: assign({ reason: 'RELEASED' as const }),
    recordExitCode: assign(({ event }) => (event.type === 'EXITED' ? { exitCode: event.exitCode } : {})),
    recordWorkerLost: assign({ reason: 'WORKER_LOST' as const }),
    /** Back to the backlog: it is on no worker any more. */
    forgetWorker: assign({ workerId: null }),
  },
}).createMachine({
  id: 'container',
  context: ({ input }) => input,
  initial: 'restoring',
  states: {
    /** Transient: enter the status Redis holds for the container. */
    restoring: {
      always: [
        { guard: { type: 'restoredAs', params: 'placed' }, target: 'placed' },
        { guard: { type: 'restoredAs', params: 'running' }, target: 'running' },
        { guard: { type: 'restoredAs', params: 'unknown' }, target: 'unknown' },
        { guard: { type: 'restoredAs', params: 'stopping' }, target: 'stopping' },
        { guard: { type: 'restoredAs', params: 'exited' }, target: 'exited' },
        { guard: { type: 'restoredAs', params: 'released' }, target: 'released' },
        { guard: { type: 'restoredAs', params: 'failed' }, target: 'failed' },
        { guard: { type: 'restoredAs', params: 'lost' }, target: 'lost' },
        { target: 'queued' },
      ],
    },
    /** Waiting in the backlog of its home shard for a worker with room. */
    queued: {
      on: {
        PLACED: { target: 'placed', actions: 'recordWorker' },
        EXPIRED: { target: 'failed', actions: 'recordExpired' },
        CANCELLED: { target: 'released', actions: 'recordCancelled' },
      },
    },
    /** Capacity reserved on a worker; its agent (if it has one) has not confirmed it runs yet. */
    placed: {
      on: {
        STARTED: 'running',
        EXITED: { target: 'exited', actions: 'recordExitCode' },
        STOP_REQUESTED: 'stopping',
        RELEASED: { target: 'released', actions: 'recordReleased' },
        WORKER_LOST: { target: 'queued', actions: 'forgetWorker' },
        WORKER_UNREACHABLE: 'unknown',
      },
    },
    /** Its worker's agent runs it. */
    running: {
      on: {
        EXITED: { target: 'exited', actions: 'recordExitCode' },
        STOP_REQUESTED: 'stopping',
        WORKER_LOST: { target: 'lost', actions: 'recordWorkerLost' },
        WORKER_UNREACHABLE: 'unknown',
      },
    },
    /**
     * Its worker's agent went silent after it was delivered: it may still run there. It keeps its
     * capacity and is never started elsewhere until its end is known.
     */
    unknown: {
      on: {
        STARTED: 'running',
        EXITED: { target: 'exited', actions: 'recordExitCode' },
        STOP_REQUESTED: 'stopping',
        WORKER_LOST: { target: 'lost', actions: 'recordWorkerLost' },
      },
    },
    /** Released by a client; its capacity is freed when the agent confirms the stop (or the worker is lost). */
    stopping: {
      on: {
        RELEASED: { target: 'released', actions: 'recordReleased' },
        EXITED: { target: 'released', actions: ['recordReleased', 'recordExitCode'] },
        WORKER_LOST: { target: 'released', actions: 'recordWorkerLost' },
      },
    },
    exited: { type: 'final' },
    released: { type: 'final' },
    failed: { type: 'final' },
    lost: { type: 'final' },
  },
});

export type ContainerMachine = typeof containerMachine;

/**
 * The status and context after `event`, or null when the machine refuses the event from `from`
 * (the caller then must not write anything).
 */
export function containerTransition(from: ContainerContext, event: ContainerEvent): ContainerContext | null {
  const snapshot = containerMachine.resolveState({ value: from.status === 'queued' ? 'queued' : from.status, context: from });
  if (!snapshot.can(event)) return null;
  const [next] = transition(containerMachine, snapshot, event);
  return { ...next.context, status: next.value as ContainerStatus };
}

export const queuedContainer: ContainerContext = { status: 'queued', workerId: null, reason: null, exitCode: null };

/** One event of each type (the payloads do not change which status follows), for walking the machine. */
export const EVERY_CONTAINER_EVENT: readonly ContainerEvent[] = [
  { type: 'PLACED', workerId: 'w' },
  { type: 'EXPIRED' },
  { type: 'CANCELLED' },
  { type: 'STARTED' },
  { type: 'STOP_REQUESTED' },
  { type: 'RELEASED' },
  { type: 'EXITED', exitCode: 0 },
  { type: 'WORKER_LOST' },
  { type: 'WORKER_UNREACHABLE' },
];

/** The statuses a container in `from` can reach in zero or more steps. */
export function reachableStatuses(from: ContainerStatus): Set<ContainerStatus> {
  const seen = new Set<ContainerStatus>([from]);
  const queue: ContainerStatus[] = [from];
  while (queue.length > 0) {
    const status = queue.shift()!;
    for (const event of EVERY_CONTAINER_EVENT) {
      const next = containerTransition({ status, workerId: status === 'queued' ? null : 'w', reason: null, exitCode: null }, event);
      if (next !== null && !seen.has(next.status)) {
        seen.add(next.status);
        queue.push(next.status);
      }
    }
  }
  return seen;
}
