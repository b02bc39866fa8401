import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import type { QmpEvent } from '../qmp/client.ts';
import { MigrationTimeline, parseTimeline, pauseSegments, targetSettled } from './migration-timeline.ts';

const at = (ms: number) => ({ seconds: Math.floor(ms / 1000), microseconds: (ms % 1000) * 1000 });
const ev = (event: string, ms: number, data: Record<string, unknown> = {}): QmpEvent => ({ event, data, timestamp: at(ms) });

test('a side’s timeline keeps the first time of each event, logs it and parses back', () => {
  const qmp = new EventEmitter();
  const tl = new MigrationTimeline().attach(qmp);
  qmp.emit('event', ev('STOP', 1_000_000));
  qmp.emit('event', ev('MIGRATION', 1_000_004, { status: 'setup' }));
  qmp.emit('event', ev('MIGRATION', 1_000_050, { status: 'active' }));
  qmp.emit('event', ev('STOP', 1_000_300)); // the switch-over's: not the pause's start
  qmp.emit('event', ev('MIGRATION', 1_000_400, { status: 'completed' }));
  tl.detach();
  qmp.emit('event', ev('RESUME', 1_000_500)); // after detach: not recorded
  assert.deepEqual(tl.marks, { stop: 1_000_000, setup: 1_000_004, active: 1_000_050, completed: 1_000_400 });
  const line = tl.line('source', '123 bytes sent');
  assert.match(line, /stop→setup 4 ms, setup→active \(connect, TLS handshake\) 46 ms, active→completed \(transfer\) 350 ms; 123 bytes sent$/);
  assert.deepEqual(parseTimeline(`[node-0] migration: default/x: ${line}`), { side: 'source', marks: tl.marks });
  assert.equal(parseTimeline('migration: default/x: sending'), undefined);
});

test('the pause joins both sides; a missing mark gives NaN', () => {
  const src = { stop: 100, setup: 104, active: 150, completed: 500 };
  const dst = { active: 152, completed: 510, resume: 530 };
  assert.deepEqual(pauseSegments(src, dst), {
    stopToSetup: 4,
    setupToActive: 46,
    transfer: 350,
    srcToDstCompleted: 10,
    completedToResume: 20,
    toPostcopy: NaN,
    postcopyToResume: NaN,
    total: 430,
  });
  assert.ok(Number.isNaN(pauseSegments(src, { completed: 510 }).total));
});

test('post-copy: the target resumes before it completes; its line is due once both are seen', () => {
  const src = { stop: 100, setup: 104, active: 150, 'postcopy-active': 160, completed: 900 };
  const dst = { active: 152, 'postcopy-active': 170, resume: 250 };
  assert.equal(targetSettled(dst), false);
  const seg = pauseSegments(src, { ...dst, completed: 910 });
  assert.equal(seg.total, 150);
  assert.equal(seg.toPostcopy, 10);
  assert.equal(seg.postcopyToResume, 90);
  assert.equal(seg.transfer, 750);
  assert.equal(targetSettled({ ...dst, completed: 910 }), true);
  const tl = new MigrationTimeline();
  for (const [k, v] of Object.entries({ ...dst, completed: 910 })) tl.mark(k, v);
  // completed→resume would be negative: left out; postcopy-active→resume shown.
  assert.match(tl.line('target'), /postcopy-active→resume 80 ms$/);
});
