/**
 * Instancetypes and preferences: validation (422 with field paths), the VM conflicts virt-api
 * refuses, how their specs are applied to a template, revision names, and the default table.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commonClusterInstancetypes, commonClusterPreferences, commonInstancetypeSizes } from './common-instancetypes.ts';
import { applyInstancetype, cpuTopology, instancetypeConflicts, requirementsProblem, revisionFor, revisionName, specOfRevision } from './instancetype.ts';
import { findByKind } from './kinds.ts';
import type { KubeObject } from './types.ts';
import { validateObject as validate } from './validate.ts';
import type { KindInfo } from './types.ts';

const validateObject = (info: KindInfo, o: KubeObject) => validate(info, o, 'create');

type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const IT = findByKind('instancetype.kubevirt.io/v1beta1', 'VirtualMachineClusterInstancetype')!;
const NSIT = findByKind('instancetype.kubevirt.io/v1beta1', 'VirtualMachineInstancetype')!;
const PREF = findByKind('instancetype.kubevirt.io/v1beta1', 'VirtualMachineClusterPreference')!;
const VM = findByKind('kubevirt.io/v1', 'VirtualMachine')!;

const it = (spec: unknown, kind = 'VirtualMachineClusterInstancetype'): KubeObject =>
  ({ apiVersion: 'instancetype.kubevirt.io/v1beta1', kind, metadata: { name: 'small' }, spec }) as KubeObject;

test('an instancetype needs cpu.guest and memory.guest: 422 naming the field', () => {
  assert.deepEqual(validateObject(IT, it({ cpu: { guest: 2 }, memory: { guest: '1Gi' } })).causes, []);
  const r = validateObject(IT, it({ cpu: {}, memory: { guest: '1Gi' } }));
  assert.deepEqual(
    r.causes.map((c) => c.field),
    ['spec.cpu.guest'],
  );
  const m = validateObject(NSIT, { ...it({ cpu: { guest: 1 }, memory: {} }, 'VirtualMachineInstancetype'), metadata: { name: 'x', namespace: 'd' } });
  assert.deepEqual(
    m.causes.map((c) => c.field),
    ['spec.memory.guest'],
  );
  assert.ok(validateObject(IT, it({ cpu: { guest: 0 }, memory: { guest: '1Gi' } })).causes.some((c) => c.field === 'spec.cpu.guest'));
  assert.ok(
    validateObject(IT, it({ cpu: { guest: 1 }, memory: { guest: '1Gi', overcommitPercent: 150 } })).causes.some(
      (c) => c.field === 'spec.memory.overcommitPercent',
    ),
  );
  assert.ok(validateObject(IT, it({ cpu: { guest: 1, typo: 1 }, memory: { guest: '1Gi' } })).causes.some((c) => c.field === 'spec.cpu.typo'));
});

test('a preference: the topology is one of KubeVirt’s', () => {
  const p = { apiVersion: 'instancetype.kubevirt.io/v1beta1', kind: 'VirtualMachineClusterPreference', metadata: { name: 'p' } } as KubeObject;
  assert.deepEqual(validateObject(PREF, { ...p, spec: { cpu: { preferredCPUTopology: 'preferCores' }, devices: { preferredDiskBus: 'virtio' } } }).causes, []);
  assert.ok(validateObject(PREF, { ...p, spec: { cpu: { preferredCPUTopology: 'lots' } } }).causes.some((c) => c.field === 'spec.cpu.preferredCPUTopology'));
});

const vmWith = (domain: Any, extra: Any = {}): KubeObject =>
  ({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name: 'v', namespace: 'default' },
    spec: { runStrategy: 'Always', instancetype: { name: 'u1.small' }, template: { spec: { domain: { devices: {}, ...domain } } }, ...extra },
  }) as KubeObject;

test('a VM with an instancetype that sets cpu, memory or their resources itself is refused, naming the field', () => {
  assert.deepEqual(validateObject(VM, vmWith({})).causes, []);
  assert.deepEqual(validateObject(VM, vmWith({})).warnings, []);
  const r = validateObject(VM, vmWith({ cpu: { cores: 2 }, memory: { guest: '1Gi' }, resources: { requests: { memory: '1Gi' } } }));
  assert.deepEqual(
    r.causes.map((c) => c.field),
    ['spec.template.spec.domain.cpu.cores', 'spec.template.spec.domain.memory.guest', 'spec.template.spec.domain.resources.requests.memory'],
  );
  assert.match(r.causes[0].message, /conflicts with the selected instancetype/);
  // A preference alone conflicts with nothing.
  const pref = vmWith({ cpu: { cores: 2 }, memory: { guest: '1Gi' } }, { instancetype: undefined, preference: { name: 'fedora' } });
  assert.deepEqual(validateObject(VM, pref).causes, []);
  assert.deepEqual(
    validateObject(VM, vmWith({}, { instancetype: { kind: 'Bogus', name: 'x' } })).causes.map((c) => c.field),
    ['spec.instancetype.kind'],
  );
  assert.deepEqual(
    validateObject(VM, vmWith({}, { instancetype: { inferFromVolume: 'nope' } })).causes.map((c) => c.field),
    ['spec.instancetype.inferFromVolume'],
  );
  assert.deepEqual(instancetypeConflicts({ domain: { cpu: { model: 'host-model' } } }, 'p'), []);
});

test('cpu topology: sockets by default, else as the preference says', () => {
  assert.deepEqual(cpuTopology(4), { sockets: 4, cores: 1, threads: 1 });
  assert.deepEqual(cpuTopology(4, { cpu: { preferredCPUTopology: 'preferCores' } }), { sockets: 1, cores: 4, threads: 1 });
  assert.deepEqual(cpuTopology(4, { cpu: { preferredCPUTopology: 'preferThreads' } }), { sockets: 1, cores: 1, threads: 4 });
  assert.deepEqual(cpuTopology(4, { cpu: { preferredCPUTopology: 'preferSpread' } }), { sockets: 2, cores: 2, threads: 1 });
  assert.deepEqual(cpuTopology(6, { cpu: { preferredCPUTopology: 'spread', spreadOptions: { ratio: 3, across: 'CoresThreads' } } }), {
    sockets: 1,
    cores: 2,
    threads: 3,
  });
  assert.deepEqual(cpuTopology(3, { cpu: { preferredCPUTopology: 'preferSpread' } }), { sockets: 3, cores: 1, threads: 1 });
});

test('applying: the instancetype sizes the VMI, the preference fills only what is unset', () => {
  const template = {
    domain: {
      devices: {
        disks: [{ name: 'root' }, { name: 'data', disk: { bus: 'sata' } }, { name: 'cd', cdrom: {} }],
        interfaces: [
          { name: 'default', masquerade: {} },
          { name: 'x', bridge: {}, model: 'e1000' },
        ],
      },
    },
    volumes: [{ name: 'root' }, { name: 'data' }, { name: 'cd' }, { name: 'cloudinit' }],
  };
  const before = structuredClone(template);
  const spec = applyInstancetype(
    template,
    { cpu: { guest: 2 }, memory: { guest: '256Mi' }, ioThreadsPolicy: 'auto', nodeSelector: { a: 'b' } },
    {
      cpu: { preferredCPUTopology: 'preferCores' },
      devices: { preferredDiskBus: 'virtio', preferredCdromBus: 'scsi', preferredInterfaceModel: 'virtio', preferredRng: {} },
      machine: { preferredMachineType: 'pc' },
      firmware: { preferredUseEfi: true, preferredUseSecureBoot: false },
      features: { preferredSmm: {} },
      preferredTerminationGracePeriodSeconds: 60,
    },
  ) as Any;
  assert.deepEqual(template, before, 'the input is not changed');
  assert.deepEqual(spec.domain.cpu, { sockets: 1, cores: 2, threads: 1 });
  assert.deepEqual(spec.domain.memory, { guest: '256Mi' });
  assert.equal(spec.domain.ioThreadsPolicy, 'auto');
  assert.deepEqual(spec.nodeSelector, { a: 'b' });
  assert.deepEqual(
    spec.domain.devices.disks.map((d: Any) => d.disk?.bus ?? d.cdrom?.bus),
    ['virtio', 'sata', 'scsi', 'virtio'],
  );
  assert.deepEqual(
    spec.domain.devices.interfaces.map((i: Any) => i.model),
    ['virtio', 'e1000'],
  );
  assert.deepEqual(spec.domain.devices.rng, {});
  assert.deepEqual(spec.domain.machine, { type: 'pc' });
  assert.deepEqual(spec.domain.firmware, { bootloader: { efi: { secureBoot: false } } });
  assert.deepEqual(spec.domain.features, { smm: {} });
  assert.equal(spec.terminationGracePeriodSeconds, 60);
  // What the VM sets wins over the preference.
  const own = applyInstancetype({ domain: { machine: { type: 'q35' } }, terminationGracePeriodSeconds: 5 }, undefined, {
    machine: { preferredMachineType: 'pc' },
    preferredTerminationGracePeriodSeconds: 60,
  }) as Any;
  assert.equal(own.domain.machine.type, 'q35');
  assert.equal(own.terminationGracePeriodSeconds, 5);
  // o1: memory overcommitted by its percentage.
  const o1 = applyInstancetype({ domain: {} }, { cpu: { guest: 1 }, memory: { guest: '1Gi', overcommitPercent: 50 } }, undefined) as Any;
  assert.equal(o1.domain.resources.requests.memory, String(512 * 2 ** 20));
});

test('preferences: CPU features, disk block size, input bus and type, masquerade; the VM’s own values win', () => {
  const blockSize = { custom: { logical: 4096, physical: 4096 } };
  const pref = {
    cpu: {
      preferredCPUFeatures: [
        { name: 'pcid', policy: 'require' },
        { name: 'vmx', policy: 'disable' },
      ],
    },
    devices: { preferredDiskBlockSize: blockSize, preferredInputBus: 'virtio', preferredInputType: 'keyboard', preferredInterfaceMasquerade: {} },
  };
  const spec = applyInstancetype(
    {
      domain: {
        cpu: { features: [{ name: 'vmx', policy: 'require' }] },
        devices: {
          disks: [{ name: 'root' }, { name: 'data', blockSize: { matchVolume: { enabled: true } } }],
          interfaces: [{ name: 'default' }, { name: 'sec', bridge: {} }],
          inputs: [{ name: 'tab', type: 'tablet' }],
        },
      },
      networks: [
        { name: 'default', pod: {} },
        { name: 'sec', multus: { networkName: 'n' } },
      ],
    },
    undefined,
    pref,
  ) as Any;
  assert.deepEqual(spec.domain.cpu.features, [
    { name: 'vmx', policy: 'require' },
    { name: 'pcid', policy: 'require' },
  ]);
  assert.deepEqual(
    spec.domain.devices.disks.map((d: Any) => d.blockSize),
    [blockSize, { matchVolume: { enabled: true } }],
  );
  assert.deepEqual(spec.domain.devices.interfaces, [
    { name: 'default', masquerade: {} },
    { name: 'sec', bridge: {} },
  ]);
  assert.deepEqual(spec.domain.devices.inputs, [{ name: 'tab', type: 'tablet', bus: 'virtio' }]);
  // Autoattach with no inputs listed: the default tablet comes with the preferred bus and type.
  const auto = applyInstancetype({ domain: {} }, undefined, { devices: { ...pref.devices, preferredAutoattachInputDevice: true } }) as Any;
  assert.deepEqual(auto.domain.devices.inputs, [{ name: 'default-0', bus: 'virtio', type: 'keyboard' }]);
  assert.equal(auto.domain.devices.autoattachInputDevice, true);
});

test('requirements: a preference refuses an instancetype smaller than it needs', () => {
  assert.equal(requirementsProblem({ cpu: { guest: 1 }, memory: { guest: '4Gi' } }, { requirements: { memory: { guest: '2Gi' } } }, {}), undefined);
  assert.match(requirementsProblem({ cpu: { guest: 1 }, memory: { guest: '1Gi' } }, { requirements: { memory: { guest: '2Gi' } } }, {}) ?? '', /2Gi/);
  assert.match(requirementsProblem({ cpu: { guest: 1 }, memory: { guest: '4Gi' } }, { requirements: { cpu: { guest: 2 } } }, {}) ?? '', /2 vCPUs/);
});

test('revisions: KubeVirt’s name, owned by the VM, holding the spec', () => {
  const vm = { metadata: { name: 'web', namespace: 'ns', uid: 'vm-uid' } } as KubeObject;
  const src = {
    kind: 'VirtualMachineClusterInstancetype',
    metadata: { name: 'u1.small', uid: 'it-uid', generation: 3 },
    spec: { cpu: { guest: 1 } },
  } as KubeObject;
  assert.equal(revisionName('web', src), 'web-virtualmachineclusterinstancetype-u1.small-it-uid-3');
  const rev = revisionFor(vm, src) as Any;
  assert.equal(rev.metadata.namespace, 'ns');
  assert.equal(rev.metadata.ownerReferences[0].uid, 'vm-uid');
  assert.deepEqual(specOfRevision(rev), { cpu: { guest: 1 } });
  assert.equal(rev.data.kind, 'VirtualMachineClusterInstancetype');
});

test('the default set: common-instancetypes names and sizes, every object valid', () => {
  const sizes = new Map(commonInstancetypeSizes().map((s) => [s.name, [s.cpu, s.memory]]));
  assert.deepEqual(sizes.get('u1.nano'), [1, '512Mi']);
  assert.deepEqual(sizes.get('u1.2xmedium'), [2, '4Gi']);
  assert.deepEqual(sizes.get('u1.8xlarge'), [32, '128Gi']);
  assert.deepEqual(sizes.get('o1.medium'), [1, '4Gi']);
  assert.deepEqual(sizes.get('cx1.large'), [2, '4Gi']);
  assert.deepEqual(sizes.get('m1.large'), [2, '16Gi']);
  assert.equal(sizes.size, 10 + 9 + 6 + 5);
  for (const o of commonClusterInstancetypes()) {
    assert.deepEqual(validateObject(IT, o).causes, [], o.metadata?.name);
    assert.equal(o.metadata?.labels?.['instancetype.kubevirt.io/vendor'], 'kubevirt.io');
  }
  const prefs = commonClusterPreferences();
  for (const n of ['fedora', 'ubuntu', 'debian', 'centos.stream9', 'rhel.9', 'windows.2k22', 'cirros', 'alpine'])
    assert.ok(
      prefs.some((p) => p.metadata?.name === n),
      n,
    );
  for (const p of prefs) assert.deepEqual(validateObject(PREF, p).causes, [], p.metadata?.name);
});
