/**
 * Which replica should own which shard: rendezvous (highest random weight) hashing with a load
 * bound. Every replica computes the same answer from the same member list, with no coordination.
 *
 * Plain rendezvous hashing moves only the shards whose top choice changed when a member joins or
 * leaves (about 1/N of them), but its spread is uneven: one replica can hold several shards more
 * than another. The bound fixes that: shards are assigned in a fixed order, each to
 * its highest-ranked member still under its share (floor(shards / members), and one more for
 * shards % members of them), so no member has more than one shard more than another. A join or leave
 * still moves close to 1/N of the shards (see test/membership/ownership.test.ts for the numbers).
 */

/** 32-bit FNV-1a, then murmur3's finaliser: FNV alone mixes similar strings poorly. */
export function mixHash(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** Desired owner of every shard, as an array indexed by shard. Members must be non-empty. */
export function assignShards(members: readonly string[], shards: number): string[] {
  if (members.length === 0) throw new Error('assignShards needs at least one member');
  const sorted = [...new Set(members)].sort();
  // Every member gets `base` shards, and `extra` of them one more: the spread is never over 1.
  const base = Math.floor(shards / sorted.length);
  const extra = shards % sorted.length;
  let atCeiling = 0;
  const load = new Map(sorted.map((m) => [m, 0]));
  const owners: string[] = [];
  for (let shard = 0; shard < shards; shard += 1) {
    let best: string | null = null;
    let bestScore = -1;
    for (const member of sorted) {
      const taken = load.get(member)!;
      if (taken > base || (taken === base && atCeiling >= extra)) continue;
      const score = mixHash(`${member}/${shard}`);
      if (score > bestScore) {
        best = member;
        bestScore = score;
      }
    }
    // base * members + extra === shards, so some member always has room.
    owners.push(best!);
    const taken = load.get(best!)! + 1;
    load.set(best!, taken);
    if (taken === base + 1) atCeiling += 1;
  }
  return owners;
}

/** The shards `member` should own, given the live members. */
export function desiredShards(member: string, members: readonly string[], shards: number): number[] {
  if (!members.includes(member)) return [];
  const owners = assignShards(members, shards);
  const mine: number[] = [];
  owners.forEach((owner, shard) => {
    if (owner === member) mine.push(shard);
  });
  return mine;
}
