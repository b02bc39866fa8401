/** The kind registry: names as kubectl resolves them, lookups, and consistency with the schemas. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByKind, findByResource, groupVersions, kinds, kindsInCategory, resolveName, schemaNameFor } from './kinds.ts';
import { upstreamSchemas } from './schemas.ts';

test('kubectl-style names resolve', () => {
  const cases: Record<string, string> = {
    vm: 'VirtualMachine',
    vms: 'VirtualMachine',
    virtualmachine: 'VirtualMachine',
    virtualmachines: 'VirtualMachine',
    'virtualmachines.kubevirt.io': 'VirtualMachine',
    'vm.v1.kubevirt.io': 'VirtualMachine',
    VirtualMachine: 'VirtualMachine',
    vmi: 'VirtualMachineInstance',
    vmis: 'VirtualMachineInstance',
    vmim: 'VirtualMachineInstanceMigration',
    dv: 'DataVolume',
    dvs: 'DataVolume',
    'datavolumes.cdi.kubevirt.io': 'DataVolume',
    das: 'DataSource',
    dic: 'DataImportCron',
    pvc: 'PersistentVolumeClaim',
    ns: 'Namespace',
    namespace: 'Namespace',
    cm: 'ConfigMap',
    svc: 'Service',
    ev: 'Event',
    no: 'Node',
    secrets: 'Secret',
    sc: 'StorageClass',
    'storageclasses.storage.k8s.io': 'StorageClass',
    ipaddresses: 'IPAddress',
    netpol: 'NetworkPolicy',
    'networkpolicies.networking.k8s.io': 'NetworkPolicy',
    'net-attach-def': 'NetworkAttachmentDefinition',
    'endpointslices.discovery.k8s.io': 'EndpointSlice',
    'configmaps.v1': 'ConfigMap',
  };
  for (const [name, kind] of Object.entries(cases)) assert.equal(resolveName(name)?.kind, kind, name);
  assert.equal(resolveName('pods'), undefined);
  assert.equal(resolveName('vm.apps'), undefined);
});

test('lookups by resource and by kind', () => {
  assert.equal(findByResource('kubevirt.io', 'v1', 'virtualmachines')?.kind, 'VirtualMachine');
  assert.equal(findByResource('', 'v1', 'configmaps')?.kind, 'ConfigMap');
  assert.equal(findByResource('kubevirt.io', 'v1alpha3', 'virtualmachines'), undefined);
  assert.equal(findByKind('cdi.kubevirt.io/v1beta1', 'DataVolume')?.plural, 'datavolumes');
  assert.equal(findByKind('v1', 'Namespace')?.namespaced, false);
  assert.equal(findByKind('kubevirt.io/v1', 'Namespace'), undefined);
});

test('upstream-accurate names, scope, subresources and columns', () => {
  const vm = findByKind('kubevirt.io/v1', 'VirtualMachine')!;
  assert.deepEqual(vm.shortNames, ['vm', 'vms']);
  assert.deepEqual(vm.categories, ['all']);
  assert.equal(vm.statusSubresource, true);
  assert.equal(vm.listKind, 'VirtualMachineList');
  assert.deepEqual(
    vm.printerColumns.map((c) => c.name),
    ['Age', 'Status', 'Ready'],
  );
  assert.equal(vm.printerColumns[1].jsonPath, '.status.printableStatus');
  const vmi = findByKind('kubevirt.io/v1', 'VirtualMachineInstance')!;
  assert.equal(vmi.statusSubresource, false);
  assert.deepEqual(
    vmi.printerColumns.filter((c) => !c.priority).map((c) => c.name),
    ['Age', 'Phase', 'IP', 'NodeName', 'Ready'],
  );
  assert.equal(vmi.printerColumns.find((c) => c.name === 'IP')?.jsonPath, '.status.interfaces[0].ipAddress');
  const dv = findByKind('cdi.kubevirt.io/v1beta1', 'DataVolume')!;
  assert.deepEqual(
    dv.printerColumns.map((c) => c.name),
    ['Phase', 'Progress', 'Restarts', 'Age'],
  );
  const ns = findByKind('v1', 'Namespace')!;
  assert.equal(ns.printerColumns[0].jsonPath, '.status.phase');
  for (const k of ['Namespace', 'Node']) assert.equal(findByKind('v1', k)?.namespaced, false);
  assert.equal(findByKind('storage.k8s.io/v1', 'StorageClass')?.namespaced, false);
  assert.deepEqual(
    kindsInCategory('all')
      .map((k) => k.plural)
      .sort(),
    [
      'dataimportcrons',
      'datasources',
      'datavolumes',
      'kubevirts',
      'migrationpolicies',
      'services',
      'virtualmachineclones',
      'virtualmachineexports',
      'virtualmachineinstancemigrations',
      'virtualmachineinstancepresets',
      'virtualmachineinstancereplicasets',
      'virtualmachineinstances',
      'virtualmachinepools',
      'virtualmachinerestores',
      'virtualmachines',
      'virtualmachinesnapshotcontents',
      'virtualmachinesnapshots',
    ],
  );
  assert.deepEqual(groupVersions(), [
    { group: '', version: 'v1' },
    { group: 'storage.k8s.io', version: 'v1' },
    { group: 'networking.k8s.io', version: 'v1' },
    { group: 'k8s.cni.cncf.io', version: 'v1' },
    { group: 'discovery.k8s.io', version: 'v1' },
    { group: 'scheduling.k8s.io', version: 'v1' },
    { group: 'kubevirt.io', version: 'v1' },
    { group: 'pool.kubevirt.io', version: 'v1beta1' },
    { group: 'pool.kubevirt.io', version: 'v1alpha1' },
    { group: 'migrations.kubevirt.io', version: 'v1alpha1' },
    { group: 'instancetype.kubevirt.io', version: 'v1beta1' },
    { group: 'apps', version: 'v1' },
    { group: 'cdi.kubevirt.io', version: 'v1beta1' },
    { group: 'snapshot.kubevirt.io', version: 'v1beta1' },
    { group: 'snapshot.kubevirt.io', version: 'v1alpha1' },
    { group: 'clone.kubevirt.io', version: 'v1beta1' },
    { group: 'clone.kubevirt.io', version: 'v1alpha1' },
    { group: 'export.kubevirt.io', version: 'v1beta1' },
    { group: 'nmstate.io', version: 'v1' },
    { group: 'nmstate.io', version: 'v1beta1' },
    { group: 'forklift.konveyor.io', version: 'v1beta1' },
  ]);
});

test('snapshot and clone kinds: names, scope, status subresource and columns as in KubeVirt CRDs', () => {
  const cases: Record<string, string> = {
    vmsnapshot: 'VirtualMachineSnapshot',
    vmsnapshots: 'VirtualMachineSnapshot',
    'virtualmachinesnapshots.snapshot.kubevirt.io': 'VirtualMachineSnapshot',
    vmsnapshotcontent: 'VirtualMachineSnapshotContent',
    vmsnapshotcontents: 'VirtualMachineSnapshotContent',
    vmrestore: 'VirtualMachineRestore',
    'vmrestores.v1beta1.snapshot.kubevirt.io': 'VirtualMachineRestore',
    vmclone: 'VirtualMachineClone',
    vmclones: 'VirtualMachineClone',
    'virtualmachineclones.clone.kubevirt.io': 'VirtualMachineClone',
  };
  for (const [name, kind] of Object.entries(cases)) assert.equal(resolveName(name)?.kind, kind, name);
  const columns = (apiVersion: string, kind: string) => findByKind(apiVersion, kind)!.printerColumns.map((c) => `${c.name}=${c.jsonPath}`);
  assert.deepEqual(columns('snapshot.kubevirt.io/v1beta1', 'VirtualMachineSnapshot'), [
    'SourceKind=.spec.source.kind',
    'SourceName=.spec.source.name',
    'Phase=.status.phase',
    'ReadyToUse=.status.readyToUse',
    'CreationTime=.status.creationTime',
    'Error=.status.error.message',
  ]);
  assert.deepEqual(columns('snapshot.kubevirt.io/v1beta1', 'VirtualMachineSnapshotContent'), [
    'ReadyToUse=.status.readyToUse',
    'CreationTime=.status.creationTime',
    'Error=.status.error.message',
  ]);
  assert.deepEqual(columns('snapshot.kubevirt.io/v1beta1', 'VirtualMachineRestore'), [
    'TargetKind=.spec.target.kind',
    'TargetName=.spec.target.name',
    'Complete=.status.complete',
    'RestoreTime=.status.restoreTime',
    'Error=.status.error.message',
  ]);
  assert.deepEqual(columns('clone.kubevirt.io/v1beta1', 'VirtualMachineClone'), [
    'Phase=.status.phase',
    'SourceVirtualMachine=.spec.source.name',
    'TargetVirtualMachine=.spec.target.name',
  ]);
  for (const [apiVersion, kind] of [
    ['snapshot.kubevirt.io/v1beta1', 'VirtualMachineSnapshot'],
    ['snapshot.kubevirt.io/v1beta1', 'VirtualMachineSnapshotContent'],
    ['snapshot.kubevirt.io/v1beta1', 'VirtualMachineRestore'],
    ['clone.kubevirt.io/v1beta1', 'VirtualMachineClone'],
  ]) {
    const k = findByKind(apiVersion, kind)!;
    assert.equal(k.namespaced, true, kind);
    assert.equal(k.statusSubresource, true, kind);
    assert.equal(k.listKind, `${kind}List`);
    for (const c of k.printerColumns) if (c.name.endsWith('Time')) assert.equal(c.type, 'date', `${kind} ${c.name}`);
  }
  assert.equal(schemaNameFor(findByKind('clone.kubevirt.io/v1beta1', 'VirtualMachineClone')!), 'io.kubevirt.clone.v1beta1.VirtualMachineClone');
});

test('every kind has its schema and list schema upstream', () => {
  const all = upstreamSchemas();
  for (const k of kinds) {
    assert.ok(all[schemaNameFor(k)], schemaNameFor(k));
    assert.ok(all[`${schemaNameFor(k)}List`], `${schemaNameFor(k)}List`);
  }
});
