/**
 * The peer watch's policy against a real NATS server: a peer that answers gets nothing; a silent
 * peer that is still a member gets the small ballast (shared among its watchers); a silent peer
 * that left the members without a goodbye is a ghost and gets the large one at once; a member
 * list without this replica in it changes nothing; a goodbye ends the watch. The "silent peer" is
 * a connection that subscribes to the peer's control subject, counts what arrives and never
 * answers (what the server sees of a stalled replica). That the large ballast gets a truly cut-off
 * replica dropped by the server is checked end to end in test/replica/partitions.test.ts.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { GHOST_BALLAST_BYTES, MEMBER_BALLAST_BYTES, PeerWatch } from '../../src/membership/peer-watch.js';
import { Subjects } from '../../src/protocol/subjects.js';
import { silentLogger } from '../../src/util/log.js';
import { delay, eventually, natsUrl, testPrefix } from '../support/cluster.js';

const TIMEOUT_MS = 200;
const cleanups: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

async function connection(): Promise<NatsConnection> {
  const nc = await connect({ servers: natsUrl() });
  cleanups.push(() => nc.close());
  return nc;
}

/** A peer on the bus: it answers probes (after `delayMs`), or (silent) only counts the bytes sent to it. */
async function peer(subjects: Subjects, id: string, answers: boolean, delayMs = 0): Promise<{ bytes: () => number; probes: () => number }> {
  const nc = await connection();
  let bytes = 0;
  let probes = 0;
  nc.subscribe(subjects.replicaControl(id), {
    callback: (error, msg) => {
      if (error) return;
      if (msg.reply) {
        probes += 1;
        if (answers && delayMs === 0) msg.respond();
        else if (answers) setTimeout(() => msg.respond(), delayMs);
      } else {
        bytes += msg.data.length;
      }
    },
  });
  await nc.flush();
  return { bytes: () => bytes, probes: () => probes };
}

async function watcher(subjects: Subjects, id: string, refreshMembers?: () => void): Promise<PeerWatch> {
  const watch = new PeerWatch({
    nc: await connection(), watchNc: await connection(), subjects, replicaId: id, timeoutMs: TIMEOUT_MS, natsLinkUp: () => true, log: silentLogger(),
    ...(refreshMembers === undefined ? {} : { refreshMembers }),
  });
  watch.start();
  cleanups.push(async () => watch.stop());
  return watch;
}

/** Wait until a count stops changing for a while (a ballast arrives in slices). */
async function settled(read: () => number, quietMs = 300): Promise<number> {
  let last = read();
  for (let i = 0; i < 100; i += 1) {
    await delay(quietMs);
    const now = read();
    if (now === last) return now;
    last = now;
  }
  throw new Error('the count never settled');
}

describe('peer watch', () => {
  it('leaves a peer that answers alone', async () => {
    const subjects = new Subjects(testPrefix('pw'));
    const live = await peer(subjects, 'live', true);
    const watch = await watcher(subjects, 'me');
    watch.setMembers(['live', 'me']);
    await eventually(() => live.probes() >= 5, 5_000, 'five probes answered');
    expect(watch.stats.unanswered).toBe(0);
    expect(watch.stats.memberBallasts + watch.stats.ghostBallasts).toBe(0);
    expect(live.bytes()).toBe(0);
  });

  it('blames no peer for a probe that timed out while this process itself was stalled', async () => {
    const subjects = new Subjects(testPrefix('pw'));
    // It answers 50 ms after each probe (probes go every 100 ms), so a probe is out half of the time.
    const live = await peer(subjects, 'live', true, 50);
    const watch = await watcher(subjects, 'me');
    watch.setMembers(['live', 'me']);
    await eventually(() => live.probes() >= 3, 5_000, 'probes answered');
    for (let stall = 0; stall < 8; stall += 1) {
      // This process stops for 600 ms (GC, starved, paused): a probe out meanwhile times out late,
      // its answer unread in the socket.
      const until = Date.now() + 600;
      while (Date.now() < until) {
        // busy
      }
      await delay(150);
    }
    expect(watch.stats.unanswered).toBe(0);
    expect(watch.stats.memberBallasts).toBe(0);
    expect(live.bytes()).toBe(0);
  });

  it('sends a silent member the small ballast, shared among its watchers, at most once per period', async () => {
    const subjects = new Subjects(testPrefix('pw'));
    const silent = await peer(subjects, 'slow', false);
    const watch = await watcher(subjects, 'me');
    // Three members besides the silent one watch it: this replica sends a third.
    watch.setMembers(['a', 'b', 'me', 'slow']);
    await eventually(() => watch.stats.memberBallasts === 1, 5_000, 'a small ballast');
    expect(await settled(silent.bytes)).toBeGreaterThanOrEqual(Math.ceil(MEMBER_BALLAST_BYTES / 3));
    expect(silent.bytes()).toBeLessThan(Math.ceil(MEMBER_BALLAST_BYTES / 3) + 256 * 1024);
    // More unanswered probes within the period send nothing more.
    const unanswered = watch.stats.unanswered;
    await eventually(() => watch.stats.unanswered >= unanswered + 3, 5_000, 'three more unanswered probes');
    expect(watch.stats.memberBallasts).toBe(1);
    expect(watch.stats.ghostBallasts).toBe(0);
  });

  it('sends a silent peer that left the members without a goodbye the large ballast at once', async () => {
    const subjects = new Subjects(testPrefix('pw'));
    const silent = await peer(subjects, 'ghost', false);
    const watch = await watcher(subjects, 'me');
    watch.setMembers(['ghost', 'me']);
    await eventually(() => watch.stats.memberBallasts === 1, 5_000, 'a small ballast while it is a member');
    const beforeLeaving = await settled(silent.bytes);
    watch.setMembers(['me']);
    // At once: the list change itself sends it, no probe is awaited.
    expect(watch.stats.ghostBallasts).toBe(1);
    const ghostBytes = (await settled(silent.bytes)) - beforeLeaving;
    expect(ghostBytes).toBeGreaterThanOrEqual(GHOST_BALLAST_BYTES);
    expect(ghostBytes).toBeLessThan(GHOST_BALLAST_BYTES + 256 * 1024);
  }, 20_000);

  it('reads the members again when a member goes silent, and treats it as a ghost as soon as they say it left', async () => {
    const subjects = new Subjects(testPrefix('pw'));
    const silent = await peer(subjects, 'cut', false);
    let refreshes = 0;
    let watch: PeerWatch | null = null;
    // What Redis says when asked again: the silent one stepped out (it found itself cut off).
    watch = await watcher(subjects, 'me', () => {
      refreshes += 1;
      watch!.setMembers(['me']);
    });
    watch.setMembers(['cut', 'me']);
    // At the first unanswered probe: the small ballast, the members read again, and at once (not
    // after the small one is out, nor at the next probe) the large one.
    await eventually(() => watch!.stats.unanswered >= 1, 5_000, 'an unanswered probe');
    expect(watch.stats.memberBallasts).toBe(1);
    expect(watch.stats.ghostBallasts).toBe(1);
    expect(refreshes).toBe(1); // asked once: after it, the peer is no member to ask about
    expect(await settled(silent.bytes)).toBeGreaterThanOrEqual(GHOST_BALLAST_BYTES);
  }, 20_000);

  it('ignores a member list without itself (it stepped out), and stops watching a peer that said goodbye', async () => {
    const subjects = new Subjects(testPrefix('pw'));
    const silent = await peer(subjects, 'other', false);
    const watch = await watcher(subjects, 'me');
    watch.setMembers(['me', 'other']);
    await eventually(() => watch.stats.unanswered >= 1, 5_000, 'an unanswered probe');
    // This replica stepped out itself: its empty list says nothing about the other one.
    watch.setMembers([]);
    await delay(3 * TIMEOUT_MS);
    expect(watch.stats.ghostBallasts).toBe(0);
    watch.forget('other');
    await delay(TIMEOUT_MS);
    const probes = silent.probes();
    await delay(4 * TIMEOUT_MS);
    expect(silent.probes()).toBe(probes);
  });
});
