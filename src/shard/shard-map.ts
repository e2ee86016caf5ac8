/**
 * Workers map to a fixed number of virtual shards by a stable hash of the worker id. The hash is
 * 32-bit FNV-1a over the id's UTF-16 code units: cheap, stable across processes and versions, and
 * spreads short sequential ids (w-1, w-2, ...) evenly enough for shard counts up to thousands.
 */
export const DEFAULT_SHARDS = 64;
export const MAX_SHARDS = 4096;

export function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash >>> 0;
}

export function shardOf(workerId: string, shards: number): number {
  if (!Number.isSafeInteger(shards) || shards < 1 || shards > MAX_SHARDS) throw new RangeError(`shard count ${shards}`);
  return fnv1a32(workerId) % shards;
}
