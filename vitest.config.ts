import { defineConfig } from 'vitest/config';

/**
 * Two groups. Most files share one private Redis and NATS and run two at a time (a 2-core box).
 * The files that measure time under faults (how long a shard stays dark, how often a probe fails,
 * how often a refusal is UNAVAILABLE) run afterwards, one at a time: run beside other files, they
 * measure this machine's contention instead of Drover.
 */
const TIMED = ['test/chaos/chaos.test.ts', 'test/replica/partitions.test.ts', 'test/replica/churn-answers.test.ts'];

const shared = {
  globalSetup: ['test/support/global-setup.ts'],
  testTimeout: 60_000,
  hookTimeout: 60_000,
};

export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      { test: { ...shared, name: 'main', include: ['test/**/*.test.ts'], exclude: TIMED, maxWorkers: 2, sequence: { groupOrder: 0 } } },
      { test: { ...shared, name: 'timed', include: TIMED, fileParallelism: false, sequence: { groupOrder: 1 } } },
    ],
  },
});
