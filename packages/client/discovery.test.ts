/** Tests for resolving typed names against discovery documents (kubectl's rules). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientError } from './errors.ts';
import {
  qualifiedKind,
  qualifiedResource,
  resolveResource,
  resolveResourceOrCategory,
  resourceForKind,
  resourcesFromList,
  type ApiResource,
} from './discovery.ts';

const core = resourcesFromList(
  {
    groupVersion: 'v1',
    resources: [
      { name: 'namespaces', singularName: 'namespace', namespaced: false, kind: 'Namespace', shortNames: ['ns'] },
      { name: 'events', singularName: 'event', namespaced: true, kind: 'Event', shortNames: ['ev'] },
      { name: 'pods', singularName: '', namespaced: true, kind: 'Pod', shortNames: ['po'], categories: ['all'] },
      { name: 'pods/status', singularName: '', namespaced: true, kind: 'Pod' },
    ],
  },
  true,
);
const kubevirtV1 = resourcesFromList(
  {
    groupVersion: 'kubevirt.io/v1',
    resources: [
      { name: 'virtualmachines', singularName: 'virtualmachine', namespaced: true, kind: 'VirtualMachine', shortNames: ['vm', 'vms'], categories: ['all'] },
      { name: 'virtualmachines/status', singularName: '', namespaced: true, kind: 'VirtualMachine' },
      {
        name: 'virtualmachineinstances',
        singularName: 'virtualmachineinstance',
        namespaced: true,
        kind: 'VirtualMachineInstance',
        shortNames: ['vmi', 'vmis'],
        categories: ['all'],
      },
    ],
  },
  true,
);
const kubevirtV1alpha3 = resourcesFromList(
  {
    groupVersion: 'kubevirt.io/v1alpha3',
    resources: [{ name: 'virtualmachines', singularName: 'virtualmachine', namespaced: true, kind: 'VirtualMachine', shortNames: ['vm', 'vms'] }],
  },
  false,
);
// A second group with a clashing name: the core group must win for `events`.
const eventsGroup = resourcesFromList(
  {
    groupVersion: 'events.k8s.io/v1',
    resources: [{ name: 'events', singularName: 'event', namespaced: true, kind: 'Event', shortNames: ['ev'] }],
  },
  true,
);
const all: ApiResource[] = [...eventsGroup, ...core, ...kubevirtV1alpha3, ...kubevirtV1];

const resolved = (name: string) => {
  const r = resolveResource(all, name);
  return `${r.plural}.${r.version}.${r.group}`;
};

test('subresources are not resource types', () => {
  assert.equal(core.filter((r) => r.plural.includes('/')).length, 0);
  assert.equal(core.find((r) => r.plural === 'pods')?.singular, 'pod'); // derived from the kind
});

test('plural, singular, kind and short names resolve, case-insensitively', () => {
  for (const name of ['virtualmachines', 'virtualmachine', 'VirtualMachine', 'vm', 'vms', 'VM']) {
    assert.equal(resolved(name), 'virtualmachines.v1.kubevirt.io', name);
  }
  assert.equal(resolved('ns'), 'namespaces.v1.');
  assert.equal(resolved('po'), 'pods.v1.');
});

test('group and version qualifiers select among groups and versions', () => {
  assert.equal(resolved('vm.kubevirt.io'), 'virtualmachines.v1.kubevirt.io');
  assert.equal(resolved('virtualmachines.kubevirt.io'), 'virtualmachines.v1.kubevirt.io');
  assert.equal(resolved('virtualmachines.v1alpha3.kubevirt.io'), 'virtualmachines.v1alpha3.kubevirt.io');
  assert.equal(resolved('events'), 'events.v1.');
  assert.equal(resolved('events.events.k8s.io'), 'events.v1.events.k8s.io');
});

test('unknown names fail with UnknownResource', () => {
  assert.throws(
    () => resolveResource(all, 'virtualmachinez'),
    (e: unknown) => e instanceof ClientError && e.code === 'UnknownResource' && /"virtualmachinez"/.test(e.message),
  );
  assert.throws(() => resolveResource(all, 'vm.example.com'), ClientError);
});

test('a category expands to its preferred resource types', () => {
  assert.deepEqual(resolveResourceOrCategory(all, 'all').map(qualifiedResource), [
    'pods',
    'virtualmachines.kubevirt.io',
    'virtualmachineinstances.kubevirt.io',
  ]);
  assert.deepEqual(resolveResourceOrCategory(all, 'vm').map(qualifiedResource), ['virtualmachines.kubevirt.io']);
});

test('resourceForKind finds the exact group version', () => {
  const r = resourceForKind(all, 'kubevirt.io/v1alpha3', 'VirtualMachine');
  assert.equal(r.version, 'v1alpha3');
  assert.equal(qualifiedKind(r), 'virtualmachine.kubevirt.io');
  assert.equal(qualifiedKind(resourceForKind(all, 'v1', 'Namespace')), 'namespace');
  assert.throws(() => resourceForKind(all, 'kubevirt.io/v2', 'VirtualMachine'), /no matches for kind "VirtualMachine" in version "kubevirt.io\/v2"/);
});
