/**
 * Crashes in the middle of day-two operations: the control plane and agent run in a child
 * process that dies by SIGKILL at a crash point (VESSEL_CRASH_AT) inside a snapshot of a
 * running VM (after QEMU moved its writes to the new overlay, before the files were renamed),
 * a restore (the new overlay made, not yet in place) and a clone (the new VM made, not its
 * disks). The guest's QEMU lives on. After a restart each operation completes, the VM's disk
 * chain is whole (qemu-img check, and the guest counts on), and no stray file stays in the pool.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startChildControlPlane, type ChildControlPlane } from './harness.ts';
import { counters, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const SNAPSHOTS: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshots', namespaced: true };
const RESTORES: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinerestores', namespaced: true };
const CLONES: ResourceRef = { group: 'clone.kubevirt.io', version: 'v1beta1', plural: 'virtualmachineclones', namespaced: true };
const ns = 'default';
type Obj = Record<string, unknown>;

let dir: string;
let dataDir: string;
let cp: ChildControlPlane;

const serial = (name: string) => serialLog(dataDir, ns, name);
const last = async (name: string) => Math.max(0, ...counters(await serial(name)));
const statusOf = async (res: ResourceRef, name: string) => ((await cp.client.get(res, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as Obj;
const poolFiles = async () => (await readdir(join(dataDir, 'pools', 'local', ns)).catch(() => [] as string[])).sort();
const stray = (files: string[]) => files.filter((f) => /\.pending-|\.chain|\.tmp-|\.part-/.test(f));

/** Runs `start` in a child that dies at `point`, then restarts the child without it. */
async function crashAt(point: string, start: () => Promise<unknown>): Promise<void> {
  await cp.kill();
  cp = await startChildControlPlane(dataDir, { VESSEL_CRASH_AT: point });
  await start();
  const code = await Promise.race([cp.exited, new Promise((r) => setTimeout(() => r('alive'), 120_000))]);
  assert.notEqual(code, 'alive', `the child reached the crash point ${point}`);
  cp.client.close();
  cp = await startChildControlPlane(dataDir);
}

async function volumeOf(claim: string): Promise<string> {
  const pvc = await cp.client.get(PVC, claim, { namespace: ns });
  return ((pvc.metadata?.annotations ?? {}) as Record<string, string>)['vessel.io/volume-path'];
}

async function chainIsWhole(claim: string): Promise<void> {
  const r = await run('qemu-img', ['check', '-U', '-f', 'qcow2', await volumeOf(claim)]);
  assert.equal(r.code, 0, `qemu-img check of ${claim}: ${r.out}${r.err}`);
}

const printable = async (name: string) => String((await statusOf(VM, name)).printableStatus);
const untilVm = (name: string, s: string) => eventually(`VM ${name} ${s}`, async () => ((await printable(name)) === s ? true : undefined), 180_000, 300);
const counting = (name: string, above: number) =>
  eventually(`${name} counting past ${above}`, async () => ((await last(name)) > above ? true : undefined), 240_000, 300);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-day2-crash-'));
  dataDir = join(dir, 'data');
  cp = await startChildControlPlane(dataDir);
  await ensureTinyImage(cp.client, () => undefined);
});
after(async () => {
  for (const vm of (await cp.client.list(VM, { namespace: ns }).catch(() => ({ items: [] as KubeObject[] }))).items)
    await cp.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('VMIs gone', async () => ((await cp.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
    () => undefined,
  );
  await cp.kill();
  await rm(dir, { recursive: true, force: true });
});

test('a snapshot of a running VM interrupted after QEMU switched overlays completes after the restart', async () => {
  await cp.client.create(VM, tinyVm('c'), { namespace: ns });
  await counting('c', 3);
  await crashAt('snapshot:switch', () =>
    cp.client.create(
      SNAPSHOTS,
      {
        apiVersion: 'snapshot.kubevirt.io/v1beta1',
        kind: 'VirtualMachineSnapshot',
        metadata: { name: 's1' },
        spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'c' } },
      },
      { namespace: ns },
    ),
  );
  const during = await last('c');
  await eventually('snapshot s1 Succeeded', async () => ((await statusOf(SNAPSHOTS, 's1')).phase === 'Succeeded' ? true : undefined), 120_000, 300);
  await counting('c', during + 2); // the guest never stopped
  assert.deepEqual(stray(await poolFiles()), []);
  await chainIsWhole('c-root');
});

test('a restore interrupted after its overlay was made completes after the restart', async () => {
  const snapshotAt = Math.max(...counters(await serial('c')));
  await counting('c', snapshotAt + 3);
  await cp.client.patch(VM, 'c', { spec: { runStrategy: 'Halted' } }, { namespace: ns });
  await untilVm('c', 'Stopped');
  await crashAt('restore:overlay', () =>
    cp.client.create(
      RESTORES,
      {
        apiVersion: 'snapshot.kubevirt.io/v1beta1',
        kind: 'VirtualMachineRestore',
        metadata: { name: 'r1' },
        spec: { target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'c' }, virtualMachineSnapshotName: 's1' },
      },
      { namespace: ns },
    ),
  );
  await eventually('restore r1 complete', async () => ((await statusOf(RESTORES, 'r1')).complete === true ? true : undefined), 120_000, 300);
  assert.deepEqual(stray(await poolFiles()), []);
  await chainIsWhole('c-root');
  const offset = (await serial('c')).length;
  await cp.client.patch(VM, 'c', { spec: { runStrategy: 'Always' } }, { namespace: ns });
  const first = await eventually('c counting after the restore', async () => counters((await serial('c')).slice(offset))[0], 240_000, 300);
  assert.ok(first <= snapshotAt + 2, `restored to the snapshot (at most ${snapshotAt + 1}), counting from ${first}`);
});

test('a clone interrupted after its VM was made, before its disks, completes after the restart', async () => {
  await crashAt('restore:new-vm', () =>
    cp.client.create(
      CLONES,
      {
        apiVersion: 'clone.kubevirt.io/v1beta1',
        kind: 'VirtualMachineClone',
        metadata: { name: 'k1' },
        spec: {
          source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'c' },
          target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'c2' },
        },
      },
      { namespace: ns },
    ),
  );
  await eventually('clone k1 Succeeded', async () => ((await statusOf(CLONES, 'k1')).phase === 'Succeeded' ? true : undefined), 180_000, 300);
  await counting('c2', 1);
  assert.deepEqual(stray(await poolFiles()), []);

  // Everything deleted: nothing of it stays in the pool.
  for (const name of ['c', 'c2']) await cp.client.delete(VM, name, { namespace: ns });
  for (const s of (await cp.client.list(SNAPSHOTS, { namespace: ns })).items) await cp.client.delete(SNAPSHOTS, s.metadata!.name!, { namespace: ns });
  await eventually('the pool empty', async () => ((await poolFiles()).length === 0 ? true : undefined), 180_000, 500).catch(async (e: Error) => {
    throw new Error(`${e.message}: ${(await poolFiles()).join(', ')}`);
  });
});
