import { describe, expect, it } from 'vitest';
import { assignShards, desiredShards } from '../../src/membership/ownership.js';

const members = (n: number, tag = 'replica') => Array.from({ length: n }, (_, i) => `${tag}-${i}-${(i * 7919).toString(36)}`);
const loads = (owners: string[]) => {
  const counts = new Map<string, number>();
  for (const o of owners) counts.set(o, (counts.get(o) ?? 0) + 1);
  return [...counts.values()];
};
const moved = (a: string[], b: string[]) => a.filter((owner, shard) => owner !== b[shard]).length;

describe('assignShards', () => {
  it('is the same whatever order the members are listed in', () => {
    const m = members(5);
    expect(assignShards(m, 64)).toEqual(assignShards([...m].reverse(), 64));
  });

  it.each([[64, 3], [64, 5], [256, 7], [64, 1], [8, 3]])('%i shards over %i members spread evenly', (shards, n) => {
    const counts = loads(assignShards(members(n), shards));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(shards);
    expect(Math.max(...counts)).toBe(Math.ceil(shards / n));
    expect(Math.min(...counts)).toBe(Math.floor(shards / n));
  });

  it('a join or a leave moves about 1/N of the shards, over many member sets', () => {
    const shards = 64;
    let worstJoin = 0;
    let worstLeave = 0;
    for (let trial = 0; trial < 50; trial += 1) {
      for (const n of [2, 3, 4, 5]) {
        const before = members(n, `t${trial}`);
        const joined = [...before, `joiner-${trial}-${n}`];
        const a = assignShards(before, shards);
        const b = assignShards(joined, shards);
        // The joiner must get its share, and it should cost little more than that share.
        worstJoin = Math.max(worstJoin, moved(a, b) / (shards / (n + 1)));
        const left = before.slice(1);
        if (left.length > 0) worstLeave = Math.max(worstLeave, moved(a, assignShards(left, shards)) / (shards / n));
      }
    }
    // Ratios of shards moved to the ideal 1/N share. Plain rendezvous hashing is exactly 1.0 but
    // unbalanced; the load bound costs some extra moves. 2x is the bound we hold it to.
    expect(worstJoin).toBeLessThanOrEqual(2);
    expect(worstLeave).toBeLessThanOrEqual(2);
  });

  it('desiredShards lists one member\'s part, and nothing for a non-member', () => {
    const m = members(3);
    const all = m.flatMap((member) => desiredShards(member, m, 64)).sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: 64 }, (_, i) => i));
    expect(desiredShards('stranger', m, 64)).toEqual([]);
  });
});
