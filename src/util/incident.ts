/**
 * One log line when something starts going wrong, one when it is over: an outage seen by a loop
 * that retries every few hundred milliseconds must not write a line per retry (or per shard per
 * retry), or the one line that matters drowns. Repeats in between are counted, not logged.
 */
import type { Logger } from './log.js';

export class Incident {
  private since: number | null = null;
  private repeats = 0;

  constructor(
    private readonly log: Logger,
    /** What fails, for the messages: "lease acquisition", "heartbeat", ... */
    private readonly what: string,
  ) {}

  get active(): boolean {
    return this.since !== null;
  }

  /** A failure: logged at warn if it starts an incident, counted otherwise. */
  fail(error: unknown, fields: Record<string, unknown> = {}): void {
    if (this.since !== null) {
      this.repeats += 1;
      return;
    }
    this.since = Date.now();
    this.repeats = 0;
    this.log.warn({ err: error, ...fields }, `${this.what} failing`);
  }

  /** A success: ends the incident, if one is open, with one info line. */
  ok(fields: Record<string, unknown> = {}): void {
    if (this.since === null) return;
    this.log.info({ ...fields, failedForMs: Date.now() - this.since, repeats: this.repeats }, `${this.what} works again`);
    this.since = null;
    this.repeats = 0;
  }
}
