/**
 * The charts: read faithfully from the machine definitions (every state, transition, guard,
 * action, initial and final state, nesting, eventless and delayed transitions), refused when a
 * guard has no name, and the copies in docs/charts/ regenerated and compared byte for byte.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { WORKER_STATUSES } from '../../actors/capacity.js';
import { CONTAINER_STATUSES, EVERY_CONTAINER_EVENT } from '../../actors/container-machine.js';
import { CHARTED_MACHINES, renderCharts, svgOf } from '../../src/charts/charts.js';
import { toDot } from '../../src/charts/dot.js';
import { toMermaid } from '../../src/charts/mermaid.js';
import { chartOf, transitionLabel, UnnamedPartError } from '../../src/charts/state-chart.js';

const fixture = setup({
  types: { context: {} as { tries: number }, events: {} as { type: 'GO' } | { type: 'FAIL' } | { type: 'RESET' } },
  guards: { canRetry: ({ context }) => context.tries < 3 },
  actions: { countTry: assign(({ context }) => ({ tries: context.tries + 1 })) },
  delays: { patience: 2_000 },
}).createMachine({
  id: 'job',
  context: { tries: 0 },
  initial: 'idle',
  on: { RESET: '.idle' },
  states: {
    idle: { on: { GO: 'working' } },
    working: {
      initial: 'fetching',
      states: {
        fetching: { after: { 5_000: 'slow' }, on: { FAIL: { guard: 'canRetry', target: 'fetching', actions: 'countTry', reenter: true } } },
        slow: { after: { patience: '#job.gaveUp' } },
      },
      always: { guard: 'canRetry', target: 'watching' },
    },
    watching: {
      type: 'parallel',
      states: {
        left: { initial: 'a', states: { a: {} } },
        right: { initial: 'b', states: { b: {} } },
      },
    },
    gaveUp: { type: 'final' },
  },
});

describe('chartOf', () => {
  const chart = chartOf(fixture);
  const find = (source: string, trigger: string) => chart.transitions.filter((t) => t.source === source && t.trigger === trigger);

  it('reads every state with its kind, parent and initial child', () => {
    const kinds = Object.fromEntries(chart.states.map((s) => [s.id, [s.kind, s.parent, s.initial]]));
    expect(kinds).toEqual({
      job: ['compound', null, 'job.idle'],
      'job.idle': ['atomic', 'job', null],
      'job.working': ['compound', 'job', 'job.working.fetching'],
      'job.working.fetching': ['atomic', 'job.working', null],
      'job.working.slow': ['atomic', 'job.working', null],
      'job.watching': ['parallel', 'job', null],
      'job.watching.left': ['compound', 'job.watching', 'job.watching.left.a'],
      'job.watching.left.a': ['atomic', 'job.watching.left', null],
      'job.watching.right': ['compound', 'job.watching', 'job.watching.right.b'],
      'job.watching.right.b': ['atomic', 'job.watching.right', null],
      'job.gaveUp': ['final', 'job', null],
    });
  });

  it('reads events with guards and actions, eventless and delayed transitions, and machine-level ones', () => {
    expect(find('job', 'RESET')).toMatchObject([{ target: 'job.idle', kind: 'event' }]);
    expect(find('job.idle', 'GO')).toMatchObject([{ target: 'job.working', guard: null, actions: [] }]);
    const retry = find('job.working.fetching', 'FAIL')[0]!;
    expect(transitionLabel(retry)).toBe('FAIL [canRetry] / countTry');
    expect(find('job.working.fetching', 'after 5 s')).toMatchObject([{ target: 'job.working.slow', kind: 'after' }]);
    expect(find('job.working.slow', 'after patience')).toMatchObject([{ target: 'job.gaveUp', kind: 'after' }]);
    expect(find('job.working', 'always')).toMatchObject([{ target: 'job.watching', guard: 'canRetry', kind: 'always' }]);
    expect(chart.transitions).toHaveLength(6);
  });

  it('refuses a machine whose guard is an inline function, naming the transition', () => {
    const inline = setup({ types: { events: {} as { type: 'GO' } } }).createMachine({
      id: 'bad',
      initial: 'a',
      states: { a: { on: { GO: { guard: () => true, target: 'b' } } }, b: {} },
    });
    expect(() => chartOf(inline)).toThrow(UnnamedPartError);
    expect(() => chartOf(inline)).toThrow(/bad\.a on GO: the guard is an inline function/);
  });

  it('draws clusters for compound and parallel states and lays the DOT out as SVG', async () => {
    const dot = toDot(chart, 'job');
    expect(dot).toContain('subgraph "cluster_job.working"');
    expect(dot).toContain('subgraph "cluster_job.watching"');
    expect(dot).toMatch(/"job.working.__anchor" -> "job.watching.__anchor" \[label="always \[canRetry\]", ltail="cluster_job.working", lhead="cluster_job.watching", style=dashed\]/);
    expect(dot).toMatch(/"job.gaveUp" \[label="gaveUp", id="state:job.gaveUp", peripheries=2\]/);
    const svg = await svgOf(dot);
    expect(svg).toContain('<svg');
    expect(svg).toContain('id="state:job.working.slow"');
    const mermaid = toMermaid(chart);
    expect(mermaid).toContain('state "watching" as watching {');
    expect(mermaid).toContain('gaveUp --> [*]');
    expect(mermaid).toContain('working__slow --> gaveUp : after patience');
  });
});

describe('the charts of actors/', () => {
  it('show every worker status and every container status and event', () => {
    const worker = chartOf(CHARTED_MACHINES.find((m) => m.name === 'worker')!.machine);
    for (const status of WORKER_STATUSES) expect(worker.states.map((s) => s.key)).toContain(status);
    const container = chartOf(CHARTED_MACHINES.find((m) => m.name === 'container')!.machine);
    for (const status of CONTAINER_STATUSES) expect(container.states.map((s) => s.key)).toContain(status);
    for (const event of EVERY_CONTAINER_EVENT) expect(container.transitions.map((t) => t.event)).toContain(event.type);
    for (const terminal of ['exited', 'released', 'failed', 'lost']) {
      expect(container.states.find((s) => s.key === terminal)?.kind).toBe('final');
    }
  });

  it('docs/charts/ holds what `drover charts --format all` draws now (run it after changing a machine)', async () => {
    const stale: string[] = [];
    for (const { file, content } of await renderCharts()) {
      const committed = await readFile(join('docs', 'charts', file), 'utf8').catch(() => null);
      if (committed !== content) stale.push(file);
    }
    expect(stale, `stale charts: ${stale.join(', ')}; regenerate with: node bin/drover.js charts --format all`).toEqual([]);
  });
});
