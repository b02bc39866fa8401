/** PersistentVolumeClaim updates: expansion and shrinking as kube-apiserver validates and admits them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByKind } from '../kinds.ts';
import type { FieldCause, KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';
import { PVC_RESIZE_NOT_ALLOWED, pvcResizeRefusal } from './core.ts';

const PVC = findByKind('v1', 'PersistentVolumeClaim')!;

function claim(size: string | number, phase?: string, extra: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name: 'data', namespace: 'default' },
    spec: { accessModes: ['ReadWriteOnce'], storageClassName: 'local', volumeMode: 'Filesystem', resources: { requests: { storage: size } }, ...extra },
    ...(phase ? { status: { phase, capacity: { storage: String(size) } } } : {}),
  };
}

const update = (next: KubeObject, old: KubeObject): FieldCause[] => validateObject(PVC, next, 'update', old).causes;

test('a Bound claim may grow', () => {
  assert.deepEqual(update(claim('2Gi'), claim('1Gi', 'Bound')), []);
  assert.deepEqual(update(claim('1Gi'), claim('1Gi', 'Bound')), [], 'no change is no error');
  assert.deepEqual(update(claim('1073741824'), claim('1Gi', 'Bound')), [], 'the same value written another way');
});

test("shrinking is refused with Kubernetes' field and wording", () => {
  const causes = update(claim('512Mi'), claim('1Gi', 'Bound'));
  assert.deepEqual(causes, [
    { reason: 'FieldValueForbidden', field: 'spec.resources.requests.storage', message: 'Forbidden: field can not be less than previous value' },
  ]);
  // Unbound too (and then the request may not change at all).
  const pending = update(claim('512Mi'), claim('1Gi', 'Pending'));
  assert.ok(pending.some((c) => c.field === 'spec.resources.requests.storage'));
});

test('the request of a claim that is not Bound is immutable, as in Kubernetes', () => {
  const causes = update(claim('2Gi'), claim('1Gi', 'Pending'));
  assert.equal(causes.length, 1);
  assert.equal(causes[0].field, 'spec');
  assert.match(causes[0].message, /spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims/);
  assert.deepEqual(update(claim('1073741824'), claim('1Gi')), [], 'the same value written another way is no change');
});

test('other spec fields stay immutable when the request grows', () => {
  const causes = update(claim('2Gi', undefined, { accessModes: ['ReadWriteMany'] }), claim('1Gi', 'Bound'));
  assert.deepEqual(
    causes.map((c) => c.field),
    ['spec'],
  );
  const limits = update(claim('2Gi', undefined, { resources: { requests: { storage: '2Gi' }, limits: { storage: '5Gi' } } }), claim('1Gi', 'Bound'));
  assert.deepEqual(
    limits.map((c) => c.field),
    ['spec'],
    'limits are not part of what may change',
  );
});

test('binding may still set volumeName and the default class', () => {
  const old = claim('1Gi', 'Pending', { storageClassName: undefined });
  assert.deepEqual(update(claim('1Gi', undefined, { volumeName: 'pvc-1' }), old), []);
  assert.deepEqual(update(claim('1Gi', undefined, { storageClassName: 'local' }), old), []);
});

test('status updates of a claim are not spec changes', () => {
  const old = claim('2Gi', 'Bound');
  const next = structuredClone(old);
  (next.status as Record<string, unknown>).capacity = { storage: '2Gi' };
  assert.deepEqual(validateObject(PVC, next, 'update', old, { subresource: 'status' }).causes, []);
});

test('pvcResizeRefusal: growing needs a Bound claim and a class that allows expansion (PersistentVolumeClaimResize admission)', () => {
  const sc = (allow?: boolean): KubeObject => ({
    apiVersion: 'storage.k8s.io/v1',
    kind: 'StorageClass',
    metadata: { name: 'local' },
    provisioner: 'vessel.io/qcow2',
    ...(allow === undefined ? {} : { allowVolumeExpansion: allow }),
  });
  assert.equal(pvcResizeRefusal(claim('2Gi'), claim('1Gi', 'Bound'), sc(true)), undefined);
  assert.equal(pvcResizeRefusal(claim('2Gi'), claim('1Gi', 'Bound'), sc(false)), PVC_RESIZE_NOT_ALLOWED);
  assert.equal(pvcResizeRefusal(claim('2Gi'), claim('1Gi', 'Bound'), sc()), PVC_RESIZE_NOT_ALLOWED);
  assert.equal(pvcResizeRefusal(claim('2Gi'), claim('1Gi', 'Bound'), undefined), PVC_RESIZE_NOT_ALLOWED);
  assert.equal(
    pvcResizeRefusal(claim('2Gi', undefined, { storageClassName: undefined }), claim('1Gi', 'Bound', { storageClassName: undefined }), sc(true)),
    PVC_RESIZE_NOT_ALLOWED,
  );
  assert.equal(pvcResizeRefusal(claim('2Gi'), claim('1Gi', 'Pending'), sc(true)), 'Only bound persistent volume claims can be expanded');
  assert.equal(pvcResizeRefusal(claim('1Gi'), claim('1Gi', 'Bound'), sc(false)), undefined, 'no growth: nothing to admit');
  assert.equal(pvcResizeRefusal(claim('512Mi'), claim('1Gi', 'Bound'), sc(false)), undefined, "shrinking is validation's business");
  assert.equal(PVC_RESIZE_NOT_ALLOWED, 'only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize');
});

test('a PUT without the defaulted volumeMode changes nothing', () => {
  const put = claim('2Gi');
  delete (put.spec as Record<string, unknown>).volumeMode;
  assert.deepEqual(update(put, claim('1Gi', 'Bound')), []);
  const block = claim('2Gi', undefined, { volumeMode: 'Block' });
  assert.deepEqual(
    update(block, claim('1Gi', 'Bound')).map((c) => c.field),
    ['spec'],
  );
});
