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
 * every peer is asked every half link timeout. A peer that does not answer within the link
 * timeout, while this replica's own link to NATS is fine (and did not reconnect meanwhile), is
 * silent; this replica then publishes ballast to that peer's subject. A live peer reads and drops
 * it; a cut-off peer's connection cannot take it, the server's write to it blocks, and the write
 * deadline closes it within seconds, which takes its router out of the queue group. "No
 * responders" means the peer is not on the bus at all: nothing to do.
 *
 * How much ballast depends on what Redis says about the peer, because ballast is not free for a
 * live peer: it must read all of it, and whatever the server sends it after the ballast waits
 * behind it (its own link check included). A silent peer that is still a member (it heartbeats
 * through Redis, so it is alive) may just be slow or reconnecting: it gets a small ballast, rarely.
 * A silent peer that left the members without saying goodbye on NATS has found itself cut off
 * (it steps out through Redis) or stopped heartbeating (frozen, or cut off from both): that is a
 * ghost, and it gets the large ballast that fills any buffers. Peers that left are watched for a
 * while (their ghost connections may linger).
 *
 * Probes and ballast go out on a NATS connection of the watch's own. The server stalls a
 * connection that publishes to a slow consumer (up to a second at a time, once more than half its
 * max_pending waits for it), and in the chaos suite that stall, on the replica's main connection
 * (which probed the ghost), held its own link check long enough for it to believe itself cut off
 * and step out too. The ballast is sent in slices, each flushed before the next, so that it stops
 * soon after the peer answers.
 */
import { errors, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { Subjects } from '../protocol/subjects.js';
import type { Logger } from '../util/log.js';
import { withTimeout } from '../util/with-timeout.js';

/**
 * The ballast for a ghost (a silent peer that left the members), in all: each watcher sends its
 * share. The server drops a stalled client once a write to it blocks for its write deadline, or
 * once more than its max_pending (64 MiB by default) waits for it. A write blocks only when the
 * kernel buffers between them are full: the server's send buffer (Linux autotunes it up to 4 MiB,
 * net.ipv4.tcp_wmem) and, where the stalled side still acknowledges (a stopped process, or the
 * chaos suite's proxy), its receive buffer (up to net.ipv4.tcp_rmem's maximum: 6 MiB by default,
 * 32 MiB on the machine these tests run on). So 40 MiB, more than both hold. Not much more:
 * once more than half of max_pending waits for a client, the server stalls every connection that
 * publishes to it (up to a second at a time); so the watchers share one ballast rather than each
 * sending one.
 */
export const GHOST_BALLAST_BYTES = 40 * 1024 * 1024;
/**
 * The ballast for a silent peer that is still a member, in all: enough to fill the server's send
 * buffer toward a truly partitioned host (nothing acknowledged), small enough that a live but
 * slow peer reads it in milliseconds.
 */
export const MEMBER_BALLAST_BYTES = 8 * 1024 * 1024;
/** Ballast is sent in chunks well under the server's max_payload (1 MB in infra/nats.conf). */
const BALLAST_CHUNK_BYTES = 256 * 1024;
/**
 * Chunks published before waiting for the server to have read them (a flush). Bounds what this
 * replica's own later messages can queue behind: 2 MiB, a few milliseconds on loopback.
 */
const BALLAST_CHUNKS_PER_SLICE = 8;
/** A flush that does not come back in this long ends the ballast (our own link is in trouble). */
const BALLAST_FLUSH_TIMEOUT_MS = 2_000;
/**
 * A ghost gets a ballast at most this often, at most GHOST_BALLASTS_PER_EPISODE in a row (each
 * after an unanswered probe), then one every BALLAST_EVERY_MS until it answers again or the watch
 * on it ends. A silent member gets at most one per BALLAST_EVERY_MS. Bounded, even if a peer
 * stays unreachable for ever. Measured in the chaos run's silent cut (see the README's Partitions
 * section for the history): one 8 MiB ballast did not always fill the proxy's buffers; 40 MiB
 * from every watcher to every silent peer did, but also hit live peers that were slow or
 * reconnecting after a NATS restart, and stalled the watchers' own connections, and both then
 * stepped out themselves.
 */
const GHOST_BALLAST_REPEAT_MS = 2_000;
const GHOST_BALLASTS_PER_EPISODE = 2;
const BALLAST_EVERY_MS = 10_000;
/** A peer that left the members is still watched this long (its ghost connection may linger). */
const WATCH_LEFT_PEERS_MS = 60_000;
/** Peers watched at once, whatever the member list says (a bound on the probe traffic). */
const MAX_PEERS = 256;

export interface PeerWatchOptions {
  /** The replica's own connection: it answers the others' probes on it. */
  readonly nc: NatsConnection;
  /**
   * The watch's connection: probes and ballast go out on it. The NATS server stalls a connection
   * that publishes to a slow consumer (a ghost is one) for up to a second at a time, and the
   * replica's own traffic and link check must not stall with it.
   */
  readonly watchNc: NatsConnection;
  readonly subjects: Subjects;
  readonly replicaId: string;
  /** A peer that does not answer within this is presumed cut off. */
  readonly timeoutMs: number;
  /** Whether this replica's own link to NATS is fine (a cut-off replica must not judge others). */
  readonly natsLinkUp: () => boolean;
  /**
   * Read the members again now (a heartbeat): asked when a member goes silent, so that a peer
   * that stepped out through Redis (it found itself cut off) is known for a ghost at once, not at
   * the next heartbeat. The answer comes back through setMembers.
   */
  readonly refreshMembers?: () => void;
  readonly log: Logger;
}

interface Peer {
  /** Until when to keep watching it (members: forever, renewed on every member list). */
  watchUntil: number;
  probing: boolean;
  /** Its last probe went unanswered (and nothing says our own link was the reason). */
  silent: boolean;
  /**
   * Per kind: whether a ballast of that kind to it is being sent (a ghost's does not wait for a
   * member's), and when it last got one (each kind has its own pace).
   */
  readonly ballast: Record<BallastKind, { sending: boolean; lastAt: number }>;
  /** Ghost ballasts sent since the peer last answered. */
  ghostBallasts: number;
}

export type BallastKind = 'member' | 'ghost';

export class PeerWatch {
  private readonly peers = new Map<string, Peer>();
  private subscription: Subscription | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly ballast = new Uint8Array(BALLAST_CHUNK_BYTES);
  /** When our own connection last went down or came back (a probe across it proves nothing). */
  private linkChangedAt = 0;
  /** Live members in the last list that had this replica in it (this one included). */
  private memberCount = 1;
  /** When the members were last read again because one went silent (at most once per timeout). */
  private refreshedAt = 0;
  readonly stats = { probes: 0, unanswered: 0, memberBallasts: 0, ghostBallasts: 0 };

  constructor(private readonly options: PeerWatchOptions) {}

  start(): void {
    const { nc, subjects, replicaId } = this.options;
    // Probes carry a reply subject and get an answer; ballast does not and is dropped unread.
    this.subscription = nc.subscribe(subjects.replicaControl(replicaId), {
      callback: (error, msg) => {
        if (!error && msg.reply) msg.respond();
      },
    });
    void this.watchOwnConnection();
    this.timer = setInterval(() => this.probeAll(), Math.max(100, Math.floor(this.options.timeoutMs / 2)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.subscription?.unsubscribe();
    this.subscription = null;
  }

  /**
   * The live members changed: watch them, and keep watching the ones that left for a while. A
   * silent peer that just left without a goodbye is a ghost: ballast it now rather than at its
   * next unanswered probe. A list without this replica (it stepped out itself) says nothing
   * about the others and changes nothing.
   */
  setMembers(members: readonly string[]): void {
    if (!members.includes(this.options.replicaId)) return;
    this.memberCount = members.length;
    const now = Date.now();
    for (const [id, peer] of this.peers) {
      if (members.includes(id) || peer.watchUntil !== Number.POSITIVE_INFINITY) continue;
      peer.watchUntil = now + WATCH_LEFT_PEERS_MS;
      if (peer.silent) this.sendBallast(id, peer);
    }
    for (const id of members) {
      if (id === this.options.replicaId) continue;
      const peer = this.peers.get(id);
      if (peer !== undefined) peer.watchUntil = Number.POSITIVE_INFINITY;
      else if (this.peers.size < MAX_PEERS) {
        this.peers.set(id, { watchUntil: Number.POSITIVE_INFINITY, probing: false, silent: false, ghostBallasts: 0,
          ballast: { member: { sending: false, lastAt: 0 }, ghost: { sending: false, lastAt: 0 } },
        });
      }
    }
  }

  /** A peer said goodbye on NATS (a graceful leave): its router has already left the queue group. */
  forget(id: string): void {
    this.peers.delete(id);
  }

  private async watchOwnConnection(): Promise<void> {
    try {
      for await (const status of this.options.watchNc.status()) {
        if (status.type === 'disconnect' || status.type === 'reconnect' || status.type === 'reconnecting') this.linkChangedAt = Date.now();
      }
    } catch {
      // the connection closed: nothing more to watch
    }
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
    const { watchNc: nc, subjects, timeoutMs } = this.options;
    if (nc.isClosed() || !this.options.natsLinkUp()) return;
    peer.probing = true;
    this.stats.probes += 1;
    const sentAt = Date.now();
    try {
      await nc.request(subjects.replicaControl(id), undefined, { timeout: timeoutMs });
      peer.silent = false;
      peer.ghostBallasts = 0;
    } catch (error) {
      // Only a timeout while our own link stayed up says something about the peer, and only one
      // that fired on time: a timeout that fired late means this process was stalled (paused,
      // starved), and the answer may be sitting unread in its socket. No responders: the peer is
      // not on the bus, so it has no ghost to remove. Other errors (our own connection is down)
      // say nothing about the peer.
      const onTime = Date.now() - sentAt <= 2 * timeoutMs;
      if (error instanceof errors.TimeoutError && onTime && this.options.natsLinkUp() && this.linkChangedAt < sentAt) {
        this.stats.unanswered += 1;
        peer.silent = true;
        this.sendBallast(id, peer);
        const now = Date.now();
        if (peer.watchUntil === Number.POSITIVE_INFINITY && this.options.refreshMembers !== undefined && now - this.refreshedAt >= timeoutMs) {
          this.refreshedAt = now;
          this.options.refreshMembers();
        }
      }
    } finally {
      peer.probing = false;
    }
  }

  private sendBallast(id: string, peer: Peer): void {
    const kind: BallastKind = peer.watchUntil === Number.POSITIVE_INFINITY ? 'member' : 'ghost';
    const now = Date.now();
    const every = kind === 'ghost' && peer.ghostBallasts < GHOST_BALLASTS_PER_EPISODE ? GHOST_BALLAST_REPEAT_MS : BALLAST_EVERY_MS;
    const pace = peer.ballast[kind];
    if (pace.sending || now - pace.lastAt < every) return;
    // The ballast is shared among the members watching the peer: all of them (this one included),
    // but the peer itself when it is a member.
    const watchers = Math.max(1, kind === 'ghost' ? this.memberCount : this.memberCount - 1);
    const bytes = Math.ceil((kind === 'ghost' ? GHOST_BALLAST_BYTES : MEMBER_BALLAST_BYTES) / watchers);
    pace.lastAt = now;
    if (kind === 'ghost') {
      peer.ghostBallasts += 1;
      this.stats.ghostBallasts += 1;
    } else {
      this.stats.memberBallasts += 1;
    }
    this.options.log.warn(
      { peer: id, bytes, kind },
      kind === 'ghost'
        ? 'a peer replica left the members without a goodbye and does not answer on NATS; sending it ballast so the NATS server drops its connection'
        : 'a peer replica did not answer on NATS; sending it a small ballast in case it is cut off',
    );
    pace.sending = true;
    void this.publishBallast(this.options.subjects.replicaControl(id), bytes, peer).finally(() => {
      pace.sending = false;
    });
  }

  /** Publish `bytes` of ballast in slices, each read by the server before the next is sent. */
  private async publishBallast(subject: string, bytes: number, peer: Peer): Promise<void> {
    const nc = this.options.watchNc;
    const chunks = Math.ceil(bytes / BALLAST_CHUNK_BYTES);
    for (let sent = 0; sent < chunks; sent += 1) {
      // The peer answered meanwhile: it is not cut off, the rest would only slow it down.
      if (nc.isClosed() || !peer.silent) return;
      nc.publish(subject, this.ballast);
      if ((sent + 1) % BALLAST_CHUNKS_PER_SLICE !== 0) continue;
      try {
        await withTimeout(nc.flush(), BALLAST_FLUSH_TIMEOUT_MS, 'flush timed out');
      } catch {
        return; // the ballast connection is in trouble: the link monitor watches the main one
      }
    }
  }
}
