import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { WatchEventType } from '@vessel/client';
import { Informer, type KubeObject, type ListWatch } from './informer.ts';
import { byClaim, byNode, byOwner } from './indexes.ts';

/** A scripted server: a list of objects and a watch the test drives. */
class FakeServer implements ListWatch {
  objects = new Map<string, KubeObject>();
  rv = 1;
  lists = 0;
  watchFrom: string[] = [];
  private sink?: { onEvent: (t: WatchEventType, o: KubeObject) => void; onEnd: (e?: Error) => void };
  async list() {
    this.lists++;
    return { items: [...this.objects.values()], resourceVersion: String(this.rv) };
  }
  watch(rv: string, onEvent: (t: WatchEventType, o: KubeObject) => void, onEnd: (e?: Error) => void) {
    this.watchFrom.push(rv);
    this.sink = { onEvent, onEnd };
    return {
      close: () => {
        this.sink = undefined;
      },
    };
  }
  put(name: string, label = '') {
    const obj = { metadata: { name, resourceVersion: String(++this.rv), labels: { l: label } } };
    const type = this.objects.has(name) ? 'MODIFIED' : 'ADDED';
    this.objects.set(name, obj);
    this.sink?.onEvent(type, obj);
  }
  remove(name: string) {
    const obj = this.objects.get(name)!;
    this.objects.delete(name);
    this.rv++;
    this.sink?.onEvent('DELETED', { ...obj, metadata: { ...obj.metadata, resourceVersion: String(this.rv) } });
  }
  end(err?: Error) {
    const s = this.sink;
    this.sink = undefined;
    s?.onEnd(err);
  }
  expire() {
    this.sink?.onEvent('ERROR', { code: 410 } as unknown as KubeObject);
    this.end();
  }
}

const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));

describe('informer', () => {
  it('lists, watches, resumes from the last version and relists after 410', async () => {
    const server = new FakeServer();
    server.put('a');
    const inf = new Informer(server);
    const seen: string[] = [];
    inf.on({
      add: (o) => seen.push(`add ${o.metadata.name}`),
      update: (_o, n) => seen.push(`update ${n.metadata.name}`),
      delete: (o) => seen.push(`delete ${o.metadata.name}`),
    });
    inf.start();
    await inf.waitForSync();
    server.put('b');
    server.put('a', 'x');
    server.end(); // a clean end: resume from the last seen version, no relist
    await tick();
    assert.equal(server.lists, 1);
    assert.equal(server.watchFrom.at(-1), String(server.rv));
    server.remove('b');
    // While the watch is expired, 'c' appears and 'a' goes: the relist reports both.
    server.expire();
    server.objects.set('c', { metadata: { name: 'c', resourceVersion: String(++server.rv) } });
    server.objects.delete('a');
    await tick(50);
    inf.stop();
    assert.equal(server.lists, 2);
    assert.deepEqual(seen, ['add a', 'add b', 'update a', 'delete b', 'delete a', 'add c']);
    assert.deepEqual(
      inf.list().map((o) => o.metadata.name),
      ['c'],
    );
  });

  it('keeps indexes current: an update moves an object between keys, deletes and relists drop it', async () => {
    const server = new FakeServer();
    server.put('a', 'x');
    const inf = new Informer(server);
    inf.start();
    await inf.waitForSync();
    // Added after the sync: filled from the cache at once.
    inf.addIndex('label', (o) => [String((o.metadata.labels as Record<string, string>).l)]);
    const names = (key: string) =>
      inf
        .byIndex('label', key)
        .map((o) => o.metadata.name)
        .sort();
    server.put('b', 'x');
    assert.deepEqual(names('x'), ['a', 'b']);
    server.put('a', 'y');
    assert.deepEqual(names('x'), ['b']);
    assert.deepEqual(names('y'), ['a']);
    server.remove('b');
    assert.deepEqual(names('x'), []);
    // Gone while the watch was expired: the relist removes it from the index too.
    server.expire();
    server.objects.delete('a');
    await tick(50);
    inf.stop();
    assert.deepEqual(names('y'), []);
    assert.throws(() => inf.byIndex('nope', 'x'), /no index nope/);
  });

  it('files an object under its old keys, not what a handler mutated it to', async () => {
    const server = new FakeServer();
    const inf = new Informer(server).addIndex('label', (o) => [String((o.metadata.labels as Record<string, string>).l)]);
    inf.start();
    await inf.waitForSync();
    server.put('a', 'x');
    (inf.get('a')!.metadata.labels as Record<string, string>).l = 'mutated';
    server.put('a', 'y');
    inf.stop();
    assert.deepEqual(inf.byIndex('label', 'x'), []);
    assert.deepEqual(
      inf.byIndex('label', 'y').map((o) => o.metadata.name),
      ['a'],
    );
  });
});

describe('predefined indexes', () => {
  it('file VMs and VMIs by claim, VMIs and claims by node, anything by owner uid', () => {
    const vm = {
      kind: 'VirtualMachine',
      metadata: { name: 'vm', namespace: 'ns' },
      spec: {
        template: {
          spec: {
            volumes: [
              { name: 'root', dataVolume: { name: 'dv' } },
              { name: 'data', persistentVolumeClaim: { claimName: 'pvc' } },
              { name: 'ci', cloudInitNoCloud: {} },
            ],
          },
        },
      },
    };
    const vmi = {
      metadata: { name: 'vm', namespace: 'ns', ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: 'vm', uid: 'u1' }] },
      spec: { volumes: [{ name: 'root', dataVolume: { name: 'dv' } }] },
      status: { nodeName: 'n1' },
    };
    const pvc = { metadata: { name: 'pvc', namespace: 'ns', annotations: { 'volume.kubernetes.io/selected-node': 'n2' } } };
    assert.deepEqual(byClaim(vm), ['ns/dv', 'ns/pvc']);
    assert.deepEqual(byClaim(vmi), ['ns/dv']);
    assert.deepEqual([byNode(vmi), byNode(pvc), byNode(vm)], [['n1'], ['n2'], []]);
    assert.deepEqual([byOwner(vmi), byOwner(vm)], [['u1'], []]);
  });
});
