/**
 * The VM controller with instancetypes and preferences, over the in-memory client: the VMI is
 * sized from them, their specs are kept in ControllerRevisions the VM owns and names in its
 * status, later edits do not change the VM, a changed name needs a restart, a missing one keeps
 * the VM stopped with the reason, and inferFromVolume reads the volume's labels.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { getCondition } from '@vessel/runtime';
import { refs } from '@vessel/api';
import { VirtualMachineController } from './vm.ts';
import { agentSets, InMemoryClient, tryGet, until, vmStatus } from './testing/harness.ts';
import type { KubeObject } from '@vessel/client';

const { VMIS, VMS, CLUSTER_INSTANCETYPES, CLUSTER_PREFERENCES, PREFERENCES, CONTROLLER_REVISIONS, PVCS, DATAVOLUMES } = refs;
type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const started = performance.now();
after(() => console.log(`# instancetype.test.ts: ${(performance.now() - started).toFixed(0)} ms`));

async function setup() {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const vmc = new VirtualMachineController(c);
  await vmc.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await vmc.stop();
      c.close();
    },
  };
}

const clusterIt = (name: string, cpu: number, memory: string) =>
  ({
    apiVersion: 'instancetype.kubevirt.io/v1beta1',
    kind: 'VirtualMachineClusterInstancetype',
    metadata: { name },
    spec: { cpu: { guest: cpu }, memory: { guest: memory } },
  }) as KubeObject;

const vm = (name: string, spec: Any, volumes: Any[] = []) =>
  ({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: 'default' },
    spec: { runStrategy: 'Always', template: { spec: { domain: { devices: { disks: [] } }, volumes } }, ...spec },
  }) as KubeObject;

test('a VM with an instancetype and a preference: sized VMI, revisions owned by the VM, status refs; edits do not leak; a rename needs a restart', async () => {
  await using h = await setup();
  await h.c.create(CLUSTER_INSTANCETYPES, clusterIt('small', 2, '256Mi'));
  await h.c.create(CLUSTER_INSTANCETYPES, clusterIt('big', 4, '512Mi'));
  await h.c.create(
    PREFERENCES,
    {
      apiVersion: 'instancetype.kubevirt.io/v1beta1',
      kind: 'VirtualMachinePreference',
      metadata: { name: 'cores' },
      spec: { cpu: { preferredCPUTopology: 'preferCores' } },
    },
    { namespace: 'default' },
  );
  await h.c.create(VMS, vm('a', { instancetype: { name: 'small' }, preference: { kind: 'VirtualMachinePreference', name: 'cores' } }));
  const vmi = (await until('VMI', () => tryGet(h.c, VMIS, 'a'))) as Any;
  assert.deepEqual(vmi.spec.domain.cpu, { sockets: 1, cores: 2, threads: 1 });
  assert.equal(vmi.spec.domain.memory.guest, '256Mi');
  const s = (await until('status refs', async () => ((await vmStatus(h.c, 'a')).instancetypeRef ? vmStatus(h.c, 'a') : undefined))) as Any;
  assert.equal(s.instancetypeRef.kind, 'VirtualMachineClusterInstancetype');
  assert.equal(s.instancetypeRef.name, 'small');
  const rev = (await h.c.get(CONTROLLER_REVISIONS, s.instancetypeRef.controllerRevisionRef.name, { namespace: 'default' })) as Any;
  assert.match(rev.metadata.name, /^a-virtualmachineclusterinstancetype-small-/);
  assert.equal(rev.metadata.ownerReferences[0].kind, 'VirtualMachine');
  assert.deepEqual(rev.data.spec.cpu, { guest: 2 });
  assert.equal(s.preferenceRef.name, 'cores');
  await h.c.get(CONTROLLER_REVISIONS, s.preferenceRef.controllerRevisionRef.name, { namespace: 'default' });

  // An edit of the instancetype does not change the VM: its next VMI still has 2 vCPUs.
  await h.c.patch(CLUSTER_INSTANCETYPES, 'small', { spec: { cpu: { guest: 3 } } });
  await agentSets(h.c, 'a', 'Running');
  await agentSets(h.c, 'a', 'Succeeded');
  const next = (await until('next VMI', async () => {
    const v = await tryGet(h.c, VMIS, 'a');
    return v && v.metadata?.uid !== vmi.metadata.uid ? v : undefined;
  })) as Any;
  assert.equal(next.spec.domain.cpu.cores, 2);

  // Another instancetype while it runs: RestartRequired; the next start takes it.
  await agentSets(h.c, 'a', 'Running');
  await h.c.patch(VMS, 'a', { spec: { instancetype: { name: 'big' } } }, { namespace: 'default' });
  await until('RestartRequired', async () => getCondition({ status: await vmStatus(h.c, 'a') }, 'RestartRequired')?.reason === 'InstancetypeChanged');
  await agentSets(h.c, 'a', 'Succeeded');
  const third = (await until('VMI of big', async () => {
    const v = (await tryGet(h.c, VMIS, 'a')) as Any;
    return v?.spec.domain.cpu.cores === 4 ? v : undefined;
  })) as Any;
  assert.equal(third.spec.domain.memory.guest, '512Mi');
  await until('RestartRequired cleared', async () => !getCondition({ status: await vmStatus(h.c, 'a') }, 'RestartRequired'));
  await until('status names big', async () => ((await vmStatus(h.c, 'a')) as Any).instancetypeRef?.name === 'big');
});

test('a missing instancetype keeps the VM stopped with the reason; it starts once the instancetype exists', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('m', { instancetype: { name: 'later' } }));
  await until('FailedCreate', async () => getCondition({ status: await vmStatus(h.c, 'm') }, 'Ready')?.reason === 'FailedCreate');
  assert.match(getCondition({ status: await vmStatus(h.c, 'm') }, 'Ready')?.message ?? '', /VirtualMachineClusterInstancetype later not found/);
  assert.equal(await tryGet(h.c, VMIS, 'm'), undefined);
  await h.c.create(CLUSTER_INSTANCETYPES, clusterIt('later', 1, '128Mi'));
  const vmi = (await until('VMI', () => tryGet(h.c, VMIS, 'm'), 5000)) as Any;
  assert.equal(vmi.spec.domain.memory.guest, '128Mi');
});

test('inferFromVolume: the claim’s default-instancetype label names it', async () => {
  await using h = await setup();
  await h.c.create(CLUSTER_INSTANCETYPES, clusterIt('inferred', 2, '192Mi'));
  await h.c.create(
    PVCS,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: 'disk', labels: { 'instancetype.kubevirt.io/default-instancetype': 'inferred' } },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    },
    { namespace: 'default' },
  );
  await h.c.create(VMS, vm('i', { instancetype: { inferFromVolume: 'root' } }, [{ name: 'root', persistentVolumeClaim: { claimName: 'disk' } }]));
  const vmi = (await until('VMI', () => tryGet(h.c, VMIS, 'i'))) as Any;
  assert.equal(vmi.spec.domain.memory.guest, '192Mi');
  assert.equal(vmi.spec.domain.cpu.sockets, 2);
  const s = (await until('ref', async () => ((await vmStatus(h.c, 'i')) as Any).instancetypeRef)) as Any;
  assert.deepEqual([s.name, s.inferFromVolume], ['inferred', 'root']);
});

test('preferredStorageClassName: dataVolumeTemplates that name no storage class get it; one that names its own keeps it', async () => {
  await using h = await setup();
  await h.c.create(CLUSTER_PREFERENCES, {
    apiVersion: 'instancetype.kubevirt.io/v1beta1',
    kind: 'VirtualMachineClusterPreference',
    metadata: { name: 'fast' },
    spec: { volumes: { preferredStorageClassName: 'fast-local' } },
  });
  const dvt = (name: string, storageClassName?: string) => ({
    metadata: { name },
    spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '1Gi' } }, ...(storageClassName ? { storageClassName } : {}) } },
  });
  await h.c.create(
    VMS,
    vm(
      'p',
      {
        runStrategy: 'Halted',
        preference: { kind: 'VirtualMachineClusterPreference', name: 'fast' },
        dataVolumeTemplates: [dvt('p-root'), dvt('p-data', 'shared')],
      },
      [
        { name: 'root', dataVolume: { name: 'p-root' } },
        { name: 'data', dataVolume: { name: 'p-data' } },
      ],
    ),
  );
  const root = (await until('DataVolume p-root', () => tryGet(h.c, DATAVOLUMES, 'p-root'))) as Any;
  const data = (await until('DataVolume p-data', () => tryGet(h.c, DATAVOLUMES, 'p-data'))) as Any;
  assert.equal(root.spec.storage.storageClassName, 'fast-local');
  assert.equal(data.spec.storage.storageClassName, 'shared');
});
