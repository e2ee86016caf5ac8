import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests share one private Redis and NATS; two files at a time suits a 2-core box.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
