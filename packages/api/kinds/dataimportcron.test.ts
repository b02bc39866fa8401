/**
 * DataImportCron validation (kinds/cdi.ts) through validateObject, as the API server runs it:
 * each rule's field path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByKind } from '../kinds.ts';
import type { FieldCause, KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';

const DIC = findByKind('cdi.kubevirt.io/v1beta1', 'DataImportCron')!;
type Spec = Record<string, unknown>;

const cron = (spec: Spec = {}, source: Spec = { registry: { url: 'docker://registry.example:5000/tiny:v1' } }): KubeObject => ({
  apiVersion: 'cdi.kubevirt.io/v1beta1',
  kind: 'DataImportCron',
  metadata: { name: 'tiny', namespace: 'default' },
  spec: {
    schedule: '*/5 * * * *',
    managedDataSource: 'tiny',
    template: { spec: { source, storage: { resources: { requests: { storage: '1Gi' } } } } },
    ...spec,
  },
});

const causesOf = (o: KubeObject, op: 'create' | 'update' = 'create', old?: KubeObject): FieldCause[] => validateObject(DIC, o, op, old).causes;
const fields = (o: KubeObject) => causesOf(o).map((c) => c.field);

test('a registry or http cron with the optional fields is valid, without warnings', () => {
  assert.deepEqual(causesOf(cron()), []);
  assert.deepEqual(causesOf(cron({ importsToKeep: 1, garbageCollect: 'Never', schedule: '@daily' })), []);
  assert.deepEqual(causesOf(cron({}, { http: { url: 'https://images.example/tiny.qcow2' } })), []);
  assert.deepEqual(causesOf(cron({ schedule: '' })), []);
  assert.deepEqual(validateObject(DIC, cron({ importsToKeep: 2 }), 'create').warnings, []);
});

test('schedule must be a 5-field cron expression', () => {
  assert.deepEqual(fields(cron({ schedule: '* * *' })), ['spec.schedule']);
  assert.match(causesOf(cron({ schedule: '61 * * * *' }))[0].message, /Illegal cron schedule: minute "61" is out of range/);
});

test('managedDataSource is required and a DNS-1035 label', () => {
  const o = cron();
  delete (o.spec as Spec).managedDataSource;
  assert.deepEqual(fields(o), ['spec.managedDataSource']);
  assert.deepEqual(fields(cron({ managedDataSource: 'Not_A_Label' })), ['spec.managedDataSource']);
  assert.deepEqual(fields(cron({ managedDataSource: '' })), ['spec.managedDataSource']);
});

test('the template needs a registry url or http source, and no sourceRef', () => {
  assert.deepEqual(fields(cron({}, {})), ['spec.template.spec.source']);
  assert.deepEqual(fields(cron({}, { blank: {} })), ['spec.template.spec.source']);
  assert.deepEqual(fields(cron({}, { registry: { imageStream: 'tiny' } })), ['spec.template.spec.source.registry.imageStream']);
  assert.deepEqual(fields(cron({}, { registry: { url: 'http://x/y' } })), ['spec.template.spec.source.registry.url']);
  assert.deepEqual(fields(cron({}, { http: { url: 'ftp://x/y' } })), ['spec.template.spec.source.http.url']);
  const noSize = cron();
  delete ((noSize.spec as Spec).template as { spec: Spec }).spec.storage;
  assert.deepEqual(fields(noSize), ['spec.template.spec.storage']);
});

test('importsToKeep, garbageCollect and retentionPolicy values', () => {
  assert.deepEqual(fields(cron({ importsToKeep: -1 })), ['spec.importsToKeep']);
  assert.deepEqual(fields(cron({ garbageCollect: 'Sometimes' })), ['spec.garbageCollect']);
  assert.deepEqual(fields(cron({ retentionPolicy: 'Keep' })), ['spec.retentionPolicy']);
});

test('the spec is immutable', () => {
  const old = cron();
  assert.deepEqual(causesOf(cron(), 'update', old), []);
  const c = causesOf(cron({ importsToKeep: 5 }), 'update', old);
  assert.deepEqual(
    c.map((x) => [x.field, x.reason]),
    [['spec', 'FieldValueForbidden']],
  );
});
