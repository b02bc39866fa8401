/** applyDefaults: upstream-like defaults per kind, idempotent, and still valid afterwards. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { applyDefaults, defaultDiskBus, firmwareUUID, uuidV5 } from './defaults.ts';
import { findByKind } from './kinds.ts';
import type { KubeObject } from './types.ts';
import { validateObject } from './validate.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

const VM = findByKind('kubevirt.io/v1', 'VirtualMachine')!;
const VMI = findByKind('kubevirt.io/v1', 'VirtualMachineInstance')!;

function fedoraVM(): Any {
  return parse(readFileSync(new URL('./testdata/vm-fedora.yaml', import.meta.url), 'utf8'));
}

test('UUIDv5 matches the RFC 4122 test vector and KubeVirt legacy firmware UUIDs are stable', () => {
  // RFC 4122 / Python uuid.uuid5(NAMESPACE_DNS, 'python.org')
  assert.equal(uuidV5('6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'python.org'), '886313e1-3b8a-5372-9b90-0c9aee199e5d');
  assert.equal(firmwareUUID('fedora-vm'), firmwareUUID('fedora-vm'));
  assert.notEqual(firmwareUUID('fedora-vm'), firmwareUUID('fedora-vm2'));
  assert.match(firmwareUUID('x'), /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

test('VirtualMachine: machine type and name-derived firmware UUID; no runStrategy default', () => {
  const vm = fedoraVM();
  delete vm.spec.template.spec.domain.machine;
  applyDefaults(VM, vm);
  const domain = vm.spec.template.spec.domain;
  assert.deepEqual(domain.machine, { type: 'q35' });
  assert.equal(domain.firmware.uuid, firmwareUUID('fedora-vm'));
  // The VM template is otherwise untouched: disks keep their given shape.
  assert.deepEqual(domain.devices.disks[0], { name: 'rootdisk', disk: { bus: 'virtio' } });
  assert.equal(vm.spec.runStrategy, 'Always');
  const given = fedoraVM();
  given.spec.template.spec.domain.firmware = { uuid: '5d307ca9-b3ef-428c-8861-06e72d69f223' };
  given.spec.template.spec.domain.machine = { type: 'pc-q35-rhel9.2.0' };
  applyDefaults(VM, given);
  assert.equal(given.spec.template.spec.domain.firmware.uuid, '5d307ca9-b3ef-428c-8861-06e72d69f223');
  assert.equal(given.spec.template.spec.domain.machine.type, 'pc-q35-rhel9.2.0');
  assert.deepEqual(validateObject(VM, vm, 'create').causes, []);
});

test('VirtualMachineInstance: disks, bus, pod network, firmware, guest memory', () => {
  const vmi: Any = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'testvmi' },
    spec: {
      domain: {
        devices: { disks: [{ name: 'containerdisk' }, { name: 'iso', cdrom: {} }] },
        resources: { requests: { memory: '128Mi' } },
      },
      volumes: [
        { name: 'containerdisk', containerDisk: { image: 'quay.io/kubevirt/cirros-container-disk-demo' } },
        { name: 'iso', containerDisk: { image: 'registry.example.com/iso@sha256:abc' } },
        { name: 'cloudinit', cloudInitNoCloud: { userData: '#cloud-config' } },
      ],
    },
  };
  applyDefaults(VMI, vmi);
  const spec = vmi.spec;
  assert.equal(spec.architecture, 'amd64');
  assert.deepEqual(spec.domain.machine, { type: 'q35' });
  assert.equal(spec.domain.firmware.uuid, firmwareUUID('testvmi'));
  assert.deepEqual(spec.domain.devices.disks, [
    { name: 'containerdisk', disk: { bus: 'sata' } },
    { name: 'iso', cdrom: { bus: 'sata', readonly: true, tray: 'closed' } },
    { name: 'cloudinit', disk: { bus: 'sata' } },
  ]);
  assert.deepEqual(spec.domain.devices.interfaces, [{ name: 'default', masquerade: {} }]);
  assert.deepEqual(spec.networks, [{ name: 'default', pod: {} }]);
  assert.equal(spec.volumes[0].containerDisk.imagePullPolicy, 'Always');
  assert.equal(spec.volumes[1].containerDisk.imagePullPolicy, 'IfNotPresent');
  assert.equal(spec.domain.memory.guest, '128Mi');
  assert.deepEqual(validateObject(VMI, vmi, 'create').causes, []);
  // Idempotent.
  const again = structuredClone(vmi);
  applyDefaults(VMI, again);
  assert.deepEqual(again, vmi);
});

test('VMI: no pod interface when autoattachPodInterface is false or interfaces are given; arm64 uses virtio', () => {
  const vmi: Any = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'a' },
    spec: {
      architecture: 'arm64',
      domain: { devices: { autoattachPodInterface: false, disks: [{ name: 'd', disk: {} }] } },
      volumes: [{ name: 'd', emptyDisk: { capacity: '1Gi' } }],
    },
  };
  applyDefaults(VMI, vmi);
  assert.equal(vmi.spec.domain.devices.interfaces, undefined);
  assert.equal(vmi.spec.networks, undefined);
  assert.equal(vmi.spec.domain.devices.disks[0].disk.bus, 'virtio');
  assert.equal(defaultDiskBus('s390x'), 'virtio');
  assert.equal(defaultDiskBus(undefined), 'sata');
});

test('core kinds: Service, PVC, Namespace, Secret, StorageClass', () => {
  const svc: Any = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'web' },
    spec: { ports: [{ port: 80 }, { port: 53, protocol: 'UDP', targetPort: 'dns' }] },
  };
  applyDefaults(findByKind('v1', 'Service')!, svc);
  assert.equal(svc.spec.type, 'ClusterIP');
  assert.equal(svc.spec.sessionAffinity, 'None');
  assert.deepEqual(svc.spec.ports, [
    { port: 80, protocol: 'TCP', targetPort: 80 },
    { port: 53, protocol: 'UDP', targetPort: 'dns' },
  ]);
  const pvc: Any = { apiVersion: 'v1', kind: 'PersistentVolumeClaim', metadata: { name: 'p' }, spec: { accessModes: ['ReadWriteOnce'] } };
  applyDefaults(findByKind('v1', 'PersistentVolumeClaim')!, pvc);
  assert.equal(pvc.spec.volumeMode, 'Filesystem');
  assert.equal(pvc.status.phase, 'Pending');
  const ns: KubeObject = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team-a' } };
  applyDefaults(findByKind('v1', 'Namespace')!, ns);
  assert.deepEqual(ns.status, { phase: 'Active' });
  assert.equal(ns.metadata?.labels?.['kubernetes.io/metadata.name'], 'team-a');
  const secret: KubeObject = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 's' } };
  applyDefaults(findByKind('v1', 'Secret')!, secret);
  assert.equal(secret.type, 'Opaque');
  const withStrings: Any = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 's' },
    data: { a: 'b2xk', keep: 'eA==' },
    stringData: { a: 'new', 'user-data': '#cloud-config' },
  };
  applyDefaults(findByKind('v1', 'Secret')!, withStrings);
  assert.deepEqual(withStrings.data, { a: 'bmV3', keep: 'eA==', 'user-data': 'I2Nsb3VkLWNvbmZpZw==' });
  assert.equal(withStrings.stringData, undefined);
  const sc: KubeObject = { apiVersion: 'storage.k8s.io/v1', kind: 'StorageClass', metadata: { name: 'local' }, provisioner: 'vessel.io/local' };
  applyDefaults(findByKind('storage.k8s.io/v1', 'StorageClass')!, sc);
  assert.equal(sc.reclaimPolicy, 'Delete');
  assert.equal(sc.volumeBindingMode, 'Immediate');
});

test('NetworkPolicy: policyTypes and port protocols as Kubernetes defaults them', () => {
  const info = findByKind('networking.k8s.io/v1', 'NetworkPolicy')!;
  const deny: Any = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'deny' }, spec: { podSelector: {} } };
  applyDefaults(info, deny);
  assert.deepEqual(deny.spec.policyTypes, ['Ingress']);
  const out: Any = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'out' },
    spec: { podSelector: {}, egress: [{ ports: [{ port: 53 }, { port: 53, protocol: 'UDP' }] }] },
  };
  applyDefaults(info, out);
  assert.deepEqual(out.spec.policyTypes, ['Ingress', 'Egress']);
  assert.deepEqual(out.spec.egress[0].ports, [
    { port: 53, protocol: 'TCP' },
    { port: 53, protocol: 'UDP' },
  ]);
  const kept: Any = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'k' }, spec: { podSelector: {}, policyTypes: ['Egress'] } };
  applyDefaults(info, kept);
  assert.deepEqual(kept.spec.policyTypes, ['Egress']);
});
