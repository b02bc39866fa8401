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
  assert.deepEqual(vm.printerColumns.map((c) => c.name), ['Age', 'Status', 'Ready']);
  assert.equal(vm.printerColumns[1].jsonPath, '.status.printableStatus');
  const vmi = findByKind('kubevirt.io/v1', 'VirtualMachineInstance')!;
  assert.equal(vmi.statusSubresource, false);
  assert.deepEqual(vmi.printerColumns.filter((c) => !c.priority).map((c) => c.name), ['Age', 'Phase', 'IP', 'NodeName', 'Ready']);
  assert.equal(vmi.printerColumns.find((c) => c.name === 'IP')?.jsonPath, '.status.interfaces[0].ipAddress');
  const dv = findByKind('cdi.kubevirt.io/v1beta1', 'DataVolume')!;
  assert.deepEqual(dv.printerColumns.map((c) => c.name), ['Phase', 'Progress', 'Restarts', 'Age']);
  const ns = findByKind('v1', 'Namespace')!;
  assert.equal(ns.printerColumns[0].jsonPath, '.status.phase');
  for (const k of ['Namespace', 'Node']) assert.equal(findByKind('v1', k)?.namespaced, false);
  assert.equal(findByKind('storage.k8s.io/v1', 'StorageClass')?.namespaced, false);
  assert.deepEqual(kindsInCategory('all').map((k) => k.plural).sort(), [
    'datasources', 'datavolumes', 'services', 'virtualmachineinstancemigrations', 'virtualmachineinstances', 'virtualmachines',
  ]);
  assert.deepEqual(groupVersions(), [
    { group: '', version: 'v1' },
    { group: 'storage.k8s.io', version: 'v1' },
    { group: 'kubevirt.io', version: 'v1' },
    { group: 'cdi.kubevirt.io', version: 'v1beta1' },
  ]);
});

test('every kind has its schema and list schema upstream', () => {
  const all = upstreamSchemas();
  for (const k of kinds) {
    assert.ok(all[schemaNameFor(k)], schemaNameFor(k));
    assert.ok(all[`${schemaNameFor(k)}List`], `${schemaNameFor(k)}List`);
  }
});
