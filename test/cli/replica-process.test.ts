/**
 * `drover replica` as a real OS process: it takes every shard, serves the contract, and on SIGTERM
 * finishes in-flight work, releases its leases and exits 0. The CLI client commands work too.
 */
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Replica } from '../../src/replica/replica.js';
import { connectClient, connectRedis, eventually, natsUrl, redisUrl, startReplica, testPrefix } from '../support/cluster.js';

const run = promisify(execFile);
const bin = new URL('../../bin/drover.js', import.meta.url).pathname;
let redis: Redis;

beforeAll(() => {
  redis = connectRedis();
});
afterAll(() => redis.quit());

describe('drover replica (process)', () => {
  it('serves, then hands everything back on SIGTERM and exits 0', async () => {
    const prefix = testPrefix('p');
    const env = { ...process.env, REDIS_URL: redisUrl(), NATS_URL: natsUrl(), DROVER_PREFIX: prefix, DROVER_SHARDS: '8', DROVER_REPLICA_ID: 'proc-1', DROVER_LOG_LEVEL: 'info' };
    const child = spawn(process.execPath, [bin, 'replica'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let logs = '';
    child.stderr.on('data', (chunk: Buffer) => (logs += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await eventually(() => logs.includes('replica started'), 15_000, 'the replica to start');
      const leases = await redis.keys(`{${prefix}:s*}:lease`);
      expect(leases.length).toBe(8);

      // The CLI client talks to it over NATS.
      const cli = (...args: string[]) => run(process.execPath, [bin, ...args], { env });
      const registered = await cli('workers', 'register', '--id', 'w1', '--cpu', '2000', '--memory', '4096');
      expect(JSON.parse(registered.stdout)).toMatchObject({ ok: true, worker: { id: 'w1', status: 'available' } });
      const submitted = await cli('submit', '--id', 'c1', '--cpu', '500', '--memory', '512');
      expect(JSON.parse(submitted.stdout)).toEqual({ ok: true, status: 'placed', id: 'c1', workerId: 'w1' });
      const status = await cli('status');
      expect(status.stdout).toMatch(/proc-1\s+8\s+1\s+1\s/);
      const listed = await cli('workers');
      expect(listed.stdout).toMatch(/w1\s+\d+\s+available\s+1500\/2000/);
      const refused = await cli('submit', '--id', 'c.2', '--cpu', '1', '--memory', '1').catch((error: { code: number; stdout: string }) => error);
      expect((refused as { code: number }).code).toBe(1);
      expect(JSON.parse((refused as { stdout: string }).stdout)).toMatchObject({ ok: false, error: { code: 'INVALID_REQUEST' } });

      // Work in flight when SIGTERM arrives is finished, not dropped: these requests reached the
      // NATS server (flush) before the signal, so the replica received them and must answer all.
      const client = await connectClient(prefix);
      const inFlight = Array.from({ length: 50 }, (_, i) => client.submit({ id: `late-${i}`, cpu: 10, memory: 10 }));
      await client.nc.flush();
      child.kill('SIGTERM');
      const replies = await Promise.all(inFlight);
      expect(replies.filter((r) => r.ok).length).toBe(50);
      await client.close();
      expect(await exited).toBe(0);
      expect(logs).toContain('stopped');
      // Every lease was released, so a successor need not wait for expiry.
      expect(await redis.keys(`{${prefix}:s*}:lease`)).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('exits 1 when another process took its replica id while it was away', async () => {
    const prefix = testPrefix('pd');
    const env = { ...process.env, REDIS_URL: redisUrl(), NATS_URL: natsUrl(), DROVER_PREFIX: prefix, DROVER_SHARDS: '4', DROVER_REPLICA_ID: 'twin', DROVER_LEASE_TTL_MS: '2000', DROVER_LOG_LEVEL: 'info' };
    const child = spawn(process.execPath, [bin, 'replica'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let logs = '';
    child.stderr.on('data', (chunk: Buffer) => (logs += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let other: Replica | null = null;
    try {
      await eventually(() => logs.includes('replica started'), 15_000, 'the replica to start');
      // As if the process had been away past its membership TTL: its entry is gone, and a second
      // process starts with the same id and joins.
      const members = `${prefix}:members`;
      await redis.del(members);
      other = await startReplica({ prefix, shards: 4, leaseTtlMs: 2_000, replicaId: 'twin' });
      // The first process's next heartbeat finds the id taken: it hands over and exits 1.
      expect(await exited).toBe(1);
      expect(logs).toMatch(/another replica with DROVER_REPLICA_ID=twin is running/);
      expect(other.membership.members).toEqual(['twin']);
      await eventually(() => other!.servedShards().length === 4, 10_000, 'the second process to own every shard');
    } finally {
      child.kill('SIGKILL');
      await other?.stop();
    }
  });
});
