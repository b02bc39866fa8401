/**
 * Snapshots quiesced through the guest agent, end to end: real server, agent, QEMU (TCG) and the
 * tiny guest, which runs qemu-guest-agent on org.qemu.guest_agent.0. Its VMI gets the
 * AgentConnected condition; a snapshot of it running says ['Online', 'GuestAgent'], the guest's
 * fsfreeze hook prints the freeze and the thaw on its console, the guest counts on afterwards,
 * and the snapshot's root filesystem is clean (flushed, journal empty: no recovery needed, fsck
 * finds nothing). Paused, the agent cannot answer: the snapshot says NoGuestAgent and its
 * filesystem needs journal recovery, as after a power cut.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { snapshots } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { fsfreezeStatus } from '../packages/agent/qga/client.ts';
import { runDirFiles } from '../packages/agent/qemu/process.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { counters, runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const SNAPSHOTS: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshots', namespaced: true };
const CONTENTS: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshotcontents', namespaced: true };
const ns = 'default';
const name = 'quiet';
let v: Vessel;

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 300_000 });
const serial = () => serialLog(v.dataDir, ns, name);
const last = (text: string) => Math.max(0, ...counters(text));
const printable = async () =>
  ((await v.client.get(VM, name, { namespace: ns }).catch(() => undefined))?.status as { printableStatus?: string } | undefined)?.printableStatus;

interface SnapshotStatus {
  phase: string;
  readyToUse: boolean;
  indications: string[];
  virtualMachineSnapshotContentName: string;
}

/** Takes a snapshot with the CLI; its status and the file holding its root disk. */
async function snapshot(snap: string): Promise<{ status: SnapshotStatus; file: string }> {
  const r = await vessel('snapshot', name, snap);
  assert.equal(r.code, 0, r.err + r.out);
  const status = (await v.client.get(SNAPSHOTS, snap, { namespace: ns })).status as SnapshotStatus;
  const content = await v.client.get(CONTENTS, status.virtualMachineSnapshotContentName, { namespace: ns });
  const files = JSON.parse((content.metadata?.annotations as Record<string, string>)[snapshots.SNAPSHOT_FILES]) as Record<string, string>;
  return { status, file: files.root };
}

/**
 * A disk tool's exit code and output. Its stdin is /dev/null: harness.run() writes to the child's
 * stdin, which fails with EPIPE when a tool exits before reading it.
 */
function tool(cmd: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** The snapshot's root filesystem (partition 2): its ext4 features and what `e2fsck -fn` says. */
async function rootFilesystem(file: string): Promise<{ features: string[]; fsck: { code: number | null; out: string } }> {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-snapfs-'));
  try {
    const raw = join(dir, 'disk.raw');
    const conv = await tool('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, raw]);
    assert.equal(conv.code, 0, conv.err);
    const table = JSON.parse((await tool('sfdisk', ['--json', raw])).out) as { partitiontable: { partitions: { start: number; size: number }[] } };
    const p = table.partitiontable.partitions[1];
    const part = join(dir, 'root.img');
    const dd = await tool('dd', [
      `if=${raw}`,
      `of=${part}`,
      'bs=1M',
      `skip=${p.start * 512}`,
      `count=${p.size * 512}`,
      'iflag=skip_bytes,count_bytes',
      'conv=sparse',
      'status=none',
    ]);
    assert.equal(dd.code, 0, dd.err);
    const dump = await tool('dumpe2fs', ['-h', part]);
    const features = (/^Filesystem features:\s*(.*)$/m.exec(dump.out)?.[1] ?? '').trim().split(/\s+/);
    assert.ok(features.includes('has_journal'), `an ext4 root filesystem: ${dump.out}${dump.err}`);
    const fsck = await tool('e2fsck', ['-fn', part]);
    return { features, fsck: { code: fsck.code, out: fsck.out + fsck.err } };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
});
after(async () => {
  await v.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.close();
});

describe('snapshots with the guest agent', () => {
  test('the running guest is frozen for the snapshot and thawed after it', { timeout: 300_000 }, async () => {
    await v.client.create(VM, tinyVm(name), { namespace: ns });
    // What `kubectl get vmi quiet -o jsonpath='{.status.conditions}'` shows once qemu-ga is up.
    await eventually(
      'AgentConnected on the VMI',
      async () => {
        const vmi = await v.client.get(VMI, name, { namespace: ns });
        const conds = (vmi.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? [];
        return conds.some((c) => c.type === 'AgentConnected' && c.status === 'True') ? true : undefined;
      },
      180_000,
      500,
    );
    log('AgentConnected');
    const offset = (await serial()).length;
    const t0 = performance.now();
    const { status, file } = await snapshot('quiesced');
    log(`snapshot taken in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    assert.equal(status.phase, 'Succeeded');
    assert.equal(status.readyToUse, true);
    assert.deepEqual(status.indications, ['Online', 'GuestAgent']);

    // The guest saw it: its fsfreeze hook ran before the freeze and after the thaw.
    const text = (await serial()).slice(offset);
    const froze = text.indexOf('VESSEL-FSFREEZE freeze');
    const thawed = text.indexOf('VESSEL-FSFREEZE thaw');
    assert.ok(froze >= 0 && thawed > froze, `the guest froze, then thawed: ${JSON.stringify(text)}`);
    // And it was left thawed: the agent says so and the counter (a write + sync every second) goes on.
    assert.equal(await fsfreezeStatus(runDirFiles((await runDirOf(v.dataDir, ns, name))!).qga), 'thawed');
    const at = last(await serial());
    await eventually('the counter going on', async () => (last(await serial()) >= at + 2 ? true : undefined), 60_000, 300);

    // The snapshot's filesystem is clean: nothing for the journal to replay, nothing for fsck.
    const fs = await rootFilesystem(file);
    assert.ok(!fs.features.includes('needs_recovery'), `no journal recovery needed: ${fs.features.join(' ')}`);
    assert.equal(fs.fsck.code, 0, `e2fsck -fn finds nothing: ${fs.fsck.out}`);
    log('snapshot filesystem clean');
  });

  test('paused, the agent cannot answer: NoGuestAgent, and the filesystem is only crash-consistent', { timeout: 180_000 }, async () => {
    assert.equal((await vessel('pause', name)).code, 0);
    await eventually('VM Paused', async () => ((await printable()) === 'Paused' ? true : undefined), 30_000, 300);
    try {
      const { status, file } = await snapshot('paused');
      assert.equal(status.phase, 'Succeeded');
      assert.deepEqual(status.indications, ['Online', 'NoGuestAgent']);
      const fs = await rootFilesystem(file);
      assert.ok(fs.features.includes('needs_recovery'), `mounted and not frozen: the journal needs replaying: ${fs.features.join(' ')}`);
    } finally {
      assert.equal((await vessel('unpause', name)).code, 0);
    }
  });
});
