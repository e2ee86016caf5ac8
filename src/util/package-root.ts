import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The directory holding Drover's package.json. Code runs both from `src/` (tests) and from
 * `dist/src/` (the built CLI), so files shipped beside the code (Lua scripts, configs) are found
 * from the package root rather than from the module's own depth.
 */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 8; depth += 1) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'src', 'store', 'lua'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Error(`cannot find the drover package root above ${fileURLToPath(import.meta.url)}`);
}
