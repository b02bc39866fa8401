import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SqliteStore } from '@vessel/store';
import { WatchCaches, type DecodedEvent } from './watch-cache.ts';

const obj = (name: string, v: number) => JSON.stringify({ kind: 'ConfigMap', metadata: { name }, data: { v: String(v) } });
const tick = () => new Promise((r) => setTimeout(r, 20));

describe('watch cache', () => {
  it('decodes each event once for all watchers and replays recent history', async () => {
    const store = new SqliteStore(':memory:');
    const caches = new WatchCaches(store);
    const a: DecodedEvent[] = [],
      b: DecodedEvent[] = [];
    const start = await store.currentRevision();
    const subA = await caches.subscribe('/registry/core/configmaps/', '/registry/core/configmaps/ns1/', start, (e) => a.push(e), assert.fail);
    const subB = await caches.subscribe('/registry/core/configmaps/', '/registry/core/configmaps/', start, (e) => b.push(e), assert.fail);
    await store.create('/registry/core/configmaps/ns1/x', obj('x', 1));
    await store.create('/registry/core/configmaps/ns2/y', obj('y', 1));
    const del = await store.delete('/registry/core/configmaps/ns1/x');
    await tick();
    assert.deepEqual(
      a.map((e) => `${e.deleted ? 'del' : 'put'} ${e.object.metadata.name}`),
      ['put x', 'del x'],
    );
    assert.equal(b.length, 3);
    assert.equal(a[0], b[0], 'one decoded event shared by both watchers');
    assert.equal(a[1].object.metadata.resourceVersion, String(del.modRevision));
    // A late watcher from the start revision gets the history without a new store watch.
    const late: DecodedEvent[] = [];
    const subC = await caches.subscribe('/registry/core/configmaps/', '/registry/core/configmaps/', start + 1, (e) => late.push(e), assert.fail);
    assert.deepEqual(
      late.map((e) => e.revision),
      b.slice(1).map((e) => e.revision),
    );
    [subA, subB, subC].forEach((s) => s.close());
    await caches.close();
    await store.close();
  });

  it('falls back to the store for revisions older than its history, which may be Gone', async () => {
    const store = new SqliteStore(':memory:');
    await store.create('/registry/core/configmaps/ns/a', obj('a', 1));
    const old = await store.currentRevision();
    await store.update('/registry/core/configmaps/ns/a', obj('a', 2));
    const caches = new WatchCaches(store);
    const early: DecodedEvent[] = [];
    const s1 = await caches.subscribe('/registry/core/configmaps/', '/registry/core/configmaps/', old - 1, (e) => early.push(e), assert.fail);
    await tick();
    assert.deepEqual(
      early.map((e) => e.object.data),
      [{ v: '1' }, { v: '2' }],
    );
    s1.close();
    await store.compact(await store.currentRevision());
    const err = await new Promise<Error>((resolve) => {
      void caches.subscribe('/registry/core/configmaps/', '/registry/core/configmaps/', old - 1, () => {}, resolve);
    });
    assert.match(err.name + err.message, /Gone|StoreError/);
    await caches.close();
    await store.close();
  });
});
