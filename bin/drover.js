#!/usr/bin/env node
// Entry point of the `drover` command: runs the compiled CLI in dist/ (`npm run build` makes it).
import { existsSync } from 'node:fs';

const cli = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('drover: dist/ is missing; run `npm run build` (npm ci does it for you)\n');
  process.exit(2);
}
const { main } = await import(cli.href);
const code = await main(process.argv.slice(2));
// Let pino flush its asynchronous destination before exiting.
setImmediate(() => process.exit(code));
