/**
 * The fault proxy against real servers: a private Redis and a private NATS (so CLIENT LIST shows
 * only this file's clients). Pass mode forwards both protocols; a blackhole is silent (no reply, no
 * close seen by either side) and heal delivers what was held; latency adds its delay each way.
 */
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node';
import { Redis } from 'ioredis';
import { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startNats, startRedis, type ServerProcess } from '../../infra/servers.js';
import { startFaultProxy, type FaultProxy } from '../../src/chaos/fault-proxy.js';
import { delay, eventually } from '../support/cluster.js';

let redisServer: ServerProcess;
let natsServer: ServerProcess;
/** A direct connection, to look at the server side while the proxy is cut. */
let direct: Redis;
/** Everything a test opened, closed after it whatever happened. */
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  [redisServer, natsServer] = await Promise.all([startRedis(), startNats()]);
  direct = new Redis(redisServer.url);
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

afterAll(async () => {
  direct.disconnect();
  await Promise.all([redisServer?.stop(), natsServer?.stop()]);
});

async function proxyTo(server: ServerProcess): Promise<FaultProxy> {
  const proxy = await startFaultProxy({ targetPort: server.port });
  cleanups.push(() => proxy.close());
  return proxy;
}

function redisThrough(proxy: FaultProxy, name: string): Redis {
  // commandTimeout: a blackholed command fails on its own instead of waiting forever.
  // No reconnect and no retries: the test must see the one connection it made.
  const redis = new Redis(proxy.url('redis'), { connectionName: name, commandTimeout: 1_000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => undefined);
  cleanups.push(async () => redis.disconnect());
  return redis;
}

async function natsThrough(url: string): Promise<NatsConnection> {
  const connection = await connectNats({ servers: url, reconnect: false });
  cleanups.push(() => connection.close());
  return connection;
}

/** Names of the clients the Redis server has open right now. */
async function redisClientNames(): Promise<string[]> {
  const list = await direct.client('LIST');
  return String(list)
    .split('\n')
    .map((line) => /\bname=(\S*)/.exec(line)?.[1] ?? '')
    .filter((name) => name !== '');
}

/** A raw socket through the proxy, collecting what it receives. */
function rawSocket(port: number): { socket: Socket; received: () => string; closed: () => boolean } {
  const socket = new Socket();
  let received = '';
  let isClosed = false;
  socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
  socket.on('error', () => undefined);
  socket.on('close', () => (isClosed = true));
  socket.connect(port, '127.0.0.1');
  cleanups.push(async () => socket.destroy());
  return { socket, received: () => received, closed: () => isClosed };
}

describe('fault proxy', () => {
  it('forwards Redis and NATS in pass mode', async () => {
    const redisProxy = await proxyTo(redisServer);
    const redis = redisThrough(redisProxy, 'pass');
    expect(await redis.ping()).toBe('PONG');
    expect(await redis.set('fault-proxy:pass', 'value')).toBe('OK');
    expect(await redis.get('fault-proxy:pass')).toBe('value');
    expect(redisProxy.mode).toBe('pass');

    const natsProxy = await proxyTo(natsServer);
    expect(natsProxy.url('nats')).toBe(`nats://127.0.0.1:${natsProxy.port}`);
    const responder = await natsThrough(natsProxy.url('nats'));
    const requester = await natsThrough(natsServer.url);
    responder.subscribe('fault-proxy.echo', {
      callback: (_error, message) => {
        message.respond(`echo ${message.string()}`);
      },
    });
    await responder.flush();
    expect((await requester.request('fault-proxy.echo', 'hello', { timeout: 2_000 })).string()).toBe('echo hello');

    const stats = natsProxy.stats;
    expect(stats.connectionsAccepted).toBe(1);
    expect(stats.bytesToServer).toBeGreaterThan(0);
    expect(stats.bytesToClient).toBeGreaterThan(0);
  });

  it('passes real closes through in pass mode', async () => {
    const proxy = await proxyTo(redisServer);
    // Server closes: QUIT makes Redis reply and close; the client must see the close.
    const quitting = rawSocket(proxy.port);
    quitting.socket.write('QUIT\r\n');
    await eventually(() => quitting.closed(), 3_000, 'client to see the server close');
    expect(quitting.received()).toContain('+OK');
    // Client closes: the server must drop its side.
    const leaving = rawSocket(proxy.port);
    leaving.socket.write('CLIENT SETNAME leaving\r\n');
    await eventually(() => leaving.received().includes('+OK'), 3_000, 'SETNAME reply');
    expect(await redisClientNames()).toContain('leaving');
    leaving.socket.destroy();
    await eventually(async () => !(await redisClientNames()).includes('leaving'), 3_000, 'server to drop the closed client');
    await eventually(() => proxy.stats.connectionsOpen === 0, 3_000, 'proxy to forget both connections');
  });

  it('blackholes silently and delivers what it held on heal', async () => {
    const proxy = await proxyTo(redisServer);
    const redis = redisThrough(proxy, 'cut');
    expect(await redis.ping()).toBe('PONG');
    let clientSawClose = false;
    redis.on('close', () => (clientSawClose = true));

    proxy.blackhole();
    expect(proxy.mode).toBe('blackhole');
    const started = Date.now();
    // The SET is read by the proxy (or sits in its kernel buffer) and held: no reply comes back.
    await expect(redis.set('fault-proxy:held', 'written-after-heal')).rejects.toThrow(/timed out/i);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    // Silent: the server still has the client, the client still has its connection, nothing written.
    expect(await redisClientNames()).toContain('cut');
    expect(clientSawClose).toBe(false);
    expect(await direct.get('fault-proxy:held')).toBeNull();
    // A connection made during the blackhole is accepted but gets nothing.
    const late = rawSocket(proxy.port);
    late.socket.write('PING\r\n');
    await delay(300);
    expect(late.received()).toBe('');
    expect(late.closed()).toBe(false);

    proxy.heal();
    expect(proxy.mode).toBe('pass');
    // The held SET reaches the server (as a retransmission would), and the connection works again.
    await eventually(async () => (await direct.get('fault-proxy:held')) === 'written-after-heal', 3_000, 'held SET to arrive');
    expect(await redis.ping()).toBe('PONG');
    await eventually(() => late.received().includes('+PONG'), 3_000, 'held PING on the late connection');
    expect(clientSawClose).toBe(false);
  });

  it('adds latency each way', async () => {
    const proxy = await proxyTo(redisServer);
    const redis = redisThrough(proxy, 'slow');
    expect(await redis.ping()).toBe('PONG');
    const timePing = async (): Promise<number> => {
      const started = performance.now();
      expect(await redis.ping()).toBe('PONG');
      return performance.now() - started;
    };
    proxy.setLatency(200);
    const slow = await timePing();
    expect(slow).toBeGreaterThanOrEqual(390);
    expect(slow).toBeLessThan(1_500);
    // Pipelined commands keep their order through the delay queues.
    const replies = await redis.pipeline().set('fault-proxy:order', '1').incr('fault-proxy:order').incr('fault-proxy:order').exec();
    expect(replies?.map(([, reply]) => reply)).toEqual(['OK', 2, 3]);
    proxy.setLatency(0);
    expect(await timePing()).toBeLessThan(300);
    expect(() => proxy.setLatency(-1)).toThrow();
  });
});
