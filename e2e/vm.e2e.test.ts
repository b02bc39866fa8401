/**
 * The VM runtime end to end: real kubectl, server, controllers and node agent in this process,
 * and real QEMU (TCG) booting the tiny guest from the `tiny` golden image. Each test checks
 * what a user sees: printableStatus and conditions, the serial console's output, QMP status.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { runDirOf, serialLog, tinyVm as tinyVmFor, type TinyVmOptions } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
type Obj = Record<string, unknown>;

let v: Vessel;
const ns = 'default';
const status = (o: KubeObject | undefined) =>
  (o?.status ?? {}) as { printableStatus?: string; phase?: string; conditions?: { type: string; status: string; reason?: string; message?: string }[] };

const tinyVm = (name: string, opts: Omit<TinyVmOptions, 'namespace'> = {}) => tinyVmFor(name, { ...opts, namespace: ns });

const runDir = async (name: string) => (await runDirOf(v.dataDir, ns, name)) ?? join(v.dataDir, 'vms', ns, name);
const serial = (name: string) => serialLog(v.dataDir, ns, name);
const count = (text: string, marker: string) => text.split(marker).length - 1;

async function vmStatus(name: string): Promise<string | undefined> {
  return status(await v.client.get(VM, name, { namespace: ns }).catch(() => undefined)).printableStatus;
}
async function until(name: string, printable: string, timeoutMs = 90_000): Promise<void> {
  await eventually(`VM ${name} ${printable}`, async () => ((await vmStatus(name)) === printable ? true : undefined), timeoutMs);
}
async function serialHas(name: string, what: string | RegExp, times = 1, timeoutMs = 180_000): Promise<string> {
  return eventually(
    `${what} x${times} on ${name}'s serial console`,
    async () => {
      const text = await serial(name);
      const n = typeof what === 'string' ? count(text, what) : (text.match(new RegExp(what, 'g')) ?? []).length;
      return n >= times ? text : undefined;
    },
    timeoutMs,
  );
}
const lastCounter = (text: string) => Math.max(0, ...[...text.matchAll(/VESSEL-COUNTER (\d+)/g)].map((m) => Number(m[1])));
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 60_000 });

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
});
after(async () => {
  // Stop every VM so no QEMU outlives the test.
  for (const vm of (await v.client.list(VM, { namespace: ns })).items) await v.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await v.close();
});

describe('lifecycle of a VM applied with kubectl', () => {
  const name = 'life';
  test('reaches Running; the console shows the boot marker and the cloud-init result', async () => {
    const manifest = JSON.stringify(tinyVm(name, { userData: '#!/bin/sh\necho hello-from-user-data\n' }));
    const r = await run('kubectl', ['--kubeconfig', v.kubeconfig, 'apply', '-f', '-'], { input: manifest });
    assert.equal(r.code, 0, r.err);
    await until(name, 'Running');
    await serialHas(name, 'hello-from-user-data');
    const text = await serialHas(name, 'VESSEL-GUEST-READY');
    assert.match(text, new RegExp(`VESSEL-CLOUDINIT ${name}\\.${ns}`), 'instance id is <name>.<namespace>');
    const vmi = await v.client.get(VMI, name, { namespace: ns });
    assert.equal((vmi.status as Obj).nodeName, 'node-a');
    const ps = await run('ps', ['-eo', 'args']);
    assert.match(ps.out, new RegExp(`-name guest=${ns}_${name}`), 'ps shows which VM a QEMU is');
  });

  test('pause and unpause stop and resume the guest', async () => {
    assert.equal((await vessel('pause', name)).code, 0);
    await until(name, 'Paused', 10_000);
    const frozen = lastCounter(await serial(name));
    await new Promise((r) => setTimeout(r, 3000));
    assert.ok(lastCounter(await serial(name)) <= frozen + 1, 'the counter stops while paused');
    const again = await vessel('pause', name);
    assert.notEqual(again.code, 0);
    assert.match(again.err, /already paused/);
    assert.equal((await vessel('unpause', name)).code, 0);
    await until(name, 'Running', 10_000);
    await serialHas(name, `VESSEL-COUNTER ${frozen + 3}`, 1, 30_000);
  });

  test('softreboot boots the guest again in the same VMI', async () => {
    const uid = (await v.client.get(VMI, name, { namespace: ns })).metadata!.uid;
    const boots = count(await serial(name), 'VESSEL-GUEST-READY');
    assert.equal((await vessel('softreboot', name)).code, 0);
    await serialHas(name, 'VESSEL-GUEST-READY', boots + 1);
    assert.equal((await v.client.get(VMI, name, { namespace: ns })).metadata!.uid, uid);
  });

  test('stop and start: the on-disk counter survives', async () => {
    // The counter must be running again after the softreboot before the stop means anything.
    const rebooted = (await serial(name)).lastIndexOf('VESSEL-GUEST-READY');
    await eventually('the counter running after the reboot', async () => /VESSEL-COUNTER \d+/.test((await serial(name)).slice(rebooted)) || undefined, 180_000);
    assert.equal((await vessel('stop', name)).code, 0);
    await until(name, 'Stopped', 120_000);
    const stoppedLog = await serial(name);
    assert.match(stoppedLog, /VESSEL-POWERDOWN/, 'stopped through ACPI, the guest saw it');
    const stopped = await vessel('stop', name);
    assert.match(stopped.err, /not running/);
    assert.equal((await vessel('start', name)).code, 0);
    await until(name, 'Running');
    // serial.log is appended across launches: look only at what the new boot printed. A guest on
    // a loaded machine under TCG can take minutes to boot.
    const after = await eventually(
      'a counter line from the new boot',
      async () => {
        const m = (await serial(name)).slice(stoppedLog.length).match(/VESSEL-COUNTER (\d+)/);
        return m ? Number(m[1]) : undefined;
      },
      240_000,
    );
    const last = lastCounter(stoppedLog);
    // The guest may have synced n but been powered off before printing it.
    assert.ok(after === last + 1 || after === last + 2, `the counter continues: ${last} before the stop, ${after} after the start`);
  });

  test('restart makes a new VMI', async () => {
    const uid = (await v.client.get(VMI, name, { namespace: ns })).metadata!.uid;
    assert.equal((await vessel('restart', name)).code, 0);
    await eventually(
      'a new VMI running',
      async () => {
        const vmi = await v.client.get(VMI, name, { namespace: ns }).catch(() => undefined);
        return vmi && vmi.metadata!.uid !== uid && status(vmi).phase === 'Running' ? true : undefined;
      },
      90_000,
    );
    const events = await vessel('describe', 'vm', name);
    assert.match(events.out, /SuccessfulDelete/);
  });
});

describe('runStrategy', () => {
  const powersOff = '#!/bin/sh\nsleep 1\necho powering-off-now\npoweroff\n';
  test('Always restarts a guest that powers itself off; RerunOnFailure and Manual leave it stopped', async () => {
    for (const [name, strategy] of [
      ['always', 'Always'],
      ['rerun', 'RerunOnFailure'],
      ['manual', 'Manual'],
    ] as const) {
      await v.client.create(VM, tinyVm(name, { runStrategy: strategy, userData: powersOff }), { namespace: ns });
    }
    assert.equal((await vessel('start', 'manual')).code, 0, 'Manual runs on a start request');
    await serialHas('always', 'powering-off-now', 2, 150_000);
    await until('rerun', 'Stopped', 120_000);
    assert.equal(status(await v.client.get(VMI, 'rerun', { namespace: ns })).phase, 'Succeeded');
    await until('manual', 'Stopped', 120_000);
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(count(await serial('rerun'), 'powering-off-now'), 1, 'RerunOnFailure did not restart a clean power-off');
    assert.equal(count(await serial('manual'), 'powering-off-now'), 1, 'Manual did not restart by itself');
    for (const n of ['always', 'rerun', 'manual']) await v.client.delete(VM, n, { namespace: ns });
  });

  test('Once boots the guest one time; after it powers itself off the VM stays stopped', async () => {
    // Long enough after boot that Running is seen before the guest goes away.
    const userData = '#!/bin/sh\nsleep 4\necho once-powering-off\npoweroff\n';
    await v.client.create(VM, tinyVm('once', { runStrategy: 'Once', userData }), { namespace: ns });
    await until('once', 'Running');
    const uid = (await v.client.get(VMI, 'once', { namespace: ns })).metadata!.uid;
    await serialHas('once', 'VESSEL-GUEST-READY');
    await serialHas('once', 'once-powering-off');
    await until('once', 'Stopped', 120_000);
    // Time for a restart to happen if one were coming.
    await new Promise((r) => setTimeout(r, 5000));
    const vmi = await v.client.get(VMI, 'once', { namespace: ns });
    assert.equal(vmi.metadata!.uid, uid, 'the one VMI is kept, not replaced');
    assert.equal(status(vmi).phase, 'Succeeded');
    assert.equal(await vmStatus('once'), 'Stopped');
    const text = await serial('once');
    assert.equal(count(text, 'VESSEL-GUEST-READY'), 1, 'the guest booted once');
    assert.equal(count(text, 'once-powering-off'), 1);
    assert.match((await vessel('start', 'once')).err, /runStrategy Once does not support manual start requests/);
    await v.client.delete(VM, 'once', { namespace: ns });
  });

  test('RerunOnFailure restarts a VM whose QEMU dies; Halted stays down', async () => {
    await v.client.create(VM, tinyVm('crashy', { runStrategy: 'RerunOnFailure' }), { namespace: ns });
    await v.client.create(VM, tinyVm('halted', { runStrategy: 'Halted' }), { namespace: ns });
    await until('crashy', 'Running');
    await serialHas('crashy', 'VESSEL-GUEST-READY');
    const uid = (await v.client.get(VMI, 'crashy', { namespace: ns })).metadata!.uid;
    const pid = (await readFile(join(await runDir('crashy'), 'qemu.pid'), 'utf8')).trim();
    process.kill(Number(pid), 'SIGKILL');
    await eventually(
      'a new VMI after the crash',
      async () => {
        const vmi = await v.client.get(VMI, 'crashy', { namespace: ns }).catch(() => undefined);
        return vmi && vmi.metadata!.uid !== uid && status(vmi).phase === 'Running' ? true : undefined;
      },
      90_000,
    );
    assert.equal(await vmStatus('halted'), 'Stopped');
    await assert.rejects(v.client.get(VMI, 'halted', { namespace: ns }));
    const r = await vessel('restart', 'halted');
    assert.match(r.err, /Halted does not support/);
    for (const n of ['crashy', 'halted']) await v.client.delete(VM, n, { namespace: ns });
  });
});

describe('why a VM is not running', () => {
  test('too much memory: ErrorUnschedulable, and Running once the request fits', async () => {
    await v.client.create(VM, tinyVm('greedy', { memory: '1000Gi' }), { namespace: ns });
    await until('greedy', 'ErrorUnschedulable');
    const ready = status(await v.client.get(VM, 'greedy', { namespace: ns })).conditions?.find((c) => c.type === 'Ready');
    assert.match(ready?.message ?? '', /0\/1 nodes are available: 1 Insufficient memory/);
    await v.client.patch(VM, 'greedy', { spec: { template: { spec: { domain: { resources: { requests: { memory: '128Mi' } } } } } } }, { namespace: ns });
    await until('greedy', 'Running');
    await v.client.delete(VM, 'greedy', { namespace: ns });
  });

  test('a template that makes no valid VMI: Stopped, and Ready says why, until it is fixed', async () => {
    // Its instancetype exists when the VM is written and is gone when it starts; once it is
    // back, the VM starts by itself.
    const IT: ResourceRef = { group: 'instancetype.kubevirt.io', version: 'v1beta1', plural: 'virtualmachineinstancetypes', namespaced: true };
    const size = {
      apiVersion: 'instancetype.kubevirt.io/v1beta1',
      kind: 'VirtualMachineInstancetype',
      metadata: { name: 'vanishing', namespace: ns },
      spec: { cpu: { guest: 1 }, memory: { guest: '128Mi' } },
    };
    await v.client.create(IT, size, { namespace: ns });
    const vm = tinyVm('typeless', { runStrategy: 'Halted' }) as { spec: { instancetype?: Obj; template: { spec: { domain: Obj } } } };
    vm.spec.instancetype = { kind: 'VirtualMachineInstancetype', name: 'vanishing' };
    delete vm.spec.template.spec.domain.resources;
    await v.client.create(VM, vm, { namespace: ns });
    await v.client.delete(IT, 'vanishing', { namespace: ns });
    await v.client.patch(VM, 'typeless', { spec: { runStrategy: 'Always' } }, { namespace: ns });
    const ready = await eventually(
      'the FailedCreate condition',
      async () => {
        const c = status(await v.client.get(VM, 'typeless', { namespace: ns })).conditions?.find((x) => x.type === 'Ready');
        return c?.reason === 'FailedCreate' ? c : undefined;
      },
      60_000,
    );
    assert.match(ready.message ?? '', /VirtualMachineInstancetype vanishing not found/);
    assert.equal(await vmStatus('typeless'), 'Stopped');
    await v.client.create(IT, size, { namespace: ns });
    await until('typeless', 'Running');
    await v.client.delete(VM, 'typeless', { namespace: ns });
    await v.client.delete(IT, 'vanishing', { namespace: ns });
  });

  test('a missing DataVolume: ErrorDataVolumeNotFound, then Running once it exists', async () => {
    await v.client.create(VM, tinyVm('orphan', { dataVolume: 'later' }), { namespace: ns });
    await until('orphan', 'ErrorDataVolumeNotFound', 30_000);
    await v.client.create(
      { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true },
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataVolume',
        metadata: { name: 'later' },
        spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
      },
      { namespace: ns },
    );
    await until('orphan', 'Running');
    await v.client.delete(VM, 'orphan', { namespace: ns });
  });

  test("a broken disk: the VMI fails with QEMU's reason, CrashLoopBackOff, and it recovers once the disk is fixed", async () => {
    // Made stopped: its DataVolume is imported all the same, and no boot is needed to break it.
    await v.client.create(VM, tinyVm('broken', { runStrategy: 'Halted' }), { namespace: ns });
    const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
    await eventually(
      'the root DataVolume imported',
      async () =>
        ((await v.client.get(DV, 'broken-root', { namespace: ns }).catch(() => undefined))?.status as Obj | undefined)?.phase === 'Succeeded' || undefined,
      60_000,
    );
    await until('broken', 'Stopped', 60_000);
    const pvc = await v.client.get({ group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true }, 'broken-root', { namespace: ns });
    const disk = (pvc.metadata!.annotations as Record<string, string>)['vessel.io/volume-path'];
    const { copyFile, writeFile } = await import('node:fs/promises');
    await copyFile(disk, `${disk}.good`);
    await writeFile(disk, Buffer.alloc(4096, 0x41));
    await v.client.patch(VM, 'broken', { spec: { runStrategy: 'Always' } }, { namespace: ns });
    await until('broken', 'CrashLoopBackOff', 60_000);
    const vmi = await v.client.get(VMI, 'broken', { namespace: ns });
    assert.equal(status(vmi).phase, 'Failed');
    assert.match(status(vmi).conditions?.find((c) => c.type === 'Ready')?.message ?? '', /QEMU failed to start/);
    await copyFile(`${disk}.good`, disk);
    await until('broken', 'Running', 120_000);
    await v.client.delete(VM, 'broken', { namespace: ns });
  });
});
