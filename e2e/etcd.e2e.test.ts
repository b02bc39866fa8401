/**
 * etcd mode: two API servers share one real etcd. A write through one is read and watched
 * through the other, and optimistic concurrency holds across them.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource } from '@vessel/api';
import { Client, StatusError, type WatchEvent } from '@vessel/client';
import { startEtcd, type EtcdServer } from '../packages/store/testing/etcd-server.ts';
import { startVessel, vm, type Vessel } from './harness.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const CM = findByResource('', 'v1', 'configmaps')!;

describe('two servers on one etcd', () => {
  let etcd: EtcdServer;
  let a: Vessel, b: Vessel;
  before(async () => {
    etcd = await startEtcd();
    a = await startVessel({ store: { kind: 'etcd', endpoints: etcd.endpoints } });
    b = await startVessel({ store: { kind: 'etcd', endpoints: etcd.endpoints } });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await etcd?.stop();
  });

  it('serves one consistent state from both servers', async () => {
    // A ConfigMap: no controller writes to it, so every event is one of ours.
    const events: WatchEvent[] = [];
    const start = (await b.client.list(CM, { namespace: 'default' })).metadata!.resourceVersion!;
    const w = b.client.watchResource(CM, { namespace: 'default', resourceVersion: start }, (e) => events.push(e));
    const created = await a.client.create(
      CM,
      { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'shared' }, data: { a: 'b' } },
      { namespace: 'default' },
    );
    const viaB = await b.client.get(CM, 'shared', { namespace: 'default' });
    assert.equal(viaB.metadata?.uid, created.metadata?.uid);
    assert.equal(viaB.metadata?.resourceVersion, created.metadata?.resourceVersion);

    // A stale write through B after a write through A is a conflict, not a lost update.
    await a.client.patch(CM, 'shared', { metadata: { labels: { by: 'a' } } });
    try {
      await b.client.update(CM, { ...viaB, metadata: { ...viaB.metadata, labels: { by: 'b' } } });
      assert.fail('the stale update through b should conflict');
    } catch (e) {
      assert.ok(e instanceof StatusError && e.code === 409, String(e));
    }
    await a.client.delete(CM, 'shared', { namespace: 'default' });
    const deadline = Date.now() + 10_000;
    while (events.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    w.close();
    assert.deepEqual(
      events.map((e) => e.type),
      ['ADDED', 'MODIFIED', 'DELETED'],
    );
  });

  it('accepts a token issued by one server on the other (tokens live in etcd)', async () => {
    const cross = new Client({ ...b.client.config, token: a.server.adminToken });
    assert.equal((await cross.list(VM, { namespace: 'default' })).kind, 'VirtualMachineList');
    cross.close();
  });

  it('runs the controllers in exactly one server, and fails over to the other', async () => {
    const leaders = async () => {
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && !(a.controllers!.leading || b.controllers!.leading)) await new Promise((r) => setTimeout(r, 50));
      return [a, b].filter((v) => v.controllers!.leading);
    };
    const [leader] = await leaders();
    assert.equal((await leaders()).length, 1, 'exactly one leader');
    const follower = leader === a ? b : a;
    await leader.stop(); // steps down and releases the lease
    const deadline = Date.now() + 15_000;
    while (!follower.controllers!.leading && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(follower.controllers!.leading, true, 'the other server took over');
    // The new leader's garbage collector works.
    const owner = await follower.client.create(VM, vm('owner'));
    await follower.client.create(CM, {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'dep', ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: 'owner', uid: owner.metadata!.uid! }] },
    });
    await follower.client.delete(VM, 'owner');
    const gone = Date.now() + 10_000;
    let exists = true;
    while (exists && Date.now() < gone) {
      exists = await follower.client.get(CM, 'dep').then(
        () => true,
        () => false,
      );
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(exists, false, 'the dependent was collected by the new leader');
  });
});
