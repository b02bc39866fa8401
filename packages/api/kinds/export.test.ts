import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind, resolveName } from '../kinds.ts';
import type { KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';
import { exportManifests } from './export.ts';

const ex = (spec: unknown): KubeObject => ({
  apiVersion: 'export.kubevirt.io/v1beta1',
  kind: 'VirtualMachineExport',
  metadata: { name: 'x', namespace: 'ns' },
  spec,
});
const info = findByKind('export.kubevirt.io/v1beta1', 'VirtualMachineExport')!;
const causes = (o: KubeObject, op: 'create' | 'update' = 'create', old?: KubeObject) =>
  validateObject(info, o, op, old).causes.map((c) => `${c.field}: ${c.message}`);

test("served as KubeVirt's CRD declares it", () => {
  assert.equal(resolveName('vmexport')?.kind, 'VirtualMachineExport');
  assert.ok(info.namespaced && info.statusSubresource);
  assert.deepEqual(
    info.printerColumns.map((c) => c.name),
    ['SourceKind', 'SourceName', 'Phase'],
  );
});

test('the three source kinds in their groups pass; anything else is a 422 naming the field', () => {
  for (const source of [
    { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm' },
    { apiGroup: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', name: 's' },
    { kind: 'PersistentVolumeClaim', name: 'p' },
    { apiGroup: '', kind: 'PersistentVolumeClaim', name: 'p' },
  ])
    assert.deepEqual(causes(ex({ source, ttlDuration: '1h30m', tokenSecretRef: 't' })), [], JSON.stringify(source));
  assert.match(causes(ex({ source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachineInstance', name: 'v' } }))[0], /^spec\.source\.kind: Unsupported value/);
  assert.match(causes(ex({ source: { apiGroup: 'cdi.kubevirt.io', kind: 'VirtualMachine', name: 'v' } }))[0], /^spec\.source\.apiGroup: Invalid value/);
  assert.match(causes(ex({ source: { apiGroup: 'v1', kind: 'PersistentVolumeClaim', name: 'p' } }))[0], /^spec\.source\.apiGroup: .*core group/);
  assert.match(causes(ex({ source: { kind: 'PersistentVolumeClaim', name: 'p' }, ttlDuration: '2 days' }))[0], /^spec\.ttlDuration: Invalid value/);
  assert.match(causes(ex({ source: { kind: 'PersistentVolumeClaim', name: 'p' }, tokenSecretRef: '' }))[0], /^spec\.tokenSecretRef: Required value/);
  assert.ok(causes(ex({})).some((c) => c.startsWith('spec.source: Required value')));
});

test('the spec is immutable', () => {
  const old = ex({ source: { kind: 'PersistentVolumeClaim', name: 'p' } });
  assert.match(causes(ex({ source: { kind: 'PersistentVolumeClaim', name: 'q' } }), 'update', old)[0], /^spec: Forbidden: spec is immutable/);
  assert.deepEqual(causes(ex({ source: { kind: 'PersistentVolumeClaim', name: 'p' } }), 'update', old), []);
});

test("the `all` manifest: CA, the VM without its templates and Vessel's keys, a DataVolume per claim importing the gzip URL", () => {
  const docs = exportManifests({
    exportName: 'ex',
    base: 'https://h/api/export.kubevirt.io/v1beta1/namespaces/ns/ex',
    caPem: 'PEM',
    vm: { metadata: { name: 'vm', uid: 'u', annotations: { 'vessel.io/x': '1', keep: 'y' } }, spec: { dataVolumeTemplates: [{}], template: {} } },
    claims: [{ name: 'disk', storage: '1Gi' }],
  });
  assert.deepEqual(
    docs.map((d) => d.kind),
    ['ConfigMap', 'VirtualMachine', 'DataVolume'],
  );
  assert.deepEqual(docs[1].metadata, { name: 'vm', labels: undefined, annotations: { keep: 'y' } });
  assert.equal((docs[1].spec as Record<string, unknown>).dataVolumeTemplates, undefined);
  assert.deepEqual((docs[2].spec as { source: unknown }).source, {
    http: {
      url: 'https://h/api/export.kubevirt.io/v1beta1/namespaces/ns/ex/volumes/disk/disk.img.gz',
      secretExtraHeaders: ['header-secret-ex'],
      certConfigMap: 'export-ca-cm-ex',
    },
  });
});
