/** Turns a benchmark JSON file into the markdown the README shows (`drover bench --report FILE`). */
import { readFileSync } from 'node:fs';
import { renderMarkdownTable } from '../util/table.js';
import { RESULT_HEADERS, resultRows, type BenchResults } from './run.js';

export function benchMarkdown(file: string): string {
  const results = JSON.parse(readFileSync(file, 'utf8')) as BenchResults;
  const m = results.machine;
  const rows = results.scenarios.flatMap((s) => s.rows);
  const lines = [
    `Measured ${results.startedAt.slice(0, 10)} on ${m.cpus} x ${m.cpuModel}, ${m.memoryGiB} GiB, Node ${m.node}, ` +
      `${m.redis}, ${m.nats}; everything (replicas, Redis, NATS, the load) on the same machine; the run took ${results.durationSeconds} s.`,
    '',
    renderMarkdownTable(RESULT_HEADERS, resultRows(rows)),
    '',
    ...rows.filter((r) => r.note !== '').map((r) => `- ${r.scenario} / ${r.system}: ${r.note}`),
  ];
  for (const scenario of results.scenarios) {
    const ratio = (scenario.details as { ratio?: number }).ratio;
    if (ratio !== undefined) lines.push(`- ${scenario.name}: Drover / seed algorithm = ${ratio}x`);
  }
  return lines.join('\n');
}
