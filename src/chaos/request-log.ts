/**
 * Every client request the chaos load sends, every attempt and every reply, kept in memory and
 * written to a JSON file at the end of a run. The checker judges the cluster from this record and
 * from Redis, never from what replicas report about themselves.
 */
import type { ErrorCode } from '../protocol/errors.js';

export type AttemptOutcome =
  | { readonly kind: 'placed'; readonly workerId: string }
  | { readonly kind: 'released' }
  | { readonly kind: 'error'; readonly code: ErrorCode; readonly workerId?: string }
  /** No reply: timeout, no responders, connection lost. The outcome is unknown. */
  | { readonly kind: 'transport'; readonly message: string };

export interface Attempt {
  readonly at: number;
  readonly outcome: AttemptOutcome;
}

export type FinalOutcome =
  | { readonly kind: 'placed'; readonly workerId: string }
  | { readonly kind: 'released' }
  | { readonly kind: 'error'; readonly code: ErrorCode }
  /** Every attempt ended without an explicit reply: the request was lost. */
  | { readonly kind: 'lost' };

export interface RequestRecord {
  readonly client: string;
  readonly op: 'submit' | 'release';
  readonly id: string;
  readonly cpu: number;
  readonly memory: number;
  readonly startedAt: number;
  endedAt: number;
  readonly attempts: Attempt[];
  final: FinalOutcome | null;
}

export class RequestLog {
  readonly records: RequestRecord[] = [];

  begin(client: string, op: 'submit' | 'release', id: string, cpu = 0, memory = 0): RequestRecord {
    const record: RequestRecord = { client, op, id, cpu, memory, startedAt: Date.now(), endedAt: 0, attempts: [], final: null };
    this.records.push(record);
    return record;
  }

  /** Requests that ended with the given error code within [from, to). */
  countErrors(code: ErrorCode, from: number, to: number): number {
    let count = 0;
    for (const record of this.records) {
      for (const attempt of record.attempts) {
        if (attempt.at >= from && attempt.at < to && attempt.outcome.kind === 'error' && attempt.outcome.code === code) count += 1;
      }
    }
    return count;
  }

  countAttempts(kind: AttemptOutcome['kind'], from: number, to: number): number {
    let count = 0;
    for (const record of this.records) {
      for (const attempt of record.attempts) if (attempt.at >= from && attempt.at < to && attempt.outcome.kind === kind) count += 1;
    }
    return count;
  }
}
