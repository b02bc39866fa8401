import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind, findByResource, resolveName } from '../kinds.ts';
import type { KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';

const fk = (kind: string, spec: unknown, extra: Record<string, unknown> = {}): KubeObject => ({
  apiVersion: 'forklift.konveyor.io/v1beta1',
  kind,
  metadata: { name: 'x', namespace: 'ns' },
  spec,
  ...extra,
});
const fields = (o: KubeObject) => validateObject(findByKind(o.apiVersion as string, o.kind as string)!, o, 'create').causes.map((c) => c.field);

const provider = { type: 'ova', url: 'ova:///srv/ova', secret: { name: 's', namespace: 'ns' } };
const maps = { provider: { source: { name: 'ova' }, destination: { name: 'host' } } };

test("the six kinds are served as Forklift's CRDs declare them", () => {
  for (const plural of ['providers', 'networkmaps', 'storagemaps', 'plans', 'migrations', 'hooks']) {
    const k = findByResource('forklift.konveyor.io', 'v1beta1', plural)!;
    assert.ok(k.namespaced && k.statusSubresource, plural);
  }
  assert.equal(resolveName('plans.forklift.konveyor.io')?.kind, 'Plan');
  assert.deepEqual(
    findByResource('forklift.konveyor.io', 'v1beta1', 'providers')!.printerColumns.map((c) => c.name),
    ['Type', 'Status', 'Ready', 'Connected', 'Inventory', 'URL', 'Age'],
  );
});

test('valid objects pass', () => {
  assert.deepEqual(fields(fk('Provider', provider)), []);
  assert.deepEqual(
    fields(fk('NetworkMap', { ...maps, map: [{ source: { name: 'VM Network' }, destination: { type: 'multus', name: 'blue', namespace: 'ns' } }] })),
    [],
  );
  assert.deepEqual(
    fields(fk('StorageMap', { ...maps, map: [{ source: { id: 'web.ova' }, destination: { storageClass: 'local', accessMode: 'ReadWriteOnce' } }] })),
    [],
  );
  const plan = { ...maps, targetNamespace: 'target', map: { network: { name: 'n' }, storage: { name: 's' } }, vms: [{ name: 'web' }, { id: 'abc' }] };
  assert.deepEqual(fields(fk('Plan', plan)), []);
  assert.deepEqual(fields(fk('Migration', { plan: { name: 'p', namespace: 'ns' } })), []);
  assert.deepEqual(fields(fk('Hook', { image: 'quay.io/konveyor/hook-runner', playbook: '' })), []);
});

test('bad objects are refused with the field named', () => {
  const cases: [KubeObject, string[]][] = [
    [fk('Provider', { ...provider, type: 'xen' }), ['spec.type']],
    [fk('Provider', { type: 'ova', secret: {} }), ['spec.url']],
    [fk('Provider', { type: 'ova', url: '/x' }), ['spec.secret']],
    [fk('Provider', { ...provider, url: 5 }), ['spec.url']],
    [fk('Provider', { ...provider, bogus: 1 }), ['spec.bogus']],
    [fk('NetworkMap', { ...maps, map: [{ source: {}, destination: { type: 'pod' } }] }), ['spec.map[0].source']],
    [fk('NetworkMap', { ...maps, map: [{ source: { name: 'a' }, destination: { type: 'multus' } }] }), ['spec.map[0].destination.name']],
    [fk('NetworkMap', { ...maps, map: [{ source: { name: 'a' }, destination: { type: 'bridge' } }] }), ['spec.map[0].destination.type']],
    [
      fk('StorageMap', { ...maps, map: [{ source: { name: 'a' }, destination: { storageClass: 'x', volumeMode: 'Raw' } }] }),
      ['spec.map[0].destination.volumeMode'],
    ],
    [fk('StorageMap', { ...maps, map: [{ source: { name: 'a' }, destination: {} }] }), ['spec.map[0].destination.storageClass']],
    [fk('Plan', { ...maps, map: {}, targetNamespace: 'Bad_NS', vms: [{}] }), ['spec.map.network', 'spec.map.storage', 'spec.targetNamespace', 'spec.vms[0]']],
    [fk('Plan', { ...maps, map: { network: { name: 'n' }, storage: { name: 's' } }, targetNamespace: 't', vms: [], type: 'hot' }), ['spec.type']],
    [fk('Migration', {}), ['spec.plan']],
    [fk('Migration', { plan: { namespace: 'ns' } }), ['spec.plan.name']],
  ];
  for (const [o, want] of cases) assert.deepEqual(fields(o), want, JSON.stringify(o.spec));
});

test("a Hook's Vessel annotations: one of them, a plain script name or an http(s) URL without credentials", () => {
  const hook = (annotations: Record<string, string>) =>
    fk('Hook', { image: 'quay.io/konveyor/hook-runner' }, { metadata: { name: 'h', namespace: 'ns', annotations } });
  const S = 'metadata.annotations[forklift.vessel.io/hook-script]';
  const U = 'metadata.annotations[forklift.vessel.io/hook-url]';
  assert.deepEqual(fields(hook({ 'forklift.vessel.io/hook-script': 'backup-db.sh' })), []);
  assert.deepEqual(fields(hook({ 'forklift.vessel.io/hook-url': 'https://hooks.example/pre' })), []);
  for (const [ann, want] of [
    [{ 'forklift.vessel.io/hook-script': '../../bin/sh' }, [S]],
    [{ 'forklift.vessel.io/hook-script': '/bin/sh' }, [S]],
    [{ 'forklift.vessel.io/hook-script': 'a..b' }, [S]],
    [{ 'forklift.vessel.io/hook-url': 'file:///etc/passwd' }, [U]],
    [{ 'forklift.vessel.io/hook-url': 'https://u:p@hooks.example/' }, [U]],
    [{ 'forklift.vessel.io/hook-script': 'x', 'forklift.vessel.io/hook-url': 'https://hooks.example/' }, [U]],
  ] as [Record<string, string>, string[]][])
    assert.deepEqual(fields(hook(ann)), want, JSON.stringify(ann));
});
