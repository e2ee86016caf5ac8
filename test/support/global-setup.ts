/**
 * Starts one private redis-server and nats-server for the whole run (on free ports), unless
 * REDIS_URL / NATS_URL are given. Each test file works under its own key/subject prefix.
 */
import type { TestProject } from 'vitest/node';
import { startNats, startRedis, type ServerProcess } from '../../infra/servers.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    natsUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started: ServerProcess[] = [];
  let redisUrl = process.env.REDIS_URL;
  let natsUrl = process.env.NATS_URL;
  if (!redisUrl) {
    const redis = await startRedis();
    started.push(redis);
    redisUrl = redis.url;
  }
  if (!natsUrl) {
    const nats = await startNats();
    started.push(nats);
    natsUrl = nats.url;
  }
  project.provide('redisUrl', redisUrl);
  project.provide('natsUrl', natsUrl);
  return async () => {
    await Promise.all(started.map((server) => server.stop()));
  };
}
