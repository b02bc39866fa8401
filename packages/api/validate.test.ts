/** validateObject: structural (upstream schema), metadata, kind semantics, implemented-vs-upstream. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { findByKind } from './kinds.ts';
import type { FieldCause, KindInfo, KubeObject } from './types.ts';
import { validateObject, type ValidateOptions } from './validate.ts';

const VM = findByKind('kubevirt.io/v1', 'VirtualMachine')!;
const VMI = findByKind('kubevirt.io/v1', 'VirtualMachineInstance')!;
const DV = findByKind('cdi.kubevirt.io/v1beta1', 'DataVolume')!;
const SVC = findByKind('v1', 'Service')!;

function fedoraVM(): KubeObject {
  return parse(readFileSync(new URL('./testdata/vm-fedora.yaml', import.meta.url), 'utf8')) as KubeObject;
}

/** Loose access for test mutations. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

function run(info: KindInfo, obj: KubeObject, opts?: ValidateOptions, op: 'create' | 'update' = 'create', old?: KubeObject) {
  return validateObject(info, obj, op, old, opts);
}

function causeAt(causes: FieldCause[], field: string): FieldCause {
  const c = causes.find((x) => x.field === field);
  assert.ok(c, `no cause at ${field}; got ${JSON.stringify(causes, null, 1)}`);
  return c;
}

test('a VM as the KubeVirt docs write it validates with no causes and no warnings', () => {
  const r = run(VM, fedoraVM());
  assert.deepEqual(r.causes, []);
  assert.deepEqual(r.warnings, []);
});

test('an unknown field gives a cause with the exact path', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.foo = 1;
  vm.spec.template.spec.domain.devices.disks[1].bsu = 'virtio';
  const { causes } = run(VM, vm);
  assert.equal(causes.length, 2);
  assert.match(causeAt(causes, 'spec.template.spec.domain.foo').message, /unknown field "spec.template.spec.domain.foo"/);
  causeAt(causes, 'spec.template.spec.domain.devices.disks[1].bsu');
});

test('unknown fields with fieldValidation=Warn become warnings and can be pruned; Ignore is silent', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.foo = 1;
  vm.bar = true;
  const r = run(VM, vm, { fieldValidation: 'Warn', pruneUnknown: true });
  assert.deepEqual(r.causes, []);
  assert.deepEqual(r.warnings.sort(), ['unknown field "bar"', 'unknown field "spec.template.spec.domain.foo"']);
  assert.equal('foo' in vm.spec.template.spec.domain, false);
  assert.equal('bar' in vm, false);
  const vm2: Any = fedoraVM();
  vm2.spec.template.spec.domain.foo = 1;
  assert.deepEqual(run(VM, vm2, { fieldValidation: 'Ignore' }), { causes: [], warnings: [] });
});

test('a wrong JSON type gives FieldValueInvalid with the expected type', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.cpu.cores = 'two';
  vm.spec.template.spec.domain.devices.disks = { name: 'x' };
  const { causes } = run(VM, vm);
  const c = causeAt(causes, 'spec.template.spec.domain.cpu.cores');
  assert.equal(c.reason, 'FieldValueInvalid');
  assert.match(c.message, /must be of type integer/);
  assert.match(causeAt(causes, 'spec.template.spec.domain.devices.disks').message, /must be of type array/);
});

test('missing required fields give FieldValueRequired', () => {
  const vm: Any = fedoraVM();
  delete vm.spec.template.spec.domain.devices.disks[0].name;
  delete vm.spec.template.spec.domain.devices;
  assert.equal(causeAt(run(VM, vm).causes, 'spec.template.spec.domain.devices').reason, 'FieldValueRequired');
  const noSpec: Any = fedoraVM();
  delete noSpec.spec;
  assert.equal(causeAt(run(VM, noSpec).causes, 'spec').reason, 'FieldValueRequired');
  const noDomain: Any = fedoraVM();
  delete noDomain.spec.template.spec.domain;
  assert.equal(causeAt(run(VM, noDomain).causes, 'spec.template.spec.domain').reason, 'FieldValueRequired');
  const noName: Any = fedoraVM();
  delete noName.spec.template.spec.domain.devices.disks[0].name;
  assert.equal(causeAt(run(VM, noName).causes, 'spec.template.spec.domain.devices.disks[0].name').reason, 'FieldValueRequired');
});

test('bad names: DNS-1123 subdomain for VMs, label for Namespaces, DNS-1035 for Services', () => {
  const vm: Any = fedoraVM();
  vm.metadata.name = 'Fedora_VM';
  const c = causeAt(run(VM, vm).causes, 'metadata.name');
  assert.match(c.message, /^Invalid value: "Fedora_VM": a lowercase RFC 1123 subdomain/);
  const long: Any = fedoraVM();
  long.metadata.name = 'a'.repeat(254);
  assert.match(causeAt(run(VM, long).causes, 'metadata.name').message, /no more than 253 characters/);
  const noName: Any = fedoraVM();
  delete noName.metadata.name;
  assert.equal(causeAt(run(VM, noName).causes, 'metadata.name').message, 'Required value: name or generateName is required');
  const gen: Any = fedoraVM();
  delete gen.metadata.name;
  gen.metadata.generateName = 'fedora-';
  assert.deepEqual(run(VM, gen).causes, []);
  const ns = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'my.ns' } };
  assert.match(causeAt(run(findByKind('v1', 'Namespace')!, ns).causes, 'metadata.name').message, /RFC 1123 label/);
  const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: '1svc' }, spec: { ports: [{ port: 80 }] } };
  assert.match(causeAt(run(SVC, svc).causes, 'metadata.name').message, /DNS-1035 label/);
});

test('bad labels and annotations', () => {
  const vm: Any = fedoraVM();
  vm.metadata.labels['bad key'] = 'x';
  vm.metadata.labels.good = 'bad value!';
  vm.spec.template.metadata.labels['example.com/'] = 'x';
  const { causes } = run(VM, vm);
  const labelCauses = causes.filter((c) => c.field === 'metadata.labels');
  assert.equal(labelCauses.length, 2);
  assert.match(labelCauses[0].message, /^Invalid value: "bad key": name part must consist of/);
  assert.match(labelCauses[1].message, /^Invalid value: "bad value!": a valid label must be an empty string/);
  assert.match(causeAt(causes, 'spec.template.metadata.labels').message, /name part must be non-empty/);
  const big: Any = fedoraVM();
  big.metadata.annotations.huge = 'x'.repeat(256 * 1024);
  assert.equal(causeAt(run(VM, big).causes, 'metadata.annotations').reason, 'FieldValueTooLong');
});

test('a bad quantity is rejected at its path', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.resources.requests.memory = '2GB';
  vm.spec.dataVolumeTemplates[0].spec.storage.resources.requests.storage = 'lots';
  const { causes } = run(VM, vm);
  assert.match(causeAt(causes, 'spec.template.spec.domain.resources.requests.memory').message, /^Invalid value: "2GB": quantities must match/);
  causeAt(causes, 'spec.dataVolumeTemplates[0].spec.storage.resources.requests.storage');
  const num: Any = fedoraVM();
  num.spec.template.spec.domain.resources.requests.memory = 2147483648;
  assert.deepEqual(run(VM, num).causes, []);
  const tiny: Any = fedoraVM();
  tiny.spec.template.spec.domain.resources.requests.memory = '1Ki';
  assert.match(causeAt(run(VM, tiny).causes, 'spec.template.spec.domain.resources.requests.memory').message, /greater than or equal to 1M/);
  const none: Any = fedoraVM();
  delete none.spec.template.spec.domain.resources;
  assert.match(causeAt(run(VM, none).causes, 'spec.template.spec.domain.resources.requests.memory').message, /no memory requested/);
});

test('CPU: negative quantities and topology counts are refused at their path, as negative memory is', () => {
  const at = (mutate: (d: Any) => void, field: string): string => {
    const vm: Any = fedoraVM();
    mutate(vm.spec.template.spec.domain);
    return causeAt(run(VM, vm).causes, field).message;
  };
  const T = 'spec.template.spec.domain';
  assert.match(
    at((d) => {
      d.resources.requests.cpu = '-1';
    }, `${T}.resources.requests.cpu`),
    /^Invalid value: "-1": must be greater than or equal to 0/,
  );
  assert.match(
    at((d) => {
      d.resources.limits = { cpu: '-500m' };
    }, `${T}.resources.limits.cpu`),
    /"-500m": must be greater than or equal to 0/,
  );
  assert.match(
    at((d) => {
      d.resources.requests.cpu = -2;
    }, `${T}.resources.requests.cpu`),
    /-2: must be greater than or equal to 0/,
  );
  assert.match(
    at((d) => {
      d.cpu.cores = -1;
    }, `${T}.cpu.cores`),
    /-1: must be greater than or equal to 0/,
  );
  assert.match(
    at((d) => {
      d.cpu.sockets = -4;
    }, `${T}.cpu.sockets`),
    /must be greater than or equal to 0/,
  );
  assert.match(
    at((d) => {
      d.cpu.threads = -1;
    }, `${T}.cpu.threads`),
    /must be greater than or equal to 0/,
  );
  assert.match(
    at((d) => {
      d.cpu = { sockets: 16, cores: 16, threads: 2 };
    }, `${T}.cpu`),
    /at most 255 vCPUs/,
  );
  assert.match(
    at((d) => {
      d.resources = { requests: { memory: '2Gi', cpu: '4' }, limits: { cpu: '2' } };
    }, `${T}.resources.requests.cpu`),
    /less than or equal to the CPU limit 2/,
  );
  // The same rules for a standalone VMI.
  const vmi: Any = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'x', namespace: 'default' },
    spec: structuredClone((fedoraVM() as Any).spec.template.spec),
  };
  vmi.spec.domain.resources.requests.cpu = '-1';
  causeAt(run(VMI, vmi).causes, 'spec.domain.resources.requests.cpu');
  // Zero means unset (Kubernetes allows 0; KubeVirt then takes the vCPUs from elsewhere); positive is fine.
  for (const cpu of ['0', '500m', '2', 3]) {
    const ok: Any = fedoraVM();
    ok.spec.template.spec.domain.resources.requests.cpu = cpu;
    ok.spec.template.spec.domain.resources.limits = { cpu: 4 };
    assert.deepEqual(run(VM, ok).causes, [], `cpu ${cpu}`);
  }
});

test('a disk without a volume, duplicate disks and volumes', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.devices.disks[0].name = 'nope';
  vm.spec.template.spec.domain.devices.disks.push({ name: 'cloudinitdisk', disk: {} });
  vm.spec.template.spec.volumes.push({ name: 'rootdisk', emptyDisk: { capacity: '1Gi' } });
  const { causes } = run(VM, vm);
  const c = causeAt(causes, 'spec.template.spec.domain.devices.disks[0].name');
  assert.equal(c.reason, 'FieldValueInvalid');
  assert.match(c.message, /'nope' not found: add a volume named 'nope' to spec.template.spec.volumes/);
  assert.equal(causeAt(causes, 'spec.template.spec.domain.devices.disks[2].name').reason, 'FieldValueDuplicate');
  assert.equal(causeAt(causes, 'spec.template.spec.volumes[2].name').reason, 'FieldValueDuplicate');
});

test('disk bus, interface/network consistency', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.devices.disks[0].disk.bus = 'ide';
  vm.spec.template.spec.domain.devices.disks[1].disk.bus = 'floppy';
  vm.spec.template.spec.domain.devices.interfaces[0].name = 'other';
  const { causes } = run(VM, vm);
  assert.match(causeAt(causes, 'spec.template.spec.domain.devices.disks[0].disk.bus').message, /IDE bus is not supported/);
  assert.equal(causeAt(causes, 'spec.template.spec.domain.devices.disks[1].disk.bus').reason, 'FieldValueNotSupported');
  assert.match(causeAt(causes, 'spec.template.spec.domain.devices.interfaces[0].name').message, /add a network named 'other'/);
  causeAt(causes, 'spec.template.spec.networks[0].name');
});

test('running and runStrategy are mutually exclusive; one is required; strategies are checked', () => {
  const both: Any = fedoraVM();
  both.spec.running = true;
  const c = causeAt(run(VM, both).causes, 'spec.running');
  assert.equal(c.reason, 'FieldValueInvalid');
  assert.match(c.message, /mutually exclusive/);
  const neither: Any = fedoraVM();
  delete neither.spec.runStrategy;
  assert.equal(causeAt(run(VM, neither).causes, 'spec.runStrategy').reason, 'FieldValueRequired');
  const bad: Any = fedoraVM();
  bad.spec.runStrategy = 'Sometimes';
  const nc = causeAt(run(VM, bad).causes, 'spec.runStrategy');
  assert.equal(nc.reason, 'FieldValueNotSupported');
  assert.match(nc.message, /supported values: "Always", "RerunOnFailure", "Manual", "Halted", "Once", "WaitAsReceiver"/);
  const legacy: Any = fedoraVM();
  delete legacy.spec.runStrategy;
  legacy.spec.running = false;
  const r = run(VM, legacy);
  assert.deepEqual(r.causes, []);
  assert.deepEqual(r.warnings, ['spec.running is deprecated, please use spec.runStrategy instead.']);
});

test('a GPU (a VMI field Vessel does not implement) is refused, naming the field; VM-level extras are warned', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.domain.devices.gpus = [{ name: 'gpu1', deviceName: 'nvidia.com/TU104GL_Tesla_T4' }];
  vm.spec.template.spec.volumes.push({ name: 'scratch', hostDisk: { path: '/tmp/x.img', type: 'DiskOrCreate', capacity: '1Gi' } });
  vm.spec.template.spec.domain.devices.disks.push({ name: 'scratch', disk: {} });
  vm.spec.template.spec.domain.devices.interfaces[0].pciAddress = '0000:81:00.1';
  vm.spec.instancetype = { name: 'u1.medium' };
  delete vm.spec.template.spec.domain.cpu.sockets;
  delete vm.spec.template.spec.domain.cpu.cores;
  delete vm.spec.template.spec.domain.cpu.threads;
  delete vm.spec.template.spec.domain.resources;
  delete vm.spec.template.spec.domain.memory;
  const r = run(VM, vm);
  // The argv builder could not start it: refused now rather than failing at every start.
  assert.deepEqual(
    r.causes.map((c) => [c.field, c.reason, c.message]),
    [
      ['spec.template.spec.domain.devices.interfaces[0].pciAddress', 'FieldValueNotSupported', 'Unsupported field: not supported by Vessel yet'],
      ['spec.template.spec.domain.devices.gpus', 'FieldValueNotSupported', 'Unsupported field: not supported by Vessel yet'],
      ['spec.template.spec.volumes[2].hostDisk', 'FieldValueNotSupported', 'Unsupported field: not supported by Vessel yet'],
    ],
  );
  assert.deepEqual(r.warnings, []);
  // Still structurally validated below, and a typo is reported once, as unknown.
  vm.spec.template.spec.domain.devices.gpus[0].deviceNam = 'typo';
  vm.spec.template.spec.domain.cpu.numaa = {};
  const typo = run(VM, vm).causes;
  causeAt(typo, 'spec.template.spec.domain.devices.gpus[0].deviceNam');
  assert.equal(typo.filter((c) => c.field === 'spec.template.spec.domain.cpu.numaa').length, 1);
  assert.deepEqual(
    run(VM, vm, { fieldValidation: 'Ignore' })
      .causes.map((c) => c.field)
      .filter((f) => f.includes('numaa')),
    [],
  );
  // false-only fields: off is fine, on is refused.
  const vsock: Any = fedoraVM();
  vsock.spec.template.spec.domain.devices.autoattachVSOCK = false;
  assert.deepEqual(run(VM, vsock).causes, []);
  vsock.spec.template.spec.domain.devices.autoattachVSOCK = true;
  assert.match(causeAt(run(VM, vsock).causes, 'spec.template.spec.domain.devices.autoattachVSOCK').message, /^Unsupported value: true: only false/);
});

test('dedicated CPUs, hugepages and guest NUMA passthrough: accepted together, NUMA and emulator isolation refused without what they need', () => {
  const cpu: Any = fedoraVM();
  const s = cpu.spec.template.spec;
  s.domain.cpu = { cores: 1, dedicatedCpuPlacement: true, isolateEmulatorThread: true, numa: { guestMappingPassthrough: {} } };
  s.domain.memory = { guest: '128Mi', hugepages: { pageSize: '2Mi' } };
  assert.deepEqual(run(VM, cpu).causes, []);
  delete s.domain.memory.hugepages;
  assert.match(
    causeAt(run(VM, cpu).causes, 'spec.template.spec.domain.cpu.numa.guestMappingPassthrough').message,
    /needs dedicatedCpuPlacement: true and memory.hugepages/,
  );
  s.domain.cpu = { cores: 1, isolateEmulatorThread: true };
  assert.match(causeAt(run(VM, cpu).causes, 'spec.template.spec.domain.cpu.isolateEmulatorThread').message, /needs dedicatedCpuPlacement: true/);
});

test('values Vessel cannot run are refused at their field, with the supported ones listed', () => {
  const at = (mutate: (s: Any) => void, field: string): string => {
    const vm: Any = fedoraVM();
    mutate(vm.spec.template.spec);
    return causeAt(run(VM, vm).causes, `spec.template.spec.${field}`).message;
  };
  assert.equal(
    at((s) => {
      s.architecture = 'arm64';
    }, 'architecture'),
    'Unsupported value: "arm64": supported values: "amd64"',
  );
  assert.match(
    at((s) => {
      s.domain.machine.type = 'isapc';
    }, 'domain.machine.type'),
    /^Unsupported value: "isapc": supported values: "q35", "pc"/,
  );
  assert.equal(
    at((s) => {
      s.domain.devices.disks[0].disk.bus = 'usb';
    }, 'domain.devices.disks[0].disk.bus'),
    'Unsupported value: "usb": supported values: "virtio", "sata", "scsi"',
  );
  assert.match(
    at((s) => {
      s.domain.devices.disks[0].cache = 'unsafe';
    }, 'domain.devices.disks[0].cache'),
    /^Unsupported value: "unsafe": supported values: "none", "writethrough", "writeback"/,
  );
  assert.match(
    at((s) => {
      s.domain.devices.interfaces[0].model = 'vmxnet3';
    }, 'domain.devices.interfaces[0].model'),
    /^Unsupported value: "vmxnet3"/,
  );
  assert.match(
    at((s) => {
      s.domain.clock = { utc: { offsetSeconds: 3600 } };
    }, 'domain.clock.utc.offsetSeconds'),
    /^Unsupported value: 3600: supported values: "0"/,
  );
  assert.match(
    at((s) => {
      s.domain.memory = { hugepages: {} };
    }, 'domain.memory.hugepages.pageSize'),
    /^Required value/,
  );
  assert.match(
    at((s) => {
      s.domain.devices.interfaces[0].macAddress = '02:00:00:00:01';
    }, 'domain.devices.interfaces[0].macAddress'),
    /must be a MAC address/,
  );
  assert.match(
    at((s) => {
      s.domain.devices.interfaces[0].macAddress = '01:00:5e:00:00:01';
    }, 'domain.devices.interfaces[0].macAddress'),
    /must be a unicast address/,
  );
  assert.match(
    at((s) => {
      s.domain.firmware = { uuid: 'abc' };
    }, 'domain.firmware.uuid'),
    /must be a UUID/,
  );
  assert.match(
    at((s) => {
      s.domain.resources.requests.memory = '8Mi';
    }, 'domain.resources.requests.memory'),
    /must be at least 16Mi/,
  );
  assert.match(
    at((s) => {
      s.domain.memory = { guest: '15Mi' };
    }, 'domain.memory.guest'),
    /must be at least 16Mi/,
  );
  assert.match(
    at((s) => {
      s.domain.devices.disks[0].blockSize = { custom: { logical: 1000 } };
    }, 'domain.devices.disks[0].blockSize.custom.logical'),
    /power of two/,
  );
  assert.match(
    at((s) => {
      s.networks[0].pod = { vmNetworkCIDR: '10.0.0.0/30' };
    }, 'networks[0].pod.vmNetworkCIDR'),
    /prefix length from 8 to 29/,
  );
  assert.match(
    at((s) => {
      s.domain.devices.watchdog = { name: 'wd' };
    }, 'domain.devices.watchdog.i6300esb'),
    /^Required value/,
  );
  assert.match(
    at((s) => {
      s.domain.firmware = { kernelBoot: { kernelArgs: 'console=ttyS0' } };
    }, 'domain.firmware.kernelBoot.container'),
    /kernelArgs need a kernel container/,
  );
  assert.match(
    at((s) => {
      s.domain.firmware = { kernelBoot: { container: { image: 'k' } } };
    }, 'domain.firmware.kernelBoot.container.kernelPath'),
    /^Required value/,
  );
  const ok: Any = fedoraVM();
  ok.spec.template.spec.domain.machine.type = 'pc-q35-rhel9.2.0';
  ok.spec.template.spec.domain.devices.disks[0].cache = 'writeback';
  assert.deepEqual(run(VM, ok).causes, []);
});

test('updates: a refused field the stored object already had, unchanged, is not refused again', () => {
  const old: Any = fedoraVM();
  old.spec.template.spec.domain.devices.gpus = [{ name: 'gpu1', deviceName: 'nvidia.com/TU104GL_Tesla_T4' }];
  old.spec.template.spec.domain.devices.disks[0].disk.bus = 'usb';
  old.spec.template.spec.domain.machine.type = 'isapc';
  const next: Any = structuredClone(old);
  next.metadata.labels.tier = 'gold';
  assert.deepEqual(run(VM, next, {}, 'update', old).causes, []);
  next.spec.template.spec.domain.devices.gpus[0].deviceName = 'nvidia.com/GA100';
  next.spec.template.spec.domain.machine.type = 'isapc-2';
  const changed = run(VM, next, {}, 'update', old).causes.map((c) => c.field);
  assert.deepEqual(changed, ['spec.template.spec.domain.devices.gpus', 'spec.template.spec.domain.machine.type']);
  const vmi: Any = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'x', namespace: 'default' },
    spec: structuredClone(old.spec.template.spec),
  };
  causeAt(run(VMI, vmi).causes, 'spec.domain.devices.gpus');
  // A VM stored with a negative CPU before admission checked it can still be updated (and have
  // its status written); changing the CPU makes it checked again.
  const neg: Any = fedoraVM();
  neg.spec.template.spec.domain.resources.requests.cpu = '-1';
  const negNext: Any = structuredClone(neg);
  negNext.metadata.labels.tier = 'gold';
  assert.deepEqual(run(VM, negNext, {}, 'update', neg).causes, []);
  negNext.spec.template.spec.domain.resources.requests.cpu = '-2';
  causeAt(run(VM, negNext, {}, 'update', neg).causes, 'spec.template.spec.domain.resources.requests.cpu');
  const vmiNext: Any = structuredClone(vmi);
  vmiNext.metadata.labels = { a: 'b' };
  assert.deepEqual(run(VMI, vmiNext, {}, 'update', vmi).causes, []);
});

test('enums from the upstream schema are enforced', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.volumes[0] = { name: 'rootdisk', containerDisk: { image: 'quay.io/containerdisks/fedora:40', imagePullPolicy: 'Sometimes' } };
  const c = causeAt(run(VM, vm).causes, 'spec.template.spec.volumes[0].containerDisk.imagePullPolicy');
  assert.equal(c.reason, 'FieldValueNotSupported');
  assert.match(c.message, /"Always", "IfNotPresent", "Never"/);
});

test('apiVersion and kind must match the kind', () => {
  const vm: Any = fedoraVM();
  vm.apiVersion = 'kubevirt.io/v1alpha3';
  vm.kind = 'VirtualMachineInstance';
  const { causes } = run(VM, vm);
  causeAt(causes, 'apiVersion');
  causeAt(causes, 'kind');
});

test('status: skipped on the main resource of kinds with a status subresource, checked otherwise', () => {
  const vm: Any = fedoraVM();
  vm.status = { printableStatus: 'Running', fromTheFuture: 1 };
  assert.deepEqual(run(VM, vm).causes, []);
  causeAt(run(VM, vm, { subresource: 'status' }).causes, 'status.fromTheFuture');
  vm.status = { printableStatus: 'Running', gpus: [] };
  // status fields never produce "not implemented" warnings.
  assert.deepEqual(run(VM, vm, { subresource: 'status' }).warnings, []);
});

test('a standalone VMI (volumes without disks are defaulted later, as upstream)', () => {
  const vmi = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'testvmi' },
    spec: {
      domain: { devices: {}, resources: { requests: { memory: '128Mi' } } },
      volumes: [{ name: 'containerdisk', containerDisk: { image: 'quay.io/kubevirt/cirros-container-disk-demo' } }],
    },
  };
  assert.deepEqual(run(VMI, vmi), { causes: [], warnings: [] });
});

test('cloud-init data is checked', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.volumes[1].cloudInitNoCloud = { userData: 'x', userDataBase64: 'eA==' };
  causeAt(run(VM, vm).causes, 'spec.template.spec.volumes[1].cloudInitNoCloud');
  vm.spec.template.spec.volumes[1].cloudInitNoCloud = { userDataBase64: 'not base64!' };
  causeAt(run(VM, vm).causes, 'spec.template.spec.volumes[1].cloudInitNoCloud.userDataBase64');
});

test('dataVolumeTemplates must be referenced by a volume', () => {
  const vm: Any = fedoraVM();
  vm.spec.template.spec.volumes[0].dataVolume.name = 'something-else';
  const { causes } = run(VM, vm);
  assert.match(causeAt(causes, 'spec.dataVolumeTemplates[0]').message, /must be referenced in the VMI template's 'volumes' list/);
});

function dv(spec: object): KubeObject {
  return { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataVolume', metadata: { name: 'dv1', namespace: 'default' }, spec };
}

test('DataVolume: exactly one source, a target, a size unless cloning', () => {
  const http = { source: { http: { url: 'https://example.com/disk.qcow2' } }, storage: { resources: { requests: { storage: '10Gi' } } } };
  assert.deepEqual(run(DV, dv(http)), { causes: [], warnings: [] });
  const sized = { sourceRef: { kind: 'DataSource', name: 'fedora' }, storage: {} };
  assert.deepEqual(run(DV, dv(sized)).causes, [], 'a clone may omit the size with spec.storage');
  const noSize = { source: { http: { url: 'https://example.com/disk.qcow2' } }, storage: {} };
  assert.equal(causeAt(run(DV, dv(noSize)).causes, 'spec.storage.resources.requests.storage').reason, 'FieldValueRequired');
  const noSource = { storage: { resources: { requests: { storage: '10Gi' } } } };
  assert.match(causeAt(run(DV, dv(noSource)).causes, 'spec.source').message, /either Source or SourceRef/);
  const two = { source: { http: { url: 'https://e.com/a' }, blank: {} }, storage: { resources: { requests: { storage: '1Gi' } } } };
  assert.match(causeAt(run(DV, dv(two)).causes, 'spec.source').message, /Multiple Data volume sources/);
  const both = { source: { blank: {} }, sourceRef: { kind: 'DataSource', name: 'x' }, storage: { resources: { requests: { storage: '1Gi' } } } };
  causeAt(run(DV, dv(both)).causes, 'spec.source');
  const noTarget = { source: { blank: {} } };
  causeAt(run(DV, dv(noTarget)).causes, 'spec.storage');
  const badUrl = { source: { http: { url: 'ftp://example.com/x' } }, storage: { resources: { requests: { storage: '1Gi' } } } };
  causeAt(run(DV, dv(badUrl)).causes, 'spec.source.http.url');
  const s3 = { source: { s3: { url: 'https://s3.example.com/b/x' } }, storage: { resources: { requests: { storage: '1Gi' } } } };
  assert.deepEqual(run(DV, dv(s3)).warnings, ['spec.source.s3: not implemented by Vessel yet; accepted and ignored']);
});

test('DataVolume spec is immutable', () => {
  const old = dv({ source: { blank: {} }, storage: { resources: { requests: { storage: '1Gi' } } } });
  const next = dv({ source: { blank: {} }, storage: { resources: { requests: { storage: '2Gi' } } } });
  assert.equal(causeAt(run(DV, next, {}, 'update', old).causes, 'spec').reason, 'FieldValueForbidden');
  assert.deepEqual(run(DV, structuredClone(old), {}, 'update', old).causes, []);
});

test('Service ports are 1-65535 and named when several', () => {
  const svc = (ports: object[]): KubeObject => ({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web' }, spec: { selector: { app: 'web' }, ports } });
  assert.deepEqual(run(SVC, svc([{ port: 80, targetPort: 8080 }])).causes, []);
  assert.match(causeAt(run(SVC, svc([{ port: 70000 }])).causes, 'spec.ports[0].port').message, /between 1 and 65535/);
  causeAt(run(SVC, svc([{ port: 80, targetPort: 0 }])).causes, 'spec.ports[0].targetPort');
  causeAt(run(SVC, svc([{ port: 80, name: 'a' }, { port: 81 }])).causes, 'spec.ports[1].name');
  assert.equal(causeAt(run(SVC, svc([{ port: 80, protocol: 'HTTP' }])).causes, 'spec.ports[0].protocol').reason, 'FieldValueNotSupported');
  causeAt(run(SVC, svc([{ port: 80, targetPort: 'Not_A_Name' }])).causes, 'spec.ports[0].targetPort');
  causeAt(run(SVC, svc([])).causes, 'spec.ports');
});

test('core kinds: PVC, Secret, ConfigMap rules use Kubernetes paths', () => {
  const PVC = findByKind('v1', 'PersistentVolumeClaim')!;
  const pvc = {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name: 'p' },
    spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
  };
  assert.deepEqual(run(PVC, pvc).causes, []);
  const bad: Any = structuredClone(pvc);
  bad.spec.resources.requests.storage = 'big';
  causeAt(run(PVC, bad).causes, 'spec.resources.requests[storage]');
  const SECRET = findByKind('v1', 'Secret')!;
  const secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 's' }, data: { 'pass word': 'c2VjcmV0', ok: 'not base64' } };
  const { causes } = run(SECRET, secret);
  causeAt(causes, 'data');
  causeAt(causes, 'data[ok]');
  const CM = findByKind('v1', 'ConfigMap')!;
  const old = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' }, immutable: true, data: { a: '1' } };
  const changed = { ...old, data: { a: '2' } };
  assert.equal(causeAt(run(CM, changed, {}, 'update', old).causes, 'data').reason, 'FieldValueForbidden');
});

test('a StorageClass provisioner is a qualified name, as in Kubernetes', () => {
  const SC = findByKind('storage.k8s.io/v1', 'StorageClass')!;
  const sc = (provisioner: string) => ({ apiVersion: 'storage.k8s.io/v1', kind: 'StorageClass', metadata: { name: 'x' }, provisioner });
  assert.deepEqual(run(SC, sc('kubernetes.io/no-provisioner')).causes, []);
  assert.deepEqual(run(SC, sc('vessel.io/qcow2')).causes, []);
  causeAt(run(SC, sc('not a/valid/name')).causes, 'provisioner');
});
