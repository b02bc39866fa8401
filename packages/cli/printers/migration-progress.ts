/**
 * A live migration's progress line for `vessel migrate` and `vessel describe vmim`, from the
 * `vessel.io/migration-progress` annotation the source agent writes: memory remaining (MiB and
 * %), disk remaining when disks are mirrored, the guest's dirty rate and the throughput. On a
 * terminal one line redrawn in place; otherwise a line every few seconds (logs read those).
 */
import type { migration } from '@vessel/api';
import { formatBytes } from './progress.ts';

type MigrationProgress = migration.MigrationProgress;

const pct = (part: number, total: number): number => (total > 0 ? Math.min(100, Math.max(0, (part / total) * 100)) : 0);

/** One line: `memory [####······] 61% left 78.1 MiB of 128.0 MiB · disk … · dirty 2.0 MiB/s · 812.4 Mbit/s`. */
export function formatMigrationProgress(p: MigrationProgress, barWidth = 20): string {
  const m = p.memory;
  const left = pct(m.remaining, m.total);
  // The bar fills as memory is sent; the remaining may grow again as the guest dirties pages.
  const fill = m.total > 0 ? Math.round(((100 - left) / 100) * barWidth) : 0;
  const parts = [
    `memory [${'#'.repeat(fill)}${'·'.repeat(barWidth - fill)}] ${formatBytes(m.remaining)} of ${formatBytes(m.total)} left (${left.toFixed(0)}%)`,
  ];
  if (p.disk) parts.push(`disk ${formatBytes(p.disk.remaining)} of ${formatBytes(p.disk.total)} left (${pct(p.disk.remaining, p.disk.total).toFixed(0)}%)`);
  parts.push(`dirty ${formatBytes(m.dirtyRate)}/s`, `${m.throughputMbps.toFixed(1)} Mbit/s`);
  if (m.iterations !== undefined) parts.push(`pass ${m.iterations}`);
  if (p.status !== 'active') parts.push(p.status);
  return parts.join(' · ');
}

/** Shows progress as it comes: redrawn on a TTY, else a line when `everyMs` has passed since the last. */
export class MigrationProgressLine {
  private lastLine = -Infinity;
  private lastAt = '';
  private drawn = false;
  private readonly tty: boolean;

  constructor(
    private readonly stream: Pick<NodeJS.WriteStream, 'write' | 'isTTY'> = process.stderr,
    private readonly everyMs = 5000,
    private readonly now: () => number = Date.now,
  ) {
    this.tty = !!stream.isTTY;
  }

  /** A progress read from the migration object; the same one twice is drawn once. */
  update(p: MigrationProgress | undefined): void {
    if (!p || p.at === this.lastAt) return;
    this.lastAt = p.at;
    if (this.tty) {
      this.stream.write(`\r${formatMigrationProgress(p)}\x1b[K`);
      this.drawn = true;
      return;
    }
    if (this.now() - this.lastLine < this.everyMs) return;
    this.lastLine = this.now();
    this.stream.write(`${formatMigrationProgress(p)}\n`);
  }

  /** Before another line is printed: the redrawn line is ended. */
  clear(): void {
    if (!this.drawn) return;
    this.stream.write('\r\x1b[K');
    this.drawn = false;
  }
}
