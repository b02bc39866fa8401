/** The openshift provider's pure parts: inventory mapping, plan concerns, the target VM, the Secret, export names. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubeObject } from '@vessel/api';
import { until } from '../../testing/harness.ts';
import { inventoryVm, openshiftInventory, parseOpenshiftSecret, OpenshiftError, type OpenshiftVm } from './inventory.ts';
import { exportName, openshiftTargetVm } from './provider.ts';
import { mapSource, networkMapConcerns, planConcerns, ready, storageMapConcerns, type PlanContext } from '../validation.ts';

const MiB = 1024 * 1024;
const obj = (kind: string, ns: string | undefined, name: string, rest: Record<string, unknown> = {}): KubeObject => ({
  apiVersion: 'v1',
  kind,
  metadata: { name, ...(ns ? { namespace: ns } : {}), uid: `uid-${name}` },
  ...rest,
});

const srcVm = obj('VirtualMachine', 'apps', 'web', {
  metadata: { name: 'web', namespace: 'apps', uid: 'uid-web', annotations: { 'vm.kubevirt.io/os': 'fedora' }, labels: { app: 'web', 'vessel.io/x': 'y' } },
  spec: {
    runStrategy: 'Always',
    dataVolumeTemplates: [{ metadata: { name: 'web-root' } }],
    template: {
      spec: {
        domain: {
          cpu: { sockets: 2, cores: 2 },
          memory: { guest: '1Gi' },
          firmware: { bootloader: { efi: {} } },
          devices: {
            disks: [{ name: 'root' }, { name: 'data' }, { name: 'cd' }, { name: 'ci' }],
            interfaces: [
              { name: 'default', masquerade: {}, macAddress: '02:00:00:00:00:01' },
              { name: 'blue', bridge: {}, macAddress: '02:00:00:00:00:02', model: 'e1000' },
            ],
          },
        },
        networks: [
          { name: 'default', pod: {} },
          { name: 'blue', multus: { networkName: 'blue-net' } },
        ],
        volumes: [
          { name: 'root', dataVolume: { name: 'web-root' } },
          { name: 'data', persistentVolumeClaim: { claimName: 'web-data' } },
          { name: 'cd', containerDisk: { image: 'quay.io/x/y' } },
          { name: 'ci', cloudInitNoCloud: { userData: '#!/bin/sh' } },
          { name: 'cfg', configMap: { name: 'c' } },
        ],
      },
    },
  },
});
const objs = {
  vms: [srcVm],
  vmis: [obj('VirtualMachineInstance', 'apps', 'web', { status: { phase: 'Running' } })],
  pvcs: [
    obj('PersistentVolumeClaim', 'apps', 'web-root', { spec: { storageClassName: 'fast' }, status: { capacity: { storage: '10Gi' } } }),
    obj('PersistentVolumeClaim', 'apps', 'web-data', { spec: { resources: { requests: { storage: '512Mi' } } } }),
  ],
  dataVolumes: [],
  nads: [obj('NetworkAttachmentDefinition', 'apps', 'blue-net')],
  storageClasses: [
    obj('StorageClass', undefined, 'fast'),
    { ...obj('StorageClass', undefined, 'local'), metadata: { name: 'local', annotations: { 'storageclass.kubernetes.io/is-default-class': 'true' } } },
  ],
};

test('inventory: a VM with its CPUs, memory, firmware, claims (size, class; the default class when none), NICs, power; networks and storage', () => {
  const inv = openshiftInventory(objs);
  const vm = inv.vms[0] as OpenshiftVm;
  assert.equal(vm.id, 'uid-web');
  assert.equal(vm.name, 'web');
  assert.equal(vm.namespace, 'apps');
  assert.equal(vm.cpus, 4);
  assert.equal(vm.memoryMB, 1024);
  assert.equal(vm.firmware, 'efi');
  assert.equal(vm.osType, 'fedora');
  assert.equal(vm.powerState, 'poweredOn');
  assert.deepEqual(
    vm.disks.map((d) => [d.id, d.file, d.capacity, d.datastore, d.dataVolume]),
    [
      ['root', 'apps/web-root', 10 * 1024 * MiB, 'fast', true],
      ['data', 'apps/web-data', 512 * MiB, 'local', false],
    ],
  );
  assert.deepEqual(vm.copied, ['cd:containerDisk', 'ci:cloudInitNoCloud']);
  assert.deepEqual(vm.needsObject, ['cfg:configMap']);
  assert.deepEqual(vm.unsupportedVolumes, []);
  assert.deepEqual(
    vm.nics.map((n) => [n.name, n.network, n.mac]),
    [
      ['default', 'pod', '02:00:00:00:00:01'],
      ['blue', 'apps/blue-net', '02:00:00:00:00:02'],
    ],
  );
  assert.deepEqual(
    inv.networks.map((n) => n.name),
    ['pod', 'apps/blue-net'],
  );
  assert.deepEqual(
    inv.datastores.map((d) => d.name),
    ['fast', 'local'],
  );
  // Stopped: no VMI and runStrategy Halted.
  const stopped = inventoryVm({ ...srcVm, spec: { ...(srcVm.spec as object), runStrategy: 'Halted' } }, { vmis: [], pvcs: [], dataVolumes: [] });
  assert.equal(stopped.powerState, 'poweredOff');
  assert.ok(stopped.disks.every((d) => d.capacity === 0));
});

const ctx = (inv: ReturnType<typeof openshiftInventory>, nmap: unknown[], smap: unknown[]): PlanContext => ({
  inventory: inv,
  networkMap: { metadata: { name: 'n', namespace: 'mig' }, spec: { map: nmap } },
  storageMap: { metadata: { name: 's', namespace: 'mig' }, spec: { map: smap } },
  vmExists: () => false,
  classMaxBytes: () => undefined,
  mapReady: () => true,
});

test('maps and plan: {type: pod} and {namespace, name} sources; a running VM is a Warn, hostDisk Critical; VMs by namespace/name', () => {
  const inv = openshiftInventory(objs);
  assert.deepEqual(mapSource({ type: 'pod' }), { id: 'pod' });
  assert.deepEqual(mapSource({ namespace: 'apps', name: 'blue-net' }), { name: 'apps/blue-net' });
  assert.deepEqual(mapSource({ name: 'local' }), { name: 'local' });
  const nmap = [
    { source: { type: 'pod' }, destination: { type: 'pod' } },
    { source: { namespace: 'apps', name: 'blue-net' }, destination: { type: 'ignored' } },
  ];
  const smap = [
    { source: { name: 'fast' }, destination: { storageClass: 'local' } },
    { source: { name: 'local' }, destination: { storageClass: 'local' } },
  ];
  assert.ok(ready(networkMapConcerns({ metadata: { namespace: 'mig' }, spec: { map: nmap } }, inv, () => true)));
  assert.ok(ready(storageMapConcerns({ metadata: { namespace: 'mig' }, spec: { map: smap } }, inv, () => true)));
  const missing = networkMapConcerns(
    { metadata: { namespace: 'mig' }, spec: { map: [{ source: { namespace: 'apps', name: 'red' }, destination: { type: 'pod' } }] } },
    inv,
    () => true,
  );
  assert.ok(missing.some((c) => c.type === 'SourceNetworkNotValid' && c.reason === 'NotFound'));

  const plan = (vms: unknown[]) => ({ metadata: { name: 'p', namespace: 'mig' }, spec: { targetNamespace: 't', vms } });
  const ok = planConcerns(plan([{ name: 'web', namespace: 'apps' }]), ctx(inv, nmap, smap));
  assert.ok(ready(ok.concerns), JSON.stringify(ok.concerns));
  assert.deepEqual(
    ok.concerns.filter((c) => c.category !== 'Required').map((c) => [c.type, c.category]),
    [
      ['VMPowerStateNotValid', 'Warn'],
      ['VolumesCopiedAsIs', 'Warn'],
    ],
  );
  assert.equal(ok.vms[0].targetName, 'web');
  // By namespace: another namespace's "web" is not found.
  assert.ok(planConcerns(plan([{ name: 'web', namespace: 'other' }]), ctx(inv, nmap, smap)).concerns.some((c) => c.type === 'VMNotFound'));
  // The NAD unmapped; the pod network alone is not enough.
  const unmapped = planConcerns(plan([{ id: 'uid-web' }]), ctx(inv, nmap.slice(0, 1), smap));
  assert.ok(unmapped.concerns.some((c) => c.type === 'VMNetworksNotMapped' && c.category === 'Critical'));
  // A VM with no claim (a containerDisk only) needs no storage mapping.
  const ephemeral = structuredClone(srcVm);
  (ephemeral.spec as { template: { spec: { volumes: unknown[] } } }).template.spec.volumes = [{ name: 'cd', containerDisk: { image: 'x' } }];
  const eph = planConcerns(plan([{ name: 'web' }]), ctx(openshiftInventory({ ...objs, vms: [ephemeral] }), nmap, []));
  assert.ok(ready(eph.concerns), JSON.stringify(eph.concerns));
  // A hostDisk volume cannot be migrated.
  const host = structuredClone(srcVm);
  (host.spec as { template: { spec: { volumes: unknown[] } } }).template.spec.volumes.push({ name: 'h', hostDisk: { path: '/x' } });
  const inv2 = openshiftInventory({ ...objs, vms: [host] });
  const bad = planConcerns(plan([{ name: 'web' }]), ctx(inv2, nmap, smap));
  assert.ok(!ready(bad.concerns));
  assert.deepEqual(bad.concerns.find((c) => c.type === 'UnsupportedVolumes')?.items, ["id:uid-web name:'web' volume:h:hostDisk"]);
});

test('target VM: the source spec with the new claims, mapped networks, MACs kept unless taken, runStrategy from targetPowerState', () => {
  const vm = openshiftInventory(objs).vms[0] as OpenshiftVm;
  const make = (power: unknown, wasRunning: boolean, taken: string[] = [], blue = { type: 'multus', name: 'blue-dst', namespace: 't' }) =>
    openshiftTargetVm({
      source: srcVm,
      vm,
      name: 'web2',
      namespace: 't',
      claims: ['web2-disk0', 'web2-disk1'],
      network: (n) => (n === 'pod' ? { type: 'pod' } : blue),
      macTaken: (m) => taken.includes(m),
      power,
      wasRunning,
      labels: { 'forklift.konveyor.io/plan': 'p' },
    });
  const t = make('auto', true);
  const spec = t.spec as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.equal(t.metadata?.name, 'web2');
  assert.equal(t.metadata?.namespace, 't');
  assert.deepEqual(t.metadata?.labels, { app: 'web', 'forklift.konveyor.io/plan': 'p' });
  assert.equal(spec.runStrategy, 'Always');
  assert.equal(spec.dataVolumeTemplates, undefined);
  assert.deepEqual(spec.template.spec.volumes.slice(0, 3), [
    { name: 'root', dataVolume: { name: 'web2-disk0' } },
    { name: 'data', dataVolume: { name: 'web2-disk1' } },
    { name: 'cd', containerDisk: { image: 'quay.io/x/y' } },
  ]);
  assert.deepEqual(spec.template.spec.networks, [
    { name: 'default', pod: {} },
    { name: 'blue', multus: { networkName: 't/blue-dst' } },
  ]);
  assert.deepEqual(spec.template.spec.domain.devices.interfaces, [
    { name: 'default', masquerade: {}, macAddress: '02:00:00:00:00:01' },
    { name: 'blue', model: 'e1000', bridge: {}, macAddress: '02:00:00:00:00:02' },
  ]);
  assert.equal(spec.template.spec.domain.cpu.sockets, 2);
  // A taken MAC is dropped (the target gets a new one); an ignored network goes with its NIC.
  const t2 = make('off', true, ['02:00:00:00:00:01'], { type: 'ignored', name: '', namespace: '' });
  const s2 = t2.spec as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.equal(s2.runStrategy, 'Halted');
  assert.deepEqual(s2.template.spec.domain.devices.interfaces, [{ name: 'default', masquerade: {} }]);
  assert.deepEqual(s2.template.spec.networks, [{ name: 'default', pod: {} }]);
  assert.equal((make(undefined, false).spec as { runStrategy: string }).runStrategy, 'Halted');
  assert.equal((make('on', false).spec as { runStrategy: string }).runStrategy, 'Always');
  // The source object is not changed.
  assert.equal((srcVm.spec as { dataVolumeTemplates: unknown[] }).dataVolumeTemplates.length, 1);
});

test('secret: token required; cacert or insecureSkipVerify; export names fit 63 characters', () => {
  const b = (s: string) => Buffer.from(s).toString('base64');
  assert.deepEqual(parseOpenshiftSecret({ token: b('abc\n'), cacert: b('PEM') }), { token: 'abc', cacert: 'PEM', insecureSkipVerify: false });
  assert.deepEqual(parseOpenshiftSecret({ token: b('abc'), insecureSkipVerify: b('true') }), { token: 'abc', insecureSkipVerify: true });
  assert.throws(
    () => parseOpenshiftSecret({ cacert: b('PEM') }),
    (e: unknown) => e instanceof OpenshiftError && e.code === 'SecretNotValid',
  );
  const n = exportName('0123abcd-ef01-2345-6789-abcdefabcdef', 'x'.repeat(80));
  assert.ok(n.length <= 63 && n.startsWith('fk-0123abcd-'), n);
});

test('source session: a running VM is stopped, an export made and waited Ready; its links; close (and an abort) delete the export', async () => {
  const { InMemoryClient } = await import('../../testing/harness.ts');
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const { startSourceVm } = await import('./provider.ts');
  const { refs } = await import('@vessel/api');
  const { updateStatus } = await import('@vessel/runtime');
  const c = new InMemoryClient();
  await c.namespaces('apps');
  const vm = structuredClone(srcVm);
  delete vm.metadata!.uid;
  // What Vessel admits: no configMap volume, no template without a spec.
  const vspec = vm.spec as { dataVolumeTemplates?: unknown; template: { spec: { volumes: { name: string }[] } } };
  delete vspec.dataVolumeTemplates;
  vspec.template.spec.volumes = vspec.template.spec.volumes.filter((x) => x.name !== 'cfg');
  const made = await c.create(refs.VMS, { ...vm, apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine' }, { namespace: 'apps' });
  const inv = { ...inventoryVm(made, objs), uid: made.metadata?.uid ?? '' };
  const name = exportName('mig-1', 'web');
  // The export controller's part, played here: Ready with a token Secret and KubeVirt's links.
  const ready = (async () => {
    for (;;) {
      const ex = await c.get(refs.VMEXPORTS, name, { namespace: 'apps' }).catch(() => undefined);
      if (ex) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await c.create(
      refs.SECRETS,
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 't', namespace: 'apps' }, data: { token: b64('tok') } },
      { namespace: 'apps' },
    );
    const url = 'https://other.example:6443/api/export.kubevirt.io/v1beta1/namespaces/apps/x/volumes/web-root/disk.img';
    await updateStatus(c, refs.VMEXPORTS, 'apps', name, (s) => {
      s.phase = 'Ready';
      s.tokenSecretRef = 't';
      s.links = { external: { cert: 'PEM', volumes: [{ name: 'web-root', formats: [{ format: 'raw', url }] }] } };
    });
  })();
  const session = await startSourceVm({ client: c, owned: false }, inv, 'mig-1');
  await ready;
  assert.equal(session.wasRunning, true);
  const after = await c.get(refs.VMS, 'web', { namespace: 'apps' });
  assert.equal((after.spec as { runStrategy: string }).runStrategy, 'Halted');
  assert.deepEqual(session.link(0), {
    url: 'http://in-memory.invalid/api/export.kubevirt.io/v1beta1/namespaces/apps/x/volumes/web-root/disk.img',
    token: 'tok',
    cert: 'PEM',
  });
  await session.close();
  await assert.rejects(c.get(refs.VMEXPORTS, name, { namespace: 'apps' }), /not found/i);
  // An export that does not turn Ready: the abort ends the wait and the export is deleted.
  const abort = new AbortController();
  const p = startSourceVm({ client: c, owned: false }, inv, 'mig-2', abort.signal);
  await until(
    'export mig-2 made',
    async () => (await c.get(refs.VMEXPORTS, exportName('mig-2', 'web'), { namespace: 'apps' }).catch(() => undefined)) ?? false,
  );
  abort.abort(new Error('canceled'));
  await assert.rejects(p, /canceled/);
  await assert.rejects(c.get(refs.VMEXPORTS, exportName('mig-2', 'web'), { namespace: 'apps' }), /not found/i);
});
