/**
 * Loads the Lua scripts in `src/store/lua/` by name and runs them with EVALSHA, falling back to
 * EVAL when Redis does not have the script cached (after a restart or SCRIPT FLUSH).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { packageRoot } from '../util/package-root.js';

export const SCRIPT_NAMES = ['commit_batch', 'backlog_commit', 'register_workers', 'acquire_lease', 'heartbeat'] as const;
export type ScriptName = (typeof SCRIPT_NAMES)[number];

interface LoadedScript {
  readonly source: string;
  readonly sha: string;
}

let loaded: Map<ScriptName, LoadedScript> | null = null;

function scripts(): Map<ScriptName, LoadedScript> {
  if (loaded === null) {
    const dir = join(packageRoot(), 'src', 'store', 'lua');
    loaded = new Map(
      SCRIPT_NAMES.map((name) => {
        const source = readFileSync(join(dir, `${name}.lua`), 'utf8');
        return [name, { source, sha: createHash('sha1').update(source).digest('hex') }];
      }),
    );
  }
  return loaded;
}

export async function runScript(
  redis: Redis,
  name: ScriptName,
  keys: readonly string[],
  args: readonly (string | number)[],
): Promise<unknown> {
  const script = scripts().get(name)!;
  try {
    return await redis.evalsha(script.sha, keys.length, ...keys, ...args);
  } catch (error) {
    if (error instanceof Error && error.message.startsWith('NOSCRIPT')) {
      return await redis.eval(script.source, keys.length, ...keys, ...args);
    }
    throw error;
  }
}
