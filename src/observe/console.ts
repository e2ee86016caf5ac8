/**
 * `drover console`: the whole cluster in one page, from any machine that reaches NATS. It has no
 * replica of its own: it serves the debug page in console mode, whose every figure (replicas,
 * shard ownership, members, each replica's page) is collected over NATS from the replicas' status
 * replies and labelled so.
 */
import type { AddressInfo } from 'node:net';
import type { DroverClient } from '../client/drover-client.js';
import { ObserveServer } from './http-server.js';

/** The console's port unless --port says otherwise (next to the replicas' default 9470). */
export const DEFAULT_CONSOLE_PORT = 9469;
/** How long the console waits for the replicas' status replies. */
const STATUS_WAIT_MS = 300;

export async function startConsole(client: DroverClient, host: string, port: number): Promise<{ server: ObserveServer; address: AddressInfo }> {
  const server = new ObserveServer({
    host,
    port,
    label: `console (prefix ${client.subjects.prefix})`,
    cluster: () => client.clusterStatus(STATUS_WAIT_MS),
  });
  const address = await server.start();
  return { server, address };
}
