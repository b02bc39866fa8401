/**
 * EtcdStore against a real etcd started on loopback: the conformance suite (each test under
 * its own key prefix), two stores sharing one etcd like two API servers, and etcd going away.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { isStoreError } from '../errors.ts';
import { record, rejectsWith, runStoreConformance } from '../conformance.ts';
import { openStore } from '../open.ts';
import { startEtcd, type EtcdServer } from '../testing/etcd-server.ts';
import { EtcdStore } from './etcd-store.ts';

let etcd: EtcdServer | undefined;
const endpoints = () => {
  if (!etcd) throw new Error('etcd is not running');
  return etcd.endpoints;
};

before(async () => {
  etcd = await startEtcd();
});
after(async () => {
  await etcd?.stop();
});

// A fixed-length random prefix per test: no test's keys can fall under another's prefix.
runStoreConformance('etcd', async () => {
  const store = new EtcdStore({ endpoints: endpoints(), prefix: `/conformance/${randomUUID()}` });
  return { store, cleanup: () => store.close() };
});

describe('EtcdStore', () => {
  it('lets two stores on one etcd (two API servers) see each other', async () => {
    const prefix = `/shared/${randomUUID()}`;
    const a = new EtcdStore({ endpoints: endpoints(), prefix });
    const b = new EtcdStore({ endpoints: endpoints(), prefix });
    try {
      const watchA = record(a, '/obj/', await a.currentRevision());
      const created = await b.create('/obj/x', '1');
      assert.deepEqual(await a.get('/obj/x'), created);
      assert.deepEqual(await watchA.waitFor(1), [{ type: 'put', kv: created }]);

      // Preconditions hold across servers.
      const updated = await a.update('/obj/x', '2', created.modRevision);
      await rejectsWith(b.update('/obj/x', 'stale', created.modRevision), 'Conflict');
      await rejectsWith(b.create('/obj/x', 'dup'), 'AlreadyExists');
      assert.equal(await b.currentRevision(), await a.currentRevision());
      assert.deepEqual((await b.list('/obj/')).items, [updated]);

      // A compaction done by one server is seen by the other.
      const watchB = record(b, '/obj/', created.modRevision - 1);
      await watchB.waitFor(2);
      await a.compact(updated.modRevision);
      assert.equal(await b.compactedRevision(), updated.modRevision);
      await rejectsWith(b.list('/obj/', { revision: created.modRevision }), 'Gone');
      const late = record(b, '/obj/', created.modRevision);
      assert.ok(isStoreError(await late.waitError(), 'Gone'));
      for (const w of [watchA, watchB]) w.watch.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('opens through openStore and keeps prefixes apart', async () => {
    const one = await openStore({ kind: 'etcd', endpoints: endpoints(), prefix: `/p1-${randomUUID()}` });
    const two = await openStore({ kind: 'etcd', endpoints: endpoints(), prefix: `/p2-${randomUUID()}` });
    try {
      await one.create('/k', 'one');
      assert.equal(await two.get('/k'), undefined);
      assert.deepEqual((await two.list('')).items, []);
    } finally {
      await one.close();
      await two.close();
    }
  });

  it('keeps a watch going across an etcd restart, without gaps or duplicates', async () => {
    const own = await startEtcd();
    const store = new EtcdStore({ endpoints: own.endpoints, callTimeoutMs: 2000 });
    try {
      const w = record(store, '/r/', await store.currentRevision());
      const written: number[] = [];
      for (let i = 0; i < 20; i++) written.push((await store.create(`/r/${i}`, String(i))).modRevision);
      await w.waitFor(20);
      await own.restart();
      // Writes right after the restart may hit the closed connection: retry Unavailable.
      for (let i = 20; i < 40; i++) {
        for (;;) {
          try {
            written.push((await store.create(`/r/${i}`, String(i))).modRevision);
            break;
          } catch (err) {
            if (!isStoreError(err, 'Unavailable')) throw err;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
      const events = await w.waitFor(40, 20000);
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(
        events.map((e) => e.kv.modRevision),
        written,
      );
      assert.deepEqual(w.errors, []);
      w.watch.close();
    } finally {
      await store.close();
      await own.stop();
    }
  });

  it('reports Unavailable when etcd is gone', async () => {
    const own = await startEtcd();
    const store = new EtcdStore({ endpoints: own.endpoints, prefix: '/vessel', callTimeoutMs: 2000 });
    try {
      await store.create('/k', 'v');
      await own.stop();
      await rejectsWith(store.get('/k'), 'Unavailable');
      await rejectsWith(store.create('/k2', 'v'), 'Unavailable');
      await assert.rejects(openStore({ kind: 'etcd', endpoints: own.endpoints }), (e: unknown) => isStoreError(e, 'Unavailable'));
    } finally {
      await store.close();
      await own.stop();
    }
  });
});
