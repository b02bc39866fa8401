/** What the source agent publishes from QEMU's query-migrate and query-block-jobs. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { progressFrom } from './migration-progress.ts';

test('query-migrate becomes bytes and bytes/s (dirty pages × page size, Mbit/s kept); disks only when a mirror runs', () => {
  const at = new Date('2026-12-06T16:00:00Z');
  const info = {
    status: 'active',
    'total-time': 1234,
    ram: {
      total: 268_435_456,
      remaining: 100_000_000,
      transferred: 170_000_000,
      'dirty-pages-rate': 250,
      'page-size': 4096,
      mbps: 812.456,
      'dirty-sync-count': 2,
    },
  };
  assert.deepEqual(progressFrom(info, [{ type: 'stream', len: 10, offset: 1 }], at), {
    at: '2026-12-06T16:00:00.000Z',
    status: 'active',
    elapsedMs: 1234,
    memory: { total: 268_435_456, remaining: 100_000_000, transferred: 170_000_000, dirtyRate: 1_024_000, throughputMbps: 812.5, iterations: 2 },
  });
  const mirrored = progressFrom(
    info,
    [
      { type: 'mirror', len: 1000, offset: 250 },
      { type: 'mirror', len: 3000, offset: 3000 },
    ],
    at,
  );
  assert.deepEqual(mirrored.disk, { total: 4000, remaining: 750 });
  const done = progressFrom({ status: 'completed', downtime: 42, ram: {} }, [], at);
  assert.equal(done.downtimeMs, 42);
  assert.deepEqual(done.memory, { total: 0, remaining: 0, transferred: 0, dirtyRate: 0, throughputMbps: 0 });
});
