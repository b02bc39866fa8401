/**
 * Snapshots and restores end to end: real server, agent, QEMU (TCG) and the tiny guest, whose
 * counter on disk says which state a disk holds. A snapshot taken at counter N, restored after
 * the guest ran on, boots counting from N again, in the same VM and in a new one; deleting the
 * middle snapshots of a chain keeps every other snapshot and the VM's own state.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { counters, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const SNAPSHOTS: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshots', namespaced: true };
const RESTORES: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinerestores', namespaced: true };
const ns = 'default';
let v: Vessel;

const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 300_000 });
const serial = (name: string) => serialLog(v.dataDir, ns, name);
/**
 * start/stop/pause/unpause as the one subresource PUT `vessel start|stop|pause|unpause` sends: they
 * only drive the guest here (e2e/vm tests those verbs through the CLI), and a CLI process costs
 * seconds of tsx start-up, more under load, 22 times in this file.
 */
const act = async (verb: 'start' | 'stop' | 'pause' | 'unpause', name: string): Promise<void> => {
  const kind = verb === 'start' || verb === 'stop' ? 'virtualmachines' : 'virtualmachineinstances';
  await v.client.request('PUT', `/apis/subresources.kubevirt.io/v1/namespaces/${ns}/${kind}/${name}/${verb}`, { body: {} });
};
const printable = async (name: string) =>
  ((await v.client.get(VM, name, { namespace: ns }).catch(() => undefined))?.status as { printableStatus?: string } | undefined)?.printableStatus;
const until = (name: string, status: string, timeoutMs = 180_000) =>
  eventually(`VM ${name} ${status}`, async () => ((await printable(name)) === status ? true : undefined), timeoutMs, 300);
const last = (text: string) => Math.max(0, ...counters(text));

/** Waits until the guest's counter reaches at least `n`; returns the serial text then. */
const counterReaches = (name: string, n: number) =>
  eventually(
    `${name}'s counter at ${n}`,
    async () => {
      const t = await serial(name);
      return last(t) >= n ? t : undefined;
    },
    240_000,
    300,
  );

/** The first counter the VM's guest prints after `offset` bytes of its serial log: where its disk state starts. */
const firstCounterAfter = (name: string, offset: number) =>
  eventually(`${name} counting after its start`, async () => counters((await serial(name)).slice(offset))[0], 240_000, 300);

/** Pauses the guest and returns the counter values its disk can hold now: the last printed, or one more (synced, not yet printed). */
async function pausedAt(name: string): Promise<number> {
  await act('pause', name);
  await until(name, 'Paused', 30_000);
  return last(await serial(name));
}

async function snapshot(vm: string, name: string): Promise<void> {
  const r = await vessel('snapshot', vm, name);
  assert.equal(r.code, 0, r.err + r.out);
}

async function stop(name: string): Promise<void> {
  await act('stop', name);
  await until(name, 'Stopped');
}

/** Starts the VM and returns the first counter its guest prints. */
async function startAndCount(name: string): Promise<number> {
  const offset = (await serial(name)).length;
  await act('start', name);
  return firstCounterAfter(name, offset);
}

const snapshotFiles = async () => (await readdir(join(v.dataDir, 'pools', 'local', ns))).filter((f) => f.includes('@'));

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
});
after(async () => {
  for (const vm of (await v.client.list(VM, { namespace: ns })).items) await v.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.close();
});

describe('snapshot and restore', () => {
  let atSnapshot = 0;

  test('an online snapshot of a running VM; restored in place it boots with the counter it had', async () => {
    await v.client.create(VM, tinyVm('db'), { namespace: ns });
    await counterReaches('db', 3);
    atSnapshot = await pausedAt('db');
    await snapshot('db', 'before-upgrade');
    const snap = await v.client.get(SNAPSHOTS, 'before-upgrade', { namespace: ns });
    const s = snap.status as { phase: string; readyToUse: boolean; indications: string[]; snapshotVolumes: { includedVolumes: string[] } };
    assert.equal(s.phase, 'Succeeded');
    assert.equal(s.readyToUse, true);
    assert.deepEqual(s.indications, ['Online', 'NoGuestAgent']);
    assert.deepEqual(s.snapshotVolumes.includedVolumes, ['root']);
    await act('unpause', 'db');
    await counterReaches('db', atSnapshot + 5);

    const refused = await vessel('restore', 'db', 'before-upgrade', '--no-wait');
    assert.notEqual(refused.code, 0, 'a running VM is not restored');
    assert.match(refused.err, /running: stop it first/);

    await stop('db');
    const restored = await vessel('restore', 'db', 'before-upgrade');
    assert.equal(restored.code, 0, restored.err);
    const first = await startAndCount('db');
    assert.ok(first === atSnapshot + 1 || first === atSnapshot + 2, `the guest counts on from the snapshot's ${atSnapshot}, not from later: first ${first}`);
  });

  test('restore into a new VM: it boots from the snapshot while the source VM keeps its own disk', async () => {
    const r = await vessel('restore', 'db', 'before-upgrade', '--to', 'db-copy', '--name', 'to-copy');
    assert.equal(r.code, 0, r.err);
    // Complete means the new VM's disk exists, and the status names it.
    const done = await v.client.get(RESTORES, 'to-copy', { namespace: ns });
    const claim = (done.status as { restores: { persistentVolumeClaim: string }[] }).restores[0].persistentVolumeClaim;
    assert.match(claim, /^restore-/);
    const pvc = await v.client.get({ group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true }, claim, { namespace: ns });
    assert.equal((pvc.status as { phase?: string }).phase, 'Bound');
    const first = await firstCounterAfter('db-copy', 0);
    assert.ok(first === atSnapshot + 1 || first === atSnapshot + 2, `the copy counts on from ${atSnapshot}: first ${first}`);
    const copy = await v.client.get(VM, 'db-copy', { namespace: ns });
    const vols = (copy.spec as { template: { spec: { volumes: { persistentVolumeClaim?: { claimName: string } }[] } } }).template.spec.volumes;
    assert.equal(vols[0].persistentVolumeClaim!.claimName, claim);
    await v.client.delete(VM, 'db-copy', { namespace: ns });
  });

  test('a chain of 5 snapshots: deleting the middle ones in random order keeps the others and the VM', async () => {
    const at: number[] = [];
    for (let i = 1; i <= 5; i++) {
      await counterReaches('db', last(await serial('db')) + 2);
      at.push(await pausedAt('db'));
      await snapshot('db', `chain-${i}`);
      await act('unpause', 'db');
    }
    await counterReaches('db', at[4] + 3);
    await stop('db');
    const current = last(await serial('db'));
    const before = (await snapshotFiles()).length;
    for (const i of [2, 3, 4].sort(() => Math.random() - 0.5)) {
      assert.equal((await vessel('delete', 'vmsnapshot', `chain-${i}`)).code, 0);
    }
    await eventually(
      "the deleted snapshots' files merged and gone",
      async () => ((await snapshotFiles()).length === before - 3 ? true : undefined),
      120_000,
      500,
    );

    const now = await startAndCount('db');
    assert.ok(now === current + 1 || now === current + 2, `the VM's own state is untouched: ${current} before, ${now} after`);
    await stop('db');
    for (const i of [5, 1]) {
      assert.equal((await vessel('restore', 'db', `chain-${i}`)).code, 0);
      const first = await startAndCount('db');
      assert.ok(first === at[i - 1] + 1 || first === at[i - 1] + 2, `chain-${i} restores its counter ${at[i - 1]}: first ${first}`);
      await stop('db');
    }
  });

  test("image create publishes a snapshot's disk as a golden image other VMs boot from", async () => {
    const r = await vessel('image', 'create', 'db-golden', '--from-snapshot', 'before-upgrade', '-n', 'vessel-images', '--snapshot-namespace', ns);
    assert.equal(r.code, 0, r.err + r.out);
    const pvc = await v.client.get({ group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true }, 'db-golden', {
      namespace: 'vessel-images',
    });
    const path = ((pvc.metadata?.annotations ?? {}) as Record<string, string>)['vessel.io/volume-path'];
    const info = await run('qemu-img', ['info', '--output=json', '-U', path]);
    assert.equal((JSON.parse(info.out) as { 'backing-filename'?: string })['backing-filename'], undefined, 'the image stands alone');
    const vm = tinyVm('from-golden');
    (vm.spec as { dataVolumeTemplates: { spec: { sourceRef: { name: string } } }[] }).dataVolumeTemplates[0].spec.sourceRef.name = 'db-golden';
    await v.client.create(VM, vm, { namespace: ns });
    const first = await firstCounterAfter('from-golden', 0);
    assert.ok(first === atSnapshot + 1 || first === atSnapshot + 2, `a VM from the image counts on from ${atSnapshot}: first ${first}`);
    await v.client.delete(VM, 'from-golden', { namespace: ns });
  });

  test('image create --sparsify leaves out what the guest deleted', async () => {
    // 40 MiB of random data written and deleted: still in the disk's clusters, not in its files.
    const junk = '#!/bin/sh\ndd if=/dev/urandom of=/junk bs=1M count=40 2>/dev/null; sync; rm /junk; sync; echo VESSEL-JUNK-GONE\n';
    await v.client.create(VM, tinyVm('junk', { userData: junk }), { namespace: ns });
    await eventually('the guest wrote and deleted its junk', async () => (/VESSEL-JUNK-GONE/.test(await serial('junk')) ? true : undefined), 300_000, 500);
    const imageBytes = async (name: string) => {
      const pvc = await v.client.get({ group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true }, name, { namespace: ns });
      const path = ((pvc.metadata?.annotations ?? {}) as Record<string, string>)['vessel.io/volume-path'];
      return (JSON.parse((await run('qemu-img', ['info', '--output=json', '-U', path])).out) as { 'actual-size': number })['actual-size'];
    };
    const plain = await vessel('image', 'create', 'junk-plain', '--from-vm', 'junk');
    assert.equal(plain.code, 0, plain.err + plain.out);
    const sparse = await vessel('image', 'create', 'junk-sparse', '--from-vm', 'junk', '--sparsify');
    assert.equal(sparse.code, 0, sparse.err + sparse.out);
    const trimmed = /the guest trimmed (\d+) MiB/.exec(sparse.err);
    assert.ok(trimmed && Number(trimmed[1]) >= 40, `the guest agent trimmed the free space: ${sparse.err}`);
    const [a, b] = [await imageBytes('junk-plain'), await imageBytes('junk-sparse')];
    console.log(
      `# image of the guest's disk: ${(a / 1048576).toFixed(1)} MiB as it is, ${(b / 1048576).toFixed(1)} MiB sparsified (${trimmed[1]} MiB trimmed)`,
    );
    assert.ok(a - b >= 35 * 1048576, `the sparsified image is smaller by the deleted data: ${a} vs ${b} bytes`);
    const refused = await vessel('image', 'create', 'nope', '--from-snapshot', 'before-upgrade', '--sparsify');
    assert.equal(refused.code, 1);
    assert.match(refused.err, /--sparsify needs --from-vm/);
    await v.client.delete(VM, 'junk', { namespace: ns });
  });

  test('with memory: the restored guest resumes where it was, without booting', async () => {
    await v.client.create(VM, tinyVm('mem'), { namespace: ns });
    await counterReaches('mem', 3);
    const before = last(await serial('mem'));
    const r = await vessel('snapshot', 'mem', 'warm', '--with-memory');
    assert.equal(r.code, 0, r.err + r.out);
    const after = last(await serial('mem'));
    await counterReaches('mem', after + 4);
    await stop('mem');
    assert.equal((await vessel('restore', 'mem', 'warm')).code, 0);
    const offset = (await serial('mem')).length;
    await act('start', 'mem');
    const first = await firstCounterAfter('mem', offset);
    assert.ok(first >= before + 1 && first <= after + 2, `the guest counts on from the snapshot (${before}..${after}): first ${first}`);
    const text = (await serial('mem')).slice(offset);
    assert.doesNotMatch(text, /VESSEL-GUEST-READY|Linux version/, 'no boot: the guest resumed');
    const vmi = await v.client.get(VMI, 'mem', { namespace: ns });
    assert.equal((vmi.status as { phase: string }).phase, 'Running');
    await v.client.delete(VM, 'mem', { namespace: ns });
  });

  test('deleting every snapshot and the VM leaves no snapshot file behind', async () => {
    for (const s of (await v.client.list(SNAPSHOTS, { namespace: ns })).items) await v.client.delete(SNAPSHOTS, s.metadata!.name!, { namespace: ns });
    await v.client.delete(VM, 'db', { namespace: ns });
    await eventually('no snapshot files', async () => ((await snapshotFiles()).length === 0 ? true : undefined), 120_000, 500);
  });
});
