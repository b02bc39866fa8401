/**
 * A byte progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise
 * (logs and tests read those). Shows bytes, percentage and the rate since the start.
 */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export class ProgressBar {
  private readonly started = Date.now();
  private lastDraw = 0;
  private lastDecile = -1;
  private readonly tty: boolean;

  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = !!stream.isTTY;
  }

  update(done: number, total: number): void {
    const pct = total > 0 ? Math.min(100, (done / total) * 100) : 0;
    const now = Date.now();
    const rate = done / Math.max(0.001, (now - this.started) / 1000);
    const text = `${this.label} ${pct.toFixed(1).padStart(5)}% ${formatBytes(done)} / ${formatBytes(total)} ${formatBytes(rate)}/s`;
    if (this.tty) {
      if (now - this.lastDraw < 100 && done < total) return;
      this.lastDraw = now;
      const width = 30;
      const fill = Math.round((pct / 100) * width);
      this.stream.write(`\r[${'='.repeat(Math.max(0, fill - 1))}${fill ? '>' : ''}${' '.repeat(width - fill)}] ${text}\x1b[K`);
      return;
    }
    const decile = Math.floor(pct / 10);
    if (decile !== this.lastDecile) {
      this.lastDecile = decile;
      this.stream.write(`${text}\n`);
    }
  }

  finish(message: string): void {
    this.stream.write(`${this.tty ? '\r\x1b[K' : ''}${message}\n`);
  }
}
