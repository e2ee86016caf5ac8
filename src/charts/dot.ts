/**
 * A state chart in Graphviz DOT. Atomic states are rounded boxes, final ones double-bordered;
 * compound and parallel states are clusters (parallel regions dashed); each compound state's
 * initial child is pointed at from a small dot. Transitions of the machine's root (its top-level
 * `on`, taken in any state) start from an "any state" box, so they are drawn once, not once per
 * state. Every state's SVG group gets the id `state:<state id>`, which the debug page uses to draw
 * live counts and highlight a watched actor's state.
 */
import { indexStates, transitionLabel, type ChartState, type StateChart } from './state-chart.js';

const FONT = 'Helvetica,Arial,sans-serif';

export function stateElementId(stateId: string): string {
  return `state:${stateId}`;
}

export function toDot(chart: StateChart, title: string): string {
  const lines: string[] = [];
  const { byParent, root, stateOf } = indexStates(chart);
  const isCluster = (state: ChartState) => state.parent !== null && (state.kind === 'compound' || state.kind === 'parallel');
  // An edge to or from a cluster attaches to the cluster's anchor (an invisible point inside it).
  const endpoint = (id: string) => (isCluster(stateOf.get(id)!) ? `${id}.__anchor` : id);

  lines.push(`digraph ${quote(chart.id)} {`);
  lines.push(`  graph [rankdir=LR, compound=true, newrank=true, fontname=${quote(FONT)}, fontsize=13, label=${quote(title)}, labelloc=t, nodesep=0.35, ranksep=0.5];`);
  lines.push(`  node [shape=box, style="rounded,filled", fillcolor="#f5f7fb", color="#56607a", fontname=${quote(FONT)}, fontsize=11];`);
  lines.push(`  edge [color="#56607a", fontname=${quote(FONT)}, fontsize=9, fontcolor="#303748"];`);

  const writeChildren = (parent: ChartState, indent: string) => {
    const children = byParent.get(parent.id) ?? [];
    if (parent.initial !== null) {
      const dot = `${parent.id}.__initial`;
      lines.push(`${indent}${quote(dot)} [shape=point, width=0.12, label="", id=${quote(`initial:${parent.id}`)}];`);
      lines.push(`${indent}${quote(dot)} -> ${quote(endpoint(parent.initial))}${isCluster(stateOf.get(parent.initial)!) ? ` [lhead=${quote(`cluster_${parent.initial}`)}]` : ''};`);
    }
    for (const child of children) {
      if (isCluster(child)) {
        lines.push(`${indent}subgraph ${quote(`cluster_${child.id}`)} {`);
        const dashed = child.kind === 'parallel' ? ', dashed' : '';
        lines.push(`${indent}  graph [label=${quote(child.key)}, id=${quote(stateElementId(child.id))}, style="rounded${dashed}", color="#56607a"];`);
        lines.push(`${indent}  ${quote(`${child.id}.__anchor`)} [shape=point, style=invis, width=0.01, label=""];`);
        writeChildren(child, `${indent}  `);
        lines.push(`${indent}}`);
      } else {
        const final = child.kind === 'final' ? ', peripheries=2' : '';
        const tooltip = child.description === null ? '' : `, tooltip=${quote(child.description)}`;
        lines.push(`${indent}${quote(child.id)} [label=${quote(child.key)}, id=${quote(stateElementId(child.id))}${final}${tooltip}];`);
      }
    }
  };
  writeChildren(root, '  ');

  const fromRoot = chart.transitions.filter((t) => t.source === root.id);
  if (fromRoot.length > 0) {
    lines.push(`  ${quote(`${root.id}.__any`)} [label="any state", style="dashed,rounded", fillcolor=white, id=${quote(`any:${root.id}`)}];`);
  }
  // Transitions between the same two states in the same style are drawn as one edge with one
  // line per transition (each still shows its own trigger, guard and actions).
  const edges = new Map<string, { source: string; target: string; labels: string[]; attributes: string[] }>();
  for (const transition of chart.transitions) {
    const source = transition.source === root.id ? `${root.id}.__any` : endpoint(transition.source);
    const target = transition.target === null || transition.target === root.id ? source : endpoint(transition.target);
    const attributes: string[] = [];
    if (transition.source !== root.id && isCluster(stateOf.get(transition.source)!)) attributes.push(`ltail=${quote(`cluster_${transition.source}`)}`);
    if (transition.target !== null && transition.target !== root.id && isCluster(stateOf.get(transition.target)!)) attributes.push(`lhead=${quote(`cluster_${transition.target}`)}`);
    if (transition.kind === 'always') attributes.push('style=dashed');
    if (transition.kind === 'after') attributes.push('style=dotted');
    const key = `${source}\u0000${target}\u0000${attributes.join(',')}`;
    const edge = edges.get(key) ?? { source, target, labels: [], attributes };
    edge.labels.push(transitionLabel(transition));
    edges.set(key, edge);
  }
  for (const edge of edges.values()) {
    lines.push(`  ${quote(edge.source)} -> ${quote(edge.target)} [${[`label=${quote(edge.labels.join('\n'))}`, ...edge.attributes].join(', ')}];`);
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

function quote(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}
