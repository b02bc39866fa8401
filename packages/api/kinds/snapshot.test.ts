/**
 * Snapshot, restore and clone validation (kinds/snapshot.ts, kinds/clone.ts) through
 * validateObject, as the API server runs it: every rule's field path and message.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByKind } from '../kinds.ts';
import type { FieldCause, KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';
import { macAddressProblem } from './clone.ts';

const SNAPSHOT = findByKind('snapshot.kubevirt.io/v1beta1', 'VirtualMachineSnapshot')!;
const CONTENT = findByKind('snapshot.kubevirt.io/v1beta1', 'VirtualMachineSnapshotContent')!;
const RESTORE = findByKind('snapshot.kubevirt.io/v1beta1', 'VirtualMachineRestore')!;
const CLONE = findByKind('clone.kubevirt.io/v1beta1', 'VirtualMachineClone')!;

type Spec = Record<string, unknown>;
const VM_REF = { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm1' };

const snapshot = (spec: Spec = { source: { ...VM_REF } }): KubeObject => ({
  apiVersion: 'snapshot.kubevirt.io/v1beta1',
  kind: 'VirtualMachineSnapshot',
  metadata: { name: 'snap1', namespace: 'default' },
  spec,
});
const restore = (spec: Spec = {}): KubeObject => ({
  apiVersion: 'snapshot.kubevirt.io/v1beta1',
  kind: 'VirtualMachineRestore',
  metadata: { name: 'restore1', namespace: 'default' },
  spec: { target: { ...VM_REF }, virtualMachineSnapshotName: 'snap1', ...spec },
});
const clone = (spec: Spec = {}): KubeObject => ({
  apiVersion: 'clone.kubevirt.io/v1beta1',
  kind: 'VirtualMachineClone',
  metadata: { name: 'clone1', namespace: 'default' },
  spec: { source: { ...VM_REF }, target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm2' }, ...spec },
});

function causesOf(o: KubeObject, op: 'create' | 'update' = 'create', old?: KubeObject): FieldCause[] {
  const info = { VirtualMachineSnapshot: SNAPSHOT, VirtualMachineSnapshotContent: CONTENT, VirtualMachineRestore: RESTORE, VirtualMachineClone: CLONE }[
    o.kind!
  ]!;
  return validateObject(info, o, op, old).causes;
}

/** Exactly one cause, at `field`, with `reason`, whose message matches. */
function only(causes: FieldCause[], field: string, reason: string, message: RegExp): void {
  assert.equal(causes.length, 1, JSON.stringify(causes, null, 1));
  assert.equal(causes[0].field, field);
  assert.equal(causes[0].reason, reason);
  assert.match(causes[0].message, message);
}

// ---- VirtualMachineSnapshot ---------------------------------------------------------------------

test('snapshot: a VirtualMachine source of kubevirt.io is valid, with the optional fields', () => {
  assert.deepEqual(causesOf(snapshot()), []);
  assert.deepEqual(causesOf(snapshot({ source: { ...VM_REF }, deletionPolicy: 'Retain', failureDeadline: '1h30m' })), []);
  assert.deepEqual(validateObject(SNAPSHOT, snapshot(), 'create').warnings, []);
});

test('snapshot: spec and spec.source are required', () => {
  only(causesOf({ ...snapshot(), spec: undefined }), 'spec', 'FieldValueRequired', /^Required value$/);
  only(causesOf(snapshot({})), 'spec.source', 'FieldValueRequired', /^Required value$/);
});

test('snapshot: spec.source.apiGroup is required and must be kubevirt.io', () => {
  only(
    causesOf(snapshot({ source: { kind: 'VirtualMachine', name: 'vm1' } })),
    'spec.source.apiGroup',
    'FieldValueRequired',
    /^Required value: the source of a snapshot is a VirtualMachine: set apiGroup: kubevirt.io$/,
  );
  only(causesOf(snapshot({ source: { ...VM_REF, apiGroup: '' } })), 'spec.source.apiGroup', 'FieldValueRequired', /set apiGroup: kubevirt.io/);
  only(
    causesOf(snapshot({ source: { ...VM_REF, apiGroup: 'apps' } })),
    'spec.source.apiGroup',
    'FieldValueNotSupported',
    /^Unsupported value: "apps": supported values: "kubevirt.io"$/,
  );
});

test('snapshot: spec.source.kind must be VirtualMachine, and a name is required', () => {
  only(
    causesOf(snapshot({ source: { ...VM_REF, kind: 'VirtualMachineInstance' } })),
    'spec.source.kind',
    'FieldValueNotSupported',
    /^Unsupported value: "VirtualMachineInstance": supported values: "VirtualMachine"$/,
  );
  only(causesOf(snapshot({ source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine' } })), 'spec.source.name', 'FieldValueRequired', /^Required value$/);
  only(causesOf(snapshot({ source: { ...VM_REF, name: '' } })), 'spec.source.name', 'FieldValueRequired', /name the VirtualMachine/);
});

test('snapshot: deletionPolicy and failureDeadline take the upstream values', () => {
  only(
    causesOf(snapshot({ source: { ...VM_REF }, deletionPolicy: 'delete' })),
    'spec.deletionPolicy',
    'FieldValueNotSupported',
    /^Unsupported value: "delete": supported values: "Delete", "Retain"$/,
  );
  only(
    causesOf(snapshot({ source: { ...VM_REF }, failureDeadline: '5 minutes' })),
    'spec.failureDeadline',
    'FieldValueInvalid',
    /^Invalid value: "5 minutes": must be a duration such as "90s", "5m" or "1h30m"$/,
  );
  for (const d of ['0', '90s', '5m', '1.5h', '2h45m30s', '300ms']) assert.deepEqual(causesOf(snapshot({ source: { ...VM_REF }, failureDeadline: d })), [], d);
});

test('snapshot: the spec is immutable after creation; metadata and status may change', () => {
  const old = snapshot();
  const changed = snapshot({ source: { ...VM_REF, name: 'other' } });
  only(
    causesOf(changed, 'update', old),
    'spec',
    'FieldValueForbidden',
    /^Forbidden: spec is immutable after creation; delete the VirtualMachineSnapshot and create a new one$/,
  );
  only(causesOf(snapshot({ source: { ...VM_REF }, deletionPolicy: 'Retain' }), 'update', old), 'spec', 'FieldValueForbidden', /immutable/);
  const relabelled = { ...snapshot(), metadata: { name: 'snap1', namespace: 'default', labels: { a: 'b' }, finalizers: ['x.io/y'] } };
  assert.deepEqual(causesOf(relabelled, 'update', old), []);
  // null is "unset" in Kubernetes: not a change.
  assert.deepEqual(causesOf(snapshot({ source: { ...VM_REF }, deletionPolicy: null }), 'update', old), []);
  // Create-time rules are not re-run on update (an object stored earlier stays updatable).
  const legacy = snapshot({ source: { kind: 'VirtualMachine', name: 'vm1' } });
  assert.deepEqual(causesOf(legacy, 'update', legacy), []);
});

test('snapshot: status writes (status subresource) accept what a controller writes', () => {
  const s = snapshot();
  s.status = {
    phase: 'Succeeded',
    readyToUse: true,
    creationTime: '2024-05-01T10:00:00Z',
    sourceUID: 'u1',
    virtualMachineSnapshotContentName: 'vmsnapshot-content-1',
    conditions: [{ type: 'Ready', status: 'True', reason: 'Operation complete', lastProbeTime: null, lastTransitionTime: '2024-05-01T10:00:00Z' }],
    error: { message: 'none', time: '2024-05-01T10:00:00Z' },
    indications: ['Online'],
    snapshotVolumes: { includedVolumes: ['root'], excludedVolumes: [] },
    sourceIndications: [{ indication: 'Online', message: 'online snapshot' }],
  };
  assert.deepEqual(validateObject(SNAPSHOT, s, 'update', snapshot(), { subresource: 'status' }).causes, []);
  s.status = { phase: 'Succeeded', readyToUse: 'yes' };
  only(
    validateObject(SNAPSHOT, s, 'update', snapshot(), { subresource: 'status' }).causes,
    'status.readyToUse',
    'FieldValueInvalid',
    /must be of type boolean/,
  );
});

// ---- VirtualMachineSnapshotContent --------------------------------------------------------------

test('snapshot content: any valid content is accepted and its spec is immutable', () => {
  const content = (snapshotName: string): KubeObject => ({
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineSnapshotContent',
    metadata: { name: 'vmsnapshot-content-1' },
    spec: {
      virtualMachineSnapshotName: snapshotName,
      source: { virtualMachine: { metadata: { name: 'vm1' }, spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {} } } } } } },
      volumeBackups: [{ volumeName: 'root', persistentVolumeClaim: { metadata: { name: 'root-pvc' }, spec: { resources: { requests: { storage: '1Gi' } } } } }],
    },
  });
  assert.deepEqual(causesOf(content('snap1')), []);
  only(
    causesOf(content('snap2'), 'update', content('snap1')),
    'spec',
    'FieldValueForbidden',
    /spec is immutable after creation; delete the VirtualMachineSnapshotContent/,
  );
});

// ---- VirtualMachineRestore ----------------------------------------------------------------------

test('restore: a VirtualMachine target of kubevirt.io and a snapshot name are valid, with the optional fields', () => {
  assert.deepEqual(causesOf(restore()), []);
  assert.deepEqual(
    causesOf(
      restore({
        targetReadinessPolicy: 'StopTarget',
        volumeRestorePolicy: 'InPlace',
        volumeOwnershipPolicy: 'None',
        volumeRestoreOverrides: [{ volumeName: 'root', restoreName: 'restored-root', labels: { 'example.com/restored': 'yes' } }],
        patches: ['{"op": "replace", "path": "/spec/runStrategy", "value": "Halted"}', '{"op": "add", "path": "/metadata/labels/restored", "value": "yes"}'],
      }),
    ),
    [],
  );
});

test('restore: spec.target needs apiGroup kubevirt.io, kind VirtualMachine and a valid name', () => {
  only(
    causesOf(restore({ target: { kind: 'VirtualMachine', name: 'vm1' } })),
    'spec.target.apiGroup',
    'FieldValueRequired',
    /^Required value: the target of a restore is a VirtualMachine: set apiGroup: kubevirt.io$/,
  );
  only(
    causesOf(restore({ target: { ...VM_REF, apiGroup: 'snapshot.kubevirt.io' } })),
    'spec.target.apiGroup',
    'FieldValueNotSupported',
    /"snapshot.kubevirt.io"/,
  );
  only(
    causesOf(restore({ target: { ...VM_REF, kind: 'DataVolume' } })),
    'spec.target.kind',
    'FieldValueNotSupported',
    /^Unsupported value: "DataVolume": supported values: "VirtualMachine"$/,
  );
  only(causesOf(restore({ target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine' } })), 'spec.target.name', 'FieldValueRequired', /^Required value$/);
  only(causesOf(restore({ target: { ...VM_REF, name: 'Bad_Name' } })), 'spec.target.name', 'FieldValueInvalid', /RFC 1123 subdomain/);
  only(causesOf(restore({ target: undefined })), 'spec.target', 'FieldValueRequired', /^Required value$/);
});

test('restore: spec.virtualMachineSnapshotName is required', () => {
  only(causesOf(restore({ virtualMachineSnapshotName: undefined })), 'spec.virtualMachineSnapshotName', 'FieldValueRequired', /^Required value$/);
  only(
    causesOf(restore({ virtualMachineSnapshotName: '' })),
    'spec.virtualMachineSnapshotName',
    'FieldValueRequired',
    /^Required value: name the VirtualMachineSnapshot to restore from$/,
  );
});

test('restore: policies take the upstream values', () => {
  only(
    causesOf(restore({ targetReadinessPolicy: 'Stop' })),
    'spec.targetReadinessPolicy',
    'FieldValueNotSupported',
    /^Unsupported value: "Stop": supported values: "StopTarget", "WaitGracePeriod", "FailImmediate", "WaitEventually"$/,
  );
  only(
    causesOf(restore({ volumeRestorePolicy: 'Overwrite' })),
    'spec.volumeRestorePolicy',
    'FieldValueNotSupported',
    /supported values: "InPlace", "RandomizeNames", "PrefixTargetName"$/,
  );
  only(causesOf(restore({ volumeOwnershipPolicy: 'VM' })), 'spec.volumeOwnershipPolicy', 'FieldValueNotSupported', /supported values: "Vm", "None"$/);
});

test('restore: volumeRestoreOverrides name a volume and change something valid', () => {
  only(
    causesOf(restore({ volumeRestoreOverrides: [{ restoreName: 'x' }] })),
    'spec.volumeRestoreOverrides[0].volumeName',
    'FieldValueRequired',
    /volumeRestoreOverrides\[\]\.volumeName is required/,
  );
  only(
    causesOf(restore({ volumeRestoreOverrides: [{ volumeName: 'root' }] })),
    'spec.volumeRestoreOverrides[0]',
    'FieldValueRequired',
    /must specify at least one field: restoreName, annotations, or labels/,
  );
  only(
    causesOf(restore({ volumeRestoreOverrides: [{ volumeName: 'root', restoreName: 'Root_Disk' }] })),
    'spec.volumeRestoreOverrides[0].restoreName',
    'FieldValueInvalid',
    /RFC 1123 subdomain/,
  );
  only(
    causesOf(restore({ volumeRestoreOverrides: [{ volumeName: 'root', labels: { 'bad key!': 'v' } }] })),
    'spec.volumeRestoreOverrides[0].labels',
    'FieldValueInvalid',
    /"bad key!"/,
  );
});

test('restore: patches are JSON patch operations under /spec/, /metadata/labels/ or /metadata/annotations/', () => {
  only(causesOf(restore({ patches: ['{"op": "replace",'] })), 'spec.patches[0]', 'FieldValueInvalid', /patch is not valid JSON/);
  only(causesOf(restore({ patches: ['["op"]'] })), 'spec.patches[0]', 'FieldValueInvalid', /one JSON patch operation with "op" and "path"/);
  only(
    causesOf(
      restore({ patches: ['{"op": "replace", "path": "/spec/runStrategy", "value": "Always"}', '{"op": "replace", "path": "/metadata/name", "value": "x"}'] }),
    ),
    'spec.patches[1]',
    'FieldValueInvalid',
    /patches\[\] can only modify paths under \/spec\/, \/metadata\/labels\/, or \/metadata\/annotations\/$/,
  );
});

test('restore: the spec is immutable after creation', () => {
  only(
    causesOf(restore({ virtualMachineSnapshotName: 'snap2' }), 'update', restore()),
    'spec',
    'FieldValueForbidden',
    /^Forbidden: spec is immutable after creation; delete the VirtualMachineRestore and create a new one$/,
  );
  const done = restore();
  done.metadata = { ...done.metadata, finalizers: [] };
  assert.deepEqual(causesOf(done, 'update', restore()), []);
});

// ---- VirtualMachineClone ------------------------------------------------------------------------

test('clone: from a VirtualMachine or a VirtualMachineSnapshot, to a named or generated VirtualMachine', () => {
  assert.deepEqual(causesOf(clone()), []);
  assert.deepEqual(causesOf(clone({ target: undefined })), []);
  assert.deepEqual(
    causesOf(clone({ source: { apiGroup: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', name: 'vm2' } })),
    [],
    'a snapshot source may share the target name',
  );
  assert.deepEqual(
    causesOf(
      clone({
        newMacAddresses: { default: '02:00:00:aa:bb:cc', secondary: '02-00-00-AA-BB-CD', third: '0200.00aa.bbce', auto: '' },
        newSMBiosSerial: 'serial-1',
        labelFilters: ['*', '!example.com/*'],
        annotationFilters: ['example.com/keep'],
        template: { labelFilters: ['app'], annotationFilters: ['!kubevirt.io/*'] },
        patches: ['{"op": "add", "path": "/spec/template/metadata/labels/example", "value": "new-label"}'],
        volumeNamePolicy: 'RandomizeNames',
      }),
    ),
    [],
  );
});

test('clone: the source kind is VirtualMachine or VirtualMachineSnapshot, in its API group', () => {
  only(
    causesOf(clone({ source: { apiGroup: 'cdi.kubevirt.io', kind: 'DataVolume', name: 'dv' } })),
    'spec.source.kind',
    'FieldValueNotSupported',
    /^Unsupported value: "DataVolume": supported values: "VirtualMachine", "VirtualMachineSnapshot"$/,
  );
  only(
    causesOf(clone({ source: { kind: 'VirtualMachine', name: 'vm1' } })),
    'spec.source.apiGroup',
    'FieldValueRequired',
    /^Required value: Source's APIGroup cannot be empty: set apiGroup: kubevirt.io$/,
  );
  only(
    causesOf(clone({ source: { kind: 'VirtualMachineSnapshot', name: 's' } })),
    'spec.source.apiGroup',
    'FieldValueRequired',
    /set apiGroup: snapshot.kubevirt.io$/,
  );
  only(
    causesOf(clone({ source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachineSnapshot', name: 's' } })),
    'spec.source.apiGroup',
    'FieldValueInvalid',
    /^Invalid value: "kubevirt.io": a VirtualMachineSnapshot is in API group snapshot.kubevirt.io$/,
  );
  only(causesOf(clone({ source: { ...VM_REF, name: '' } })), 'spec.source.name', 'FieldValueRequired', /Source's name cannot be empty/);
  only(causesOf(clone({ source: undefined, target: undefined })), 'spec.source', 'FieldValueRequired', /^Required value$/);
});

test('clone: the target is a VirtualMachine whose name differs from a VirtualMachine source', () => {
  only(
    causesOf(clone({ target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachineInstance', name: 'vm2' } })),
    'spec.target.kind',
    'FieldValueNotSupported',
    /^Unsupported value: "VirtualMachineInstance": supported values: "VirtualMachine"$/,
  );
  only(
    causesOf(clone({ target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm1' } })),
    'spec.target.name',
    'FieldValueInvalid',
    /^Invalid value: "vm1": Target name cannot be equal to source name when both are VirtualMachines$/,
  );
  only(
    causesOf(clone({ target: { apiGroup: 'apps', kind: 'VirtualMachine', name: 'vm2' } })),
    'spec.target.apiGroup',
    'FieldValueInvalid',
    /a VirtualMachine is in API group kubevirt.io/,
  );
  only(causesOf(clone({ target: { kind: 'VirtualMachine', name: 'New_VM' } })), 'spec.target.name', 'FieldValueInvalid', /RFC 1123 subdomain/);
  only(
    causesOf(clone({ target: { kind: 'VirtualMachine', name: '' } })),
    'spec.target.name',
    'FieldValueRequired',
    /leave out spec.target for a generated name/,
  );
});

test('clone: newMacAddresses values are unicast MAC addresses', () => {
  only(
    causesOf(clone({ newMacAddresses: { default: '02:00:00:00:00' } })),
    'spec.newMacAddresses.default',
    'FieldValueInvalid',
    /^Invalid value: "02:00:00:00:00": interface default has a malformed MAC address: give six hexadecimal octets, e.g. 02:00:00:00:00:01$/,
  );
  only(
    causesOf(clone({ newMacAddresses: { eth1: '01:00:5e:00:00:01' } })),
    'spec.newMacAddresses.eth1',
    'FieldValueInvalid',
    /^Invalid value: "01:00:5e:00:00:01": interface eth1 has a multicast MAC address: a NIC needs a unicast one \(the first octet even\), e.g. 02:00:00:00:00:01$/,
  );
  for (const bad of ['zz:00:00:00:00:01', '02:00:00:00:00:01:02', '02:00-00:00:00:01', '0200000000001', 'default']) assert.ok(macAddressProblem(bad), bad);
  for (const good of ['02:00:00:00:00:01', 'AA-BB-CC-DD-EE-FE', '0200.0000.0001']) assert.equal(macAddressProblem(good), undefined, good);
});

test('clone: label and annotation filters are non-empty, "!" only first and "*" only last', () => {
  only(causesOf(clone({ labelFilters: ['app', ''] })), 'spec.labelFilters[1]', 'FieldValueRequired', /a filter is a key or key prefix/);
  only(causesOf(clone({ annotationFilters: ['!'] })), 'spec.annotationFilters[0]', 'FieldValueInvalid', /a negation character is not a valid filter/);
  only(
    causesOf(clone({ template: { labelFilters: ['a!b'] } })),
    'spec.template.labelFilters[0]',
    'FieldValueInvalid',
    /cannot contain a negation character \(!\) except at the beginning of the filter/,
  );
  only(
    causesOf(clone({ template: { annotationFilters: ['*.example.com'] } })),
    'spec.template.annotationFilters[0]',
    'FieldValueInvalid',
    /cannot contain a wildcard character \(\*\) except at the end of the filter/,
  );
});

test('clone: patches are JSON patch operations; volumeNamePolicy is RandomizeNames', () => {
  only(causesOf(clone({ patches: ['not json'] })), 'spec.patches[0]', 'FieldValueInvalid', /^Invalid value: "not json": patch is not valid JSON/);
  only(causesOf(clone({ patches: ['"a string"'] })), 'spec.patches[0]', 'FieldValueInvalid', /one JSON patch operation/);
  only(causesOf(clone({ volumeNamePolicy: 'InPlace' })), 'spec.volumeNamePolicy', 'FieldValueNotSupported', /supported values: "RandomizeNames"$/);
});

test('clone: the spec is immutable after creation', () => {
  only(
    causesOf(clone({ newSMBiosSerial: 'changed' }), 'update', clone()),
    'spec',
    'FieldValueForbidden',
    /^Forbidden: spec is immutable after creation; delete the VirtualMachineClone and create a new one$/,
  );
  const c = clone();
  c.status = { phase: 'Succeeded', targetName: 'vm2', conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: '2024-05-01T10:00:00Z' }] };
  assert.deepEqual(validateObject(CLONE, c, 'update', clone(), { subresource: 'status' }).causes, []);
});
