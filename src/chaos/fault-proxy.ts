/**
 * A TCP fault proxy on loopback, between a client process and a server (Redis or NATS), to emulate
 * network faults in tests and in the chaos suite:
 *
 * - pass: bytes are forwarded both ways, and real closes are passed through (a FIN as a FIN, after
 *   the bytes sent before it; an error or abrupt close as a close of the other side).
 * - blackhole: a silent network partition, not a closed socket. Nothing is forwarded and no FIN or
 *   RST reaches either side. Both sockets of every connection are paused (no longer read), so their
 *   kernel buffers fill and TCP flow control stalls each sender, as with a link that stopped
 *   acknowledging; anything already read is held, in order. On heal the held bytes are delivered
 *   first (as TCP retransmits after a partition heals) and forwarding continues.
 * - latency: every chunk (and every close) is delayed by the same time in each direction, in order.
 *
 * Bytes already handed to a socket's write buffer before a blackhole are already "on the wire" and
 * still reach the kernel; everything read after it is held.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

export type FaultMode = 'pass' | 'blackhole';

export interface FaultProxyOptions {
  /** The server to forward to; loopback by default. */
  readonly targetHost?: string;
  readonly targetPort: number;
  /** The port to listen on (127.0.0.1); a free port chosen by the OS by default. */
  readonly listenPort?: number;
}

export interface FaultProxyStats {
  readonly connectionsAccepted: number;
  /** Connections with at least one socket still open. */
  readonly connectionsOpen: number;
  /** Bytes written to the server side (client to server). */
  readonly bytesToServer: number;
  /** Bytes written to the client side (server to client). */
  readonly bytesToClient: number;
  /** Socket errors seen (connection refused, reset, ...); each one closed its connection. */
  readonly socketErrors: number;
}

export interface FaultProxy {
  readonly port: number;
  readonly mode: FaultMode;
  readonly stats: FaultProxyStats;
  /** The proxy's address as a client URL, for example `nats://127.0.0.1:4567`. */
  url(scheme: 'redis' | 'nats'): string;
  /** Start a silent partition: pause every connection, hold what was read, forward nothing. */
  blackhole(): void;
  /** End the partition: deliver what was held, in order, and forward again. */
  heal(): void;
  /** Delay every chunk by this many milliseconds in each direction; 0 for none. */
  setLatency(msEachWay: number): void;
  /** Destroy every connection and close the listener. */
  close(): Promise<void>;
}

/**
 * Bytes held or delayed per direction of a connection before its sender is paused. A blackhole or
 * a long latency must not buffer without bound; above this the reading side stops and TCP flow
 * control pushes back on the sender. 16 MiB is far above what a test sends in a latency window.
 */
const MAX_QUEUED_BYTES_PER_DIRECTION = 16 * 1024 * 1024;

/** A latency above a minute is a mistake in a test, not a network to emulate. */
const MAX_LATENCY_MS = 60_000;

/** Consumed queue entries are dropped from the array once this many have piled up at its head. */
const QUEUE_COMPACT_THRESHOLD = 1_024;

type QueueEntry =
  | { readonly kind: 'data'; readonly chunk: Buffer; readonly dueAt: number }
  /** The source sent a FIN: end the destination once everything before it is delivered. */
  | { readonly kind: 'end'; readonly dueAt: number }
  /** The source failed or closed abruptly: destroy the destination. */
  | { readonly kind: 'reset'; readonly dueAt: number };

interface Direction {
  /** Entries from `head` on are pending; entries before it were delivered. */
  readonly queue: QueueEntry[];
  head: number;
  queuedBytes: number;
  /** The one timer of this direction, armed for the pending head's due time. */
  timer: NodeJS.Timeout | null;
  /** The destination's write buffer is full; its 'drain' resumes delivery. */
  waitingForDrain: boolean;
  /** An 'end' or 'reset' was queued: the source sends nothing more. */
  sourceDone: boolean;
  /** The destination is ended or destroyed: nothing more can be delivered. */
  destinationDone: boolean;
}

interface Connection {
  readonly client: Socket;
  /** Null while the connection was accepted during a blackhole and is held before connecting on. */
  upstream: Socket | null;
  upstreamConnected: boolean;
  readonly toServer: Direction;
  readonly toClient: Direction;
}

function newDirection(): Direction {
  return { queue: [], head: 0, queuedBytes: 0, timer: null, waitingForDrain: false, sourceDone: false, destinationDone: false };
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const targetHost = options.targetHost ?? '127.0.0.1';
  const { targetPort } = options;
  if (!Number.isInteger(targetPort) || targetPort <= 0 || targetPort > 65_535) throw new Error(`invalid target port ${targetPort}`);

  let mode: FaultMode = 'pass';
  let latencyMs = 0;
  let closed = false;
  const connections = new Set<Connection>();
  const counters = { connectionsAccepted: 0, bytesToServer: 0, bytesToClient: 0, socketErrors: 0 };

  const sourceOf = (connection: Connection, direction: Direction): Socket | null =>
    direction === connection.toServer ? connection.client : connection.upstream;
  const destinationOf = (connection: Connection, direction: Direction): Socket | null =>
    direction === connection.toServer ? connection.upstream : connection.client;

  /**
   * Read from a direction's source only while forwarding and under the queue bound. A paused
   * socket stops reading once its small stream buffer is full, so the kernel buffers fill behind it.
   */
  const updateReading = (connection: Connection, direction: Direction): void => {
    const source = sourceOf(connection, direction);
    if (source === null || source.destroyed) return;
    const shouldRead = mode === 'pass' && !direction.sourceDone && direction.queuedBytes < MAX_QUEUED_BYTES_PER_DIRECTION;
    if (shouldRead && source.isPaused()) source.resume();
    else if (!shouldRead && !source.isPaused()) source.pause();
  };

  const clearTimer = (direction: Direction): void => {
    if (direction.timer !== null) clearTimeout(direction.timer);
    direction.timer = null;
  };

  /** Nothing more can reach this direction's destination: drop what is pending. */
  const discard = (direction: Direction): void => {
    clearTimer(direction);
    direction.queue.length = 0;
    direction.head = 0;
    direction.queuedBytes = 0;
    direction.destinationDone = true;
  };

  /** Deliver every entry that is due, in order; arm the direction's timer for the next one. */
  const pump = (connection: Connection, direction: Direction): void => {
    // A blackhole holds everything; heal() pumps again.
    if (mode !== 'pass' || direction.destinationDone) return;
    const destination = destinationOf(connection, direction);
    // The upstream socket is still connecting (or not yet created): its 'connect' pumps again.
    if (destination === null || (direction === connection.toServer && !connection.upstreamConnected)) return;
    const now = Date.now();
    while (direction.head < direction.queue.length) {
      const entry = direction.queue[direction.head]!;
      if (entry.dueAt > now) {
        if (direction.timer === null) {
          direction.timer = setTimeout(() => {
            direction.timer = null;
            pump(connection, direction);
          }, entry.dueAt - now);
        }
        break;
      }
      // The destination's own write buffer is full (a slow reader): keep the rest in this queue,
      // where it counts against the bound and pauses the source, rather than in a write buffer
      // that would grow without limit. 'drain' pumps again.
      if (entry.kind === 'data' && destination.writableNeedDrain) {
        if (!direction.waitingForDrain) {
          direction.waitingForDrain = true;
          destination.once('drain', () => {
            direction.waitingForDrain = false;
            pump(connection, direction);
          });
        }
        break;
      }
      direction.head += 1;
      if (entry.kind === 'data') {
        direction.queuedBytes -= entry.chunk.length;
        if (destination.destroyed || destination.writableEnded) continue;
        destination.write(entry.chunk);
        if (direction === connection.toServer) counters.bytesToServer += entry.chunk.length;
        else counters.bytesToClient += entry.chunk.length;
      } else if (entry.kind === 'end') {
        direction.destinationDone = true;
        destination.end();
      } else {
        direction.destinationDone = true;
        destination.destroy();
      }
    }
    if (direction.head >= QUEUE_COMPACT_THRESHOLD && direction.head * 2 >= direction.queue.length) {
      direction.queue.splice(0, direction.head);
      direction.head = 0;
    }
    updateReading(connection, direction);
  };

  const enqueue = (connection: Connection, direction: Direction, entry: QueueEntry): void => {
    if (direction.destinationDone) return;
    if (entry.kind === 'data') direction.queuedBytes += entry.chunk.length;
    else direction.sourceDone = true;
    direction.queue.push(entry);
    pump(connection, direction);
    updateReading(connection, direction);
  };

  const removeIfFinished = (connection: Connection): void => {
    if (!connection.client.destroyed) return;
    if (connection.upstream !== null && !connection.upstream.destroyed) return;
    clearTimer(connection.toServer);
    clearTimer(connection.toClient);
    connections.delete(connection);
  };

  /**
   * Wire one socket of a connection: what it sends goes into `outgoing`, what is sent to it comes
   * from `incoming`. Every socket has an 'error' handler, so no error is ever unhandled.
   */
  const attach = (connection: Connection, socket: Socket, outgoing: Direction, incoming: Direction): void => {
    socket.setNoDelay(true); // request/reply protocols: Nagle would add its own delay to ours
    socket.on('data', (chunk: Buffer) => enqueue(connection, outgoing, { kind: 'data', chunk, dueAt: Date.now() + latencyMs }));
    socket.on('end', () => enqueue(connection, outgoing, { kind: 'end', dueAt: Date.now() + latencyMs }));
    socket.on('error', () => {
      counters.socketErrors += 1; // the 'close' that follows closes the other side
    });
    socket.on('close', () => {
      if (closed) return; // close() tore everything down; nothing is left to pass on
      // Nothing more can be written to this socket, whatever was pending for it.
      discard(incoming);
      // Closed without a FIN first (an error, or torn down): close the other side too. During a
      // blackhole this close is held like data and reaches the other side only after heal.
      if (!outgoing.sourceDone) enqueue(connection, outgoing, { kind: 'reset', dueAt: Date.now() + latencyMs });
      removeIfFinished(connection);
    });
  };

  const connectUpstream = (connection: Connection): void => {
    const upstream = connect({ host: targetHost, port: targetPort, allowHalfOpen: true });
    connection.upstream = upstream;
    attach(connection, upstream, connection.toClient, connection.toServer);
    updateReading(connection, connection.toClient);
    upstream.once('connect', () => {
      connection.upstreamConnected = true;
      pump(connection, connection.toServer);
    });
  };

  // pauseOnConnect: a new socket reads nothing until this proxy decides to forward for it.
  // allowHalfOpen: a FIN from one side is passed on as a FIN, not turned into a full close.
  const server: Server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    counters.connectionsAccepted += 1;
    if (closed) {
      client.on('error', () => undefined);
      client.destroy();
      return;
    }
    const connection: Connection = {
      client,
      upstream: null,
      upstreamConnected: false,
      toServer: newDirection(),
      toClient: newDirection(),
    };
    connections.add(connection);
    attach(connection, client, connection.toServer, connection.toClient);
    // During a blackhole a new connection is accepted (the kernel completes the handshake anyway;
    // refusing would send an RST, which a partition never does) but not connected onward until
    // heal: in a real partition the server would not see it at all, so it must not get a socket
    // that its own timers (NATS pings, auth timeout) run against. The client waits silently.
    if (mode === 'pass') connectUpstream(connection);
    updateReading(connection, connection.toServer);
  });
  // Accept errors (EMFILE and the like) reach the listener; the listener keeps running.
  server.on('error', () => {
    counters.socketErrors += 1;
  });

  await new Promise<void>((resolve, reject) => {
    const onListenError = (error: Error): void => reject(error);
    server.once('error', onListenError);
    server.listen(options.listenPort ?? 0, '127.0.0.1', () => {
      server.off('error', onListenError);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('fault proxy has no TCP address');
  const port = address.port;

  const proxy: FaultProxy = {
    port,
    get mode() {
      return mode;
    },
    get stats() {
      return { ...counters, connectionsOpen: connections.size };
    },
    url(scheme) {
      return `${scheme}://127.0.0.1:${port}`;
    },
    blackhole() {
      mode = 'blackhole';
      for (const connection of connections) {
        // Timers are stopped: entries already due are held too, like packets queued on a dead link.
        clearTimer(connection.toServer);
        clearTimer(connection.toClient);
        updateReading(connection, connection.toServer);
        updateReading(connection, connection.toClient);
      }
    },
    heal() {
      if (closed) return;
      mode = 'pass';
      for (const connection of connections) {
        if (connection.upstream === null) {
          if (connection.client.destroyed) continue; // gave up during the partition; never reached the server
          connectUpstream(connection);
        }
        pump(connection, connection.toServer);
        pump(connection, connection.toClient);
        updateReading(connection, connection.toServer);
        updateReading(connection, connection.toClient);
      }
    },
    setLatency(msEachWay) {
      if (!Number.isFinite(msEachWay) || msEachWay < 0 || msEachWay > MAX_LATENCY_MS) {
        throw new Error(`latency must be between 0 and ${MAX_LATENCY_MS} ms, got ${msEachWay}`);
      }
      // Applies to chunks read from now on; queued chunks keep their due time, and since each
      // direction is one FIFO queue, a shorter latency never lets a chunk overtake an older one.
      latencyMs = msEachWay;
    },
    async close() {
      if (closed) return;
      closed = true;
      const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const connection of connections) {
        clearTimer(connection.toServer);
        clearTimer(connection.toClient);
        connection.client.destroy();
        connection.upstream?.destroy();
      }
      connections.clear();
      await listenerClosed;
    },
  };
  return proxy;
}
