/** The cold migration's pure parts: the pipeline a VM starts with and the VirtualMachine made for it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { diskName, initialStatus, targetVm } from './migration.ts';
import type { PlanVmResult } from './validation.ts';

const MiB = 1024 * 1024;
const vm: PlanVmResult = {
  targetName: 'db-server',
  newName: 'db-server',
  vm: {
    id: 'abc',
    name: 'DB Server',
    ovfId: 'db',
    source: 'db.ova',
    osType: 'debian10_64Guest',
    cpus: 4,
    memoryMB: 2048,
    firmware: 'bios',
    disks: [
      { id: 'd1', file: 'db-1.vmdk', capacity: 100 * MiB, format: '' },
      { id: 'd2', file: 'db-2.vmdk', capacity: 1 * MiB, format: '' },
    ],
    nics: [
      { name: 'a', network: 'VM Network', mac: '00:50:56:aa:bb:cc' },
      { name: 'b', network: 'Lab', mac: '00:50:56:aa:bb:cd' },
      { name: 'c', network: 'Unused' },
    ],
  },
};

test('initialStatus: the pipeline with one task per disk, sizes in MB', () => {
  const s = initialStatus(vm, 'target');
  assert.deepEqual(
    s.pipeline.map((p) => [p.name, p.phase, p.progress.total]),
    [
      ['Initialize', 'Pending', 1],
      ['DiskTransfer', 'Pending', 107],
      ['VirtualMachineCreation', 'Pending', 1],
    ],
  );
  assert.deepEqual(
    s.pipeline[1].tasks!.map((t) => [t.name, t.progress.total, t.annotations?.file]),
    [
      ['db-server-disk0', 105, 'db-1.vmdk'],
      ['db-server-disk1', 2, 'db-2.vmdk'],
    ],
  );
  assert.equal(s.newName, 'db-server');
  assert.equal(diskName('x', 3), 'x-disk3');
});

test('targetVm: CPUs, memory, NICs with MACs on the mapped networks (ignored ones left out), the disks', () => {
  const plan = { metadata: { name: 'p', namespace: 'src' }, spec: { targetPowerState: 'on' } };
  const network = (n: string) =>
    ({ 'VM Network': { type: 'pod' }, Lab: { type: 'multus', name: 'lab', namespace: 'target' }, Unused: { type: 'ignored' } })[n] as {
      type: string;
      name?: string;
      namespace?: string;
    };
  const o = targetVm(vm, 'target', plan, { network });
  const spec = o.spec as { runStrategy: string; template: { spec: { domain: Record<string, unknown>; networks: unknown[]; volumes: unknown[] } } };
  assert.equal(spec.runStrategy, 'Always');
  assert.deepEqual(spec.template.spec.domain.cpu, { cores: 4 });
  assert.deepEqual(spec.template.spec.domain.resources, { requests: { memory: '2048Mi' } });
  assert.equal(spec.template.spec.domain.firmware, undefined, 'BIOS is the default');
  assert.deepEqual(spec.template.spec.networks, [
    { name: 'net0', pod: {} },
    { name: 'net1', multus: { networkName: 'target/lab' } },
  ]);
  assert.deepEqual((spec.template.spec.domain.devices as { interfaces: unknown[] }).interfaces, [
    { name: 'net0', masquerade: {}, macAddress: '00:50:56:aa:bb:cc' },
    { name: 'net1', bridge: {}, macAddress: '00:50:56:aa:bb:cd' },
  ]);
  assert.deepEqual(spec.template.spec.volumes, [
    { name: 'disk0', dataVolume: { name: 'db-server-disk0' } },
    { name: 'disk1', dataVolume: { name: 'db-server-disk1' } },
  ]);
  assert.equal((o.metadata?.labels as Record<string, string>)['forklift.konveyor.io/plan'], 'p');
  assert.equal((targetVm(vm, 'target', { metadata: { name: 'p' }, spec: {} }, { network }).spec as { runStrategy: string }).runStrategy, 'Halted');
});
