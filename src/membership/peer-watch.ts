/**
 * Gets a silently cut-off replica off the NATS bus.
 *
 * A replica behind a silent partition keeps its TCP connection to the NATS server open as far as
 * the server can tell, so the server keeps it in the routers' queue group and hands it about 1/N
 * of all public requests, which then time out. nats-server 2.9 notices only when a write to that
 * connection blocks for its `write_deadline`, which happens once some megabytes of socket buffers
 * have filled: tens of seconds under load, never under light load (its pings are skipped while
 * messages flow to the client). It has no API to disconnect a client.
 *
 * So every replica watches the others: each one answers requests on its own control subject, and
 * every member is asked every half link timeout. A peer that does not answer within the link
 * timeout, while this replica's own link to NATS is fine, is presumed cut off (or stopped): this
 * replica then publishes a ballast of BALLAST_BYTES to that peer's subject. A live peer reads and
 * drops it; a cut-off peer's connection cannot take it, the server's write to it blocks, and the
 * write deadline closes it within seconds, which takes its router out of the queue group. "No
 * responders" means the peer is not on the bus at all: nothing to do. Peers that just left the
 * members are watched for a while too: a replica that finds itself cut off steps out of the
 * members (through Redis) but its ghost connection is still on the server.
 */
import { errors, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { Subjects } from '../protocol/subjects.js';
import type { Logger } from '../util/log.js';

/**
 * One ballast. The server drops a stalled client once a write to it blocks for its write deadline,
 * or once more than its max_pending (64 MiB by default) waits for it. A write blocks only when the
 * kernel buffers between them are full: the server's send buffer (Linux autotunes it up to 4 MiB,
 * net.ipv4.tcp_wmem) and the stalled side's receive buffer (up to net.ipv4.tcp_rmem's maximum: 6
 * MiB by default, 32 MiB on the machine these tests run on). So one ballast is 40 MiB, more than
 * both buffers hold; with two watchers, more than max_pending as well.
 */
export const BALLAST_BYTES = 40 * 1024 * 1024;
/** Ballast is sent in chunks well under the server's max_payload (1 MB in infra/nats.conf). */
const BALLAST_CHUNK_BYTES = 256 * 1024;
/**
 * While a peer stays unanswered: a ballast this often (at most; each follows an unanswered probe),
 * at most BALLASTS_PER_EPISODE of them; then one every BALLAST_EVERY_MS until it answers again.
 * Bounded, even if a peer stays unreachable for ever. Measured in the chaos run's 6.5 s silent cut
 * (lease TTL 1.5 s, so probes time out after 0.5 s), with ballasts of 8 MiB: one per 10 s left the
 * cut replica's router in the queue group for the whole cut in three runs of six (a third of the
 * other shards' probes failed); repeated every 2 s, then every 1 s, it still stayed 4-5 s in some
 * full runs, over the bound of the lease TTL plus 2 s.
 */
const BALLAST_REPEAT_MS = 1_000;
const BALLASTS_PER_EPISODE = 2;
const BALLAST_EVERY_MS = 10_000;
/** A peer that left the members is still watched this long (its ghost connection may linger). */
const WATCH_LEFT_PEERS_MS = 60_000;
/** Peers watched at once, whatever the member list says (a bound on the probe traffic). */
const MAX_PEERS = 256;

export interface PeerWatchOptions {
  readonly nc: NatsConnection;
  readonly subjects: Subjects;
  readonly replicaId: string;
  /** A peer that does not answer within this is presumed cut off. */
  readonly timeoutMs: number;
  /** Whether this replica's own link to NATS is fine (a cut-off replica must not judge others). */
  readonly natsLinkUp: () => boolean;
  readonly log: Logger;
}

interface Peer {
  /** Until when to keep watching it (members: forever, renewed on every member list). */
  watchUntil: number;
  probing: boolean;
  lastBallastAt: number;
  /** Ballasts sent since the peer last answered. */
  ballastsInEpisode: number;
}

export class PeerWatch {
  private readonly peers = new Map<string, Peer>();
  private subscription: Subscription | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly ballast = new Uint8Array(BALLAST_CHUNK_BYTES);
  readonly stats = { probes: 0, unanswered: 0, ballasts: 0 };

  constructor(private readonly options: PeerWatchOptions) {}

  start(): void {
    const { nc, subjects, replicaId } = this.options;
    // Probes carry a reply subject and get an answer; ballast does not and is dropped unread.
    this.subscription = nc.subscribe(subjects.replicaControl(replicaId), {
      callback: (error, msg) => {
        if (!error && msg.reply) msg.respond();
      },
    });
    this.timer = setInterval(() => this.probeAll(), Math.max(100, Math.floor(this.options.timeoutMs / 2)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /** The live members changed: watch them, and keep watching the ones that left for a while. */
  setMembers(members: readonly string[]): void {
    const now = Date.now();
    for (const [id, peer] of this.peers) {
      if (!members.includes(id) && peer.watchUntil === Number.POSITIVE_INFINITY) peer.watchUntil = now + WATCH_LEFT_PEERS_MS;
    }
    for (const id of members) {
      if (id === this.options.replicaId) continue;
      const peer = this.peers.get(id);
      if (peer !== undefined) peer.watchUntil = Number.POSITIVE_INFINITY;
      else if (this.peers.size < MAX_PEERS) this.peers.set(id, { watchUntil: Number.POSITIVE_INFINITY, probing: false, lastBallastAt: 0, ballastsInEpisode: 0 });
    }
  }

  /** A peer said goodbye on NATS (a graceful leave): its router has already left the queue group. */
  forget(id: string): void {
    this.peers.delete(id);
  }

  private probeAll(): void {
    const now = Date.now();
    for (const [id, peer] of this.peers) {
      if (peer.watchUntil < now) {
        this.peers.delete(id);
        continue;
      }
      if (!peer.probing) void this.probe(id, peer);
    }
  }

  private async probe(id: string, peer: Peer): Promise<void> {
    const { nc, subjects, timeoutMs } = this.options;
    if (nc.isClosed() || !this.options.natsLinkUp()) return;
    peer.probing = true;
    this.stats.probes += 1;
    try {
      await nc.request(subjects.replicaControl(id), undefined, { timeout: timeoutMs });
      peer.ballastsInEpisode = 0;
    } catch (error) {
      if (error instanceof errors.TimeoutError && this.options.natsLinkUp()) {
        this.stats.unanswered += 1;
        this.sendBallast(id, peer);
      }
      // No responders: the peer is not on the bus, so it has no ghost to remove. Other errors
      // (our own connection is down) say nothing about the peer.
    } finally {
      peer.probing = false;
    }
  }

  private sendBallast(id: string, peer: Peer): void {
    const now = Date.now();
    const every = peer.ballastsInEpisode < BALLASTS_PER_EPISODE ? BALLAST_REPEAT_MS : BALLAST_EVERY_MS;
    if (now - peer.lastBallastAt < every) return;
    peer.lastBallastAt = now;
    peer.ballastsInEpisode += 1;
    this.stats.ballasts += 1;
    this.options.log.warn(
      { peer: id, bytes: BALLAST_BYTES },
      'a peer replica did not answer on NATS; sending it ballast so the NATS server drops its connection if it is cut off',
    );
    const subject = this.options.subjects.replicaControl(id);
    for (let sent = 0; sent < BALLAST_BYTES; sent += BALLAST_CHUNK_BYTES) this.options.nc.publish(subject, this.ballast);
  }
}
