/**
 * SqliteStore: the conformance suite on a real file, plus SQLite-specific behaviour:
 * durability across SIGKILL (child process), reopening, the exclusive lock, and a watch
 * consumer that falls behind its in-memory queue.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { isStoreError } from '../errors.ts';
import { record, runStoreConformance } from '../conformance.ts';
import { SqliteStore } from './sqlite-store.ts';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');

let dir = '';
let n = 0;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'vessel-sqlite-test-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));
const freshPath = () => join(dir, `store-${n++}.db`);

runStoreConformance('sqlite', async () => {
  const store = new SqliteStore(freshPath());
  return { store, cleanup: () => store.close() };
});

describe('SqliteStore', () => {
  it('keeps every acknowledged write when the writing process is SIGKILLed', async () => {
    const path = freshPath();
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'durability-child.ts'), path], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    // Start the clock at the first ack, so tsx's startup time doesn't count.
    const deadline = Date.now() + 15000;
    while (out === '' && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 10));
    assert.notEqual(out, '', `child never acknowledged a write: ${err}`);
    await new Promise((r) => setTimeout(r, 500));
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');

    const lines = out.split('\n').slice(0, -1); // the last element is '' or a torn line
    const acked = new Map<string, number>();
    let counterValue = -1;
    let counterRev = 0;
    for (const line of lines) {
      const [key, rev, value] = line.split(' ');
      if (key === '/d/counter') {
        counterValue = Number(value);
        counterRev = Number(rev);
      } else acked.set(key, Number(rev));
    }
    assert.ok(acked.size > 50, `only ${acked.size} writes acknowledged`);

    const store = new SqliteStore(path);
    try {
      const maxAcked = Math.max(counterRev, ...acked.values());
      const current = await store.currentRevision();
      assert.ok(current >= maxAcked, `revision ${current} < last acknowledged ${maxAcked}`);
      assert.ok(current >= acked.size);
      for (const [key, rev] of acked) {
        const kv = await store.get(key);
        assert.ok(kv, `acknowledged key ${key} lost`);
        assert.equal(kv.createRevision, rev);
      }
      const counter = await store.get('/d/counter');
      assert.ok(counter && Number(counter.value) >= counterValue);

      // Consistency: replaying the whole log reproduces the current table exactly.
      const replayed = new Map<string, string>();
      const replay = record(store, '', 0);
      const events = await replay.waitFor(current, 10000);
      replay.watch.close();
      assert.deepEqual(
        events.map((e) => e.kv.modRevision),
        Array.from({ length: current }, (_, i) => i + 1),
      );
      for (const e of events) {
        if (e.type === 'put') replayed.set(e.kv.key, e.kv.value);
        else replayed.delete(e.kv.key);
      }
      const listed = await store.list('');
      assert.deepEqual(new Map(listed.items.map((kv) => [kv.key, kv.value])), replayed);
    } finally {
      await store.close();
    }
    const db = new Database(path, { readonly: true });
    try {
      assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
    } finally {
      db.close();
    }
  });

  it('reopens with the same data, revisions, history and compaction', async () => {
    const path = freshPath();
    const first = new SqliteStore(path);
    const a = await first.create('/a', '1');
    await first.update('/a', '2');
    await first.create('/b', '1');
    await first.compact(a.modRevision);
    const rev = await first.currentRevision();
    await first.close();

    const second = new SqliteStore(path);
    try {
      assert.equal(await second.currentRevision(), rev);
      assert.equal(await second.compactedRevision(), a.modRevision);
      assert.deepEqual(
        (await second.list('')).items.map((kv) => [kv.key, kv.value]),
        [
          ['/a', '2'],
          ['/b', '1'],
        ],
      );
      const w = record(second, '', a.modRevision);
      const events = await w.waitFor(2);
      assert.deepEqual(
        events.map((e) => [e.type, e.kv.key, e.kv.value]),
        [
          ['put', '/a', '2'],
          ['put', '/b', '1'],
        ],
      );
      w.watch.close();
      const next = await second.create('/c', '1');
      assert.equal(next.modRevision, rev + 1);
    } finally {
      await second.close();
    }
  });

  it('refuses a second open of the same file while the first is open', async () => {
    const path = freshPath();
    const first = new SqliteStore(path);
    try {
      assert.throws(
        () => new SqliteStore(path, { lockTimeoutMs: 50 }),
        (e: unknown) => isStoreError(e, 'Unavailable'),
      );
    } finally {
      await first.close();
    }
    const again = new SqliteStore(path);
    await again.close();
  });

  it('re-reads from the log, in order and without loss, when a watcher falls behind its queue', async () => {
    const store = new SqliteStore(':memory:', { watchQueueLimit: 10 });
    try {
      const w = record(store, '/q/', 0);
      await store.create('/q/first', 'first');
      await w.waitFor(1); // now the watch is live, fed by commits
      // Awaited writes in a loop never yield to setImmediate, so its queue overflows.
      for (let i = 0; i < 500; i++) await store.create(`/q/${i}`, String(i));
      await store.create('/other', 'x');
      const events = await w.waitFor(501);
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(events.length, 501);
      assert.deepEqual(
        events.map((e) => e.kv.value),
        ['first', ...Array.from({ length: 500 }, (_, i) => String(i))],
      );
      assert.deepEqual(
        events.map((e) => e.kv.modRevision),
        Array.from({ length: 501 }, (_, i) => i + 1),
      );
      w.watch.close();
    } finally {
      await store.close();
    }
  });
});
