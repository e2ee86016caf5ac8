/**
 * infra/grafana/drover-dashboard.json and infra/prometheus/prometheus.yml: every metric the
 * dashboard's queries name is one a real replica serves on /metrics (histograms by their
 * _bucket/_sum/_count series), the four panels the seed's audit asked for are there, and the scrape
 * config points at the default port.
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_HTTP_PORT } from '../../src/config.js';
import type { Replica } from '../../src/replica/replica.js';
import { startReplica, testPrefix } from '../support/cluster.js';

let replica: Replica;
let served: Map<string, string>;

beforeAll(async () => {
  replica = await startReplica({ prefix: testPrefix('dash'), shards: 2, httpPort: 0 });
  const text = await (await fetch(`http://127.0.0.1:${replica.httpAddress()!.port}/metrics`)).text();
  served = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
});

afterAll(async () => {
  await replica.stop();
});

/** The metric names in a PromQL expression (label names and functions are not metric names). */
export function metricNames(expr: string): string[] {
  const withoutLabels = expr.replace(/\{[^}]*\}/g, '').replace(/\b(by|without)\s*\([^)]*\)/g, '');
  return [...withoutLabels.matchAll(/\b([a-z_][a-z0-9_:]*)\b(?!\s*\()/g)]
    .map((m) => m[1]!)
    .filter((name) => !['le', 'sum', 'rate', 'by', 'without', 'histogram_quantile', 'clamp_min', 'm', 's'].includes(name) && /_/.test(name));
}

describe('Grafana dashboard', () => {
  it('queries only metrics a replica serves', async () => {
    const dashboard = JSON.parse(await readFile('infra/grafana/drover-dashboard.json', 'utf8'));
    const expressions: string[] = dashboard.panels.flatMap((panel: { targets: Array<{ expr: string }> }) => panel.targets.map((t) => t.expr));
    expect(expressions.length).toBeGreaterThanOrEqual(8);
    const unknown: string[] = [];
    let checked = 0;
    for (const expr of expressions) {
      const names = metricNames(expr);
      expect(names.length, expr).toBeGreaterThan(0);
      for (const name of names) {
        checked += 1;
        const histogram = /^(.*)_(bucket|sum|count)$/.exec(name);
        const known = served.has(name) || (histogram !== null && served.get(histogram[1]!) === 'histogram');
        if (!known) unknown.push(name);
      }
    }
    expect(unknown).toEqual([]);
    expect(checked).toBeGreaterThanOrEqual(12);
  });

  it('has the four panels the audit asked for', async () => {
    const dashboard = JSON.parse(await readFile('infra/grafana/drover-dashboard.json', 'utf8'));
    const titles = dashboard.panels.map((panel: { title: string }) => panel.title);
    for (const wanted of [/conflict ratio/, /Time to schedule/, /Worker utilization distribution/, /Backlog size over time/]) {
      expect(titles.some((title: string) => wanted.test(title)), String(wanted)).toBe(true);
    }
  });

  it('shows conflicts only in the conflict ratio, buckets as a heatmap, and the backlog total', async () => {
    const dashboard = JSON.parse(await readFile('infra/grafana/drover-dashboard.json', 'utf8'));
    type Panel = { title: string; type: string; targets: Array<{ expr: string; format?: string; legendFormat?: string }> };
    const panels: Panel[] = dashboard.panels;
    const panel = (title: RegExp) => panels.find((p) => title.test(p.title))!;
    // Conflicts: version and fence refusals and stale-view re-routes, nothing the backlog retries.
    const conflicts = panel(/conflict ratio/);
    for (const target of conflicts.targets) {
      const names = metricNames(target.expr);
      expect(names, target.expr).toContain('drover_conflicts_total');
      expect(names.filter((name) => name !== 'drover_conflicts_total' && name !== 'drover_placements_total'), target.expr).toEqual([]);
    }
    // Prometheus buckets are cumulative: a heatmap must read them as buckets (format heatmap), by le.
    const heatmaps = panels.filter((p) => p.type === 'heatmap');
    expect(heatmaps.length).toBeGreaterThan(0);
    for (const heatmap of heatmaps) {
      for (const target of heatmap.targets) {
        expect(target.format, heatmap.title).toBe('heatmap');
        expect(target.expr).toMatch(/_bucket\b/);
        expect(target.expr).toMatch(/by \(le\)/);
        expect(target.legendFormat).toBe('{{le}}');
      }
    }
    // The backlog panel has a total line: the gauge summed over every queue and replica.
    const backlog = panel(/Backlog size over time/);
    expect(backlog.targets.map((t) => t.expr.replace(/\s/g, ''))).toContain('sum(scheduler_pending_pods)');
    // The backlog's retries have a panel of their own.
    expect(metricNames(panel(/Backlog retries/).targets.map((t) => t.expr).join(' '))).toContain('drover_backlog_attempts_total');
  });

  it('would catch a metric that does not exist', () => {
    const names = metricNames('sum(rate(drover_no_such_metric_total{pool="x"}[5m])) / sum by (le) (rate(scheduler_pending_pods[1m]))');
    expect(names).toEqual(['drover_no_such_metric_total', 'scheduler_pending_pods']);
    expect(served.has('drover_no_such_metric_total')).toBe(false);
  });
});

describe('Prometheus scrape config', () => {
  it('scrapes /metrics on the default port', async () => {
    const config = await readFile('infra/prometheus/prometheus.yml', 'utf8');
    expect(config).toContain('metrics_path: /metrics');
    expect(config).toContain(`127.0.0.1:${DEFAULT_HTTP_PORT}`);
  });
});
