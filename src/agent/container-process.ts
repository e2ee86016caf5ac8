/**
 * One container's process on a worker machine, as the agent runs it.
 *
 * The command runs under a small shell wrapper in its own process group (detached): the wrapper
 * waits for the command and writes its exit code to a file, so an agent that was restarted (or
 * SIGKILLed) while the command ran can still learn how it ended, and a stop signals the whole
 * group (the command and anything it started). A process this agent started reports its end
 * through Node's exit event; one adopted after a restart is watched by polling its pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** A container with no command runs this until it is released. */
export const PLACEHOLDER_COMMAND: readonly string[] = ['sleep', 'infinity'];
/** How often an adopted process (not our child) is checked for its end. */
const ADOPTED_POLL_MS = 250;
/**
 * The wrapper first writes its own pid (the process group's id) to a file, so an agent killed
 * between starting a container and saving its state finds the process after a restart instead of
 * starting it a second time.
 */
const WRAPPER = 'printf "%s" "$$" > "$DROVER_PID_FILE"; "$@"; code=$?; printf "%s" "$code" > "$DROVER_EXIT_FILE"; exit $code';

export interface ContainerLaunch {
  readonly id: string;
  readonly workerId: string;
  readonly command: readonly string[] | null;
  readonly env: Readonly<Record<string, string>> | null;
  readonly stateDir: string;
}

export function exitFile(stateDir: string, id: string): string {
  return join(stateDir, `${id}.exit`);
}

export function pidFile(stateDir: string, id: string): string {
  return join(stateDir, `${id}.pid`);
}

/** The pid the wrapper of container `id` wrote, or null (it never started). */
export function readPid(stateDir: string, id: string): number | null {
  const file = pidFile(stateDir, id);
  if (!existsSync(file)) return null;
  const pid = Number(readFileSync(file, 'utf8').trim());
  return Number.isSafeInteger(pid) && pid > 1 ? pid : null;
}

/** Whether a process with this pid exists (signal 0 checks without signalling). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The exit code the wrapper wrote, or null (killed by a signal, or never ran). */
export function readExitCode(stateDir: string, id: string): number | null {
  const file = exitFile(stateDir, id);
  if (!existsSync(file)) return null;
  const code = Number(readFileSync(file, 'utf8').trim());
  return Number.isInteger(code) ? code : null;
}

export class ContainerProcess {
  private child: ChildProcess | null = null;
  private poll: NodeJS.Timeout | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private ended = false;

  private constructor(
    readonly id: string,
    readonly pid: number,
    private readonly stateDir: string,
    private readonly onExit: (exitCode: number) => void,
  ) {}

  /** Start the container's command (or the placeholder) in its own process group. */
  static launch(launch: ContainerLaunch, onExit: (exitCode: number) => void): ContainerProcess {
    const command = launch.command ?? PLACEHOLDER_COMMAND;
    const log = openSync(join(launch.stateDir, `${launch.id}.log`), 'a');
    const env = {
      PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
      HOME: process.env.HOME ?? '/',
      ...launch.env,
      DROVER_CONTAINER_ID: launch.id,
      DROVER_WORKER_ID: launch.workerId,
      DROVER_EXIT_FILE: exitFile(launch.stateDir, launch.id),
      DROVER_PID_FILE: pidFile(launch.stateDir, launch.id),
    };
    let child: ChildProcess;
    try {
      child = spawn('/bin/sh', ['-c', WRAPPER, 'drover-container', ...command], { detached: true, stdio: ['ignore', log, log], env });
    } finally {
      closeSync(log);
    }
    if (child.pid === undefined) throw new Error(`could not start container ${launch.id}`);
    const process_ = new ContainerProcess(launch.id, child.pid, launch.stateDir, onExit);
    process_.child = child;
    child.on('exit', (code, signal) => process_.finish(code ?? (signal !== null ? 128 + signalNumber(signal) : 1)));
    child.on('error', () => process_.finish(127));
    return process_;
  }

  /** Watch a process a previous run of the agent started (it is not our child). */
  static adopt(id: string, pid: number, stateDir: string, onExit: (exitCode: number) => void): ContainerProcess {
    const adopted = new ContainerProcess(id, pid, stateDir, onExit);
    adopted.poll = setInterval(() => {
      if (!alive(pid)) adopted.finish(readExitCode(stateDir, id) ?? 137);
    }, ADOPTED_POLL_MS);
    return adopted;
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs` if it is still there. */
  stop(graceMs: number): void {
    if (this.ended) return;
    signalGroup(this.pid, 'SIGTERM');
    if (this.killTimer === null) {
      this.killTimer = setTimeout(() => {
        if (!this.ended) signalGroup(this.pid, 'SIGKILL');
      }, graceMs);
    }
  }

  /** Stop watching (the agent is shutting down; the process keeps running for the next agent). */
  detach(): void {
    if (this.poll !== null) clearInterval(this.poll);
    if (this.killTimer !== null) clearTimeout(this.killTimer);
    this.child?.removeAllListeners('exit');
    this.child?.unref();
  }

  private finish(exitCode: number): void {
    if (this.ended) return;
    this.ended = true;
    if (this.poll !== null) clearInterval(this.poll);
    if (this.killTimer !== null) clearTimeout(this.killTimer);
    // The wrapper's own record wins: it saw the command's code, not the shell's.
    this.onExit(readExitCode(this.stateDir, this.id) ?? exitCode);
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

function signalNumber(signal: NodeJS.Signals): number {
  const numbers: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
  return numbers[signal] ?? 15;
}
