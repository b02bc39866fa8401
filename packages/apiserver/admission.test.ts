/** Admission: clone-source authorization and the restore checks that read other objects. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource, parseCidr, type KindInfo, type KubeObject } from '@vessel/api';
import { admit, admitFixedAddress, keepVmiStatus, admitReferences, authorizeCloneSources, cloneReferences, type ObjectReader } from './admission.ts';
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
      // No namespace: every namespace, as Resources lists.
      items: Object.entries(objects)
        .filter(([k]) => k.startsWith(ns === undefined ? `${info.plural}/` : `${info.plural}/${ns}/`))
        .map(([, o]) => o),
    }),
  };
}

const readySnapshot = (phase = 'Succeeded', readyToUse = true): KubeObject => ({ metadata: { name: 'snap1' }, status: { phase, readyToUse } });
const vmi = (phase: string): KubeObject => ({ metadata: { name: 'vm1' }, status: { phase } });
const VM: KubeObject = { metadata: { name: 'vm1' } };

function restore(spec: Record<string, unknown> = {}, uid?: string): KubeObject {
  return {
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineRestore',
    metadata: { name: 'r1', namespace: 'ns1', ...(uid ? { uid } : {}) },
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
  assert.deepEqual(
    e.details?.causes?.map((c) => c.field),
    ['spec.virtualMachineSnapshotName'],
  );
  assert.match(e.details!.causes![0].message, /^VirtualMachineSnapshot "snap1" does not exist in namespace "ns1"/);
  assert.match(e.message, /^VirtualMachineRestore\.snapshot\.kubevirt\.io "r1" is invalid: spec\.virtualMachineSnapshotName: /);
  // The same name in another namespace does not count.
  await refused(admitReferences(reader({ 'virtualmachinesnapshots/other/snap1': readySnapshot() }), RESTORES, restore()), 422);
  const failed = await refused(admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot('Failed', false) }), RESTORES, restore()), 422);
  assert.match(failed.details!.causes![0].message, /has failed and is invalid to use/);
  const notReady = await refused(
    admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot('InProgress', false) }), RESTORES, restore()),
    422,
  );
  assert.match(notReady.details!.causes![0].message, /is not ready to use yet/);
  await admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot() }), RESTORES, restore());
});

test('restore: a running target VM is refused unless the restore may stop it or wait', async () => {
  const world = (phase: string) =>
    reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachines/ns1/vm1': VM, 'virtualmachineinstances/ns1/vm1': vmi(phase) });
  for (const phase of ['Pending', 'Scheduling', 'Scheduled', 'Running', 'Unknown', '']) {
    const e = await refused(admitReferences(world(phase), RESTORES, restore()), 422);
    assert.deepEqual(
      e.details?.causes,
      [
        {
          reason: 'FieldValueInvalid',
          field: 'spec.target',
          message: 'VirtualMachine vm1 is running: stop it first (vessel stop vm1) or set spec.targetReadinessPolicy: StopTarget',
        },
      ],
      phase,
    );
  }
  for (const phase of ['Succeeded', 'Failed']) await admitReferences(world(phase), RESTORES, restore());
  for (const policy of ['StopTarget', 'WaitEventually']) await admitReferences(world('Running'), RESTORES, restore({ targetReadinessPolicy: policy }));
  for (const policy of ['FailImmediate', 'WaitGracePeriod'])
    await refused(admitReferences(world('Running'), RESTORES, restore({ targetReadinessPolicy: policy })), 422);
  // No VM (a restore into a new VM), or a VM without a VMI: nothing runs.
  await admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot() }), RESTORES, restore());
  await admitReferences(reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachines/ns1/vm1': VM }), RESTORES, restore());
});

test('restore: one unfinished restore per target VM at a time', async () => {
  const other = (complete: boolean, target = 'vm1'): KubeObject => ({ metadata: { name: 'r0' }, spec: { target: { name: target } }, status: { complete } });
  const world = (r0: KubeObject) => reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachinerestores/ns1/r0': r0 });
  const e = await refused(admitReferences(world(other(false)), RESTORES, restore()), 422);
  assert.deepEqual(e.details?.causes, [
    { reason: 'FieldValueInvalid', field: 'spec.target', message: 'VirtualMachineRestore r0 of vm1 is in progress: wait until it completes, or delete it' },
  ]);
  await admitReferences(world(other(true)), RESTORES, restore());
  await admitReferences(world(other(false, 'vm2')), RESTORES, restore());
});

test('restore: not while a Ready export of the target VM serves its disks', async () => {
  const ex = (phase: string, vm = 'vm1'): KubeObject => ({
    metadata: { name: 'ex1' },
    spec: { source: { kind: 'VirtualMachine', name: vm } },
    status: { phase },
  });
  const world = (e: KubeObject) => reader({ 'virtualmachinesnapshots/ns1/snap1': readySnapshot(), 'virtualmachineexports/ns1/ex1': e });
  const e = await refused(admitReferences(world(ex('Ready')), RESTORES, restore()), 422);
  assert.deepEqual(e.details?.causes, [
    { reason: 'FieldValueInvalid', field: 'spec.target', message: 'VirtualMachineExport ex1 is exporting the disks of vm1: delete it before restoring' },
  ]);
  await admitReferences(world(ex('Pending')), RESTORES, restore());
  await admitReferences(world(ex('Ready', 'vm2')), RESTORES, restore());
});

test('restore: both problems at once; updates of a stored restore are not re-checked', async () => {
  const world = reader({ 'virtualmachines/ns1/vm1': VM, 'virtualmachineinstances/ns1/vm1': vmi('Running') });
  const e = await refused(admitReferences(world, RESTORES, restore()), 422);
  assert.deepEqual(
    e.details?.causes?.map((c) => c.field),
    ['spec.virtualMachineSnapshotName', 'spec.target'],
  );
  await admitReferences(world, RESTORES, restore({}, 'uid-1'));
});

test('admission read errors other than 404 are not swallowed', async () => {
  const down = async (): Promise<never> => {
    throw new ApiError(500, 'InternalError', 'store down');
  };
  const broken: ObjectReader = { get: down, list: down };
  await refused(admitReferences(broken, RESTORES, restore()), 500);
});

test('clone: the source is a reference in the clone namespace; the caller must be able to read it', async () => {
  const clone = (kind: string, name = 'vm1'): KubeObject => ({
    metadata: { name: 'c1', namespace: 'ns1' },
    spec: { source: { apiGroup: 'kubevirt.io', kind, name } },
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
  assert.equal(
    e.message,
    'spec.source: cannot clone from ns1/vm1: virtualmachines.kubevirt.io "vm1" is forbidden: User "mallory" cannot get resource "virtualmachines" in API group "kubevirt.io" in the namespace "ns1"',
  );
  assert.throws(
    () => authorizeCloneSources({ name: 'nobody', groups: [] }, CLONES, clone('VirtualMachineSnapshot', 's1')),
    /spec\.source: cannot clone from ns1\/s1: virtualmachinesnapshots\.snapshot\.kubevirt\.io "s1" is forbidden/,
  );
  await admit({ name: 'alice', groups: ['vessel:tenant:ns1'] }, reader({}), CLONES, clone('VirtualMachine'));
});

test("Vessel's own keys: only administrators set or change them; an update that leaves them out keeps them", async () => {
  const PVCS = findByResource('', 'v1', 'persistentvolumeclaims')!;
  const tenant = { name: 'alice', groups: ['vessel:tenant:ns1'] };
  const admin = { name: 'agent', groups: ['system:masters'] };
  const claim = (annotations: Record<string, string>, uid?: string): KubeObject => ({
    metadata: { name: 'c1', namespace: 'ns1', annotations, ...(uid ? { uid } : {}) },
    spec: {},
  });
  const path = { 'vessel.io/volume-path': '/pools/local/ns1/c1.qcow2' };
  const e = await refused(admit(tenant, reader({}), PVCS, claim({ 'vessel.io/volume-path': '/pools/local/ns2/secret.qcow2' })), 422);
  assert.deepEqual(
    e.details?.causes?.map((c) => [c.reason, c.field]),
    [['FieldValueForbidden', 'metadata.annotations[vessel.io/volume-path]']],
  );
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

test('a fixed address (ipam.vessel.io/ip): refused, naming the annotation, when malformed, outside the range, reserved or held by another parent', async () => {
  const VMS = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
  const VMIS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
  const field = 'spec.template.metadata.annotations[ipam.vessel.io/ip]';
  const vmWith = (ip: string, name = 'vm1', uid?: string): KubeObject => ({
    kind: 'VirtualMachine',
    metadata: { name, namespace: 'ns1', ...(uid ? { uid } : {}) },
    spec: { template: { metadata: { annotations: { 'ipam.vessel.io/ip': ip } }, spec: {} } },
  });
  const held = (parent: Record<string, string>): KubeObject => ({ metadata: { name: '10.244.0.5' }, spec: { parentRef: parent } });
  const causeOf = async (world: ObjectReader, obj: KubeObject, cidr?: string) => {
    const e = await refused(admitFixedAddress(world, VMS, obj, cidr ? parseCidr(cidr) : undefined), 422);
    assert.equal(e.details?.causes?.length, 1);
    return e.details!.causes![0];
  };
  for (const [ip, why] of [
    ['10.244.0.05', /must be an IPv4 address in canonical form/],
    ['banana', /must be an IPv4 address/],
    ['10.245.0.5', /must be in the VM network 10\.244\.0\.0\/16/],
    ['10.244.0.0', /is the network address/],
    ['10.244.255.255', /is the broadcast address/],
  ] as const) {
    const c = await causeOf(reader({}), vmWith(ip));
    assert.equal(c.field, field, ip);
    assert.equal(c.reason, 'FieldValueInvalid');
    assert.match(c.message, why, ip);
  }
  // The server's range, not the default.
  assert.match((await causeOf(reader({}), vmWith('10.244.0.5'), '10.9.0.0/24')).message, /must be in the VM network 10\.9\.0\.0\/24/);
  await admitFixedAddress(reader({}), VMS, vmWith('10.9.0.5'), parseCidr('10.9.0.0/24'));

  const other = reader({ 'ipaddresses//10.244.0.5': held({ group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'ns1', name: 'vm2' }) });
  const c = await causeOf(other, vmWith('10.244.0.5'));
  assert.deepEqual(c, {
    reason: 'FieldValueInvalid',
    field,
    message: 'Invalid value: "10.244.0.5": already held by virtualmachines/ns1/vm2: pick a free address (kubectl get ipaddresses)',
  });
  assert.match(
    (await causeOf(reader({ 'ipaddresses//10.244.0.5': held({ group: '', resource: 'nodes', name: 'node-a' }) }), vmWith('10.244.0.5'))).message,
    /already held by nodes\/node-a/,
  );
  // Its own (a VM re-created under its name, or an update): fine; free: fine.
  await admitFixedAddress(
    reader({ 'ipaddresses//10.244.0.5': held({ group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'ns1', name: 'vm1' }) }),
    VMS,
    vmWith('10.244.0.5'),
  );
  await admitFixedAddress(reader({}), VMS, vmWith('10.244.0.5'));
  // An update that keeps the value is not checked again; one that changes it is.
  const stored = reader({
    'virtualmachines/ns1/vm1': vmWith('10.244.0.5', 'vm1', 'u1'),
    'ipaddresses//10.244.0.5': held({ group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'ns1', name: 'vm2' }),
  });
  await admitFixedAddress(stored, VMS, vmWith('10.244.0.5', 'vm1', 'u1'));
  await refused(admitFixedAddress(stored, VMS, vmWith('10.244.0.6.1', 'vm1', 'u1')), 422);

  // A standalone VMI: its own annotation; a VMI its VM made is the VM's business.
  const vmi = (owned: boolean): KubeObject => ({
    kind: 'VirtualMachineInstance',
    metadata: {
      name: 'vm1',
      namespace: 'ns1',
      annotations: { 'ipam.vessel.io/ip': '10.244.0.5' },
      ...(owned ? { ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: 'vm1', uid: 'u1', controller: true }] } : {}),
    },
    spec: {},
  });
  const e = await refused(admitFixedAddress(other, VMIS, vmi(false)), 422);
  assert.equal(e.details?.causes?.[0].field, 'metadata.annotations[ipam.vessel.io/ip]');
  await admitFixedAddress(other, VMIS, vmi(true));
  // A tenant is not told who holds it in another namespace.
  const tenant = { name: 'alice', groups: ['vessel:tenant:ns1'] };
  const elsewhere = reader({ 'ipaddresses//10.244.0.5': held({ group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'ns2', name: 'secret-vm' }) });
  const hidden = await refused(admit(tenant, elsewhere, VMS, vmWith('10.244.0.5')), 422);
  assert.equal(
    hidden.details?.causes?.[0].message,
    'Invalid value: "10.244.0.5": already held by another parent: pick a free address (kubectl get ipaddresses)',
  );
  assert.match((await refused(admit(tenant, other, VMS, vmWith('10.244.0.5')), 422)).message, /already held by virtualmachines\/ns1\/vm2/);
  // Asked for by another VM (or standalone VMI) that has no allocation yet: refused too; a VM's own VMI does not count.
  const asked = (extra: Record<string, KubeObject> = {}) =>
    reader({ 'virtualmachines/ns2/first': { ...vmWith('10.244.0.5', 'first', 'u0'), metadata: { name: 'first', namespace: 'ns2', uid: 'u0' } }, ...extra });
  const pending = await refused(admit({ name: 'agent', groups: ['system:masters'] }, asked(), VMS, vmWith('10.244.0.5')), 422);
  assert.equal(
    pending.details?.causes?.[0].message,
    'Invalid value: "10.244.0.5": already asked for by virtualmachines/ns2/first: pick a free address (kubectl get ipaddresses)',
  );
  assert.match((await refused(admit(tenant, asked(), VMS, vmWith('10.244.0.5')), 422)).message, /already asked for by another parent:/);
  const ownVmi: KubeObject = { ...vmi(true), metadata: { ...vmi(true).metadata, namespace: 'ns3', name: 'x' } };
  await admitFixedAddress(reader({ 'virtualmachineinstances/ns3/x': ownVmi }), VMS, vmWith('10.244.0.5'));
  // Through admit(), for every user, with the server's range.
  await refused(
    admit({ name: 'agent', groups: ['system:masters'] }, reader({}), VMS, vmWith('10.244.0.5'), undefined, { vmNetwork: parseCidr('10.1.0.0/16') }),
    422,
  );
});

test("a VMI's status is the system's: a tenant's create carries none, its update keeps the stored one; administrators write it", () => {
  const VMI = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
  const tenant = { name: 'alice', groups: ['vessel:tenant:ns1'] };
  const admin = { name: 'agent', groups: ['system:masters'] };
  const forged = { phase: 'Running', interfaces: [{ name: 'default', ipAddress: '10.233.0.1' }] };
  const created: KubeObject = { kind: 'VirtualMachineInstance', metadata: { name: 'v', namespace: 'ns1' }, spec: {}, status: forged };
  keepVmiStatus(tenant, VMI, created, undefined);
  assert.equal(created.status, undefined);
  const stored: KubeObject = { ...created, status: { phase: 'Scheduled' } };
  const updated: KubeObject = { ...created, status: forged };
  keepVmiStatus(tenant, VMI, updated, stored);
  assert.deepEqual(updated.status, { phase: 'Scheduled' });
  const byAgent: KubeObject = { ...created, status: forged };
  keepVmiStatus(admin, VMI, byAgent, stored);
  assert.deepEqual(byAgent.status, forged);
});
