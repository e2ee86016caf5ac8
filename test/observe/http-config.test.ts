/**
 * DROVER_HTTP_PORT and DROVER_HTTP_HOST: defaults, the bad values refused at start-up with the
 * variable's name, and a replica whose port is taken exits 1 saying which setting to change.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { DEFAULT_HTTP_PORT, loadConfig } from '../../src/config.js';
import { natsUrl, redisUrl, testPrefix } from '../support/cluster.js';

const bin = new URL('../../bin/drover.js', import.meta.url).pathname;

describe('HTTP settings', () => {
  it('default to port 9470 on loopback, 0 for a free port, off for none', () => {
    expect(loadConfig({})).toMatchObject({ httpPort: DEFAULT_HTTP_PORT, httpHost: '127.0.0.1' });
    expect(DEFAULT_HTTP_PORT).toBe(9470);
    expect(loadConfig({ DROVER_HTTP_PORT: '0' }).httpPort).toBe(0);
    expect(loadConfig({ DROVER_HTTP_PORT: 'off' }).httpPort).toBeNull();
    expect(loadConfig({ DROVER_HTTP_HOST: '0.0.0.0' }).httpHost).toBe('0.0.0.0');
    expect(loadConfig({ DROVER_HTTP_HOST: '::1' }).httpHost).toBe('::1');
  });

  it.each([
    ['DROVER_HTTP_PORT', '-1', /DROVER_HTTP_PORT must be a whole number between 0 and 65535; got "-1"/],
    ['DROVER_HTTP_PORT', '65536', /DROVER_HTTP_PORT must be a whole number between 0 and 65535/],
    ['DROVER_HTTP_PORT', 'http', /DROVER_HTTP_PORT must be a whole number/],
    ['DROVER_HTTP_PORT', '80.5', /DROVER_HTTP_PORT must be a whole number/],
    ['DROVER_HTTP_HOST', 'local host', /DROVER_HTTP_HOST must be an address or host name; got "local host"/],
    ['DROVER_HTTP_HOST', 'a/b', /DROVER_HTTP_HOST must be an address or host name/],
  ])('refuses %s=%s', (name, value, message) => {
    expect(() => loadConfig({ [name]: value })).toThrow(message);
  });

  it('a replica whose port is taken exits 1 and names the setting', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const env = { ...process.env, REDIS_URL: redisUrl(), NATS_URL: natsUrl(), DROVER_PREFIX: testPrefix('port'), DROVER_SHARDS: '2', DROVER_HTTP_PORT: String(port) };
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        execFile(process.execPath, [bin, 'replica'], { env, timeout: 30_000 }, (error, _stdout, stderr) =>
          resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stderr }),
        );
      });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`cannot serve HTTP on 127.0.0.1:${port} (DROVER_HTTP_PORT / DROVER_HTTP_HOST)`);
      expect(result.stderr).toMatch(/EADDRINUSE/);
    } finally {
      taken.close();
    }
  });
});
