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
    if (containerId === undefined || !containerId.startsWith(prefix)) continue;
    // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split after ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') continue; // a zombie runs nothing
    const group = Number(fields[2]);
    const workerId = variables.find((v) => v.startsWith(ENV_WORKER))?.slice(ENV_WORKER.length) ?? '';
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
