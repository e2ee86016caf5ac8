/**
 * The container processes that really run on this machine, read from /proc: every process whose
 * environment names a container (DROVER_CONTAINER_ID, set by the agent for the wrapper and
 * inherited by the command), grouped by process group. A container has one live copy when exactly
 * one process group carries its id, whatever Drover's records say.
 */
import { readdirSync, readFileSync } from 'node:fs';

export interface ContainerCopy {
  readonly containerId: string;
  readonly workerId: string;
  /** Its process group (the wrapper's pid). */
  readonly group: number;
}

const ENV_ID = 'DROVER_CONTAINER_ID=';
const ENV_WORKER = 'DROVER_WORKER_ID=';

/** Every live copy of every container on the machine (optionally only ids with `prefix`). */
export function liveContainerCopies(prefix = ''): ContainerCopy[] {
  return readCopies((containerId) => containerId.startsWith(prefix));
}

/** Every live copy of the containers that run on worker `workerId`. */
export function copiesOnWorker(workerId: string): ContainerCopy[] {
  return readCopies((_, worker) => worker === workerId);
}

/** SIGKILL every container process group on worker `workerId` (a machine that dies). */
export function killWorkerContainers(workerId: string): number {
  const copies = copiesOnWorker(workerId);
  for (const copy of copies) {
    try {
      process.kill(-copy.group, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  return copies.length;
}

function readCopies(wanted: (containerId: string, workerId: string) => boolean): ContainerCopy[] {
  const copies = new Map<string, ContainerCopy>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let environ: string;
    let stat: string;
    try {
      environ = readFileSync(`/proc/${entry}/environ`, 'latin1');
      stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
    } catch {
      continue; // gone meanwhile, or not ours to read
    }
    const variables = environ.split('\0');
    const containerId = variables.find((v) => v.startsWith(ENV_ID))?.slice(ENV_ID.length);
    if (containerId === undefined) continue;
    const workerId = variables.find((v) => v.startsWith(ENV_WORKER))?.slice(ENV_WORKER.length) ?? '';
    if (!wanted(containerId, workerId)) continue;
    // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split after ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') continue; // a zombie runs nothing
    const group = Number(fields[2]);
    copies.set(`${containerId}/${group}`, { containerId, workerId, group });
  }
  return [...copies.values()];
}

/** Container ids with more than one live copy (process group) on the machine. */
export function containersRunningTwice(prefix = ''): Map<string, ContainerCopy[]> {
  const byId = new Map<string, ContainerCopy[]>();
  for (const copy of liveContainerCopies(prefix)) byId.set(copy.containerId, [...(byId.get(copy.containerId) ?? []), copy]);
  return new Map([...byId].filter(([, copies]) => copies.length > 1));
}
