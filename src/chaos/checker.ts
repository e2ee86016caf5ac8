/**
 * The chaos checker. It reads the client-side request log and Redis (container records, worker
 * hashes, and each shard's history stream, which commit_batch.lua appends to in the same atomic
 * step as every write) and reports every way the run broke the guarantees:
 *
 * - double placement: a container id placed twice in the history, or acknowledged to clients with
 *   two different workers;
 * - over-commit: replaying a worker's history, its placed total exceeded its capacity at some point;
 * - lost: a request that never got an explicit reply (only transport failures);
 * - missing: an acknowledged placement (or release) that Redis does not hold;
 * - false refusal: a submit answered with a definite "no" (NO_CAPACITY, ALREADY_PLACED on its
 *   first try, ...) whose container Redis placed anyway;
 * - accounting: at the end, a worker's free capacity is not its total minus its live placements;
 * - history incomplete: a stream was trimmed, so the replay would be partial (raise the cap).
 */
import { auditAccounting } from '../audit/accounting.js';
import type { DroverStore } from '../store/store.js';
import type { RequestRecord } from './request-log.js';
import { CONTAINER_STATUSES, reachableStatuses } from '../../actors/container-machine.js';
import type { BacklogRecord } from './backlog-load.js';

export type ViolationKind =
  | 'double-placement'
  | 'conflicting-acks'
  | 'over-commit'
  | 'lost'
  | 'missing'
  | 'false-refusal'
  | 'accounting'
  | 'history-incomplete'
  /** A request answered queued or placed that never ended (the backlog lost or stranded it). */
  | 'stuck'
  /** A container's events came in an order its lifecycle does not allow, or its record contradicts them. */
  | 'event-order'
  /** A container run by an agent exited with another code than its command's. */
  | 'wrong-exit-code'
  /** Sampled from the machine's processes (container-watch.ts): one container id live twice at once. */
  | 'running-twice'
  /** A live process of a container whose record puts it on another worker, or on none. */
  | 'runs-elsewhere'
  /** A live process of an ended container, a TTL after its agent could act. */
  | 'terminal-running'
  /** A queued request still queued well after its expiry (backlog-load.ts). */
  | 'queued-past-time'
  /** A request queued all the while its pool had room for it (backlog-load.ts). */
  | 'waits-with-room';

export interface Violation {
  readonly kind: ViolationKind;
  readonly message: string;
}

export interface CheckReport {
  readonly violations: Violation[];
  readonly counts: {
    readonly requests: number;
    readonly placedAcks: number;
    readonly releasedAcks: number;
    readonly errors: Record<string, number>;
    readonly historyEntries: number;
    /** Placements in Redis that no client was told about (outcome-unknown replies); allowed. */
    readonly unacknowledgedPlacements: number;
    readonly workers: number;
  };
}

interface HistoryPlace {
  readonly worker: string;
  readonly cpu: number;
  readonly memory: number;
  readonly gpuCount: number;
}

/** Most entries read per XRANGE call; the stream is read in pages. */
const HISTORY_PAGE = 10_000;
const MAX_VIOLATIONS_PER_KIND = 50;

export async function checkRun(store: DroverStore, shards: number, records: readonly RequestRecord[]): Promise<CheckReport> {
  const violations: Violation[] = [];
  const perKind = new Map<ViolationKind, number>();
  const report = (kind: ViolationKind, message: string) => {
    const n = (perKind.get(kind) ?? 0) + 1;
    perKind.set(kind, n);
    if (n <= MAX_VIOLATIONS_PER_KIND) violations.push({ kind, message });
  };

  // 1. What clients were told.
  const acks = new Map<string, Set<string>>();
  const releasedAcks = new Set<string>();
  const errors: Record<string, number> = {};
  let placedAcks = 0;
  for (const record of records) {
    const final = record.final;
    if (final === null || final.kind === 'lost') {
      report('lost', `${record.op} ${record.id} (client ${record.client}) got no explicit reply in ${record.attempts.length} attempts`);
      continue;
    }
    if (final.kind === 'placed') {
      placedAcks += 1;
      let workers = acks.get(record.id);
      if (workers === undefined) acks.set(record.id, (workers = new Set()));
      workers.add(final.workerId);
    } else if (final.kind === 'released') {
      releasedAcks.add(record.id);
    } else {
      errors[final.code] = (errors[final.code] ?? 0) + 1;
    }
  }
  for (const record of records) {
    if (record.op === 'release' && record.final?.kind === 'error' && record.final.code === 'NOT_FOUND' && acks.has(record.id)) {
      report('missing', `release of ${record.id} answered NOT_FOUND, but its placement was acknowledged`);
    }
  }
  for (const [id, workers] of acks) {
    if (workers.size > 1) report('conflicting-acks', `container ${id} was acknowledged on ${workers.size} workers: ${[...workers].join(', ')}`);
  }

  // 2. What Redis committed, in order. Every shard's history stream is read, then all entries are
  // replayed in the order of their ids (Redis's clock, one server): a container requeued in one
  // shard may be placed again in another.
  const placements = new Map<string, HistoryPlace[]>();
  let historyEntries = 0;
  let workers = 0;
  const capacity = new Map<string, { cpu: number; memory: number; gpuCount: number }>();
  const entries: Array<{ id: string; ms: number; seq: number; entry: Record<string, string> }> = [];
  for (let shard = 0; shard < shards; shard += 1) {
    const key = store.keys.history(shard);
    const info = await streamCounts(store, key);
    if (info !== null && info.added !== info.length) {
      report('history-incomplete', `shard ${shard} history holds ${info.length} of ${info.added} entries; raise DROVER_HISTORY_CAP`);
    }
    for (const worker of await store.loadShard(shard)) {
      capacity.set(worker.id, { cpu: worker.cpu, memory: worker.memory, gpuCount: worker.gpuCount });
      workers += 1;
    }
    let start = '-';
    for (let page = 0; page < 100_000; page += 1) {
      const read = await store.redis.xrange(key, start, '+', 'COUNT', HISTORY_PAGE);
      for (const [id, fields] of read) {
        historyEntries += 1;
        const entry: Record<string, string> = {};
        for (let i = 0; i + 1 < fields.length; i += 2) entry[fields[i]!] = fields[i + 1]!;
        if (entry.op !== 'place' && entry.op !== 'release' && entry.op !== 'requeue') continue;
        const [ms = '0', seq = '0'] = id.split('-');
        entries.push({ id, ms: Number(ms), seq: Number(seq), entry });
      }
      if (read.length < HISTORY_PAGE) break;
      start = `(${read[read.length - 1]![0]}`;
    }
  }
  entries.sort((x, y) => x.ms - y.ms || x.seq - y.seq);
  const held = new Map<string, { cpu: number; memory: number; gpuCount: number }>();
  const liveOn = new Map<string, string>();
  /** Containers whose last placement a requeue ended (they may be placed again, anywhere). */
  const requeued = new Set<string>();
  for (const { id, entry } of entries) {
    const op = entry.op!;
    const container = entry.container!;
    const worker = entry.worker!;
    const cpu = Number(entry.cpu);
    const memory = Number(entry.memory);
    const gpuCount = Number(entry.gpuCount);
    const sign = op === 'place' ? 1 : -1;
    if (op === 'place') {
      let list = placements.get(container);
      if (list === undefined) placements.set(container, (list = []));
      list.push({ worker, cpu, memory, gpuCount });
      // Placed again: only after a requeue ended the placement before (never while live, never after a release).
      if (list.length >= 2 && (liveOn.has(container) || !requeued.has(container))) {
        report('double-placement', `container ${container} was placed twice: on ${list[list.length - 2]!.worker} and on ${worker} (history ${id})`);
      }
      requeued.delete(container);
      liveOn.set(container, worker);
    } else {
      // A requeue (its worker lost before running it) frees its capacity like a release.
      if (op === 'requeue') requeued.add(container);
      if (liveOn.get(container) !== worker) report('accounting', `history ${id}: ${op} of ${container} from ${worker}, where it was not live`);
      liveOn.delete(container);
    }
    const total = held.get(worker) ?? { cpu: 0, memory: 0, gpuCount: 0 };
    const next = { cpu: total.cpu + sign * cpu, memory: total.memory + sign * memory, gpuCount: total.gpuCount + sign * gpuCount };
    held.set(worker, next);
    const limit = capacity.get(worker);
    if (limit === undefined) {
      report('accounting', `history ${id}: ${op} on unknown worker ${worker}`);
    } else if (next.cpu > limit.cpu || next.memory > limit.memory || next.gpuCount > limit.gpuCount) {
      report(
        'over-commit',
        `worker ${worker} held cpu ${next.cpu}/${limit.cpu}, memory ${next.memory}/${limit.memory}, ` +
          `gpu ${next.gpuCount}/${limit.gpuCount} after ${op} of ${container} (history ${id})`,
      );
    }
  }

  // 3. Every acknowledged placement and release is what Redis holds.
  const ackedIds = [...acks.keys()];
  for (let i = 0; i < ackedIds.length; i += 500) {
    const slice = ackedIds.slice(i, i + 500);
    const containers = await store.readContainers(slice);
    slice.forEach((id, index) => {
      const status = containers[index]?.status;
      const workerId = containers[index]?.workerId;
      const acked = [...acks.get(id)!][0]!;
      if (status === undefined) report('missing', `container ${id} was acknowledged on ${acked} but Redis has no record of it`);
      // Placed elsewhere after its worker was lost before running it (requeued): allowed.
      else if (workerId !== acked && !(placements.get(id) ?? []).some((p, i, all) => p.worker === acked && i < all.length - 1)) {
        report('missing', `container ${id} was acknowledged on ${acked} but Redis has it on ${workerId}`);
      }
      else if (status === 'released' && !releasedAcks.has(id)) report('missing', `container ${id} is released in Redis but no client released it`);
      else if (status === 'placed' && releasedAcks.has(id)) report('missing', `container ${id} was acknowledged released but Redis still has it placed`);
      if (!placements.has(id)) report('missing', `container ${id} was acknowledged but no placement of it is in the history`);
    });
  }
  let unacknowledgedPlacements = 0;
  const refused = new Map<string, RequestRecord>();
  for (const record of records) {
    const final = record.final;
    if (record.op === 'submit' && final?.kind === 'error' && final.code !== 'UNAVAILABLE') refused.set(record.id, record);
  }
  for (const id of placements.keys()) {
    if (acks.has(id)) continue;
    const record = refused.get(id);
    // UNAVAILABLE means "outcome unknown, retry": a placement behind it is allowed. A definite no is not.
    if (record === undefined) {
      unacknowledgedPlacements += 1;
      continue;
    }
    const container = await store.readContainer(id).catch(() => null);
    const attempts = record.attempts
      .map((a) => `+${a.at - record.startedAt} ms ${a.outcome.kind === 'error' ? a.outcome.code : a.outcome.kind}`)
      .join(', ');
    report(
      'false-refusal',
      `submit of ${id} was answered ${(record.final as { code: string }).code}, but Redis placed it on ${container?.workerId} ` +
        `at +${(container?.placedAt ?? 0) - record.startedAt} ms (request key ${container?.requestKey}); attempts: ${attempts}`,
    );
  }

  // 4. The end state adds up.
  const accounting = await auditAccounting(store, shards);
  for (const message of accounting.violations) report('accounting', message);

  for (const [kind, n] of perKind) {
    if (n > MAX_VIOLATIONS_PER_KIND) violations.push({ kind, message: `... and ${n - MAX_VIOLATIONS_PER_KIND} more ${kind} violations` });
  }
  return {
    violations,
    counts: { requests: records.length, placedAcks, releasedAcks: releasedAcks.size, errors, historyEntries, unacknowledgedPlacements, workers },
  };
}

/** Entries in the stream now, and ever added (Redis 7's XINFO STREAM "entries-added"). */
async function streamCounts(store: DroverStore, key: string): Promise<{ length: number; added: number } | null> {
  try {
    const info = (await store.redis.call('XINFO', 'STREAM', key)) as unknown[];
    const fields = new Map<string, unknown>();
    for (let i = 0; i + 1 < info.length; i += 2) fields.set(String(info[i]), info[i + 1]);
    return { length: Number(fields.get('length')), added: Number(fields.get('entries-added')) };
  } catch {
    return null; // no stream: no writes in this shard
  }
}

const REACHABLE = new Map(CONTAINER_STATUSES.map((status) => [status, reachableStatuses(status)]));

/**
 * The scheduling loop's checks: every request answered queued or placed ended (released, or
 * failed/expired), none stuck; the events each container published came in an order its machine
 * allows (events are at most once, so a step may be missing, never reversed); and the record Redis
 * holds at the end is where its last event could lead.
 */
export async function checkBacklogRun(store: DroverStore, records: readonly BacklogRecord[], stillOpen: readonly string[]): Promise<Violation[]> {
  const violations: Violation[] = [];
  const report = (kind: ViolationKind, message: string) => {
    if (violations.length < MAX_VIOLATIONS_PER_KIND * 2) violations.push({ kind, message });
  };
  for (const id of stillOpen.slice(0, MAX_VIOLATIONS_PER_KIND)) {
    const container = await store.readContainer(id).catch(() => null);
    report('stuck', `container ${id} was acknowledged but never ended: Redis has it ${container?.status ?? 'nowhere'}`);
  }
  const acked = records.filter((r) => r.submit === 'queued' || r.submit === 'placed');
  for (let i = 0; i < acked.length; i += 500) {
    const slice = acked.slice(i, i + 500);
    const containers = await store.readContainers(slice.map((r) => r.id));
    slice.forEach((record, index) => {
      const container = containers[index] ?? null;
      if (container === null) {
        report('lost', `container ${record.id} was answered ${record.submit} but Redis has no record of it`);
        return;
      }
      for (let step = 1; step < record.events.length; step += 1) {
        const before = record.events[step - 1]!;
        const after = record.events[step]!;
        if (!REACHABLE.get(before)!.has(after)) report('event-order', `container ${record.id}: event ${after} after ${before} (events ${record.events.join(' -> ')})`);
      }
      if (container.status === 'exited' && record.expectedExitCode !== undefined && container.exitCode !== record.expectedExitCode) {
        report('wrong-exit-code', `container ${record.id} exited with ${container.exitCode}; its command exits ${record.expectedExitCode}`);
      }
      const last = record.events[record.events.length - 1];
      if (last !== undefined && !REACHABLE.get(last)!.has(container.status)) {
        report('event-order', `container ${record.id}: Redis has it ${container.status}, not reachable from its last event ${last} (events ${record.events.join(' -> ')})`);
      }
    });
  }
  return violations;
}
