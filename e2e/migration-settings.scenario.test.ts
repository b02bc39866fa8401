/**
 * Migration settings, the long cases (a scenario: CI skips it; `bash scripts/test.sh
 * --scenarios`): the guest of e2e/migration-settings.e2e.test.ts dirtying its memory, on a
 * two-node dev cluster. With post-copy allowed, the completion timeout switches a migration
 * that cannot converge to post-copy and it succeeds (mode PostCopy, the guest going on at the
 * target, one QEMU); without it, a progress timeout cancels one whose remaining memory stops
 * going down. With allowWorkloadDisruption (no post-copy) the completion timeout pauses the guest
 * instead, the migration succeeds (mode Paused) and the target resumes the guest. Last, post-copy
 * with a node-local disk: the guest also writes numbered, flushed records to a 64 MiB claim on the
 * local pool, which is mirrored to the target and ended in pre-switchover; after post-copy every
 * record the guest printed is on the target's copy and the guest never rebooted. Then the same
 * guest migrated back with a slow post-copy whose target QEMU is killed after the switch-over:
 * Failed, a PostCopyFailed event, the source not resumed (its stale guest never prints again; the
 * VM restarts), and the target's copy kept under `<file>.postcopy-<migrationUid>` with a
 * PostCopyDiskKept Warning naming the node and file, holding every record the guest printed. Then
 * the same migration again with the source's agent restarted during post-copy: the new agent
 * follows it to Succeeded, one QEMU, no reboot, every record on the target's new file, and the
 * copy kept before on that node untouched. Then the source QEMU SIGKILLed during post-copy (Failed,
 * the guest lost, the target QEMU ended, its copy kept and listed on the claim, never two QEMUs),
 * then the migration stream cut by an nftables drop in the source node's namespace and restored once
 * the target listens again (the source sees nothing sent for 15 s, pauses it, QEMU's post-copy
 * recovery reconnects: Succeeded, no reboot, every record on the target's file), and cut for good
 * (the recovery gives up after 20 s: Failed, both QEMUs end). Last, deleting the claim removes every
 * kept copy on both nodes. Each post-copy case starts the same way (startPostcopy).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import type { KubeObject } from '@vessel/runtime';
import { cutTcp, eventually, run, type TestCluster } from './harness.ts';
import { busyVm, DirtyGuestCluster, KV, LIVE_UNDER_TCG, NAME, ns, USER_DATA, VM, VMI, VMIM, type Obj } from './migration-settings-fixture.ts';
import { qemuConnectionsTo } from '../packages/agent/vms/migration.ts';
import { recordsWritten, recordText, runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const g = new DirtyGuestCluster();
const { vmiStatus, dirtyRounds, qemus, migrateAndWait, runningAndDirtying } = g;
let c: TestCluster;
const NODE: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const settings = (migrations: Obj) => c.client.patch(KV, 'kubevirt', { spec: { configuration: { migrations } } }, { namespace: 'kubevirt' });

before(async () => {
  c = await g.start();
});
after(async () => {
  if (!c) return;
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.client.delete(PVC, DATA, { namespace: ns }).catch(() => undefined);
  await c.close();
});

test('post-copy after the completion timeout, then a progress timeout', { timeout: 1_800_000 }, async () => {
  // 1 MiB/s cannot keep up; 5 s/GiB × 128 MiB (one GiB, rounded up): 5 s, then post-copy.
  await settings({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 5, allowPostCopy: true });
  await c.client.create(VM, busyVm(), {
    namespace: ns,
  });
  const source = await runningAndDirtying();
  const t0 = Date.now();
  const post = await migrateAndWait('postcopy');
  const postSecs = (Date.now() - t0) / 1000;
  assert.equal(post.phase, 'Succeeded', JSON.stringify(post));
  assert.equal(post.migrationState.mode, 'PostCopy');
  const moved = await vmiStatus();
  assert.notEqual(moved.nodeName, source);
  const target = moved.nodeName!;
  await eventually('the guest writing on its new node', async () => ((await dirtyRounds(target)) > 0 ? true : undefined), 120_000, 500);
  await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);

  // No post-copy, a completion timeout out of reach: the progress timeout (3 s) ends it.
  await settings({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 100000, progressTimeout: 3, allowPostCopy: false });
  const t1 = Date.now();
  const stuck = await migrateAndWait('stuck');
  const stuckSecs = (Date.now() - t1) / 1000;
  assert.equal(stuck.phase, 'Failed', JSON.stringify(stuck));
  assert.match(stuck.migrationState.failureReason ?? '', /progress timeout: the remaining memory did not decrease for 3 s/);
  assert.equal((await vmiStatus()).nodeName, target);
  const rounds = await dirtyRounds(target);
  await eventually('the guest still writing on its node', async () => ((await dirtyRounds(target)) > rounds ? true : undefined), 120_000, 500);
  await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);
  console.log(`# figures: post-copy migration ${postSecs.toFixed(1)} s to Succeeded; progress-timeout migration ${stuckSecs.toFixed(1)} s to Failed`);
});

test(
  'allowWorkloadDisruption: past the completion timeout the source pauses the guest, the copy ends, the target resumes it',
  { timeout: 1_800_000 },
  async () => {
    // 2 MiB/s cannot keep up with the guest's writes; after 5 s the guest pauses (no post-copy) and
    // what is left (its dirty tmpfs at most) goes over at 2 MiB/s.
    // TLS off: on a loaded host the target's TLS setup (QMP object-add) has timed out (as in the crash tests).
    await settings({
      bandwidthPerMigration: '2Mi',
      completionTimeoutPerGiB: 5,
      progressTimeout: 150,
      allowPostCopy: false,
      allowWorkloadDisruption: true,
      disableTLS: true,
    });
    if (!(await c.client.get(VM, NAME, { namespace: ns }).catch(() => undefined))) {
      await c.client.create(VM, busyVm(), {
        namespace: ns,
      });
    }
    const source = await runningAndDirtying();
    const t0 = Date.now();
    const paused = await migrateAndWait('paused');
    const secs = (Date.now() - t0) / 1000;
    assert.equal(paused.phase, 'Succeeded', JSON.stringify(paused));
    assert.equal(paused.migrationState.mode, 'Paused');
    const moved = await vmiStatus();
    assert.notEqual(moved.nodeName, source);
    const target = moved.nodeName!;
    // Resumed on the target: it writes again, and QEMU there runs.
    await eventually('the guest writing on its new node', async () => ((await dirtyRounds(target)) > 0 ? true : undefined), 120_000, 500);
    const qmp = g.agentOf(target).vms.qmpFor(ns, NAME)!;
    assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running');
    await eventually(
      'the Paused condition not True',
      async () => ((await vmiStatus()).conditions?.find((x) => x.type === 'Paused')?.status !== 'True' ? true : undefined),
      60_000,
      300,
    );
    await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);
    await settings({
      allowWorkloadDisruption: null,
      bandwidthPerMigration: null,
      completionTimeoutPerGiB: null,
      progressTimeout: null,
      allowPostCopy: null,
      disableTLS: null,
    });
    console.log(`# figures: allowWorkloadDisruption migration ${secs.toFixed(1)} s to Succeeded (paused after 5 s, 2 MiB/s)`);
  },
);

const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const DATA = `${NAME}-data`;
/**
 * The dirtying guest plus a writer: record n (`VESSEL-REC 0000000n`, recordText) at sector n of
 * the 64 MiB disk, never rewritten, each flushed (fsync: a FLUSH, so the qcow2 mapping is on the
 * file too) before the guest prints `VESSEL-WROTE n`.
 */
const LOCAL_USER_DATA = `${USER_DATA}for d in /sys/block/vd*; do [ "$(cat $d/size)" = 131072 ] && dev=/dev/\${d##*/}; done
echo "VESSEL-REC-DEV $dev"
(n=0; while true; do
  n=$((n + 1))
  printf 'VESSEL-REC %08d\\n' $n | dd of=$dev bs=512 seek=$n count=1 conv=sync,notrunc,fsync 2>/dev/null
  echo "VESSEL-WROTE $n"
done) &
`;

/** The writer guest with its 64 MiB data claim on the local pool. */
async function createLocalVm(): Promise<void> {
  await c.client.create(
    PVC,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: DATA, namespace: ns },
      spec: { storageClassName: 'local', accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '64Mi' } } },
    },
    { namespace: ns },
  );
  const vm = tinyVm(NAME, {
    namespace: ns,
    binding: 'bridge',
    userData: LOCAL_USER_DATA,
    storageClass: 'shared',
    terminationGracePeriodSeconds: 5,
    annotations: LIVE_UNDER_TCG,
  }) as {
    spec: { template: { spec: { domain: { devices: { disks: Obj[] } }; volumes: Obj[] } } };
  };
  vm.spec.template.spec.domain.devices.disks.push({ name: 'data', disk: { bus: 'virtio' } });
  vm.spec.template.spec.volumes.push({ name: 'data', persistentVolumeClaim: { claimName: DATA } });
  await c.client.create(VM, vm as unknown as Obj, { namespace: ns });
}

const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const log = (node: string) => serialLog(g.agentOf(node).dataDir, ns, NAME);
const maxRecord = async (node: string) => Math.max(0, ...recordsWritten(await log(node)));

/** A post-copy migration of the writer guest under way: the guest runs on the target, pages still come from the source. */
interface PostcopyRun {
  vmi: KubeObject;
  source: string;
  target: string;
  /** The serial logs' lengths when the guest ran on the target (what each node printed since is after them). */
  sourceLogAt: number;
  targetLogAt: number;
}

/**
 * Starts migration `name` of the writer guest (made first when missing: a case run alone) with
 * post-copy after 5 s at 1 MiB/s, post-copy at `postcopyBandwidth` bytes/s (the test knob), and
 * returns once the guest prints on the target (the switch-over behind, post-copy under way). The
 * caller ends with endPostcopy() in a finally.
 */
async function startPostcopy(name: string, postcopyBandwidth: number): Promise<PostcopyRun> {
  if (!(await c.client.get(VM, NAME, { namespace: ns }).catch(() => undefined))) await createLocalVm();
  await eventually(
    'the VMI running',
    async () =>
      ((await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status as { phase?: string } | undefined)?.phase === 'Running' || undefined,
    300_000,
  );
  const source = (await vmiStatus()).nodeName!;
  const target = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
  // New records on the source (a fresh boot under TCG on the loaded machine took over 5 minutes).
  const at = (await log(source)).length;
  await eventually('the guest writing records', async () => (recordsWritten((await log(source)).slice(at)).length > 3 ? true : undefined), 600_000, 500).catch(
    async (e: Error) => {
      throw new Error(`${e.message}; the serial log on ${source} ends: ${(await log(source)).slice(-1500)}`);
    },
  );
  await settings({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 5, progressTimeout: 150, allowPostCopy: true, allowWorkloadDisruption: null });
  process.env.VESSEL_TEST_POSTCOPY_BANDWIDTH = String(postcopyBandwidth);
  const targetLogAt = (await log(target)).length;
  await c.client.create(
    VMIM,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
    { namespace: ns },
  );
  // The guest prints on the target (its serial log grows: an incoming QEMU runs no guest): the switch-over is behind.
  await eventually('the guest running on the target in post-copy', async () => ((await log(target)).length > targetLogAt ? true : undefined), 300_000, 200);
  const sourceLogAt = (await log(source)).length;
  // The VMI that migrates (the one started before may have been replaced while it booted).
  const migrating = (await c.client.get(VMI, NAME, { namespace: ns })) as KubeObject;
  const ms = (migrating.status as { migrationState?: { mode?: string; completed?: boolean; sourceNode?: string } }).migrationState!;
  assert.equal(ms.mode, 'PostCopy');
  assert.ok(!ms.completed, 'still in post-copy');
  assert.equal(ms.sourceNode, source);
  return { vmi: migrating, source, target, sourceLogAt, targetLogAt };
}

async function endPostcopy(): Promise<void> {
  delete process.env.VESSEL_TEST_POSTCOPY_BANDWIDTH;
  await settings({ bandwidthPerMigration: null, completionTimeoutPerGiB: null, progressTimeout: null, allowPostCopy: null });
}

/** Migration `name` finished (Succeeded or Failed). */
async function finished(name: string, timeoutMs: number): Promise<{ phase?: string; migrationState?: { failureReason?: string } }> {
  return eventually(
    `${name} finished`,
    async () => {
      const st = ((await c.client.get(VMIM, name, { namespace: ns })).status ?? {}) as { phase?: string; migrationState?: { failureReason?: string } };
      return st.phase === 'Succeeded' || st.phase === 'Failed' ? st : undefined;
    },
    timeoutMs,
    300,
  );
}

/** The first event `reason` on VMI `uid`. */
async function eventOf(reason: string, uid: string | undefined): Promise<{ type?: string; message?: string }> {
  return eventually(
    `a ${reason} event`,
    async () =>
      (await c.client.list(EVENTS, { namespace: ns })).items.find(
        (e) => (e as { reason?: string }).reason === reason && (e as { involvedObject?: { uid?: string } }).involvedObject?.uid === uid,
      ) as { type?: string; message?: string } | undefined,
    60_000,
  );
}

/** PIDs of the QEMUs on `node` (their command line names its data directory). */
async function qemuPids(node: string): Promise<number[]> {
  const pids: number[] = [];
  for (const d of await readdir('/proc')) {
    const cmd = /^\d+$/.test(d) ? await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '') : '';
    if (cmd.startsWith('qemu-system') && cmd.includes(g.agentOf(node).dataDir)) pids.push(Number(d));
  }
  return pids;
}

/** The data claim's local-pool directory on `node` and the kept post-copy copies of the claim there. */
async function keptCopies(node: string): Promise<{ dir: string; files: string[] }> {
  const claimUid = (await c.client.get(PVC, DATA, { namespace: ns })).metadata?.uid ?? '?';
  const dir = join(g.agentOf(node).dataDir, 'pools', 'local', ns);
  return { dir, files: (await readdir(dir).catch(() => [] as string[])).filter((f) => f.includes(claimUid) && f.includes('.postcopy-')) };
}

/** The data claim's file once the claim is recorded on `node` (its path in the claim's annotation). */
async function claimFileOn(node: string): Promise<string> {
  return eventually(
    `the data claim recorded on ${node}`,
    async () => {
      const a = ((await c.client.get(PVC, DATA, { namespace: ns })).metadata?.annotations ?? {}) as Record<string, string>;
      return a['volume.kubernetes.io/selected-node'] === node ? a['vessel.io/volume-path'] : undefined;
    },
    60_000,
  );
}

/** The guest went on at the target without a new boot there, and the source's stale guest printed nothing after the switch-over. */
async function assertWentOnAtTarget(source: string, sourceLogAt: number, target: string, targetLogAt: number): Promise<void> {
  assert.ok(!(await log(target)).slice(targetLogAt).includes('VESSEL-REC-DEV'), 'the guest did not boot again on the target');
  assert.ok(!/VESSEL-WROTE/.test((await log(source)).slice(sourceLogAt)), 'the source guest printed after the switch-over');
}

/** Every record 1..n on the qcow2 `file` (read beside a QEMU that may hold it: -U). */
async function assertRecords(file: string, n: number, what: string): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'vessel-postcopy-'));
  try {
    const raw = join(tmp, 'data.raw');
    const r = await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, raw]);
    assert.equal(r.code, 0, r.err);
    const bytes = await readFile(raw);
    for (let i = 1; i <= n; i++)
      assert.equal(bytes.subarray(i * 512, i * 512 + recordText(i).length).toString('latin1'), recordText(i), `record ${i} of ${n} ${what}`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * After a post-copy lost at `t0`: the VM runs again as a new VMI (runStrategy Always, a new boot),
 * and while it came back no two QEMUs of the guest ran (sampled every 200 ms); returns when.
 */
async function restartedAlone(old: KubeObject, t0: number): Promise<{ node: string; secs: number; maxQemus: number; seen: string }> {
  let maxQemus = 0;
  let seen = '';
  const restarted = await eventually(
    'the VM running again (a new boot)',
    async () => {
      const now = await Promise.all(
        c.nodes.cluster.nodes.map(async (n) => {
          const out: string[] = [];
          for (const p of await qemuPids(n.name)) {
            // The QEMU its pidfile names: the launcher of a daemonizing QEMU (two processes for a moment) is not another copy.
            const args = (await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')).split('\0');
            const i = args.indexOf('-pidfile');
            const owner = i >= 0 ? Number((await readFile(args[i + 1], 'utf8').catch(() => '')).trim()) : p;
            if (owner === p) out.push(`${n.name}:${p}`);
          }
          return out;
        }),
      );
      const all = now.flat();
      if (all.length > maxQemus) seen = `${all.join(', ')} at ${((Date.now() - t0) / 1000).toFixed(1)} s`;
      maxQemus = Math.max(maxQemus, all.length);
      const v = await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined);
      const st = (v?.status ?? {}) as { phase?: string; nodeName?: string };
      return v && v.metadata?.uid !== old.metadata.uid && st.phase === 'Running' ? st : undefined;
    },
    300_000,
    200,
  );
  return { node: restarted.nodeName!, secs: (Date.now() - t0) / 1000, maxQemus, seen };
}

test(
  'post-copy with a node-local disk: mirrored and ended before the switch-over, every flushed record on the target’s copy',
  { timeout: 1_800_000 },
  async () => {
    await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
    await eventually(
      'the earlier VM gone',
      async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 && (await qemus()) === 0 ? true : undefined),
      120_000,
      500,
    );
    // As the first test: 1 MiB/s cannot keep up with the guest's memory; after 5 s post-copy.
    await settings({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 5, progressTimeout: 150, allowPostCopy: true, allowWorkloadDisruption: null });
    await createLocalVm();
    const source = await runningAndDirtying();
    await eventually('the guest writing records', async () => (recordsWritten(await log(source)).length > 5 ? true : undefined), 300_000, 500);
    const annotations = async () => ((await c.client.get(PVC, DATA, { namespace: ns })).metadata?.annotations ?? {}) as Record<string, string>;
    const sourceFile = (await annotations())['vessel.io/volume-path'];
    assert.ok(sourceFile?.startsWith(g.agentOf(source).dataDir), `the data claim is on ${source}: ${sourceFile}`);

    const t0 = Date.now();
    const post = await migrateAndWait('postcopy-local');
    const secs = (Date.now() - t0) / 1000;
    assert.equal(post.phase, 'Succeeded', JSON.stringify(post));
    assert.equal(post.migrationState.mode, 'PostCopy');
    const target = (await vmiStatus()).nodeName!;
    assert.notEqual(target, source);
    const lastOnSource = recordsWritten(await log(source)).at(-1)!;
    // Going on at the target without a reboot (the boot script's first line never printed there).
    await eventually(
      'records written on the target',
      async () => ((recordsWritten(await log(target)).at(-1) ?? 0) > lastOnSource + 5 ? true : undefined),
      180_000,
      500,
    );
    assert.ok(!(await log(target)).includes('VESSEL-REC-DEV'), 'the guest did not boot again on the target');
    assert.ok(
      recordsWritten(await log(target))[0] <= lastOnSource + 2,
      `records go on where they were: ${recordsWritten(await log(target))[0]} after ${lastOnSource}`,
    );
    await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);
    const targetFile = await claimFileOn(target);
    assert.ok(targetFile.startsWith(g.agentOf(target).dataDir), targetFile);
    await eventually(
      'the source’s file removed',
      async () =>
        await stat(sourceFile).then(
          () => undefined,
          () => true,
        ),
      60_000,
    );
    // Every record printed so far (on either node: each flushed before it was printed) is on the target's file.
    const printed = Math.max(...recordsWritten(await log(source)), ...recordsWritten(await log(target)));
    const tmp = await mkdtemp(join(tmpdir(), 'vessel-postcopy-'));
    try {
      const raw = join(tmp, 'data.raw');
      const r = await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', targetFile, raw]);
      assert.equal(r.code, 0, r.err);
      const bytes = await readFile(raw);
      for (let n = 1; n <= printed; n++) {
        const rec = bytes.subarray(n * 512, n * 512 + recordText(n).length).toString('latin1');
        assert.equal(rec, recordText(n), `record ${n} of ${printed} (${lastOnSource} the last printed on the source)`);
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    await settings({ bandwidthPerMigration: null, completionTimeoutPerGiB: null, progressTimeout: null, allowPostCopy: null });
    console.log(
      `# figures: post-copy migration with a 64 MiB local disk ${secs.toFixed(1)} s to Succeeded; ${printed} records checked (${lastOnSource} written on the source)`,
    );
  },
);

test(
  'under TCG, post-copy from the paused source with a node-local disk: the mirrors end before the switch-over, every flushed record on the target’s copy',
  { timeout: 900_000 },
  async (t) => {
    if (!(await c.client.get(VM, NAME, { namespace: ns }).catch(() => undefined))) await createLocalVm();
    const source = await runningAndDirtying();
    const accel = ((await c.client.get(NODE, source)).metadata?.labels as Record<string, string> | undefined)?.['vessel.io/accelerator'];
    if (accel !== 'tcg') return t.skip(`the node's accelerator is ${accel}: live precopy`);
    await eventually('the guest writing records', async () => (recordsWritten(await log(source)).length > 5 ? true : undefined), 300_000, 500);
    // Not kept live (the VMI's annotation removed, restored at the end for the cases below); post-copy allowed, no bandwidth limit.
    const live = (on: boolean) =>
      c.client.patch(
        VMI,
        NAME,
        { metadata: { annotations: Object.fromEntries(Object.keys(LIVE_UNDER_TCG).map((k) => [k, on ? 'true' : null])) } },
        { namespace: ns },
      );
    await live(false);
    await settings({ bandwidthPerMigration: null, completionTimeoutPerGiB: null, progressTimeout: null, allowPostCopy: true, allowWorkloadDisruption: null });
    try {
      const t0 = Date.now();
      const post = await migrateAndWait('postcopy-paused-local');
      const secs = (Date.now() - t0) / 1000;
      assert.equal(post.phase, 'Succeeded', JSON.stringify(post));
      assert.equal(post.migrationState.mode, 'PostCopy', 'the paused source went to post-copy at once');
      const target = (await vmiStatus()).nodeName!;
      assert.notEqual(target, source);
      const lastOnSource = recordsWritten(await log(source)).at(-1)!;
      await eventually(
        'records written on the target',
        async () => ((recordsWritten(await log(target)).at(-1) ?? 0) > lastOnSource + 5 ? true : undefined),
        180_000,
        500,
      );
      await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);
      const targetFile = await claimFileOn(target);
      const printed = Math.max(...recordsWritten(await log(source)), ...recordsWritten(await log(target)));
      await assertRecords(targetFile, printed, `on the target's copy (${lastOnSource} the last printed on the source)`);
      console.log(`# figures: post-copy from the paused source with a 64 MiB local disk ${secs.toFixed(1)} s to Succeeded; ${printed} records checked`);
    } finally {
      await live(true);
      await settings({ bandwidthPerMigration: null, completionTimeoutPerGiB: null, progressTimeout: null, allowPostCopy: null });
    }
  },
);

test(
  'post-copy with a node-local disk broken after the switch-over: the source not resumed, the target’s copy kept with every record',
  { timeout: 1_800_000 },
  async () => {
    // Post-copy at 512 KiB/s (the pages the guest faults on share it: at 64 KiB/s the guest crawled
    // into RCU stall warnings): ~100 MiB left after 5 s of precopy at 1 MiB/s keep it under way for minutes.
    const { vmi, source, target, sourceLogAt } = await startPostcopy('postcopy-broken', 512 * 1024);
    try {
      const pids = await qemuPids(target);
      assert.equal(pids.length, 1, `one QEMU on ${target}`);
      process.kill(pids[0], 'SIGKILL');
      const printedOnTarget = Math.max(await maxRecord(target), await maxRecord(source));
      const done = await finished('postcopy-broken', 120_000);
      assert.equal(done.phase, 'Failed', JSON.stringify(done));
      const ev = await eventOf('PostCopyFailed', vmi.metadata.uid);
      assert.match(ev.message ?? '', /the source is not resumed/);
      // The target's copy kept under the migration's name, said in a Warning event naming the node and the file.
      const migUid = (await c.client.get(VMIM, 'postcopy-broken', { namespace: ns })).metadata?.uid ?? '?';
      const keptEv = await eventOf('PostCopyDiskKept', vmi.metadata.uid);
      assert.equal(keptEv.type, 'Warning');
      assert.match(keptEv.message ?? '', new RegExp(`node ${target} kept its copy .*claim ${DATA}: ${DATA}-[0-9a-f-]+\\.qcow2\\.postcopy-${migUid}`));
      assert.ok(!(keptEv.message ?? '').includes(g.agentOf(target).dataDir), `no host path in the event: ${keptEv.message}`);
      // The source's stale guest never runs again: the VM restarts (runStrategy Always) and boots afresh.
      const back = await restartedAlone(vmi, Date.now());
      console.log(`# the VM restarted on ${back.node} after the lost post-copy`);
      const sinceKill = (await log(source)).slice(sourceLogAt);
      const staleRun = sinceKill.split('VESSEL-REC-DEV')[0];
      assert.ok(!/VESSEL-WROTE/.test(staleRun), `the source's guest printed after the switch-over: ${staleRun.slice(0, 300)}`);
      // The target kept its copy of the data claim (the only one with the post-copy writes): every record printed on either node is on it.
      const kept = await keptCopies(target);
      assert.equal(kept.files.length, 1, `the target's copy kept in ${kept.dir}: ${kept.files.join(', ')}`);
      assert.ok(kept.files[0].endsWith(`.qcow2.postcopy-${migUid}`), `kept under the migration's name: ${kept.files[0]}`);
      await assertRecords(join(kept.dir, kept.files[0]), printedOnTarget, 'on the kept copy');
      console.log(`# figures: post-copy broken after the switch-over: ${printedOnTarget} records on the target's kept copy`);
    } finally {
      await endPostcopy();
    }
  },
);

test(
  'post-copy with a node-local disk, the source agent restarted during post-copy: the new agent follows it to the end, one guest runs, the earlier kept copy untouched',
  { timeout: 1_800_000 },
  async () => {
    // What the guest printed since its last boot (the run directory, and its serial log, are the VM's).
    const sinceBoot = async (node: string) => {
      const l = await log(node);
      const i = l.lastIndexOf('VESSEL-REC-DEV');
      return i < 0 ? '' : l.slice(i);
    };
    // The copy the test before kept on the node this migration goes to (if it ran): it must survive the migration.
    const first = (await vmiStatus()).nodeName;
    const before = first ? await keptCopies(c.nodes.cluster.nodes.find((n) => n.name !== first)!.name) : { dir: '', files: [] };
    const keptSizes = await Promise.all(before.files.map(async (f) => (await stat(join(before.dir, f))).size));
    // Post-copy at 2 MiB/s: ~100 MiB keep it under way for tens of seconds, long enough to restart the agent in it.
    const { source, target, sourceLogAt, targetLogAt } = await startPostcopy('postcopy-agent-restart', 2 << 20);
    try {
      const t0 = Date.now();
      // The source's agent stops (its QEMU goes on sending) and a new one starts.
      await c.nodes.restartAgent(c.nodes.cluster.nodes.findIndex((n) => n.name === source));
      const restartMs = Date.now() - t0;
      const done = await finished('postcopy-agent-restart', 300_000);
      const settledSecs = (Date.now() - t0) / 1000;
      assert.equal(done.phase, 'Succeeded', JSON.stringify(done));
      assert.equal((await vmiStatus()).nodeName, target);
      await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 120_000, 300);
      // The guest goes on at the target without a reboot; the source's stale guest never printed again.
      const last = Math.max(0, ...recordsWritten(await sinceBoot(source)));
      await eventually(
        'records written on the target',
        async () => ((recordsWritten(await log(target)).at(-1) ?? 0) > last + 5 ? true : undefined),
        180_000,
        500,
      );
      await assertWentOnAtTarget(source, sourceLogAt, target, targetLogAt);
      // The claim's new file on the target is its own; the kept copy of the earlier post-copy is still there, unchanged.
      const targetFile = await claimFileOn(target);
      if (before.dir === join(g.agentOf(target).dataDir, 'pools', 'local', ns))
        for (const [i, f] of before.files.entries()) {
          assert.notEqual(join(before.dir, f), targetFile);
          assert.equal((await stat(join(before.dir, f))).size, keptSizes[i], `${f} untouched`);
        }
      // Every record printed since the boot (each flushed before it was printed) is on the target's file.
      const printed = Math.max(...recordsWritten(await sinceBoot(source)), ...recordsWritten((await log(target)).slice(targetLogAt)));
      await assertRecords(targetFile, printed, "on the target's file");
      console.log(
        `# figures: source agent restarted in post-copy (restart ${restartMs} ms): Succeeded ${settledSecs.toFixed(1)} s after it; ${printed} records checked; ${before.files.length} kept copy untouched`,
      );
    } finally {
      await endPostcopy();
    }
  },
);

test(
  'post-copy with a node-local disk, the source QEMU killed during post-copy: Failed, the target ends, its copy kept and listed on the claim, never two guests',
  { timeout: 1_800_000 },
  async () => {
    const { vmi, source, target } = await startPostcopy('postcopy-source-killed', 512 * 1024);
    try {
      const pids = await qemuPids(source);
      assert.equal(pids.length, 1, `one QEMU on ${source}`);
      const printed = Math.max(await maxRecord(target), await maxRecord(source));
      const t0 = Date.now();
      process.kill(pids[0], 'SIGKILL');
      const done = await finished('postcopy-source-killed', 120_000);
      const failedSecs = (Date.now() - t0) / 1000;
      assert.equal(done.phase, 'Failed', JSON.stringify(done));
      assert.match(done.migrationState?.failureReason ?? '', /the guest (ran on the target and )?is lost/);
      const ev = await eventOf('PostCopyFailed', vmi.metadata.uid);
      assert.equal(ev.type, 'Warning');
      // The target's QEMU, which would wait in postcopy-paused for pages that cannot come, is ended.
      await eventually('the target QEMU ended', async () => ((await qemuPids(target)).length === 0 ? true : undefined), 60_000, 200);
      const targetGoneSecs = (Date.now() - t0) / 1000;
      const back = await restartedAlone(vmi, t0);
      assert.ok(back.maxQemus <= 1, `at most one QEMU of the guest while it came back (${back.maxQemus}: ${back.seen})`);
      const migUid = (await c.client.get(VMIM, 'postcopy-source-killed', { namespace: ns })).metadata?.uid ?? '?';
      await eventOf('PostCopyDiskKept', vmi.metadata.uid);
      const kept = await keptCopies(target);
      const mine = kept.files.find((f) => f.endsWith(`.postcopy-${migUid}`));
      assert.ok(mine, `the target's copy kept in ${kept.dir}: ${kept.files.join(', ')}`);
      await assertRecords(join(kept.dir, mine), printed, 'on the kept copy');
      // Listed on the claim too: node, file, migration.
      const listed = JSON.parse((await c.client.get(PVC, DATA, { namespace: ns })).metadata?.annotations?.['vessel.io/postcopy-kept'] ?? '[]') as {
        node: string;
        file: string;
        migration: string;
      }[];
      assert.ok(
        listed.some((k) => k.node === target && k.file === mine && k.migration === migUid),
        `the claim lists the kept copy: ${JSON.stringify(listed)}`,
      );
      console.log(
        `# figures: source QEMU killed in post-copy: Failed ${failedSecs.toFixed(1)} s after the kill, target QEMU gone after ${targetGoneSecs.toFixed(1)} s, ` +
          `the VM running again on ${back.node} after ${back.secs.toFixed(1)} s (at most ${back.maxQemus} QEMU meanwhile); ${printed} records on the kept copy`,
      );
    } finally {
      await endPostcopy();
    }
  },
);

/**
 * Cuts the migration stream of the running migration: TCP between the source node's namespace and
 * the target's fabric address (a recovery's new port is cut too; the control plane and the VM
 * network's VXLAN, UDP, still pass). Returns the restore.
 */
async function cutStream(source: string): Promise<() => Promise<void>> {
  const address = (await vmiStatus()).migrationState as { targetNodeAddress?: string } | undefined;
  const [ip] = (address?.targetNodeAddress ?? '').split(':');
  assert.ok(ip, `the target's address: ${address?.targetNodeAddress}`);
  return cutTcp(c.nodes.cluster.nodes.find((n) => n.name === source)!.netns, ip);
}

test(
  'post-copy with a node-local disk, the stream cut during post-copy and restored: the source sees the stall, QEMU recovers, Succeeded, the guest never rebooted',
  { timeout: 1_800_000 },
  async () => {
    // The stall the source waits for (60 s by default), then the recovery's bound (60 s by default).
    process.env.VESSEL_TEST_POSTCOPY_STALL_MS = '15000';
    process.env.VESSEL_TEST_POSTCOPY_RECOVERY_MS = '45000';
    let restore: (() => Promise<void>) | undefined;
    // Post-copy at 2 MiB/s: what is left after the recovery (tens of MiB) goes over in a minute or
    // so (at 512 KiB/s the tiny guest's post-copy alone took ~3 min); the cut stalls it all the same.
    const { source, target, sourceLogAt, targetLogAt } = await startPostcopy('postcopy-recovered', 2 << 20);
    try {
      const migUid = (await c.client.get(VMIM, 'postcopy-recovered', { namespace: ns })).metadata?.uid ?? '?';
      restore = await cutStream(source);
      const t0 = Date.now();
      const printedBefore = await maxRecord(target);
      // The source saw the stall and asked for a recovery; the target listens again and says where.
      const note = await eventually(
        'the target listening for the recovery',
        async () => {
          const raw = (await c.client.get(VMI, NAME, { namespace: ns })).metadata?.annotations?.['vessel.io/migration-recovery'];
          const n = raw ? (JSON.parse(raw) as { migrationUid?: string; attempt?: number; address?: string }) : undefined;
          return n?.migrationUid === migUid && n.address ? n : undefined;
        },
        120_000,
        200,
      );
      const detectedSecs = (Date.now() - t0) / 1000;
      const st = ((await c.client.get(VMIM, 'postcopy-recovered', { namespace: ns })).status ?? {}) as { phase?: string };
      assert.equal(st.phase, 'Running', 'not given up while the recovery runs');
      // The source's resume is under way now (its SYNs dropped). Held cut for 8 s (past the 3 s
      // after which the source looks for its connect): one connect, no second resume racing it.
      const sourceRunDir = (await runDirOf(g.agentOf(source).dataDir, ns, NAME))!;
      const connects = () => qemuConnectionsTo(sourceRunDir, note.address!);
      await eventually('the source QEMU connecting for its resume', async () => ((await connects()) > 0 ? true : undefined), 30_000, 100);
      await new Promise((r) => setTimeout(r, 8000));
      assert.equal(await connects(), 1, 'one connect under way while the link is cut, not a second resume');
      await restore();
      const t1 = Date.now();
      // When the source's QEMU sends again (postcopy-active after the recovery, or done): the figure
      // for the recovery itself; Succeeded comes once what is left went over at 2 MiB/s.
      const sourceQmp = g.agentOf(source).vms.qmpFor(ns, NAME);
      const flowing = sourceQmp
        ? await eventually(
            'the source sending again',
            async () => {
              const st = (await sourceQmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: 'gone' }))).status;
              return st === 'postcopy-active' || st === 'completed' || st === 'gone' ? Date.now() : undefined;
            },
            300_000,
            100,
          )
        : undefined;
      const done = await finished('postcopy-recovered', 400_000);
      const recoveredSecs = (Date.now() - t1) / 1000;
      assert.equal(done.phase, 'Succeeded', JSON.stringify(done));
      // The recovery's note served its migration: gone with the switch.
      assert.equal((await c.client.get(VMI, NAME, { namespace: ns })).metadata?.annotations?.['vessel.io/migration-recovery'], undefined);
      assert.equal((await vmiStatus()).nodeName, target);
      await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 120_000, 300);
      // The guest goes on at the target where it was: no new boot there, records past the ones before the cut.
      await eventually(
        'records written on the target after the recovery',
        async () => ((await maxRecord(target)) > printedBefore + 5 ? true : undefined),
        180_000,
        500,
      );
      await assertWentOnAtTarget(source, sourceLogAt, target, targetLogAt);
      const targetFile = await claimFileOn(target);
      const printed = await maxRecord(target);
      await assertRecords(targetFile, printed, "on the target's file");
      console.log(
        `# figures: stream cut in post-copy and restored: recovery asked and the target listening ${detectedSecs.toFixed(1)} s after the cut (stall 15 s, attempt ${note.attempt}), ` +
          `the source sending again ${flowing === undefined ? '?' : ((flowing - t1) / 1000).toFixed(1)} s and Succeeded ${recoveredSecs.toFixed(1)} s after the link came back ` +
          `(cut for ${((t1 - t0) / 1000).toFixed(1)} s); ${printed} records checked`,
      );
    } finally {
      await restore?.();
      delete process.env.VESSEL_TEST_POSTCOPY_STALL_MS;
      delete process.env.VESSEL_TEST_POSTCOPY_RECOVERY_MS;
      await endPostcopy();
    }
  },
);

test(
  'post-copy with a node-local disk, the migration stream cut during post-copy: the source sees it stall, pauses it, Failed, neither side runs the guest, the copy kept',
  { timeout: 1_800_000 },
  async () => {
    // The stall the source waits for (60 s by default), then the recovery it tries in vain (60 s by default).
    process.env.VESSEL_TEST_POSTCOPY_STALL_MS = '15000';
    process.env.VESSEL_TEST_POSTCOPY_RECOVERY_MS = '20000';
    let restore: (() => Promise<void>) | undefined;
    const { vmi, source, target } = await startPostcopy('postcopy-cut', 512 * 1024);
    try {
      // Cut for good (until the case ends): the recovery's new port is cut too.
      restore = await cutStream(source);
      const t0 = Date.now();
      const done = await finished('postcopy-cut', 180_000);
      const failedSecs = (Date.now() - t0) / 1000;
      assert.equal(done.phase, 'Failed', JSON.stringify(done));
      assert.match(done.migrationState?.failureReason ?? '', /nothing sent for 15 s .*not recovered within 20 s; the guest ran on the target and is lost/);
      await eventOf('PostCopyFailed', vmi.metadata.uid);
      // Neither side runs the guest afterwards: the source quit, the target ended (it waited in post-copy for pages).
      await eventually(
        'both QEMUs of the lost guest ended',
        async () =>
          (await qemuPids(target)).length === 0 && (await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.metadata?.uid !== vmi.metadata.uid
            ? true
            : undefined,
        120_000,
        200,
      );
      const endedSecs = (Date.now() - t0) / 1000;
      const back = await restartedAlone(vmi, t0);
      assert.ok(back.maxQemus <= 1, `at most one QEMU of the guest while it came back (${back.maxQemus}: ${back.seen})`);
      const migUid = (await c.client.get(VMIM, 'postcopy-cut', { namespace: ns })).metadata?.uid ?? '?';
      await eventOf('PostCopyDiskKept', vmi.metadata.uid);
      const kept = await keptCopies(target);
      assert.ok(
        kept.files.some((f) => f.endsWith(`.postcopy-${migUid}`)),
        `the target's copy kept in ${kept.dir}: ${kept.files.join(', ')}`,
      );
      console.log(
        `# figures: migration stream cut in post-copy: Failed ${failedSecs.toFixed(1)} s after the cut (stall 15 s, recovery 20 s), both QEMUs of the lost guest gone after ${endedSecs.toFixed(1)} s, ` +
          `the VM running again on ${back.node} after ${back.secs.toFixed(1)} s (at most ${back.maxQemus} QEMU meanwhile)`,
      );
    } finally {
      await restore?.();
      delete process.env.VESSEL_TEST_POSTCOPY_STALL_MS;
      delete process.env.VESSEL_TEST_POSTCOPY_RECOVERY_MS;
      await endPostcopy();
    }
  },
);

test('the kept post-copy copies go when their claim is deleted', { timeout: 600_000 }, async () => {
  const listed = JSON.parse((await c.client.get(PVC, DATA, { namespace: ns })).metadata?.annotations?.['vessel.io/postcopy-kept'] ?? '[]') as {
    node: string;
    file: string;
  }[];
  const before = await Promise.all(c.nodes.cluster.nodes.map(async (n) => ({ node: n.name, ...(await keptCopies(n.name)) })));
  const files = before.flatMap((b) => b.files.map((f) => join(b.dir, f)));
  assert.ok(files.length > 0, 'the cases before kept copies (run them first)');
  for (const b of before)
    for (const f of b.files)
      assert.ok(
        listed.some((k) => k.node === b.node && k.file === f),
        `${b.node}: ${f} listed on the claim`,
      );
  // The claim's deletion waits while its VM runs (pvc-protection): the VM goes first.
  await c.client.delete(VM, NAME, { namespace: ns });
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000);
  const t0 = Date.now();
  await c.client.delete(PVC, DATA, { namespace: ns });
  await eventually(
    'every kept copy removed',
    async () =>
      (
        await Promise.all(
          files.map((f) =>
            stat(f).then(
              () => 1,
              () => 0,
            ),
          ),
        )
      ).every((x) => x === 0)
        ? true
        : undefined,
    60_000,
    200,
  );
  const secs = (Date.now() - t0) / 1000;
  console.log(
    `# figures: ${files.length} kept post-copy copies on ${before.filter((b) => b.files.length).length} node(s) removed ${secs.toFixed(1)} s after the claim's deletion`,
  );
});
