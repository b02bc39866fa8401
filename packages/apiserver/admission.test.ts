/** Admission: clone-source authorization and the restore checks that read other objects. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource, type KindInfo, type KubeObject } from '@vessel/api';
import { admit, admitReferences, authorizeCloneSources, cloneReferences, type ObjectReader } from './admission.ts';
import { ApiError, notFound } from './errors.ts';

const RESTORES = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinerestores')!;
const CLONES = findByResource('clone.kubevirt.io', 'v1beta1', 'virtualmachineclones')!;

/** A reader over fixed objects, keyed "plural/namespace/name"; absent ones are 404s as from Resources. */
function reader(objects: Record<string, KubeObject>): ObjectReader {
  return {
    get: async (info: KindInfo, ns: string | undefined, name: string) => {
      const o = objects[`${info.plural}/${ns}/${name}`];
      if (!o) throw notFound(info.plural, info.group, name);
      return o;
    },
    list: async (info: KindInfo, ns: string | undefined) => ({
      items: Object.entries(objects).filter(([k]) => k.startsWith(`${info.plural}/${ns}/`)).map(([, o]) => o),
    }),
  };
}

const readySnapshot = (phase = 'Succeeded', readyToUse = true): KubeObject => ({ metadata: { name: 'snap1' }, status: { phase, readyToUse } });
const vmi = (phase: string): KubeObject => ({ metadata: { name: 'vm1' }, status: { phase } });
const VM: KubeObject = { metadata: { name: 'vm1' } };

function restore(spec: Record<string, unknown> = {}, uid?: string): KubeObject {
  return {
    apiVersion: 'snapshot.kubevirt.io/v1beta1', kind: 'VirtualMachineRestore', metadata: { name: 'r1', namespace: 'ns1', ...(uid ? { uid } : {}) },
    spec: { target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm1' }, virtualMachineSnapshotName: 'snap1', ...spec },
  };
}

async function refused(p: Promise<void>, code: number): Promise<ApiError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ApiError, String(e));
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected ${code}`);
}

test('restore: the snapshot must exist in the namespace, not have failed, and be ready', async () => {
  const e = await refused(admitReferences(reader({}), RESTORES, restore()), 422);
  assert.deepEqual(e.details?.causes?.map((c) => c.field), ['spec.virtualMachineSnapshotName']);
  assert.match(e.details!.causes![0].message, /^VirtualMachineSnapshot "snap1" does not exist in namespace "ns1"/);
  assert.match(e.message, /^VirtualMachineRestore\.snapshot\.kubevirt\.io "r1" is invalid: spec\.virtualMachineSnapshotName: /);
  // The same name in another namespace does not count.
  await refused(admitReferences(reader({ 'virtualmachinesnapshots/other/snap1': readySnapshot() }), RESTORES, restore()), 422);
  const failed = await refused(admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot('Failed', false) }), RESTORES, restore()), 422);
  assert.match(failed.details!.causes![0].message, /has failed and is invalid to use/);
  const notReady = await refused(admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot('InProgress', false) }), RESTORES, restore()), 422);
  assert.match(notReady.details!.causes![0].message, /is not ready to use yet/);
  await admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot() }), RESTORES, restore());
});

test('restore: a running target VM is refused unless the restore may stop it or wait', async () => {
  const world = (phase: string) => reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachines/ns1/vm1': VM, 'virtualmachineinstances/ns1/vm1': vmi(phase) });
  for (const phase of ['Pending', 'Scheduling', 'Scheduled', 'Running', 'Unknown', '']) {
    const e = await refused(admitReferences(world(phase), RESTORES, restore()), 422);
    assert.deepEqual(e.details?.causes, [{
      reason: 'FieldValueInvalid', field: 'spec.target',
      message: 'VirtualMachine vm1 is running: stop it first (vessel stop vm1) or set spec.targetReadinessPolicy: StopTarget',
    }], phase);
  }
  for (const phase of ['Succeeded', 'Failed']) await admitReferences(world(phase), RESTORES, restore());
  for (const policy of ['StopTarget', 'WaitEventually']) await admitReferences(world('Running'), RESTORES, restore({ targetReadinessPolicy: policy }));
  for (const policy of ['FailImmediate', 'WaitGracePeriod']) await refused(admitReferences(world('Running'), RESTORES, restore({ targetReadinessPolicy: policy })), 422);
  // No VM (a restore into a new VM), or a VM without a VMI: nothing runs.
  await admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot() }), RESTORES, restore());
  await admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachines/ns1/vm1': VM }), RESTORES, restore());
});

test('restore: one unfinished restore per target VM at a time', async () => {
  const other = (complete: boolean, target = 'vm1'): KubeObject => ({ metadata: { name: 'r0' }, spec: { target: { name: target } }, status: { complete } });
  const world = (r0: KubeObject) => reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachinerestores/ns1/r0': r0 });
  const e = await refused(admitReferences(world(other(false)), RESTORES, restore()), 422);
  assert.deepEqual(e.details?.causes, [{ reason: 'FieldValueInvalid', field: 'spec.target', message: 'VirtualMachineRestore r0 of vm1 is in progress: wait until it completes, or delete it' }]);
  await admitReferences(world(other(true)), RESTORES, restore());
  await admitReferences(world(other(false, 'vm2')), RESTORES, restore());
});

test('restore: both problems at once; updates of a stored restore are not re-checked', async () => {
  const world = reader({ 'virtualmachines/ns1/vm1': VM, 'virtualmachineinstances/ns1/vm1': vmi('Running') });
  const e = await refused(admitReferences(world, RESTORES, restore()), 422);
  assert.deepEqual(e.details?.causes?.map((c) => c.field), ['spec.virtualMachineSnapshotName', 'spec.target']);
  await admitReferences(world, RESTORES, restore({}, 'uid-1'));
});

test('admission read errors other than 404 are not swallowed', async () => {
  const down = async (): Promise<never> => { throw new ApiError(500, 'InternalError', 'store down'); };
  const broken: ObjectReader = { get: down, list: down };
  await refused(admitReferences(broken, RESTORES, restore()), 500);
});

test('clone: the source is a reference in the clone namespace; the caller must be able to read it', async () => {
  const clone = (kind: string, name = 'vm1'): KubeObject => ({
    metadata: { name: 'c1', namespace: 'ns1' }, spec: { source: { apiGroup: 'kubevirt.io', kind, name } },
  });
  assert.deepEqual(cloneReferences(CLONES, clone('VirtualMachine')), [
    { resource: 'virtualmachines', group: 'kubevirt.io', namespace: 'ns1', name: 'vm1', field: 'spec.source' },
  ]);
  assert.deepEqual(cloneReferences(CLONES, clone('VirtualMachineSnapshot', 's1')), [
    { resource: 'virtualmachinesnapshots', group: 'snapshot.kubevirt.io', namespace: 'ns1', name: 's1', field: 'spec.source' },
  ]);
  assert.deepEqual(cloneReferences(CLONES, clone('DataVolume')), []);

  const outsider = { name: 'mallory', groups: ['vessel:tenant:ns2'] };
  const e = await refused(admit(outsider, reader({}), CLONES, clone('VirtualMachine')), 403);
  assert.equal(e.message, 'spec.source: cannot clone from ns1/vm1: virtualmachines.kubevirt.io "vm1" is forbidden: User "mallory" cannot get resource "virtualmachines" in API group "kubevirt.io" in the namespace "ns1"');
  assert.throws(() => authorizeCloneSources({ name: 'nobody', groups: [] }, CLONES, clone('VirtualMachineSnapshot', 's1')),
    /spec\.source: cannot clone from ns1\/s1: virtualmachinesnapshots\.snapshot\.kubevirt\.io "s1" is forbidden/);
  await admit({ name: 'alice', groups: ['vessel:tenant:ns1'] }, reader({}), CLONES, clone('VirtualMachine'));
});

test("Vessel's own keys: only administrators set or change them; an update that leaves them out keeps them", async () => {
  const PVCS = findByResource('', 'v1', 'persistentvolumeclaims')!;
  const tenant = { name: 'alice', groups: ['vessel:tenant:ns1'] };
  const admin = { name: 'agent', groups: ['system:masters'] };
  const claim = (annotations: Record<string, string>, uid?: string): KubeObject => ({ metadata: { name: 'c1', namespace: 'ns1', annotations, ...(uid ? { uid } : {}) }, spec: {} });
  const path = { 'vessel.io/volume-path': '/pools/local/ns1/c1.qcow2' };
  const e = await refused(admit(tenant, reader({}), PVCS, claim({ 'vessel.io/volume-path': '/pools/local/ns2/secret.qcow2' })), 422);
  assert.deepEqual(e.details?.causes?.map((c) => [c.reason, c.field]), [['FieldValueForbidden', 'metadata.annotations[vessel.io/volume-path]']]);
  // Changed on a stored claim: refused; kept as it is (any other change): fine.
  const stored = claim(path, 'u1');
  await refused(admit(tenant, reader({}), PVCS, claim({ 'vessel.io/volume-path': '/pools/local/ns2/secret.qcow2' }, 'u1'), stored), 422);
  const replaced = claim({ note: 'mine' }, 'u1');
  await admit(tenant, reader({}), PVCS, replaced, stored);
  assert.deepEqual(replaced.metadata?.annotations, { note: 'mine', ...path });
  await admit(tenant, reader({}), PVCS, claim({ ...path, note: 'mine' }, 'u1'), stored);
  await refused(admit(tenant, reader({}), PVCS, claim({ 'vessel.io/restore-source': '/pools/local/ns1/x@y.qcow2' })), 422);
  // Options for users live in subdomains.
  await admit(tenant, reader({}), PVCS, claim({ 'cdi.vessel.io/checksum': 'sha256:00' }));
  await admit(admin, reader({}), PVCS, claim({ 'vessel.io/volume-path': '/anywhere.qcow2', 'vessel.io/pool': 'local' }));
});
