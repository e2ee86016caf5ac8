/**
 * Whether a submit is the request its request key already stands for. A retry (same id, same
 * request key) gets the earlier request's answer only if it asks for the same thing; a body that
 * differs in anything the record keeps is another request under a reused key, answered CONFLICT.
 * Compared only on the retry path, against the container's record (live, queued or tombstone).
 */
import { createHash } from 'node:crypto';
import type { SubmitRequest } from '../protocol/validate.js';
import type { ContainerRecord } from '../store/records.js';

/** The digest an ended container's tombstone keeps of its command/env JSON (Redis's sha1hex). */
export function specDigest(spec: string): string | null {
  return spec === '' ? null : createHash('sha1').update(spec, 'utf8').digest('hex');
}

/**
 * What differs between `request` (with `spec`, its command/env JSON) and `record`, as
 * "field: recorded, not requested" phrases; empty when it is the same request. A field the record
 * does not know (a tombstone written before tombstones kept the whole request) is not compared.
 */
export function requestDifferences(record: ContainerRecord, request: SubmitRequest, spec: string): string[] {
  const differences: string[] = [];
  const compare = (field: string, recorded: unknown, requested: unknown): void => {
    if (recorded !== requested) differences.push(`${field} ${JSON.stringify(recorded)}, not ${JSON.stringify(requested)}`);
  };
  compare('cpu', record.cpu, request.cpu);
  compare('memory', record.memory, request.memory);
  compare('gpuCount', record.gpuCount, request.gpuCount);
  // A record that knows its priority knows the rest of the request too (see containerFromTombstone).
  if (record.priority !== null) {
    compare('gpu', record.gpu, request.gpu);
    compare('pool', record.pool, request.pool);
    compare('priority', record.priority, request.priority);
    if (record.maxWaitMs !== null) compare('maxWaitMs', record.maxWaitMs, request.maxWaitMs);
    const recorded = record.specDigest !== undefined ? record.specDigest : specDigest(record.spec);
    if (recorded !== specDigest(spec)) differences.push('command/env differ');
  }
  return differences;
}
