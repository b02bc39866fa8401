/**
 * Growing disks and resizing VMs, end to end: real server, controllers, node agent and QEMU
 * (TCG) booting the tiny guest from the `tiny` golden image.
 *
 * - a running guest sees its root disk grow when its claim's request is raised (QMP
 *   block_resize, no reboot), and the claim's status.capacity follows;
 * - shrinking a claim is refused with Kubernetes' 422 and changes nothing;
 * - a claim whose StorageClass does not allow expansion is not grown;
 * - CPU and memory changes of a VM show RestartRequired while it runs and take effect on the
 *   next start; the disk of a stopped VM grows offline, also when the file was already grown
 *   (a resize the agent did not get to record).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { isStatusError, type KubeObject, type ResourceRef } from '@vessel/client';
import { qemuImg } from '@vessel/agent';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { serialLog, tinyVm as tinyVmFor } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const SC: ResourceRef = { group: 'storage.k8s.io', version: 'v1', plural: 'storageclasses', namespaced: false };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
type Obj = Record<string, unknown>;
type Condition = { type: string; status: string; reason?: string; message?: string };

let v: Vessel;
const ns = 'default';
const GiB = 2 ** 30;
const status = (o: KubeObject | undefined) =>
  (o?.status ?? {}) as { printableStatus?: string; phase?: string; capacity?: { storage?: string }; conditions?: Condition[]; allocatedResourceStatuses?: Obj };

const tinyVm = (name: string, opts: { userData: string; memory?: string; cores?: number }) => tinyVmFor(name, { namespace: ns, ...opts });

const serial = (name: string) => serialLog(v.dataDir, ns, name);
const count = (text: string, marker: string) => text.split(marker).length - 1;
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 60_000 });
const kubectl = (...args: string[]) => run('kubectl', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 60_000 });

async function vmStatus(name: string): Promise<ReturnType<typeof status>> {
  return status(await v.client.get(VM, name, { namespace: ns }).catch(() => undefined));
}
async function until(name: string, printable: string, timeoutMs = 180_000): Promise<void> {
  await eventually(`VM ${name} ${printable}`, async () => ((await vmStatus(name)).printableStatus === printable ? true : undefined), timeoutMs, 300);
}
/** The last value printed after `marker` on the serial console (after `from` characters), once there is one. */
async function lastPrinted(name: string, marker: string, from = 0, timeoutMs = 180_000, accept: (value: string) => boolean = () => true): Promise<string> {
  return eventually(
    `"${marker}" on ${name}'s serial console`,
    async () => {
      const values = [...(await serial(name)).slice(from).matchAll(new RegExp(`^${marker} (.*?)\\r?$`, 'gm'))].map((m) => m[1].trim());
      const last = values[values.length - 1];
      return last !== undefined && accept(last) ? last : undefined;
    },
    timeoutMs,
    500,
  );
}
async function pvcOf(name: string): Promise<KubeObject> {
  return v.client.get(PVC, name, { namespace: ns });
}
async function eventsAbout(name: string): Promise<{ reason: string; message: string; type: string }[]> {
  const list = await v.client.list(EVENTS, { namespace: ns });
  return list.items
    .filter((e) => (e.involvedObject as Obj | undefined)?.name === name)
    .map((e) => ({ reason: String(e.reason), message: String(e.message), type: String(e.type) }));
}

// The size of the root disk in 512-byte sectors, every 2 s.
const PRINT_DISK = '#!/bin/sh\nwhile true; do echo "VESSEL-DISK-SECTORS $(cat /sys/block/vda/size)"; sleep 2; done\n';
// The vCPUs, memory (MemTotal, kB) and root disk sectors the guest sees, every 2 s.
const PRINT_CPU_MEM =
  '#!/bin/sh\nwhile true; do echo "VESSEL-CPU-MEM $(nproc) $(awk \'/^MemTotal:/ {print $2}\' /proc/meminfo) $(cat /sys/block/vda/size)"; sleep 2; done\n';

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
  // Both VMs boot at once: the second describe's guest is ready by the time it is needed.
  await v.client.create(VM, tinyVm('grow', { userData: PRINT_DISK }), { namespace: ns });
  await v.client.create(VM, tinyVm('sized', { userData: PRINT_CPU_MEM, cores: 1, memory: '128Mi' }), { namespace: ns });
});
after(async () => {
  for (const vm of (await v.client.list(VM, { namespace: ns })).items) await v.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.close();
});

describe('growing a disk', () => {
  const claim = 'grow-root';

  test('a running guest sees its root disk grow when the claim asks for more; status.capacity follows', async () => {
    await until('grow', 'Running');
    await eventually('the guest ready', async () => (count(await serial('grow'), 'VESSEL-GUEST-READY') > 0 ? true : undefined), 180_000, 500);
    assert.equal(await lastPrinted('grow', 'VESSEL-DISK-SECTORS'), String(GiB / 512), 'the guest starts with 1Gi');
    assert.equal(status(await pvcOf(claim)).capacity?.storage, '1Gi');
    const boots = count(await serial('grow'), 'VESSEL-GUEST-READY');

    const t0 = Date.now();
    const r = await kubectl('patch', 'pvc', claim, '--type=merge', '-p', JSON.stringify({ spec: { resources: { requests: { storage: '2Gi' } } } }));
    assert.equal(r.code, 0, r.err);
    await eventually('status.capacity 2Gi', async () => (status(await pvcOf(claim)).capacity?.storage === '2Gi' ? true : undefined), 60_000);
    const seen = await lastPrinted('grow', 'VESSEL-DISK-SECTORS', 0, 60_000, (s) => s === String((2 * GiB) / 512));
    console.log(`# grown in ${Date.now() - t0} ms; the guest reads ${seen} sectors`);
    assert.equal(count(await serial('grow'), 'VESSEL-GUEST-READY'), boots, 'no reboot');
    assert.equal(status(await v.client.get(VMI, 'grow', { namespace: ns })).phase, 'Running');

    const pvc = status(await pvcOf(claim));
    assert.equal(
      pvc.conditions?.find((c) => c.type === 'Resizing'),
      undefined,
      'the Resizing condition is gone once done',
    );
    assert.equal(pvc.allocatedResourceStatuses?.storage, undefined);
    const events = await eventsAbout(claim);
    const ok = events.find((e) => e.reason === 'VolumeResizeSuccessful');
    assert.ok(ok, `a VolumeResizeSuccessful event: ${JSON.stringify(events)}`);
    assert.match(ok.message, /2Gi.*online/);
    const path = ((await pvcOf(claim)).metadata!.annotations as Record<string, string>)['vessel.io/volume-path'];
    assert.equal((await qemuImg.info(path, { format: 'qcow2', forceShare: true })).virtualSize, 2 * GiB);
    // CDI users resize through the claim: the DataVolume stays as it was.
    const dv = await v.client.get(DV, claim, { namespace: ns });
    assert.equal(status(dv).phase, 'Succeeded');
    assert.equal(status(dv).conditions?.find((c) => c.type === 'Ready')?.status, 'True');
  });

  test('shrinking is refused with 422 and the field, and nothing changes', async () => {
    const r = await kubectl('patch', 'pvc', claim, '--type=merge', '-p', JSON.stringify({ spec: { resources: { requests: { storage: '1Gi' } } } }));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /spec\.resources\.requests\.storage: Forbidden: field can not be less than previous value/);
    const err = await v.client.patch(PVC, claim, { spec: { resources: { requests: { storage: '1Gi' } } } }, { namespace: ns }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(isStatusError(err, 'Invalid'), `a 422 Invalid: ${String(err)}`);
    assert.equal(err.code, 422);
    assert.deepEqual(
      err.causes.map((c) => [c.field, c.reason]),
      [['spec.resources.requests.storage', 'FieldValueForbidden']],
    );
    const pvc = await pvcOf(claim);
    assert.equal(((pvc.spec as Obj).resources as { requests: { storage: string } }).requests.storage, '2Gi');
    assert.equal(status(pvc).capacity?.storage, '2Gi');
    const path = (pvc.metadata!.annotations as Record<string, string>)['vessel.io/volume-path'];
    assert.equal((await qemuImg.info(path, { format: 'qcow2', forceShare: true })).virtualSize, 2 * GiB);
    const text = await serial('grow');
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(await lastPrinted('grow', 'VESSEL-DISK-SECTORS', text.length), String((2 * GiB) / 512), 'the guest still sees 2Gi');
  });

  test('a claim whose StorageClass does not allow expansion is not grown', async () => {
    await v.client.create(SC, {
      apiVersion: 'storage.k8s.io/v1',
      kind: 'StorageClass',
      metadata: { name: 'fixed-size' },
      provisioner: 'vessel.io/qcow2',
      parameters: { pool: 'local' },
      reclaimPolicy: 'Delete',
      volumeBindingMode: 'WaitForFirstConsumer',
      allowVolumeExpansion: false,
    });
    await v.client.create(
      DV,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataVolume',
        metadata: { name: 'fixed' },
        spec: { source: { blank: {} }, storage: { storageClassName: 'fixed-size', resources: { requests: { storage: '64Mi' } } } },
      },
      { namespace: ns },
    );
    await eventually(
      'DataVolume fixed Succeeded',
      async () => (status(await v.client.get(DV, 'fixed', { namespace: ns })).phase === 'Succeeded' ? true : undefined),
      60_000,
    );
    const grow = await v.client.patch(PVC, 'fixed', { spec: { resources: { requests: { storage: '128Mi' } } } }, { namespace: ns }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const words = /only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize/;
    if (grow !== undefined) {
      // The API server's admission refuses it, as kube-apiserver does (403).
      assert.ok(isStatusError(grow, 'Forbidden'), String(grow));
      assert.match(grow.message, words);
    } else {
      // Admitted: the agent refuses to grow it.
      const refused = await eventually(
        'a VolumeResizeFailed event',
        async () => (await eventsAbout('fixed')).find((e) => e.reason === 'VolumeResizeFailed'),
        30_000,
      );
      assert.equal(refused.type, 'Warning');
      assert.match(refused.message, words);
    }
    const pvc = await pvcOf('fixed');
    assert.equal(status(pvc).capacity?.storage, '64Mi');
    const path = (pvc.metadata!.annotations as Record<string, string>)['vessel.io/volume-path'];
    assert.equal((await qemuImg.info(path, { format: 'qcow2' })).virtualSize, 64 * 2 ** 20);
    await v.client.delete(DV, 'fixed', { namespace: ns });
  });
});

describe('a stopped VM: CPU, memory and disk resized offline', () => {
  const name = 'sized';
  const claim = 'sized-root';
  let stopped = '';

  test('cores 1 → 2 and 128Mi → 256Mi while it runs: RestartRequired, the guest unchanged', async () => {
    await until(name, 'Running');
    const [cpus, memKiB, sectors] = (await lastPrinted(name, 'VESSEL-CPU-MEM')).split(' ').map(Number);
    assert.equal(cpus, 1);
    // MemTotal is the RAM less what the kernel keeps (about 35 MiB here).
    assert.ok(memKiB <= 128 * 1024 && memKiB > 64 * 1024, `MemTotal ${memKiB} kB for 128Mi`);
    assert.equal(sectors, GiB / 512);

    await v.client.patch(
      VM,
      name,
      { spec: { template: { spec: { domain: { cpu: { cores: 2 }, resources: { requests: { memory: '256Mi' } } } } } } },
      { namespace: ns },
    );
    const restart = await eventually(
      'RestartRequired',
      async () => (await vmStatus(name)).conditions?.find((c) => c.type === 'RestartRequired' && c.status === 'True'),
      30_000,
    );
    assert.match(restart.message ?? '', /next start/);
    const before = await serial(name);
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await lastPrinted(name, 'VESSEL-CPU-MEM', before.length)).split(' ')[0], '1', 'the running guest keeps 1 vCPU');

    assert.equal((await vessel('stop', name)).code, 0);
    await until(name, 'Stopped', 120_000);
    stopped = await serial(name);
    assert.equal(
      (await vmStatus(name)).conditions?.find((c) => c.type === 'RestartRequired'),
      undefined,
      'stopped: nothing to restart',
    );
  });

  test('its disk grows offline (qemu-img) while it is stopped, and a resize cut short completes', async () => {
    const path = ((await pvcOf(claim)).metadata!.annotations as Record<string, string>)['vessel.io/volume-path'];
    await v.client.patch(PVC, claim, { spec: { resources: { requests: { storage: '2Gi' } } } }, { namespace: ns });
    await eventually('status.capacity 2Gi', async () => (status(await pvcOf(claim)).capacity?.storage === '2Gi' ? true : undefined), 60_000);
    assert.equal((await qemuImg.info(path, { format: 'qcow2' })).virtualSize, 2 * GiB);
    const offline = await eventually(
      'VolumeResizeSuccessful',
      async () => (await eventsAbout(claim)).find((e) => e.reason === 'VolumeResizeSuccessful'),
      10_000,
    );
    assert.match(offline.message, /offline/);
    // As if the agent had died between growing the file and recording it: the file is already
    // 3Gi when the claim asks for it; the agent only has to record the capacity.
    await qemuImg.resize(path, 3 * GiB, { format: 'qcow2' });
    await v.client.patch(PVC, claim, { spec: { resources: { requests: { storage: '3Gi' } } } }, { namespace: ns });
    await eventually('status.capacity 3Gi', async () => (status(await pvcOf(claim)).capacity?.storage === '3Gi' ? true : undefined), 60_000);
    assert.equal((await qemuImg.info(path, { format: 'qcow2' })).virtualSize, 3 * GiB);
  });

  test('started again: 2 vCPUs, 256Mi and the 3Gi disk', async () => {
    assert.equal((await vessel('start', name)).code, 0);
    await until(name, 'Running');
    const [cpus, memKiB, sectors] = (await lastPrinted(name, 'VESSEL-CPU-MEM', stopped.length)).split(' ').map(Number);
    assert.equal(cpus, 2);
    assert.ok(memKiB <= 256 * 1024 && memKiB > 128 * 1024, `MemTotal ${memKiB} kB for 256Mi: more than all of the old 128Mi`);
    assert.equal(sectors, (3 * GiB) / 512);
    assert.equal(
      (await vmStatus(name)).conditions?.find((c) => c.type === 'RestartRequired'),
      undefined,
    );
  });
});
