/**
 * Every machine in `actors/`, drawn: DOT (Graphviz source), SVG (that DOT laid out by Graphviz
 * compiled to WebAssembly, `@viz-js/viz`, so nothing but npm is needed) and Mermaid text. The
 * repository keeps the output in `docs/charts/`; a test regenerates it and fails when it is stale.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AnyStateMachine } from 'xstate';
import { containerMachine } from '../../actors/container-machine.js';
import { workerMachine } from '../../actors/worker-machine.js';
import { toDot } from './dot.js';
import { toMermaid } from './mermaid.js';
import { chartOf, type StateChart } from './state-chart.js';

export interface ChartedMachine {
  /** File name stem and the name the debug page uses. */
  readonly name: string;
  readonly machine: AnyStateMachine;
  readonly source: string;
  readonly title: string;
}

export const CHARTED_MACHINES: readonly ChartedMachine[] = [
  { name: 'worker', machine: workerMachine, source: 'actors/worker-machine.ts', title: 'worker machine (actors/worker-machine.ts): one actor per worker' },
  { name: 'container', machine: containerMachine, source: 'actors/container-machine.ts', title: 'container lifecycle (actors/container-machine.ts)' },
];

export const CHART_FORMATS = ['svg', 'dot', 'mermaid'] as const;
export type ChartFormat = (typeof CHART_FORMATS)[number];
const EXTENSION: Record<ChartFormat, string> = { svg: 'svg', dot: 'dot', mermaid: 'mmd' };

export interface ChartFile {
  readonly file: string;
  readonly content: string;
}

type Viz = Awaited<ReturnType<typeof import('@viz-js/viz').instance>>;
let viz: Promise<Viz> | null = null;

/** Graphviz (WebAssembly), loaded once per process on first use (about 40 ms). */
function graphviz(): Promise<Viz> {
  viz ??= import('@viz-js/viz').then((module) => module.instance());
  return viz;
}

export async function svgOf(dot: string): Promise<string> {
  const result = (await graphviz()).render(dot, { format: 'svg' });
  if (result.status !== 'success') {
    throw new Error(`Graphviz could not lay out the chart: ${result.errors.map((e) => e.message).join('; ')}`);
  }
  return result.output;
}

export function chartOfMachine(charted: ChartedMachine): StateChart {
  return chartOf(charted.machine);
}

/** The chart files of every machine in the given formats, named "<machine>.<svg|dot|mmd>". */
export async function renderCharts(formats: readonly ChartFormat[] = CHART_FORMATS): Promise<ChartFile[]> {
  const files: ChartFile[] = [];
  for (const charted of CHARTED_MACHINES) {
    const chart = chartOfMachine(charted);
    const dot = toDot(chart, charted.title);
    for (const format of formats) {
      const content = format === 'dot' ? dot : format === 'mermaid' ? toMermaid(chart) : await svgOf(dot);
      files.push({ file: `${charted.name}.${EXTENSION[format]}`, content });
    }
  }
  return files;
}

export async function writeCharts(dir: string, formats: readonly ChartFormat[]): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const written: string[] = [];
  for (const { file, content } of await renderCharts(formats)) {
    const path = join(dir, file);
    await writeFile(path, content);
    written.push(path);
  }
  return written;
}
