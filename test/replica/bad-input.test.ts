/**
 * Bad input, as a table: every case gets INVALID_REQUEST (or NOT_FOUND, CONFLICT,
 * DEADLINE_EXCEEDED) with a message naming what is wrong, Redis does not change at all, and the
 * replica keeps serving.
 */
import { headers } from '@nats-io/transport-node';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DroverClient } from '../../src/client/drover-client.js';
import { DEADLINE_HEADER, REQUEST_KEY_HEADER } from '../../src/protocol/subjects.js';
import type { Replica } from '../../src/replica/replica.js';
import { shardOf } from '../../src/shard/shard-map.js';
import { connectClient, connectRedis, delay, snapshotKeys, startReplica } from '../support/cluster.js';

let replica: Replica;
let client: DroverClient;
let redis: Redis;

beforeAll(async () => {
  replica = await startReplica();
  client = await connectClient(replica.config.prefix);
  redis = connectRedis();
  expect((await client.registerWorker({ id: 'w1', cpu: 4_000, memory: 8_192 })).ok).toBe(true);
  expect((await client.submit({ id: 'placed-1', cpu: 100, memory: 100 })).ok).toBe(true);
});

afterAll(async () => {
  await client.close();
  await replica.stop();
  await redis.quit();
});

const container = { id: 'c1', cpu: 100, memory: 128 };
/** A worker id whose shard is not w1's (the test config has 8 shards). */
const ELSEWHERE = Array.from({ length: 100 }, (_, i) => `other-${i}`).find((id) => shardOf(id, 8) !== shardOf('w1', 8))!;
/** A container id whose home (backlog) shard is w1's shard. */
const HOME = Array.from({ length: 100 }, (_, i) => `home-${i}`).find((id) => shardOf(id, 8) === shardOf('w1', 8))!;
const worker = { id: 'w9', cpu: 1_000, memory: 1_024 };
const big = JSON.stringify({ ...container, pad: 'x'.repeat(70 * 1024) });

/**
 * `requestKey`: sent in the Drover-Request-Key header. `deadline`: sent as the Drover-Deadline
 * header instead of the client's own (10 s from now).
 */
type Case = [name: string, subject: string, payload: string, code: string, message: RegExp, requestKey?: string, deadline?: string];

/** A deadline that has passed by any clock: a minute ago. */
const PAST = () => String(Date.now() - 60_000);

const cases: Case[] = [
  ['malformed JSON', 'submit', '{"id": "c1", ', 'INVALID_REQUEST', /not valid JSON/],
  ['NaN literal (JSON has no NaN)', 'submit', '{"id":"c1","cpu":NaN,"memory":1}', 'INVALID_REQUEST', /not valid JSON/],
  ['NaN as a string', 'submit', JSON.stringify({ ...container, cpu: 'NaN' }), 'INVALID_REQUEST', /"cpu" must be a number/],
  ['empty payload', 'submit', '', 'INVALID_REQUEST', /empty/],
  ['array instead of object', 'submit', '[1,2]', 'INVALID_REQUEST', /JSON object/],
  ['string instead of object', 'submit', '"c1"', 'INVALID_REQUEST', /JSON object/],
  ['payload over 64 KiB', 'submit', big, 'INVALID_REQUEST', /limit is 65536/],
  ['missing id', 'submit', JSON.stringify({ cpu: 1, memory: 1 }), 'INVALID_REQUEST', /"id" is required/],
  ['id with a dot', 'submit', JSON.stringify({ ...container, id: 'a.b' }), 'INVALID_REQUEST', /"id" must match/],
  ['id with *', 'submit', JSON.stringify({ ...container, id: 'a*' }), 'INVALID_REQUEST', /"id" must match/],
  ['id with >', 'submit', JSON.stringify({ ...container, id: '>' }), 'INVALID_REQUEST', /"id" must match/],
  ['id with a space', 'submit', JSON.stringify({ ...container, id: 'a b' }), 'INVALID_REQUEST', /"id" must match/],
  ['id with braces', 'submit', JSON.stringify({ ...container, id: '{x}' }), 'INVALID_REQUEST', /"id" must match/],
  ['id of 129 characters', 'submit', JSON.stringify({ ...container, id: 'a'.repeat(129) }), 'INVALID_REQUEST', /"id" must match/],
  ['id as a number', 'submit', JSON.stringify({ ...container, id: 7 }), 'INVALID_REQUEST', /"id" must be a string/],
  ['missing cpu', 'submit', JSON.stringify({ id: 'c1', memory: 1 }), 'INVALID_REQUEST', /"cpu" is required/],
  ['zero cpu', 'submit', JSON.stringify({ ...container, cpu: 0 }), 'INVALID_REQUEST', /"cpu" must be between 1/],
  ['negative cpu', 'submit', JSON.stringify({ ...container, cpu: -5 }), 'INVALID_REQUEST', /"cpu" must be between 1/],
  ['fractional cpu', 'submit', JSON.stringify({ ...container, cpu: 0.5 }), 'INVALID_REQUEST', /"cpu" must be a whole number/],
  ['cpu as a string', 'submit', JSON.stringify({ ...container, cpu: '100' }), 'INVALID_REQUEST', /"cpu" must be a number/],
  ['absurd cpu', 'submit', JSON.stringify({ ...container, cpu: 1e15 }), 'INVALID_REQUEST', /"cpu" must be between/],
  ['zero memory', 'submit', JSON.stringify({ ...container, memory: 0 }), 'INVALID_REQUEST', /"memory" must be between 1/],
  ['absurd memory', 'submit', JSON.stringify({ ...container, memory: 2 ** 40 }), 'INVALID_REQUEST', /"memory" must be between/],
  ['negative memory', 'submit', JSON.stringify({ ...container, memory: -128 }), 'INVALID_REQUEST', /"memory" must be between 1/],
  ['fractional memory', 'submit', JSON.stringify({ ...container, memory: 127.5 }), 'INVALID_REQUEST', /"memory" must be a whole number/],
  ['memory as a string', 'submit', JSON.stringify({ ...container, memory: '128Mi' }), 'INVALID_REQUEST', /"memory" must be a number/],
  ['null memory', 'submit', JSON.stringify({ ...container, memory: null }), 'INVALID_REQUEST', /"memory" is required/],
  ['negative gpuCount', 'submit', JSON.stringify({ ...container, gpuCount: -1 }), 'INVALID_REQUEST', /"gpuCount" must be between 0/],
  ['fractional gpuCount', 'submit', JSON.stringify({ ...container, gpuCount: 1.5 }), 'INVALID_REQUEST', /"gpuCount" must be a whole number/],
  ['absurd gpuCount', 'submit', JSON.stringify({ ...container, gpuCount: 1_000 }), 'INVALID_REQUEST', /"gpuCount" must be between/],
  ['gpu type with zero gpuCount', 'submit', JSON.stringify({ ...container, gpu: 'a100', gpuCount: 0 }), 'INVALID_REQUEST', /"gpuCount" must be between 1/],
  ['gpu type with a dot', 'submit', JSON.stringify({ ...container, gpu: 'a.100' }), 'INVALID_REQUEST', /"gpu" must match/],
  ['pool as a number', 'submit', JSON.stringify({ ...container, pool: 3 }), 'INVALID_REQUEST', /"pool" must be a string/],
  ['priority as a string', 'submit', JSON.stringify({ ...container, priority: 'high' }), 'INVALID_REQUEST', /"priority" must be a number/],
  ['fractional priority', 'submit', JSON.stringify({ ...container, priority: 1.5 }), 'INVALID_REQUEST', /"priority" must be a whole number/],
  ['absurd priority', 'submit', JSON.stringify({ ...container, priority: 1e9 }), 'INVALID_REQUEST', /"priority" must be between -1000000 and 1000000/],
  ['zero maxWaitMs', 'submit', JSON.stringify({ ...container, maxWaitMs: 0 }), 'INVALID_REQUEST', /"maxWaitMs" must be between 1 and 86400000/],
  ['maxWaitMs over a day', 'submit', JSON.stringify({ ...container, maxWaitMs: 86_400_001 }), 'INVALID_REQUEST', /"maxWaitMs" must be between 1 and 86400000/],
  ['queue as a string', 'submit', JSON.stringify({ ...container, queue: 'no' }), 'INVALID_REQUEST', /"queue" must be true or false/],
  ['command as a string', 'submit', JSON.stringify({ ...container, command: 'sleep 5' }), 'INVALID_REQUEST', /"command" must be an array of 1 to 64/],
  ['empty command', 'submit', JSON.stringify({ ...container, command: [] }), 'INVALID_REQUEST', /"command" must be an array of 1 to 64/],
  ['command of 65 args', 'submit', JSON.stringify({ ...container, command: Array.from({ length: 65 }, () => 'x') }), 'INVALID_REQUEST', /1 to 64/],
  ['command arg as a number', 'submit', JSON.stringify({ ...container, command: ['sleep', 5] }), 'INVALID_REQUEST', /command\[1\] must be a string/],
  ['command with an empty program', 'submit', JSON.stringify({ ...container, command: [''] }), 'INVALID_REQUEST', /program\) must not be empty/],
  ['command arg with NUL', 'submit', JSON.stringify({ ...container, command: ['a\u0000b'] }), 'INVALID_REQUEST', /NUL/],
  ['command arg over 4096', 'submit', JSON.stringify({ ...container, command: ['x'.repeat(4_097)] }), 'INVALID_REQUEST', /limit is 4096/],
  ['command and env over 16 KiB', 'submit', JSON.stringify({ ...container, command: Array.from({ length: 5 }, () => 'x'.repeat(4_000)) }), 'INVALID_REQUEST', /limit is 16384/],
  ['env as an array', 'submit', JSON.stringify({ ...container, env: ['A=1'] }), 'INVALID_REQUEST', /"env" must be an object/],
  ['env name with a dash', 'submit', JSON.stringify({ ...container, env: { 'A-B': '1' } }), 'INVALID_REQUEST', /env name "A-B" must match/],
  ['env value as a number', 'submit', JSON.stringify({ ...container, env: { A: 1 } }), 'INVALID_REQUEST', /env.A must be a string/],
  ['env of 65 entries', 'submit', JSON.stringify({ ...container, env: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`V${i}`, ''])) }), 'INVALID_REQUEST', /limit is 64/],
  ['unknown field (typo)', 'submit', JSON.stringify({ ...container, memroy: 5 }), 'INVALID_REQUEST', /unknown field "memroy"/],
  ['batch: not an array', 'submit.batch', JSON.stringify({ containers: {} }), 'INVALID_REQUEST', /must be an array/],
  ['batch: empty', 'submit.batch', JSON.stringify({ containers: [] }), 'INVALID_REQUEST', /1 to 500/],
  ['batch: one bad entry', 'submit.batch', JSON.stringify({ containers: [container, { ...container, id: 'c2', cpu: -1 }] }), 'INVALID_REQUEST', /containers\[1\]: "cpu"/],
  ['batch: duplicate ids', 'submit.batch', JSON.stringify({ containers: [container, container] }), 'INVALID_REQUEST', /appears twice/],
  ['register.batch: not an array', 'workers.register.batch', JSON.stringify({ workers: {} }), 'INVALID_REQUEST', /"workers" must be an array/],
  ['register.batch: empty', 'workers.register.batch', JSON.stringify({ workers: [] }), 'INVALID_REQUEST', /1 to 500/],
  ['register.batch: 501 workers', 'workers.register.batch', JSON.stringify({ workers: Array.from({ length: 501 }, (_, i) => ({ ...worker, id: `b${i}` })) }), 'INVALID_REQUEST', /1 to 500/],
  ['register.batch: one bad entry', 'workers.register.batch', JSON.stringify({ workers: [worker, { ...worker, id: 'w10', cpu: 0 }] }), 'INVALID_REQUEST', /workers\[1\]: "cpu" must be between 1/],
  ['register.batch: duplicate ids', 'workers.register.batch', JSON.stringify({ workers: [worker, worker] }), 'INVALID_REQUEST', /appears twice/],
  ['register.batch: unknown field', 'workers.register.batch', JSON.stringify({ workers: [worker], force: true }), 'INVALID_REQUEST', /unknown field "force"/],
  ['register: malformed JSON', 'workers.register', '{"id":"w9","cpu":', 'INVALID_REQUEST', /not valid JSON/],
  ['register: payload over 64 KiB', 'workers.register', JSON.stringify({ ...worker, pad: 'x'.repeat(70 * 1024) }), 'INVALID_REQUEST', /limit is 65536/],
  ['register: missing memory', 'workers.register', JSON.stringify({ id: 'w9', cpu: 1 }), 'INVALID_REQUEST', /"memory" is required/],
  ['register: zero cpu', 'workers.register', JSON.stringify({ ...worker, cpu: 0 }), 'INVALID_REQUEST', /"cpu" must be between 1/],
  ['register: negative cpu', 'workers.register', JSON.stringify({ ...worker, cpu: -1_000 }), 'INVALID_REQUEST', /"cpu" must be between 1/],
  ['register: fractional memory', 'workers.register', JSON.stringify({ ...worker, memory: 1_024.5 }), 'INVALID_REQUEST', /"memory" must be a whole number/],
  ['register: cpu as a string', 'workers.register', JSON.stringify({ ...worker, cpu: '1000m' }), 'INVALID_REQUEST', /"cpu" must be a number/],
  ['register: negative gpuCount', 'workers.register', JSON.stringify({ ...worker, gpu: 'a100', gpuCount: -2 }), 'INVALID_REQUEST', /"gpuCount" must be between 0/],
  ['register: absurd memory', 'workers.register', JSON.stringify({ ...worker, memory: 1e12 }), 'INVALID_REQUEST', /"memory" must be between/],
  ['register: gpu without count', 'workers.register', JSON.stringify({ ...worker, gpu: 'a100' }), 'INVALID_REQUEST', /"gpuCount" is required/],
  ['register: gpu count without type', 'workers.register', JSON.stringify({ ...worker, gpuCount: 2 }), 'INVALID_REQUEST', /needs a "gpu" type/],
  ['register: id with subject characters', 'workers.register', JSON.stringify({ ...worker, id: 'w.>' }), 'INVALID_REQUEST', /"id" must match/],
  ['register: unknown field', 'workers.register', JSON.stringify({ ...worker, zone: 'a' }), 'INVALID_REQUEST', /unknown field "zone"/],
  ['release: empty id', 'release', JSON.stringify({ id: '' }), 'INVALID_REQUEST', /"id" must match/],
  ['release: id with a dot', 'release', JSON.stringify({ id: 'placed-1.x' }), 'INVALID_REQUEST', /"id" must match/],
  ['release: missing id', 'release', '{}', 'INVALID_REQUEST', /"id" is required/],
  ['containers.get: id with >', 'containers.get', JSON.stringify({ id: 'a>' }), 'INVALID_REQUEST', /"id" must match/],
  ['workers.get: id with *', 'workers.get', JSON.stringify({ id: 'w*' }), 'INVALID_REQUEST', /"id" must match/],
  ['workers.drain: id with a dot', 'workers.drain', JSON.stringify({ id: 'w1.x' }), 'INVALID_REQUEST', /"id" must match/],
  ['release: unknown container', 'release', JSON.stringify({ id: 'never-placed' }), 'NOT_FOUND', /not known/],
  ['containers.get: unknown', 'containers.get', JSON.stringify({ id: 'never-placed' }), 'NOT_FOUND', /not known/],
  ['workers.get: unknown', 'workers.get', JSON.stringify({ id: 'ghost' }), 'NOT_FOUND', /not registered/],
  ['workers.drain: unknown', 'workers.drain', JSON.stringify({ id: 'ghost' }), 'NOT_FOUND', /not registered/],
  ['workers.drain: extra field', 'workers.drain', JSON.stringify({ id: 'w1', now: true }), 'INVALID_REQUEST', /unknown field "now"/],
  ['workers.list: bad cursor', 'workers.list', JSON.stringify({ cursor: 'x' }), 'INVALID_REQUEST', /"cursor"/],
  ['workers.list: huge page', 'workers.list', JSON.stringify({ limit: 100_000 }), 'INVALID_REQUEST', /"limit" must be between 1 and 500/],
  ['workers.remove: unknown', 'workers.remove', JSON.stringify({ id: 'ghost' }), 'NOT_FOUND', /not registered/],
  ['workers.remove: extra field', 'workers.remove', JSON.stringify({ id: 'w1', force: true }), 'INVALID_REQUEST', /unknown field "force"/],
  ['workers.remove: still available', 'workers.remove', JSON.stringify({ id: 'w1' }), 'CONFLICT', /drain or disable it/],
  ['submit: request key with a space', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Request-Key/, 'a b'],
  ['submit: request key of 129 characters', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Request-Key/, 'k'.repeat(129)],
  ['submit: request key with braces', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Request-Key/, '{k}'],
  ['batch: request key with a slash', 'submit.batch', JSON.stringify({ containers: [container] }), 'INVALID_REQUEST', /Drover-Request-Key/, 'a/b'],
  ['release: request key with a star', 'release', JSON.stringify({ id: 'placed-1' }), 'INVALID_REQUEST', /Drover-Request-Key/, 'k*'],
  ['backlog: malformed JSON', 'backlog', '{"pool":', 'INVALID_REQUEST', /not valid JSON/],
  ['backlog: an array', 'backlog', '[]', 'INVALID_REQUEST', /JSON object/],
  ['backlog: empty payload', 'backlog', '', 'INVALID_REQUEST', /empty/],
  ['backlog: unknown field', 'backlog', JSON.stringify({ pool: 'p' }), 'INVALID_REQUEST', /unknown field "pool".*empty object/],
  ['status: malformed JSON', 'status', '{', 'INVALID_REQUEST', /not valid JSON/],
  ['status: unknown field', 'status', JSON.stringify({ verbose: true }), 'INVALID_REQUEST', /unknown field "verbose".*empty payload or \{\}/],
  ['workers.list: empty payload', 'workers.list', '', 'INVALID_REQUEST', /empty/],
  ['workers.list: an array', 'workers.list', '[]', 'INVALID_REQUEST', /JSON object/],
  ['submit: deadline that is not a number', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Deadline must be a time in Unix milliseconds/, undefined, 'soon'],
  ['submit: fractional deadline', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Deadline/, undefined, '1.5'],
  ['submit: deadline with an exponent', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Deadline/, undefined, '1.9e12'],
  ['submit: negative deadline', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Deadline/, undefined, '-5'],
  ['submit: zero deadline', 'submit', JSON.stringify(container), 'INVALID_REQUEST', /Drover-Deadline/, undefined, '0'],
  ['release: malformed deadline', 'release', JSON.stringify({ id: 'placed-1' }), 'INVALID_REQUEST', /Drover-Deadline/, undefined, 'tomorrow'],
  ['backlog: malformed deadline', 'backlog', '{}', 'INVALID_REQUEST', /Drover-Deadline/, undefined, 'x'],
  ['submit: past deadline', 'submit', JSON.stringify(container), 'DEADLINE_EXCEEDED', /Drover-Deadline \d+ passed \d+ ms ago by this replica's clock/, undefined, 'past'],
  ['submit.batch: past deadline', 'submit.batch', JSON.stringify({ containers: [container] }), 'DEADLINE_EXCEEDED', /nothing was done/, undefined, 'past'],
  ['release: past deadline', 'release', JSON.stringify({ id: 'placed-1' }), 'DEADLINE_EXCEEDED', /nothing was done/, undefined, 'past'],
  ['workers.register: past deadline', 'workers.register', JSON.stringify(worker), 'DEADLINE_EXCEEDED', /nothing was done/, undefined, 'past'],
  ['workers.report: past deadline', 'workers.report', JSON.stringify({ workerId: 'w1', containers: [], incarnation: 'i1', seq: 1 }), 'DEADLINE_EXCEEDED', /nothing was done/, undefined, 'past'],
  ['containers.get: past deadline', 'containers.get', JSON.stringify({ id: 'placed-1' }), 'DEADLINE_EXCEEDED', /nothing was done/, undefined, 'past'],
];

/** Send `payload` with the given headers (the client's own deadline unless `deadline` says otherwise). */
async function send(subject: string, payload: string, requestKey?: string, deadline?: string): Promise<Record<string, unknown>> {
  if (deadline === undefined) return client.raw(subject, payload, requestKey);
  const header = headers();
  header.set(DEADLINE_HEADER, deadline === 'past' ? PAST() : deadline);
  if (requestKey !== undefined) header.set(REQUEST_KEY_HEADER, requestKey);
  return (await client.nc.request(subject, payload, { headers: header, timeout: 10_000 })).json<Record<string, unknown>>();
}

describe('bad input', () => {
  it.each(cases)('%s -> %s', async (_name, subject, payload, code, message, requestKey, deadline) => {
    const before = await snapshotKeys(redis, replica.config.prefix);
    const sentAt = Date.now();
    const reply = await send(`${replica.config.prefix}.${subject}`, payload, requestKey, deadline);
    expect(reply).toMatchObject({ ok: false, error: { code } });
    if (code === 'DEADLINE_EXCEEDED') {
      // The deadline it was given, and the replica's clock when it refused (same machine here).
      expect(reply.deadline).toBeLessThan(sentAt);
      expect(reply.replicaTime).toBeGreaterThanOrEqual(sentAt);
      expect(reply.replicaTime).toBeLessThanOrEqual(Date.now());
    }
    expect((reply as { error: { message: string } }).error.message).toMatch(message);
    // Let anything a broken handler might have queued reach Redis before comparing.
    await delay(5);
    expect(await snapshotKeys(redis, replica.config.prefix)).toEqual(before);
  });

  // Shard subjects are internal, but anyone on the bus can publish to them: the owner checks each
  // op as strictly as the routers check public requests, and answers a bad one INVALID_REQUEST.
  const place = (request: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    k: 'place', id: 'evil', request: { cpu: 100, memory: 128, gpu: null, gpuCount: 0, pool: null, ...request }, requestKey: 'x.1', deadline: Date.now() + 5_000, ...extra,
  });
  const enqueue = (request: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    k: 'enqueue', id: HOME, request: { cpu: 100, memory: 128, gpu: null, gpuCount: 0, pool: null, ...request }, requestKey: 'x.2', priority: 0, maxWaitMs: 1_000, spec: '', ...extra,
  });
  const shardCases: Array<[name: string, op: Record<string, unknown>, message: RegExp]> = [
    ['place: negative amounts', place({ cpu: -5_000, memory: -5_000 }), /"cpu" must be between 1/],
    ['place: fractional cpu', place({ cpu: 0.5 }), /"cpu" must be a whole number/],
    ['place: id with a dot', place({}, { id: 'evil.id' }), /"id" must match/],
    ['place: unknown request field', place({ memroy: 1 }), /unknown field "memroy"/],
    ['place: missing request key', place({}, { requestKey: undefined }), /"requestKey" must match/],
    ['place: request key with a space', place({}, { requestKey: 'a b' }), /"requestKey" must match/],
    ['place: deadline as a string', place({}, { deadline: 'soon' }), /"deadline"/],
    ['place: extra op field', place({}, { force: true }), /unknown field "force"/],
    ['release: worker id with >', { k: 'release', id: 'placed-1', workerId: 'w>' }, /"workerId" must match/],
    // An op naming a worker of another shard would create or change a second record of it here.
    ['register: a worker of another shard', { k: 'register', worker: { id: ELSEWHERE, cpu: 900, memory: 900 } }, /belongs to shard \d+, not shard/],
    ['status: a worker of another shard', { k: 'status', workerId: ELSEWHERE, action: 'drain' }, /belongs to shard \d+, not shard/],
    ['release: on a worker of another shard', { k: 'release', id: 'placed-1', workerId: ELSEWHERE }, /belongs to shard \d+, not shard/],
    ['remove: a worker of another shard', { k: 'remove', workerId: ELSEWHERE }, /belongs to shard \d+, not shard/],
    ['remove: extra field', { k: 'remove', workerId: 'w1', force: true }, /unknown field "force"/],
    ['register: zero cpu', { k: 'register', worker: { id: 'w-evil', cpu: 0, memory: 1 } }, /"cpu" must be between 1/],
    ['status: unknown action', { k: 'status', workerId: 'w1', action: 'explode' }, /"action"/],
    ['unknown op kind', { k: 'drop-table' }, /unknown shard op kind/],
    ['place: spec that is not JSON', place({}, { spec: '{nope' }), /"spec" must be a JSON string/],
    ['place: spec with a bad command', place({}, { spec: JSON.stringify({ command: [1], env: null }) }), /command\[0\] must be a string/],
    ['enqueue: a container of another home shard', enqueue({}, { id: ELSEWHERE }), /queues in shard \d+, not shard/],
    ['enqueue: priority out of range', enqueue({}, { priority: 2e6 }), /"priority" must be between/],
    ['enqueue: maxWaitMs as a string', enqueue({}, { maxWaitMs: '1h' }), /"maxWaitMs" must be a number/],
    ['enqueue: unknown request field', enqueue({ memroy: 1 }), /unknown field "memroy"/],
    ['enqueue: extra op field', enqueue({}, { force: true }), /unknown field "force"/],
    ['cancel: id with a dot', { k: 'cancel', id: 'a.b' }, /"id" must match/],
    ['cancel: extra field', { k: 'cancel', id: 'x', force: true }, /unknown field "force"/],
  ];

  /** Send one op for w1's shard on `subject` with `body`: refused with `message`, nothing written. */
  async function expectOpRefused(subject: (shard: number) => string, body: (shard: number) => unknown, message: RegExp): Promise<void> {
    const shard = (await client.getWorker('w1')) as { worker: { shard: number } };
    const before = await snapshotKeys(redis, replica.config.prefix);
    const reply = await client.raw(subject(shard.worker.shard), JSON.stringify(body(shard.worker.shard)));
    const results = reply.results as Array<{ ok: boolean; code: string; message: string }>;
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({ ok: false, code: 'INVALID_REQUEST' });
    expect(results[0]?.message).toMatch(message);
    await delay(5);
    expect(await snapshotKeys(redis, replica.config.prefix)).toEqual(before);
  }

  it.each(shardCases)('shard subject, %s -> INVALID_REQUEST', async (_name, op, message) => {
    await expectOpRefused((shard) => `${replica.config.prefix}.shard.${shard}`, () => ({ ops: [op] }), message);
  });

  // The same ops through the replica's ops subject (a router groups ops by owner there): checked
  // as strictly, each with its shard number.
  it.each(shardCases)('replica ops subject, %s -> INVALID_REQUEST', async (_name, op, message) => {
    await expectOpRefused(() => `${replica.config.prefix}.ops.replica.${replica.config.replicaId}`, (shard) => ({ ops: [{ s: shard, op }] }), message);
  });

  const badShardNumbers: Array<[name: string, entry: Record<string, unknown>]> = [
    ['a negative shard', { s: -1, op: { k: 'cancel', id: 'x' } }],
    ['a shard past the count', { s: 4_096, op: { k: 'cancel', id: 'x' } }],
    ['a fractional shard', { s: 0.5, op: { k: 'cancel', id: 'x' } }],
    ['a shard as a string', { s: '0', op: { k: 'cancel', id: 'x' } }],
  ];
  it.each(badShardNumbers)('replica ops subject, %s -> INVALID_REQUEST', async (_name, entry) => {
    const before = await snapshotKeys(redis, replica.config.prefix);
    const reply = await client.raw(`${replica.config.prefix}.ops.replica.${replica.config.replicaId}`, JSON.stringify({ ops: [entry] }));
    expect(reply.results).toEqual([expect.objectContaining({ ok: false, code: 'INVALID_REQUEST', message: expect.stringMatching(/"s" must be a shard number/) })]);
    expect(await snapshotKeys(redis, replica.config.prefix)).toEqual(before);
  });

  it.each([
    ['no ops array', { ops: 'all' }],
    ['no ops', { ops: [] }],
    ['too many ops', { ops: Array.from({ length: 1_001 }, () => ({ s: 0, op: { k: 'cancel', id: 'x' } })) }],
  ])('replica ops subject, a malformed frame (%s) gets an empty answer and changes nothing', async (_name, body) => {
    const before = await snapshotKeys(redis, replica.config.prefix);
    const reply = await client.raw(`${replica.config.prefix}.ops.replica.${replica.config.replicaId}`, JSON.stringify(body));
    expect(reply).toEqual({ results: [], capacities: [] });
    expect(await snapshotKeys(redis, replica.config.prefix)).toEqual(before);
  });

  it('answers drover.status with an empty payload or {}, once per replica', async () => {
    for (const payload of ['', '{}']) {
      expect(await client.raw(`${replica.config.prefix}.status`, payload)).toMatchObject({ ok: true, replicaId: replica.config.replicaId, shards: expect.any(Array) });
    }
    expect(await client.clusterStatus(300, 1)).toHaveLength(1);
  });

  it('the replica still serves after all of it', async () => {
    expect(await client.submit({ id: 'after-bad-input', cpu: 100, memory: 100 })).toMatchObject({ ok: true, workerId: 'w1' });
  });
});
