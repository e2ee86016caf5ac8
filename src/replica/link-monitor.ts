/**
 * Watches one link of a replica (to NATS or to Redis) with a round trip every `intervalMs`, and
 * says when it is cut and when it is back. A silent cut (a partition that drops packets, a frozen
 * proxy) closes no socket and raises no error: only a round trip that does not come back shows
 * it. A link whose round trips all come back late (slower than `slowMs`) counts as cut too: on it,
 * lease extensions time out on the client while they still land in Redis, and requests wait for
 * longer than clients do.
 *
 * Cut: no round trip faster than `slowMs` has completed for `cutAfterMs`. Back: `backAfter`
 * round trips in a row completed faster than `slowMs` (one lucky probe is not a healed link).
 *
 * A round trip is measured in this process, so a busy event loop makes it look long: the reply
 * arrived, but its callback ran late. A replica saturated by its own work is not cut off, and must
 * not give up its shards for it. So the event loop's delay is watched too, and a late probe taken
 * while the loop itself lagged by more than half the slow bound says nothing about the link.
 */
import type { Logger } from '../util/log.js';
import { withTimeout } from '../util/with-timeout.js';

/** How often the event loop's responsiveness is sampled (a timer that should fire this often). */
const LOOP_BEAT_MS = 10;

/**
 * One beat per process, however many monitors listen: each beat tells every monitor how long the
 * loop stalled since the previous beat.
 */
const stallListeners = new Set<(stallMs: number) => void>();
let beatTimer: NodeJS.Timeout | null = null;
let lastBeatAt = 0;

function listenForStalls(listener: (stallMs: number) => void): () => void {
  stallListeners.add(listener);
  if (beatTimer === null) {
    lastBeatAt = Date.now();
    beatTimer = setInterval(() => {
      const now = Date.now();
      const stall = now - lastBeatAt - LOOP_BEAT_MS;
      lastBeatAt = now;
      for (const notify of stallListeners) notify(stall);
    }, LOOP_BEAT_MS);
    beatTimer.unref();
  }
  return () => {
    stallListeners.delete(listener);
    if (stallListeners.size === 0 && beatTimer !== null) {
      clearInterval(beatTimer);
      beatTimer = null;
    }
  };
}

export interface LinkMonitorOptions {
  /** "NATS" or "Redis", for the log lines. */
  readonly name: string;
  /** One round trip on the link; rejects or never settles when the link is down. */
  readonly probe: () => Promise<unknown>;
  readonly intervalMs: number;
  readonly cutAfterMs: number;
  readonly slowMs: number;
  readonly backAfter: number;
  readonly log: Logger;
  readonly onCut: () => void;
  readonly onBack: () => void;
}

export class LinkMonitor {
  private timer: NodeJS.Timeout | null = null;
  private probing = false;
  private lastGoodAt = Date.now();
  private lastTickAt = Date.now();
  private goodInARow = 0;
  private cutAt: number | null = null;
  private lastRoundTripMs: number | null = null;
  /** Stops listening to the process's beat; null while stopped. */
  private unlisten: (() => void) | null = null;
  /** The longest stall of the event loop since the current probe began. */
  private longestStallMs = 0;
  readonly stats = { probes: 0, failures: 0, cuts: 0, inconclusive: 0 };

  constructor(private readonly options: LinkMonitorOptions) {}

  get cut(): boolean {
    return this.cutAt !== null;
  }

  /** For status replies: the last round trip and whether the link counts as cut. */
  describe(): { cut: boolean; lastRoundTripMs: number | null; sinceGoodMs: number } {
    return { cut: this.cut, lastRoundTripMs: this.lastRoundTripMs, sinceGoodMs: Date.now() - this.lastGoodAt };
  }

  start(): void {
    if (this.timer !== null) return;
    this.lastGoodAt = Date.now();
    this.unlisten = listenForStalls((stallMs) => {
      if (stallMs > this.longestStallMs) this.longestStallMs = stallMs;
    });
    this.timer = setInterval(() => this.tick(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.unlisten?.();
    this.unlisten = null;
  }

  private tick(): void {
    const now = Date.now();
    // A tick far later than scheduled means this process itself stalled (SIGSTOP, a long GC, an
    // overloaded machine): that says nothing about the link, so give it a fresh window.
    if (now - this.lastTickAt > this.options.cutAfterMs) this.lastGoodAt = now;
    this.lastTickAt = now;
    this.check();
    if (this.probing) return; // one probe at a time: a hung probe is itself the signal
    this.probing = true;
    const started = Date.now();
    this.longestStallMs = 0;
    this.stats.probes += 1;
    // Bounded: a probe that never settles stops counting after cutAfterMs (the link is cut by then).
    withTimeout(this.options.probe(), this.options.cutAfterMs, `no answer in ${this.options.cutAfterMs} ms`)
      .then(
        () => {
          const roundTrip = Date.now() - started;
          this.lastRoundTripMs = roundTrip;
          return roundTrip <= this.options.slowMs;
        },
        () => false,
      )
      // Judge a late probe a moment later: a stall that just ended is seen by the next beat,
      // which runs after this promise's callback.
      .then((fast) => (fast ? this.good() : new Promise<void>((resolve) => setTimeout(() => resolve(this.lateOrBad()), 2 * LOOP_BEAT_MS))))
      .finally(() => {
        this.probing = false;
        this.check();
      });
  }

  private good(): void {
    this.lastGoodAt = Date.now();
    this.goodInARow += 1;
    if (this.cutAt !== null && this.goodInARow >= this.options.backAfter) {
      const cutForMs = Date.now() - this.cutAt;
      this.cutAt = null;
      this.options.log.info({ link: this.options.name, cutForMs, roundTripMs: this.lastRoundTripMs }, `link to ${this.options.name} is back`);
      this.options.onBack();
    }
  }

  /** A probe that failed or came back late: the link's fault, unless this process was the slow one. */
  private lateOrBad(): void {
    if (this.longestStallMs > this.options.slowMs / 2) {
      // The event loop itself stalled: give the link a fresh window rather than blame it.
      this.stats.inconclusive += 1;
      this.lastGoodAt = Date.now();
      return;
    }
    this.stats.failures += 1;
    this.goodInARow = 0;
  }

  private check(): void {
    if (this.cutAt !== null || Date.now() - this.lastGoodAt <= this.options.cutAfterMs) return;
    this.cutAt = Date.now();
    this.stats.cuts += 1;
    this.goodInARow = 0;
    this.options.log.warn(
      { link: this.options.name, sinceGoodMs: this.cutAt - this.lastGoodAt, lastRoundTripMs: this.lastRoundTripMs, slowMs: this.options.slowMs },
      `cut off from ${this.options.name}: no round trip under ${this.options.slowMs} ms for ${this.options.cutAfterMs} ms`,
    );
    this.options.onCut();
  }
}
