/**
 * The debug page in a real headless browser (Debian's chromium driven by playwright-core; browser
 * downloads are not possible on these machines, so the setup script installs chromium): it loads
 * with no page error and no console error (a CSP violation would be one), asks nothing of any
 * host but the replica, shows live counts on the charts, and when a worker it watches is drained
 * over NATS its highlighted state moves to `draining` within a second. The screenshot is saved to
 * test-results/debug-page.png.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import type { Replica } from '../../src/replica/replica.js';
import type { DroverClient } from '../../src/client/drover-client.js';
import { connectClient, startReplica, testPrefix } from '../support/cluster.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let replica: Replica;
let client: DroverClient;
let browser: Browser;
let base: string;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run infra/setup.sh (it installs Debian's chromium)`);
  replica = await startReplica({ prefix: testPrefix('page'), shards: 4, httpPort: 0 });
  client = await connectClient(replica.config.prefix);
  base = `http://127.0.0.1:${replica.httpAddress()!.port}`;
  for (let i = 0; i < 5; i += 1) expect((await client.registerWorker({ id: `page-w${i}`, cpu: 4_000, memory: 8_192 })).ok).toBe(true);
  for (let i = 0; i < 3; i += 1) expect((await client.submit({ id: `page-c${i}`, cpu: 1_000, memory: 1_024 })).ok).toBe(true);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
});

afterAll(async () => {
  await browser?.close();
  await client?.close();
  await replica?.stop();
});

describe('debug page in chromium', () => {
  it('follows a drained worker to draining within a second, with no error and no request leaving the replica', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const problems: string[] = [];
    const hosts = new Set<string>();
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') problems.push(`console ${message.type()}: ${message.text()}`);
    });
    page.on('request', (request) => hosts.add(new URL(request.url()).host));

    await page.goto(`${base}/debug`);
    await page.waitForSelector('#connection.live');
    // The live counts: five available workers, drawn on the worker chart.
    await page.waitForSelector('#worker-chart [id="state:worker.available"] .badge-text:text-is("5")');

    await page.fill('#watch-id', 'page-w0');
    await page.click('#watch-form button[type=submit]');
    await page.waitForSelector('#watch-chart [id="state:worker.available"].current');
    expect(await page.textContent('#watch-state')).toBe('available');

    const drainedAt = Date.now();
    expect((await client.drainWorker('page-w0')).ok).toBe(true);
    await page.waitForSelector('#watch-chart [id="state:worker.draining"].current', { timeout: 1_000 });
    const followedInMs = Date.now() - drainedAt;
    expect(followedInMs).toBeLessThan(1_000);
    expect(await page.locator('#watch-chart g.current').count()).toBe(1);
    await page.waitForSelector('#worker-chart [id="state:worker.draining"] .badge-text:text-is("1")');
    expect(await page.textContent('#watch-events tbody')).toContain('DRAIN');

    await page.waitForSelector('#replicas tbody tr');
    await mkdir('test-results', { recursive: true });
    await page.screenshot({ path: 'test-results/debug-page.png', fullPage: true });

    expect(problems).toEqual([]);
    expect([...hosts]).toEqual([new URL(base).host]);
    await page.close();
  });
});
