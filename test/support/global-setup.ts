/**
 * Starts one private redis-server and nats-server for the whole run (on free ports), unless
 * REDIS_URL / NATS_URL are given. Each test file works under its own key/subject prefix.
 */
import type { TestProject } from 'vitest/node';
import { serversFromEnv } from '../../infra/servers.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    natsUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const { redisUrl, natsUrl, started } = await serversFromEnv();
  project.provide('redisUrl', redisUrl);
  project.provide('natsUrl', natsUrl);
  return async () => {
    await Promise.all(started.map((server) => server.stop()));
  };
}
