/** The migration progress line of `vessel migrate` / `vessel describe vmim`: figures, and when it is drawn. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatMigrationProgress, MigrationProgressLine } from './migration-progress.ts';

const MiB = 1024 * 1024;
const progress = (at: string, remaining = 48 * MiB) => ({
  at,
  status: 'active',
  memory: { total: 128 * MiB, remaining, transferred: 80 * MiB, dirtyRate: 2 * MiB, throughputMbps: 812.44, iterations: 1 },
});

test('memory remaining in MiB and %, the bar filled as memory is sent, dirty rate and throughput; disk only when mirrored', () => {
  assert.equal(formatMigrationProgress(progress('t1'), 10), 'memory [######····] 48.0 MiB of 128.0 MiB left (38%) · dirty 2.0 MiB/s · 812.4 Mbit/s · pass 1');
  const withDisk = { ...progress('t2', 0), status: 'device', disk: { total: 1024 * MiB, remaining: 256 * MiB } };
  assert.equal(
    formatMigrationProgress(withDisk, 4),
    'memory [####] 0 B of 128.0 MiB left (0%) · disk 256.0 MiB of 1.0 GiB left (25%) · dirty 2.0 MiB/s · 812.4 Mbit/s · pass 1 · device',
  );
  // Nothing known yet (setup): no division by zero.
  assert.match(
    formatMigrationProgress({ at: 't', status: 'setup', memory: { total: 0, remaining: 0, transferred: 0, dirtyRate: 0, throughputMbps: 0 } }, 2),
    /^memory \[··\] 0 B of 0 B left \(0%\)/,
  );
});

test('a TTY gets one line redrawn in place; a pipe a line every few seconds; the same figures are drawn once', () => {
  const tty: string[] = [];
  const line = new MigrationProgressLine({ isTTY: true, write: (s: string) => tty.push(s) > 0 } as never);
  line.update(progress('t1'));
  line.update(progress('t1'));
  line.update(progress('t2', 10 * MiB));
  line.update(undefined);
  line.clear();
  assert.equal(tty.length, 3);
  assert.ok(tty[0].startsWith('\r') && tty[0].endsWith('\x1b[K') && !tty[0].includes('\n'));
  assert.equal(tty[2], '\r\x1b[K');

  let now = 0;
  const piped: string[] = [];
  const plain = new MigrationProgressLine({ isTTY: false, write: (s: string) => piped.push(s) > 0 } as never, 5000, () => now);
  plain.update(progress('a'));
  now = 1000;
  plain.update(progress('b'));
  now = 5000;
  plain.update(progress('c'));
  plain.clear();
  assert.equal(piped.length, 2);
  assert.ok(piped.every((l) => l.endsWith('\n') && !l.includes('\r')));
});
