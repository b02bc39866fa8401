/**
 * The Store conformance suite: one set of node:test tests every backend must pass.
 *
 * Each test opens its own store through `open` and cleans it up, so tests are independent.
 * A backend whose stores share state (several EtcdStores on one etcd, under different key
 * prefixes) still passes, because no test assumes absolute revision numbers; tests do assume
 * that nothing else writes or compacts while they run.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isStoreError, type StoreErrorCode } from './errors.ts';
import type { KV, Store, Watch, WatchEvent } from './types.ts';

export type OpenStore = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Asserts that `promise` rejects with StoreError `code`. */
export async function rejectsWith(promise: Promise<unknown>, code: StoreErrorCode): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isStoreError(err, code), `expected StoreError ${code}, got ${String(err)}`);
    return true;
  });
}

/** A watch that records what it receives. */
export interface Recorder {
  events: WatchEvent[];
  errors: Error[];
  watch: Watch;
  /** Resolves once at least n events arrived; rejects on a watch error or after timeoutMs. */
  waitFor(n: number, timeoutMs?: number): Promise<WatchEvent[]>;
  /** Resolves with the watch's error; rejects after timeoutMs. */
  waitError(timeoutMs?: number): Promise<Error>;
}

export function record(store: Store, prefix: string, fromRevision: number): Recorder {
  const events: WatchEvent[] = [];
  const errors: Error[] = [];
  const poll = async <T>(ready: () => T | undefined, what: string, timeoutMs: number): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = ready();
      if (value !== undefined) return value;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (have ${events.length} events, errors: ${errors.join('; ')})`);
      await sleep(5);
    }
  };
  const watch = store.watch(prefix, {
    fromRevision,
    onEvent: (e) => events.push(e),
    onError: (e) => errors.push(e),
  });
  return {
    events,
    errors,
    watch,
    waitFor: (n, timeoutMs = 5000) =>
      poll(
        () => {
          if (errors.length > 0) throw errors[0];
          return events.length >= n ? events : undefined;
        },
        `${n} events`,
        timeoutMs,
      ),
    waitError: (timeoutMs = 5000) => poll(() => errors[0], 'a watch error', timeoutMs),
  };
}

/** Small deterministic PRNG (mulberry32) so randomized tests are reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const keysOf = (items: KV[]) => items.map((kv) => kv.key);

export function runStoreConformance(name: string, open: OpenStore): void {
  /** Runs fn against a fresh store and always cleans up. */
  const withStore = (fn: (store: Store) => Promise<void>) => async () => {
    const { store, cleanup } = await open();
    try {
      await fn(store);
    } finally {
      await cleanup();
    }
  };

  describe(`Store conformance: ${name}`, () => {
    it(
      'creates, reads, updates and deletes, with NotFound/AlreadyExists',
      withStore(async (s) => {
        assert.equal(await s.get('/k'), undefined);
        const created = await s.create('/k', 'v1');
        assert.deepEqual(created, { key: '/k', value: 'v1', createRevision: created.modRevision, modRevision: created.modRevision });
        assert.deepEqual(await s.get('/k'), created);
        await rejectsWith(s.create('/k', 'again'), 'AlreadyExists');

        const updated = await s.update('/k', 'v2');
        assert.equal(updated.value, 'v2');
        assert.equal(updated.createRevision, created.createRevision);
        assert.ok(updated.modRevision > created.modRevision);
        assert.deepEqual(await s.get('/k'), updated);

        const deleted = await s.delete('/k');
        assert.equal(deleted.key, '/k');
        assert.equal(deleted.value, 'v2', 'delete returns the value it removed');
        assert.equal(deleted.createRevision, created.createRevision);
        assert.ok(deleted.modRevision > updated.modRevision, 'modRevision is the delete revision');
        assert.equal(deleted.modRevision, await s.currentRevision());
        assert.equal(await s.get('/k'), undefined);

        await rejectsWith(s.update('/k', 'x'), 'NotFound');
        await rejectsWith(s.delete('/k'), 'NotFound');
        await rejectsWith(s.update('/k', 'x', deleted.modRevision), 'NotFound');
        await rejectsWith(s.delete('/k', deleted.modRevision), 'NotFound');

        const recreated = await s.create('/k', 'v3');
        assert.ok(recreated.createRevision > deleted.modRevision, 'recreating starts a new createRevision');
      }),
    );

    it(
      'round-trips empty, unicode and large values',
      withStore(async (s) => {
        const values = ['', 'héllo wörld ✓ 😀 \u0000 nul', JSON.stringify({ big: 'x'.repeat(200_000) })];
        for (const [i, value] of values.entries()) {
          await s.create(`/v/${i}`, value);
          assert.equal((await s.get(`/v/${i}`))?.value, value);
        }
        const key = '/v/ключ/😀';
        await s.create(key, 'unicode key');
        assert.equal((await s.get(key))?.value, 'unicode key');
        assert.deepEqual(keysOf((await s.list('/v/ключ/')).items), [key]);
      }),
    );

    it(
      'shares one monotonically increasing revision across keys; failed writes do not bump it',
      withStore(async (s) => {
        const r0 = await s.currentRevision();
        const a = await s.create('/rev/a', '1');
        const b = await s.create('/rev/b', '1');
        const a2 = await s.update('/rev/a', '2');
        assert.ok(r0 < a.modRevision && a.modRevision < b.modRevision && b.modRevision < a2.modRevision);
        assert.equal(await s.currentRevision(), a2.modRevision);

        await rejectsWith(s.create('/rev/a', 'dup'), 'AlreadyExists');
        await rejectsWith(s.update('/rev/b', 'x', a.modRevision), 'Conflict');
        await rejectsWith(s.delete('/rev/none'), 'NotFound');
        assert.equal(await s.currentRevision(), a2.modRevision);

        const list = await s.list('/rev/');
        assert.equal(list.revision, a2.modRevision);
        const d = await s.delete('/rev/b');
        assert.ok(d.modRevision > a2.modRevision);
        assert.equal(await s.currentRevision(), d.modRevision);
      }),
    );

    it(
      'lists keys under a prefix in byte order, respecting prefix boundaries',
      withStore(async (s) => {
        for (const key of ['/a/c', '/a/bc', '/a/b/2', '/a/b', '/a/b/1', '/ab']) await s.create(key, key);
        assert.deepEqual(keysOf((await s.list('/a/b/')).items), ['/a/b/1', '/a/b/2']);
        assert.deepEqual(keysOf((await s.list('/a/b')).items), ['/a/b', '/a/b/1', '/a/b/2', '/a/bc']);
        assert.deepEqual(keysOf((await s.list('/a/')).items), ['/a/b', '/a/b/1', '/a/b/2', '/a/bc', '/a/c']);
        assert.deepEqual(keysOf((await s.list('/a/b/1')).items), ['/a/b/1']);
        assert.deepEqual((await s.list('/zzz')).items, []);
        assert.deepEqual(keysOf((await s.list('')).items), ['/a/b', '/a/b/1', '/a/b/2', '/a/bc', '/a/c', '/ab']);
        const all = await s.list('/a/');
        assert.equal(all.more, false);
        assert.equal(all.revision, await s.currentRevision());
        assert.deepEqual(all.items[0], await s.get('/a/b'));

        // Byte (code point) order, as etcd sorts: U+FF21 sorts before U+1F600 here, although
        // JavaScript's UTF-16 comparison would put it after.
        const unicode = ['/u/z', '/u/é', '/u/\uff21', '/u/😀', '/u/😀/x'];
        for (const key of [...unicode].reverse()) await s.create(key, '');
        assert.deepEqual(keysOf((await s.list('/u/')).items), unicode);
        assert.deepEqual(keysOf((await s.list('/u/\uff21')).items), ['/u/\uff21']);
        assert.deepEqual(keysOf((await s.list('/u/😀')).items), ['/u/😀', '/u/😀/x']);
        assert.deepEqual(keysOf((await s.list('/u/', { startAfter: '/u/é', limit: 2 })).items), ['/u/\uff21', '/u/😀']);
      }),
    );

    it(
      'pages with limit/startAfter at a fixed revision while writes go on',
      withStore(async (s) => {
        const keys = Array.from({ length: 10 }, (_, i) => `/p/${String(i).padStart(2, '0')}`);
        const original: KV[] = [];
        for (const key of keys) original.push(await s.create(key, `v-${key}`));
        await s.create('/p0', 'outside the prefix');

        const first = await s.list('/p/', { limit: 4 });
        assert.deepEqual(first.items, original.slice(0, 4));
        assert.equal(first.more, true);
        const rev = first.revision;

        // Writes after the first page must not show in later pages read at `rev`.
        await s.update('/p/05', 'changed');
        await s.delete('/p/06');
        await s.create('/p/045', 'new');
        await s.create('/p/99', 'new');

        const pages = [first];
        while (pages[pages.length - 1].more) {
          const last = pages[pages.length - 1].items.at(-1) as KV;
          const page = await s.list('/p/', { limit: 4, startAfter: last.key, revision: rev });
          assert.equal(page.revision, rev);
          pages.push(page);
        }
        assert.deepEqual(
          pages.map((p) => p.items.length),
          [4, 4, 2],
        );
        assert.deepEqual(
          pages.flatMap((p) => p.items),
          original,
        );

        // A page that ends exactly at the last key reports more=false.
        const exact = await s.list('/p/', { limit: 4, startAfter: '/p/05', revision: rev });
        assert.deepEqual(keysOf(exact.items), ['/p/06', '/p/07', '/p/08', '/p/09']);
        assert.equal(exact.more, false);
        const beyond = await s.list('/p/', { startAfter: '/p/09', revision: rev });
        assert.deepEqual(beyond, { items: [], revision: rev, more: false });
        // startAfter before the prefix starts at the prefix; limit 0 means everything.
        const everything = await s.list('/p/', { startAfter: '/a', limit: 0, revision: rev });
        assert.deepEqual(everything.items, original);

        const now = await s.list('/p/');
        assert.deepEqual(keysOf(now.items), ['/p/00', '/p/01', '/p/02', '/p/03', '/p/04', '/p/045', '/p/05', '/p/07', '/p/08', '/p/09', '/p/99']);
        assert.equal(now.items.find((kv) => kv.key === '/p/05')?.value, 'changed');
      }),
    );

    it(
      'lists at any retained revision exactly as the store was then (randomized)',
      withStore(async (s) => {
        const random = rng(42);
        const model = new Map<string, KV>();
        const snapshots = new Map<number, KV[]>();
        const snapshot = (rev: number) =>
          snapshots.set(
            rev,
            [...model.values()].sort((x, y) => Buffer.compare(Buffer.from(x.key), Buffer.from(y.key))),
          );
        snapshot(await s.currentRevision());
        for (let i = 0; i < 120; i++) {
          const key = `/m/${Math.floor(random() * 12)}`;
          const existing = model.get(key);
          let kv: KV;
          if (!existing) {
            kv = await s.create(key, `v${i}`);
            model.set(key, kv);
          } else if (random() < 0.6) {
            kv = await s.update(key, `v${i}`, existing.modRevision);
            model.set(key, kv);
          } else {
            kv = await s.delete(key, existing.modRevision);
            model.delete(key);
          }
          snapshot(kv.modRevision);
        }
        const revisions = [...snapshots.keys()];
        const check = async (from: number) => {
          for (const rev of revisions.filter((r) => r >= from && r > 0)) {
            // 0 would mean 'current'
            const expected = snapshots.get(rev) as KV[];
            assert.deepEqual((await s.list('/m/', { revision: rev })).items, expected, `list at ${rev}`);
            const after = expected[1]?.key;
            const paged = await s.list('/m/', { revision: rev, limit: 3, startAfter: after });
            assert.deepEqual(paged.items, after === undefined ? expected.slice(0, 3) : expected.slice(2, 5), `page at ${rev}`);
            assert.equal(paged.more, expected.length > (after === undefined ? 3 : 5), `more at ${rev}`);
          }
        };
        await check(0);
        const cut = revisions[60];
        await s.compact(cut);
        await check(cut);
        await rejectsWith(s.list('/m/', { revision: cut - 1 }), 'Gone');
      }),
    );

    it(
      'enforces modRevision preconditions with Conflict',
      withStore(async (s) => {
        const v1 = await s.create('/pc', '1');
        const v2 = await s.update('/pc', '2', v1.modRevision);
        await rejectsWith(s.update('/pc', 'stale', v1.modRevision), 'Conflict');
        await rejectsWith(s.delete('/pc', v1.modRevision), 'Conflict');
        await rejectsWith(s.update('/pc', 'zero', 0), 'Conflict');
        assert.equal((await s.get('/pc'))?.value, '2');
        const deleted = await s.delete('/pc', v2.modRevision);
        assert.equal(deleted.value, '2');
        await rejectsWith(s.update('/pc', 'gone', v2.modRevision), 'NotFound');
      }),
    );

    it(
      'loses no increments with 20 concurrent read-modify-write writers',
      withStore(async (s) => {
        await s.create('/counter', '0');
        let conflicts = 0;
        const increment = async () => {
          for (;;) {
            const kv = (await s.get('/counter')) as KV;
            try {
              await s.update('/counter', String(Number(kv.value) + 1), kv.modRevision);
              return;
            } catch (err) {
              if (!isStoreError(err, 'Conflict')) throw err;
              conflicts++;
            }
          }
        };
        const writer = async () => {
          for (let i = 0; i < 5; i++) await increment();
        };
        await Promise.all(Array.from({ length: 20 }, writer));
        assert.equal((await s.get('/counter'))?.value, '100');
        assert.ok(conflicts > 0, 'the writers really raced');
      }),
    );

    it(
      'keeps every one of 200 parallel creates, each at its own revision',
      withStore(async (s) => {
        const keys = Array.from({ length: 200 }, (_, i) => `/par/${String(i).padStart(3, '0')}`);
        const created = await Promise.all(keys.map((k) => s.create(k, k)));
        const list = await s.list('/par/');
        assert.deepEqual(keysOf(list.items), keys);
        assert.equal(new Set(created.map((kv) => kv.modRevision)).size, 200);
        assert.equal(Math.max(...created.map((kv) => kv.modRevision)), await s.currentRevision());
        const dup = await Promise.allSettled(keys.slice(0, 20).map((k) => s.create(k, 'again')));
        assert.ok(dup.every((r) => r.status === 'rejected' && isStoreError(r.reason, 'AlreadyExists')));
      }),
    );

    it(
      'watches puts and deletes under a prefix, in order, with prev',
      withStore(async (s) => {
        const r0 = await s.currentRevision();
        const w = record(s, '/w/', r0);
        const a1 = await s.create('/w/a', '1');
        await s.create('/wx', 'outside the prefix');
        const a2 = await s.update('/w/a', '2');
        const b = await s.create('/w/b', '3');
        const del = await s.delete('/w/a');
        const events = await w.waitFor(4);
        assert.deepEqual(events, [
          { type: 'put', kv: a1 },
          { type: 'put', kv: a2, prev: a1 },
          { type: 'put', kv: b },
          { type: 'delete', kv: { key: '/w/a', value: '2', createRevision: a1.createRevision, modRevision: del.modRevision }, prev: a2 },
        ]);
        await sleep(50);
        assert.equal(w.events.length, 4, 'no events for keys outside the prefix');
        assert.deepEqual(w.errors, []);
        w.watch.close();
      }),
    );

    it(
      'delivers a burst of writes asynchronously, exactly once and in revision order',
      withStore(async (s) => {
        const r0 = await s.currentRevision();
        let writing = false;
        let calledDuringWrite = false;
        const got: WatchEvent[] = [];
        const watch = s.watch('/burst/', {
          fromRevision: r0,
          onEvent: (e) => {
            if (writing) calledDuringWrite = true;
            got.push(e);
            const until = Date.now() + 0.2; // a slowish consumer
            while (Date.now() < until);
          },
          onError: (e) => assert.fail(e),
        });
        const keys = Array.from({ length: 300 }, (_, i) => `/burst/${i}`);
        const writes: Promise<KV>[] = [];
        for (const k of keys) {
          writing = true;
          writes.push(s.create(k, 'x'));
          writing = false;
        }
        await Promise.all(writes);
        const deadline = Date.now() + 10000;
        while (got.length < 300 && Date.now() < deadline) await sleep(5);
        watch.close();
        assert.equal(calledDuringWrite, false, 'onEvent never runs inside a store call');
        assert.equal(got.length, 300);
        const revs = got.map((e) => e.kv.modRevision);
        assert.ok(
          revs.every((r, i) => i === 0 || r > revs[i - 1]),
          'strictly increasing revisions',
        );
        assert.deepEqual(new Set(got.map((e) => e.kv.key)), new Set(keys));
      }),
    );

    it(
      'resumes a watch from a revision with exactly the missed events',
      withStore(async (s) => {
        const r0 = await s.currentRevision();
        const full = record(s, '/r/', r0);
        const partial = record(s, '/r/', r0);
        const write = async (i: number) => {
          const key = `/r/${i % 4}`;
          const existing = await s.get(key);
          if (!existing) await s.create(key, `v${i}`);
          else if (i % 5 === 0) await s.delete(key);
          else await s.update(key, `v${i}`);
        };
        for (let i = 0; i < 12; i++) await write(i);
        await partial.waitFor(5);
        partial.watch.close();
        const seen = partial.events.slice();
        const resumeFrom = (seen.at(-1) as WatchEvent).kv.modRevision;

        for (let i = 12; i < 30; i++) await write(i);
        const all = await full.waitFor(30);
        const resumed = record(s, '/r/', resumeFrom);
        await resumed.waitFor(30 - seen.length);
        await sleep(50);
        assert.deepEqual([...seen, ...resumed.events], all, 'no gaps, no duplicates');

        // Resuming from the current revision yields only later writes.
        const now = await s.currentRevision();
        const tail = record(s, '/r/', now);
        await sleep(30);
        assert.equal(tail.events.length, 0);
        const last = await s.create('/r/new', 'n');
        assert.deepEqual(await tail.waitFor(1), [{ type: 'put', kv: last }]);
        for (const r of [full, resumed, tail]) r.watch.close();
      }),
    );

    it(
      'watches from a revision ahead of the store, and with an empty prefix',
      withStore(async (s) => {
        const from = (await s.currentRevision()) + 3;
        const all = record(s, '', from);
        await sleep(30);
        assert.deepEqual(all.errors, []);
        const written: KV[] = [];
        for (let i = 0; i < 6; i++) written.push(await s.create(`/f${i}`, String(i)));
        const expected = written.filter((kv) => kv.modRevision > from);
        assert.ok(expected.length > 0 && expected.length < written.length);
        assert.deepEqual(
          await all.waitFor(expected.length),
          expected.map((kv) => ({ type: 'put', kv })),
        );
        await sleep(30);
        assert.equal(all.events.length, expected.length);
        all.watch.close();
      }),
    );

    it(
      'fails watches and lists below the compacted revision with Gone',
      withStore(async (s) => {
        const old = (await s.create('/c/a', '1')).modRevision;
        await s.update('/c/a', '2');
        const cut = (await s.update('/c/a', '3')).modRevision;
        const after = await s.update('/c/a', '4');
        await s.compact(cut);
        assert.equal(await s.compactedRevision(), cut);

        const gone = record(s, '/c/', old);
        const err = await gone.waitError();
        assert.ok(isStoreError(err, 'Gone'), `expected Gone, got ${err}`);
        assert.equal(gone.events.length, 0);
        const justBelow = record(s, '/c/', cut - 1);
        assert.ok(isStoreError(await justBelow.waitError(), 'Gone'));

        const atCut = record(s, '/c/', cut);
        assert.deepEqual(await atCut.waitFor(1), [{ type: 'put', kv: after, prev: { ...after, value: '3', modRevision: cut } }]);
        assert.deepEqual(atCut.errors, []);
        atCut.watch.close();

        await rejectsWith(s.list('/c/', { revision: old }), 'Gone');
        await rejectsWith(s.list('/c/', { revision: cut - 1 }), 'Gone');
        const listAtCut = await s.list('/c/', { revision: cut });
        assert.deepEqual(
          listAtCut.items.map((kv) => kv.value),
          ['3'],
        );

        await s.compact(old); // below the compacted revision: a no-op
        assert.equal(await s.compactedRevision(), cut);
        await assert.rejects(s.compact((await s.currentRevision()) + 100));
      }),
    );

    it(
      'stops delivering after Watch.close()',
      withStore(async (s) => {
        const w = record(s, '/wc/', await s.currentRevision());
        await s.create('/wc/1', '1');
        await w.waitFor(1);
        w.watch.close();
        w.watch.close(); // idempotent
        await s.create('/wc/2', '2');
        await sleep(50);
        assert.equal(w.events.length, 1);
        assert.deepEqual(w.errors, []);
      }),
    );

    it(
      'ends open watches and rejects calls after close()',
      withStore(async (s) => {
        const w = record(s, '/cl/', await s.currentRevision());
        await s.create('/cl/1', '1');
        await w.waitFor(1);
        await s.close();
        const err = await w.waitError();
        assert.ok(isStoreError(err, 'Unavailable'), `expected Unavailable, got ${err}`);
        await rejectsWith(s.get('/cl/1'), 'Unavailable');
        await rejectsWith(s.create('/cl/2', '2'), 'Unavailable');
        await s.close(); // idempotent
        await sleep(30);
        assert.equal(w.events.length, 1);
        assert.equal(w.errors.length, 1);
      }),
    );
  });
}
