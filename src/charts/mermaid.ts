/**
 * A state chart as Mermaid `stateDiagram-v2` text, for documents that render Mermaid. Compound
 * states nest as `state X { ... }`, parallel regions are separated by `--`, final states lead to
 * `[*]`, and the machine's top-level transitions (taken in any state) start from an "any state"
 * pseudo-state, as in the DOT chart.
 */
import { indexStates, transitionLabel, type ChartState, type StateChart } from './state-chart.js';

export function toMermaid(chart: StateChart): string {
  const { byParent, root, stateOf } = indexStates(chart);
  // Mermaid ids may not hold dots: the path below the root, joined by "__".
  const idOf = (stateId: string) => stateId.split('.').slice(1).join('__') || 'root';
  const lines = ['stateDiagram-v2', '  direction LR'];

  const writeChildren = (parent: ChartState, indent: string) => {
    const children = byParent.get(parent.id) ?? [];
    if (parent.initial !== null) lines.push(`${indent}[*] --> ${idOf(parent.initial)}`);
    children.forEach((child, index) => {
      if (parent.kind === 'parallel' && index > 0) lines.push(`${indent}--`);
      if (child.kind === 'compound' || child.kind === 'parallel') {
        lines.push(`${indent}state "${child.key}" as ${idOf(child.id)} {`);
        writeChildren(child, `${indent}  `);
        lines.push(`${indent}}`);
      } else if (child.key !== idOf(child.id)) {
        lines.push(`${indent}state "${child.key}" as ${idOf(child.id)}`);
      }
      if (child.kind === 'final') lines.push(`${indent}${idOf(child.id)} --> [*]`);
    });
  };
  writeChildren(root, '  ');

  const any = `any_state`;
  if (chart.transitions.some((t) => t.source === root.id)) lines.push(`  state "any state" as ${any}`);
  for (const transition of chart.transitions) {
    const source = transition.source === root.id ? any : idOf(transition.source);
    const target = transition.target === null || transition.target === root.id ? source : idOf(transition.target);
    if (transition.target !== null && !stateOf.has(transition.target)) throw new Error(`transition to unknown state ${transition.target}`);
    // Mermaid ends a label at a line break and reads ":" as its own separator.
    lines.push(`  ${source} --> ${target} : ${transitionLabel(transition).replace(/:/g, ' ').replace(/\n/g, ' ')}`);
  }
  return `${lines.join('\n')}\n`;
}
