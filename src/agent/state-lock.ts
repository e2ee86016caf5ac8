/**
 * One agent per state directory: a lock file holding the owner's pid, created exclusively. A lock
 * whose process is gone (the agent crashed) is taken over; a live one refuses the second agent,
 * which would otherwise start every container a second time on the same machine.
 */
import { openSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { alive } from './container-process.js';

/** Stale-lock takeovers tried before giving up (another agent racing for the same directory). */
const MAX_TAKE_ATTEMPTS = 3;

export class StateDirectoryLock {
  private released = false;

  private constructor(private readonly file: string) {}

  static take(stateDir: string): StateDirectoryLock {
    const file = join(stateDir, 'agent.lock');
    for (let attempt = 0; attempt < MAX_TAKE_ATTEMPTS; attempt += 1) {
      try {
        const fd = openSync(file, 'wx');
        writeFileSync(fd, String(process.pid));
        closeSync(fd);
        return new StateDirectoryLock(file);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      let holder = Number.NaN;
      try {
        holder = Number(readFileSync(file, 'utf8').trim());
      } catch {
        // removed meanwhile: try again
      }
      if (Number.isSafeInteger(holder) && holder > 0 && holder !== process.pid && alive(holder) && mayBeAgent(holder)) {
        throw new Error(`state directory ${stateDir} is in use by another agent (pid ${holder}); one agent per state directory`);
      }
      // Its holder is gone (a crashed agent): take it over.
      rmSync(file, { force: true });
    }
    throw new Error(`could not lock state directory ${stateDir}`);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    rmSync(this.file, { force: true });
  }
}

/**
 * Whether process `pid` may be a Drover agent: after a crash its pid can be reused by an unrelated
 * process, whose lock would otherwise keep the agent out for good. Where /proc cannot tell, yes.
 */
function mayBeAgent(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('drover');
  } catch {
    return true;
  }
}
