/**
 * A full cluster with a backlog does not spin: a queued shape is attempted again only when room
 * that may fit it appeared, with at most its window of attempts in flight, so attempts stay within
 * a small multiple of placements. And the metrics tell the two apart: the backlog's attempts and
 * re-routes are not conflicts, and clients' attempts count clients' submits only.
 *
 * Two workers are kept full; 40 alike requests wait; a release frees room for one at a time, ten
 * times. Before the fix each release woke the shape and the pump sent every queued container of it
 * at once (about 40 attempts per placement), and the dashboard's conflict ratio counted them.
 */
import type { Subscription } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import type { ContainerEvent, DroverClient } from '../../src/client/drover-client.js';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, eventually, startReplica, testPrefix } from '../support/cluster.js';

const QUEUED = 40;
const RELEASES = 10;

let replica: Replica | null = null;
let client: DroverClient | null = null;
afterAll(async () => {
  await client?.close();
  await replica?.stop();
});

describe('a full cluster with a backlog', () => {
  it('attempts a queued shape only when room for it appears, and counts its retries apart from conflicts', async () => {
    const prefix = testPrefix('fc');
    replica = await startReplica({ prefix, shards: 4, httpPort: 0 });
    client = await connectClient(prefix);
    const placed: string[] = [];
    const subscription: Subscription = client.nc.subscribe(`${prefix}.events.containers.>`, {
      callback: (error, msg) => {
        if (error) return;
        const event = msg.json<ContainerEvent>();
        if (event.status === 'placed') placed.push(event.id);
      },
    });
    for (const id of ['fc-w1', 'fc-w2']) expect(await client.registerWorker({ id, cpu: 1_000, memory: 1_024, pool: 'busy' })).toMatchObject({ ok: true });
    expect(await client.registerWorker({ id: 'fc-free', cpu: 4_000, memory: 4_096, pool: 'free' })).toMatchObject({ ok: true });
    const shape = { cpu: 1_000, memory: 1_024, pool: 'busy' };
    for (const id of ['fc-a', 'fc-b']) expect(await client.submit({ id, ...shape })).toMatchObject({ ok: true, status: 'placed' });
    for (let i = 0; i < QUEUED; i += 1) expect(await client.submit({ id: `fc-q${i}`, ...shape })).toMatchObject({ ok: true, status: 'queued' });
    const before = { ...replica.backlog.stats };

    let running = ['fc-a', 'fc-b'];
    for (let round = 0; round < RELEASES; round += 1) {
      const release = running[0]!;
      const placedBefore = placed.length;
      expect(await client.release(release)).toMatchObject({ ok: true, status: 'released' });
      await eventually(() => placed.length > placedBefore, 5_000, `a queued container placed after release ${round}`);
      running = [...running.slice(1), placed[placed.length - 1]!];
      // While the busy pool is full and 40 wait, a submit that fits elsewhere is placed, not queued.
      if (round === 3) expect(await client.submit({ id: 'fc-fits', cpu: 1_000, memory: 1_024, pool: 'free' })).toMatchObject({ ok: true, status: 'placed' });
    }
    // Let the attempts that room did not cover come back.
    await eventually(() => replica!.backlog.depthByQueue().inFlight === 0, 5_000, 'no attempt in flight');
    const stats = replica.backlog.stats;
    const placements = stats.placed - before.placed;
    const attempts = stats.attempts - before.attempts;
    expect(placements).toBe(RELEASES);
    // One placement per room, and a few attempts it did not cover (the window opens by one after
    // each placement), not one per queued container.
    expect(attempts).toBeLessThanOrEqual(3 * placements + 2);

    // The metrics: no conflict at all (one replica, no stale view, no version or fence refusal),
    // while the backlog retried; clients' attempts are the 44 submits only.
    const text = await (await fetch(`http://127.0.0.1:${replica.httpAddress()!.port}/metrics`)).text();
    const samples = (name: string) => [...text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, 'gm'))].map((m) => ({ labels: m[1]!, value: Number(m[2]) }));
    const sum = (name: string, label = '') => samples(name).filter((s) => s.labels.includes(label)).reduce((total, s) => total + s.value, 0);
    expect(samples('drover_conflicts_total').map((s) => s.labels.split(',')[0])).toEqual(['kind="version"', 'kind="fence"', 'kind="stale_view"']);
    expect(sum('drover_conflicts_total')).toBe(0);
    expect(sum('drover_backlog_attempts_total', 'result="scheduled"')).toBe(RELEASES);
    expect(sum('drover_backlog_attempts_total', 'result="no_room"')).toBeGreaterThan(0);
    expect(sum('scheduler_schedule_attempts_total', 'result="scheduled"')).toBe(3);
    expect(sum('scheduler_schedule_attempts_total', 'result="unschedulable"')).toBe(QUEUED);
    expect(sum('drover_reroutes_total', 'cause="stale_view"')).toBe(0);
    subscription.unsubscribe();
  }, 60_000);
});
