/**
 * The link monitor on its own, with probes the test controls: a link that stops answering or
 * answers late is cut once and back once; a process that is merely busy is not cut off.
 */
import { describe, expect, it } from 'vitest';
import { LinkMonitor } from '../../src/replica/link-monitor.js';
import { silentLogger } from '../../src/util/log.js';
import { delay } from '../support/cluster.js';

function monitor(probe: () => Promise<unknown>) {
  const events: string[] = [];
  const link = new LinkMonitor({
    name: 'test', probe, intervalMs: 50, cutAfterMs: 400, slowMs: 200, backAfter: 2, log: silentLogger(),
    onCut: () => events.push('cut'),
    onBack: () => events.push('back'),
  });
  return { link, events };
}

describe('link monitor', () => {
  it('never cuts a link that answers', async () => {
    const { link, events } = monitor(async () => undefined);
    link.start();
    await delay(1_200);
    link.stop();
    expect(events).toEqual([]);
    expect(link.stats.probes).toBeGreaterThan(10);
  });

  it('cuts a link whose round trips stop coming back, once, and says when it is back', async () => {
    let answering = true;
    const { link, events } = monitor(() => (answering ? Promise.resolve() : new Promise(() => undefined)));
    link.start();
    await delay(300);
    answering = false;
    await delay(700);
    expect(events).toEqual(['cut']);
    expect(link.cut).toBe(true);
    await delay(500);
    expect(events).toEqual(['cut']);
    answering = true;
    await delay(700);
    link.stop();
    expect(events).toEqual(['cut', 'back']);
  });

  it('cuts a link whose answers all come back later than the slow bound', async () => {
    const { link, events } = monitor(() => delay(300));
    link.start();
    await delay(1_500);
    link.stop();
    expect(events).toEqual(['cut']);
  });

  it('does not blame the link when this process was too busy to read the answer in time', async () => {
    // The answer is there at once, but the event loop is blocked for 300 ms before it is read.
    const { link, events } = monitor(async () => {
      const until = Date.now() + 300;
      while (Date.now() < until) {
        // a busy replica: a big batch, a long GC
      }
    });
    link.start();
    await delay(1_500);
    link.stop();
    expect(events).toEqual([]);
    expect(link.stats.inconclusive).toBeGreaterThan(0);
  });
});
