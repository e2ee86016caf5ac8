/**
 * The container lifecycle, walked as a model: from every status a container can be restored in,
 * xstate/graph enumerates every reachable state and tries every event from each; each step is
 * checked against the table below, written independently of the machine. A refused event is a
 * step too: it must change nothing, and `containerTransition` must answer null for it.
 */
import { describe, expect, it } from 'vitest';
import { getAdjacencyMap } from 'xstate/graph';
import {
  CONTAINER_STATUSES,
  TERMINAL_STATUSES,
  containerMachine,
  containerTransition,
  reachableStatuses,
  type ContainerContext,
  type ContainerEvent,
  type ContainerStatus,
} from '../../actors/container-machine.js';

const EVENTS: ContainerEvent[] = [
  { type: 'PLACED', workerId: 'w1' },
  { type: 'EXPIRED' },
  { type: 'CANCELLED' },
  { type: 'STARTED' },
  { type: 'STOP_REQUESTED' },
  { type: 'RELEASED' },
  { type: 'EXITED', exitCode: 3 },
  { type: 'WORKER_LOST' },
  { type: 'WORKER_UNREACHABLE' },
];

/** [from][event] -> [to, what the context records]; anything missing is refused. */
const SPEC: Record<ContainerStatus, Partial<Record<ContainerEvent['type'], [ContainerStatus, Partial<ContainerContext>]>>> = {
  queued: {
    PLACED: ['placed', { workerId: 'w1' }],
    EXPIRED: ['failed', { reason: 'EXPIRED' }],
    CANCELLED: ['released', { reason: 'CANCELLED' }],
  },
  placed: {
    STARTED: ['running', {}],
    EXITED: ['exited', { exitCode: 3 }],
    STOP_REQUESTED: ['stopping', {}],
    RELEASED: ['released', { reason: 'RELEASED' }],
    WORKER_LOST: ['queued', { workerId: null }],
    WORKER_UNREACHABLE: ['unknown', {}],
  },
  running: {
    EXITED: ['exited', { exitCode: 3 }],
    STOP_REQUESTED: ['stopping', {}],
    WORKER_LOST: ['lost', { reason: 'WORKER_LOST' }],
    WORKER_UNREACHABLE: ['unknown', {}],
  },
  unknown: {
    STARTED: ['running', {}],
    EXITED: ['exited', { exitCode: 3 }],
    STOP_REQUESTED: ['stopping', {}],
    WORKER_LOST: ['lost', { reason: 'WORKER_LOST' }],
  },
  stopping: {
    RELEASED: ['released', { reason: 'RELEASED' }],
    EXITED: ['released', { reason: 'RELEASED', exitCode: 3 }],
    WORKER_LOST: ['released', { reason: 'WORKER_LOST' }],
  },
  exited: {},
  released: {},
  failed: {},
  lost: {},
};

const start = (status: ContainerStatus): ContainerContext => ({
  status,
  workerId: status === 'queued' ? null : 'w0',
  reason: null,
  exitCode: null,
});

describe('container machine, walked as a model', () => {
  for (const from of CONTAINER_STATUSES) {
    it(`from a container restored as ${from}, every step follows the table`, () => {
      const adjacency = getAdjacencyMap(containerMachine, {
        input: start(from),
        events: EVENTS,
        serializeState: (snapshot) => JSON.stringify([snapshot.value, snapshot.context.workerId, snapshot.context.reason, snapshot.context.exitCode]),
        limit: 500,
      });
      const states = Object.values(adjacency);
      expect(String(states[0]!.state.value)).toBe(from);
      let steps = 0;
      for (const { state, transitions } of states) {
        const status = state.value as ContainerStatus;
        for (const { event, state: next } of Object.values(transitions) as Array<{ event: ContainerEvent; state: typeof state }>) {
          steps += 1;
          const expected = SPEC[status][event.type];
          const label = `${status} --${event.type}-->`;
          const pure = containerTransition({ ...state.context, status }, event);
          if (expected === undefined) {
            expect(next.value, label).toBe(status);
            expect(next.context, label).toEqual(state.context);
            expect(pure, label).toBeNull();
          } else {
            expect(next.value, label).toBe(expected[0]);
            expect(next.context, label).toMatchObject(expected[1]);
            expect(pure, label).toMatchObject({ status: expected[0], ...expected[1] });
          }
        }
        expect(state.status === 'done', status).toBe(TERMINAL_STATUSES.has(status));
      }
      expect(steps).toBe(states.length * EVENTS.length);
    });
  }

  it('reaches every status from queued, and nothing leaves a terminal one', () => {
    const adjacency = getAdjacencyMap(containerMachine, { input: start('queued'), events: EVENTS, limit: 500 });
    const reached = new Set(Object.values(adjacency).map((entry) => String(entry.state.value)));
    expect([...reached].sort()).toEqual([...CONTAINER_STATUSES].sort());
    for (const terminal of TERMINAL_STATUSES) {
      for (const event of EVENTS) expect(containerTransition(start(terminal), event)).toBeNull();
    }
  });

  it('knows which statuses can follow which (the chaos checker judges event order with it)', () => {
    expect([...reachableStatuses('queued')].sort()).toEqual([...CONTAINER_STATUSES].sort());
    expect(reachableStatuses('running').has('queued')).toBe(false);
    // A container that may have run (delivered, then unknown) is never queued again.
    expect(reachableStatuses('unknown').has('queued')).toBe(false);
    expect(reachableStatuses('unknown').has('placed')).toBe(false);
    expect(reachableStatuses('placed').has('queued')).toBe(true);
    expect([...reachableStatuses('stopping')].sort()).toEqual(['released', 'stopping']);
    for (const terminal of TERMINAL_STATUSES) expect([...reachableStatuses(terminal)]).toEqual([terminal]);
  });
});
