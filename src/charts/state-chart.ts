/**
 * A state machine from `actors/` as a chart: its states (nested, with their kind and initial
 * child) and every transition with its event, guard, actions and target. Read from the machine
 * definition itself through `xstate/graph`'s `toDirectedGraph`, plus the two kinds of transition
 * that function leaves out of its edges: eventless (`always`) ones, and the delayed (`after`) ones,
 * which it lists under their internal event names ("xstate.after.5000.worker.x"), shown here as
 * "after 5 s".
 *
 * A guard written inline (a function in the machine config) has no name a reader could look up,
 * so a chart of it would not say what decides the transition: `chartOf` refuses such a machine,
 * naming the transition, instead of drawing a nameless guard.
 */
import type { AnyStateMachine, AnyStateNode } from 'xstate';
import { toDirectedGraph, type DirectedGraphNode } from 'xstate/graph';

export type ChartStateKind = 'atomic' | 'compound' | 'parallel' | 'final' | 'history';

export interface ChartState {
  /** The state's full id, e.g. "worker.available" (the machine's root is the machine id). */
  readonly id: string;
  /** Its own key, e.g. "available". */
  readonly key: string;
  readonly parent: string | null;
  readonly kind: ChartStateKind;
  /** The child entered first (compound states), or null. */
  readonly initial: string | null;
  readonly description: string | null;
}

export type ChartTransitionKind = 'event' | 'always' | 'after';

export interface ChartTransition {
  /** The state it leaves; the machine's root id means "in any state" (a machine-level `on`). */
  readonly source: string;
  /** The state it enters, or null: it stays where it is and only runs its actions. */
  readonly target: string | null;
  readonly kind: ChartTransitionKind;
  /** The event type ('' for eventless ones, the delay's event for delayed ones). */
  readonly event: string;
  /** What a reader sees for the trigger: "RESERVE", "always", "after 5 s". */
  readonly trigger: string;
  /** The named guard ("fits", "committedAs(pending)"), or null when unguarded. */
  readonly guard: string | null;
  readonly actions: readonly string[];
}

export interface StateChart {
  /** The machine's id: its root state's id. */
  readonly id: string;
  readonly states: readonly ChartState[];
  readonly transitions: readonly ChartTransition[];
}

/** A guard or action the chart cannot name. */
export class UnnamedPartError extends Error {}

interface TransitionLike {
  readonly eventType: string;
  readonly target?: ReadonlyArray<{ id: string }> | undefined;
  readonly guard?: unknown;
  readonly actions: readonly unknown[];
}

/** Bounds on what one chart may hold (a machine this large would not be readable as a chart anyway). */
const MAX_STATES = 500;
const MAX_TRANSITIONS = 5_000;

export function chartOf(machine: AnyStateMachine): StateChart {
  const states: ChartState[] = [];
  const transitions: ChartTransition[] = [];
  const visit = (node: DirectedGraphNode, parent: string | null): void => {
    const stateNode = node.stateNode as AnyStateNode;
    if (states.length >= MAX_STATES) throw new Error(`machine ${machine.id} has more than ${MAX_STATES} states`);
    states.push({
      id: stateNode.id,
      key: stateNode.key,
      parent,
      kind: stateNode.type as ChartStateKind,
      initial: initialOf(stateNode),
      description: stateNode.description ?? null,
    });
    const delays = delaysOf(stateNode);
    for (const edge of node.edges) transitions.push(toTransition(stateNode.id, edge.transition as unknown as TransitionLike, delays));
    for (const always of (stateNode.always ?? []) as unknown as TransitionLike[]) transitions.push(toTransition(stateNode.id, always, delays));
    for (const child of node.children) visit(child, stateNode.id);
  };
  visit(toDirectedGraph(machine), null);
  if (transitions.length > MAX_TRANSITIONS) throw new Error(`machine ${machine.id} has more than ${MAX_TRANSITIONS} transitions`);
  return { id: machine.id, states, transitions };
}

function initialOf(stateNode: AnyStateNode): string | null {
  if (stateNode.type !== 'compound') return null;
  const target = (stateNode.initial as { target?: ReadonlyArray<{ id: string }> } | undefined)?.target;
  return target?.[0]?.id ?? null;
}

/** The delayed transitions' internal event names, mapped to how long each waits. */
function delaysOf(stateNode: AnyStateNode): Map<string, number | string> {
  const delays = new Map<string, number | string>();
  for (const delayed of stateNode.after ?? []) {
    const delay = (delayed as { delay: unknown }).delay;
    delays.set(delayed.eventType, typeof delay === 'number' || typeof delay === 'string' ? delay : 'a computed delay');
  }
  return delays;
}

function toTransition(source: string, transition: TransitionLike, delays: Map<string, number | string>): ChartTransition {
  const event = transition.eventType;
  const delay = delays.get(event);
  const kind: ChartTransitionKind = event === '' ? 'always' : delay !== undefined ? 'after' : 'event';
  const trigger = kind === 'always' ? 'always' : kind === 'after' ? `after ${describeDelay(delay!)}` : event;
  const where = `${source} on ${trigger}`;
  return {
    source,
    target: transition.target?.[0]?.id ?? null,
    kind,
    event,
    trigger,
    guard: guardName(transition.guard, where),
    actions: transition.actions.map((action) => actionName(action, where)),
  };
}

export function describeDelay(delay: number | string): string {
  if (typeof delay === 'string') return delay;
  if (delay < 1_000) return `${delay} ms`;
  if (delay % 60_000 === 0) return `${delay / 60_000} min`;
  return `${delay / 1_000} s`;
}

function guardName(guard: unknown, where: string): string | null {
  if (guard === undefined || guard === null) return null;
  if (typeof guard === 'string') return guard;
  if (typeof guard === 'object' && typeof (guard as { type?: unknown }).type === 'string') {
    const { type, params } = guard as { type: string; params?: unknown };
    return params === undefined ? type : `${type}(${formatParams(params)})`;
  }
  throw new UnnamedPartError(`${where}: the guard is an inline function; name it in setup({ guards }) so the chart can show it`);
}

function actionName(action: unknown, where: string): string {
  if (typeof action === 'string') return action;
  if (typeof action === 'object' && action !== null && typeof (action as { type?: unknown }).type === 'string') {
    const { type, params } = action as { type: string; params?: unknown };
    return params === undefined ? type : `${type}(${formatParams(params)})`;
  }
  throw new UnnamedPartError(`${where}: an action is an inline function; name it in setup({ actions }) so the chart can show it`);
}

function formatParams(params: unknown): string {
  if (typeof params === 'string' || typeof params === 'number' || typeof params === 'boolean') return String(params);
  return JSON.stringify(params);
}

/** "RESERVE [fits] / reserve": the trigger, the guard, the actions. */
export function transitionLabel(transition: ChartTransition): string {
  let label = transition.trigger;
  if (transition.guard !== null) label += ` [${transition.guard}]`;
  if (transition.actions.length > 0) label += ` / ${transition.actions.join(', ')}`;
  return label;
}

/** The chart's states by parent (in definition order), its root, and each state by id: what every writer walks. */
export function indexStates(chart: StateChart): { byParent: Map<string | null, ChartState[]>; root: ChartState; stateOf: Map<string, ChartState> } {
  const byParent = new Map<string | null, ChartState[]>();
  for (const state of chart.states) {
    const siblings = byParent.get(state.parent) ?? [];
    siblings.push(state);
    byParent.set(state.parent, siblings);
  }
  const root = chart.states.find((state) => state.parent === null);
  if (root === undefined) throw new Error(`chart ${chart.id} has no root state`);
  return { byParent, root, stateOf: new Map(chart.states.map((state) => [state.id, state])) };
}
