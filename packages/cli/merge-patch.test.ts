/** Tests for apply's three-way merge patch and the manifest it records. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LAST_APPLIED, withLastApplied } from './commands/apply.ts';
import { isEmptyPatch, threeWayMergePatch } from './merge-patch.ts';

const live = {
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachine',
  metadata: { name: 'demo', resourceVersion: '7', finalizers: ['kubevirt.io/x'], labels: { app: 'demo', 'controller-label': 'y' } },
  spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } } } },
  status: { printableStatus: 'Stopped' },
};
const manifest = {
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachine',
  metadata: { name: 'demo', labels: { app: 'demo' } },
  spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } } } },
};

test('re-applying the same manifest changes nothing (controller fields and status are not touched)', () => {
  assert.ok(isEmptyPatch(threeWayMergePatch(manifest, manifest, live)));
});

test('changed fields are set; fields dropped from the manifest are deleted', () => {
  const changed = { ...manifest, metadata: { name: 'demo', labels: {} }, spec: { ...manifest.spec, runStrategy: 'Always' } };
  assert.deepEqual(threeWayMergePatch(manifest, changed, live), { metadata: { labels: { app: null } }, spec: { runStrategy: 'Always' } });
});

test('without a previous manifest nothing is deleted; lists are replaced whole', () => {
  const withList = { ...manifest, metadata: { ...manifest.metadata, finalizers: ['mine'] } };
  assert.deepEqual(threeWayMergePatch({}, withList, live), { metadata: { finalizers: ['mine'] } });
});

test('deletions of fields already gone are not sent', () => {
  const original = { ...manifest, spec: { ...manifest.spec, extra: 1 } };
  assert.ok(isEmptyPatch(threeWayMergePatch(original, manifest, live)));
});

test('withLastApplied drops server fields and status and records the manifest', () => {
  const sent = withLastApplied({ ...live, metadata: { ...live.metadata, annotations: { [LAST_APPLIED]: 'old', note: 'x' } } }, 'default');
  const metadata = sent.metadata!;
  assert.equal(metadata.resourceVersion, undefined);
  assert.equal(sent.status, undefined);
  assert.equal(metadata.namespace, 'default');
  const recorded = JSON.parse(metadata.annotations![LAST_APPLIED]) as typeof sent;
  assert.deepEqual(recorded.metadata?.annotations, { note: 'x' });
  assert.equal(recorded.spec && (recorded.spec as { runStrategy: string }).runStrategy, 'Halted');
});
