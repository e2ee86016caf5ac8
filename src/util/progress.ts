/**
 * Progress for long work: a redrawn line on a terminal, a line every few seconds otherwise (CI logs
 * stay readable and still show that work is moving).
 */
export class Progress {
  private lastDraw = 0;
  private lastDone = -1;
  private readonly started = Date.now();
  private readonly tty: boolean;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly intervalMs = 3_000,
  ) {
    this.tty = Boolean(stream.isTTY);
  }

  update(done: number, extra = ''): void {
    const now = Date.now();
    const interval = this.tty ? 100 : this.intervalMs;
    if (done === this.lastDone || (now - this.lastDraw < interval && done < this.total)) return;
    this.lastDraw = now;
    this.lastDone = done;
    const fraction = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const width = 24;
    const filled = Math.round(fraction * width);
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
    const rate = done / Math.max(0.001, (now - this.started) / 1000);
    const text = `${this.label} ${bar} ${done}/${this.total} ${(fraction * 100).toFixed(0)}% ${Math.round(rate)}/s ${extra}`.trimEnd();
    if (this.tty) this.stream.write(`\r\x1b[2K${text}`);
    else this.stream.write(`${text}\n`);
  }

  /** Draw the final state (once): `count` when the work stopped short of the total. */
  done(extra = '', count = this.total): void {
    if (this.lastDone !== count) {
      this.lastDraw = 0;
      this.lastDone = -1;
      this.update(count, extra);
    }
    if (this.tty) this.stream.write('\n');
  }
}
