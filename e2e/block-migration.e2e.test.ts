/**
 * Live migration of node-local disks end to end (vms/block-migration.ts) on a two-node dev
 * cluster: one tiny guest with its root disk (a DataVolume) and a 64 MiB data disk (a claim) on the local pool, writing
 * numbered 512-byte records to the data disk (each flushed) and, every 25 records, the md5 of
 * all records so far. First a migration whose target QEMU is killed while the disks are mirrored
 * (slowed down for the test): Failed, the guest writing on its node again within seconds, the
 * target's new volumes gone. Then a migration that succeeds although a stale file (a decoy the
 * test made, as an earlier attempt whose agent was killed leaves) is at the target's path of the
 * data claim, and whose target agent "crashes" (an injected fault) after the switch, before it
 * records the claims: the records on the target's file are contiguous and match the guest's
 * checksum, the source's files are gone, the claims name the target node and its files
 * (repaired by the target's next reconcile), and the guest never rebooted.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { setFaultHook } from '../packages/agent/faults.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { checkRecordFile, checksums, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const ns = 'default';
/** How soon after a failed migration the guest writes again, in time its QEMU was not waiting for a CPU. */
const RESUME_WITHIN_MS = 15_000;
const NAME = 'localmover';
const DATA = `${NAME}-data`;
const ROOT = `${NAME}-root`;
type Obj = Record<string, unknown>;
type VmiStatus = {
  phase?: string;
  nodeName?: string;
  migrationState?: { failed?: boolean; failureReason?: string; completed?: boolean; startTimestamp?: string; endTimestamp?: string; migrationUid?: string };
  conditions?: { type: string; status: string; message?: string }[];
};

/**
 * The writer: finds the 64 MiB disk, then record i (`REC i <hash of i>`, padded to 512 bytes)
 * at sector i, flushed to the device (`conv=fsync`: a FLUSH; `sync` alone leaves a new cluster's
 * qcow2 mapping in QEMU's memory, so the file could read zeros there); prints each, and every 25 the md5 of the sectors written so far.
 */
const USER_DATA = `#!/bin/sh
for d in /sys/block/vd*; do [ "$(cat $d/size)" = 131072 ] && DEV=/dev/\${d##*/}; done
echo "VESSEL-DEV $DEV"
(i=0; while true; do
  printf 'REC %08d %s\\n' $i "$(echo $i | md5sum | cut -c1-16)" | dd of=$DEV bs=512 seek=$i conv=notrunc,sync,fsync 2>/dev/null
  echo "VESSEL-REC $i"
  i=$((i+1))
  [ $((i % 25)) = 0 ] && echo "VESSEL-SUM $i $(dd if=$DEV bs=512 count=$i 2>/dev/null | md5sum | cut -d' ' -f1)"
done) &
`;

let c: TestCluster;
const agentOf = (name: string) => c.nodes.agents.find((a) => a.nodeName === name)!;
const vmiStatus = async () => ((await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const recs = (text: string) => [...text.matchAll(/VESSEL-REC (\d+)/g)].map((m) => Number(m[1]));
const annotations = async (claim: string) => ((await c.client.get(PVC, claim, { namespace: ns })).metadata?.annotations ?? {}) as Record<string, string>;

function localVm(): Obj {
  const vm = tinyVm(NAME, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'local', terminationGracePeriodSeconds: 5 }) as {
    spec: { template: { spec: { domain: { devices: { disks: Obj[] } }; volumes: Obj[] } } };
  };
  const t = vm.spec.template.spec;
  t.domain.devices.disks.push({ name: 'data', disk: { bus: 'virtio' } });
  // A plain claim: the local class waits for its first consumer, so it lands on the root disk's node.
  t.volumes.push({ name: 'data', persistentVolumeClaim: { claimName: DATA } });
  return vm as unknown as Obj;
}

async function migrate(name: string): Promise<void> {
  await c.client.create(
    VMIM,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
    { namespace: ns },
  );
}
async function finished(name: string): Promise<{ phase?: string; migrationState?: VmiStatus['migrationState'] }> {
  return eventually(
    `migration ${name} Succeeded or Failed`,
    async () => {
      const s = ((await c.client.get(VMIM, name, { namespace: ns })).status ?? {}) as { phase?: string; migrationState?: VmiStatus['migrationState'] };
      return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
    },
    600_000,
  );
}

/** PIDs of QEMUs whose command line names `dir`. */
async function qemusIn(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-system') && cmd.includes(dir)) pids.push(Number(d));
  }
  return pids;
}

/**
 * How long (ms) each of the QEMU's main and vCPU threads has waited for a CPU (schedstat's
 * run_delay): the time a starved guest could not run.
 */
async function runDelays(pid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const comm = (await readFile(`/proc/${pid}/task/${task}/comm`, 'utf8').catch(() => '')).trim();
    if (task !== String(pid) && !comm.startsWith('CPU ')) continue;
    out.set(task, Number((await readFile(`/proc/${pid}/task/${task}/schedstat`, 'utf8').catch(() => '0 0')).split(' ')[1]) / 1e6);
  }
  return out;
}

/** The most any of those threads waited for a CPU since `before`. */
async function waitedSince(pid: number, before: Map<string, number>): Promise<number> {
  let most = 0;
  for (const [task, ms] of await runDelays(pid)) most = Math.max(most, ms - (before.get(task) ?? ms));
  return most;
}

/**
 * What a frozen source QEMU is doing, for the log of a failed run: each thread's state, wait
 * channel and kernel stack, gdb's backtraces where gdb is installed, and the node's TCP sockets.
 */
async function frozenQemu(pid: number, netns: string | undefined): Promise<string> {
  const sh = (script: string) => run('sh', ['-c', script]).then((r) => r.out + r.err);
  return [
    await sh(`for t in /proc/${pid}/task/*; do echo "$t $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)"; head -8 $t/stack; done`),
    await sh(`command -v gdb >/dev/null && timeout 60 gdb -p ${pid} -batch -ex 'thread apply all bt 14' 2>&1 | grep -v '^\\[New LWP' | head -200`),
    await sh(`${netns ? `nsenter --net=/run/netns/${netns} ` : ''}ss -tanpei`),
  ].join('\n');
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

before(async () => {
  c = await startCluster({ nodes: 2 });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  delete process.env.VESSEL_TEST_MIRROR_BYTES_PER_SEC;
  setFaultHook(undefined);
  if (!c) return;
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.client.delete(PVC, DATA, { namespace: ns }).catch(() => undefined);
  await c.close();
});

test('a VM with local-pool disks: a failed mirror leaves it running, then it moves with its disks intact', { timeout: 1_500_000 }, async () => {
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
  await c.client.create(VM, localVm(), { namespace: ns });
  const running = await eventually(
    'the VMI Running and live-migratable',
    async () => {
      const s = await vmiStatus();
      const lm = s.conditions?.find((x) => x.type === 'LiveMigratable');
      return s.phase === 'Running' && lm?.status === 'True' ? s : undefined;
    },
    600_000,
  );
  const source = running.nodeName!;
  const target = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
  await eventually('the guest writing records', async () => (recs(await serialLog(agentOf(source).dataDir, ns, NAME)).length > 5 ? true : undefined), 600_000);
  const sourceFiles = [(await annotations(ROOT))['vessel.io/volume-path'], (await annotations(DATA))['vessel.io/volume-path']];
  assert.ok(sourceFiles.every((f) => f?.startsWith(agentOf(source).dataDir)));

  // 1. The target QEMU killed while the disks are mirrored (slowed to 256 KiB/s for this).
  process.env.VESSEL_TEST_MIRROR_BYTES_PER_SEC = String(256 * 1024);
  await migrate('local-fail');
  const targetDir = join(agentOf(target).dataDir, 'vms');
  // eventually() retries a check that throws: a failure is returned, then asserted.
  const started = await eventually(
    'the mirror under way (the transfer started) or a failure',
    async () => {
      const ms = (await vmiStatus()).migrationState;
      return ms?.failed || ms?.startTimestamp ? ms : undefined;
    },
    300_000,
  );
  assert.ok(!started.failed, `failed before the mirror: ${started.failureReason}`);
  const targetFiles = await readdir(join(agentOf(target).dataDir, 'pools', 'local', ns));
  assert.equal(targetFiles.length, 2, `the target made both volumes: ${targetFiles.join(' ')}`);
  // Killed once the mirror has written into the target's files, not while the source is still
  // connecting: QEMU 7.2 holds its main loop during the NBD connection (docs/migration.md).
  const allocated = async () => {
    let bytes = 0;
    for (const f of targetFiles) bytes += ((await stat(join(agentOf(target).dataDir, 'pools', 'local', ns, f)).catch(() => undefined))?.blocks ?? 0) * 512;
    return bytes;
  };
  const fresh = await allocated();
  const copying = await eventually(
    'the mirror writing into the target (or a failure)',
    async () => ((await vmiStatus()).migrationState?.failed ? 'failed' : (await allocated()) > fresh + 512 * 1024 ? 'copying' : undefined),
    300_000,
  );
  assert.equal(copying, 'copying', `failed before the mirror wrote: ${(await vmiStatus()).migrationState?.failureReason}`);
  const pids = await qemusIn(targetDir);
  assert.equal(pids.length, 1);
  process.kill(pids[0], 'SIGKILL');
  const failed = await finished('local-fail');
  delete process.env.VESSEL_TEST_MIRROR_BYTES_PER_SEC;
  assert.equal(failed.phase, 'Failed');
  const s1 = await vmiStatus();
  assert.equal(s1.nodeName, source);
  assert.equal(s1.phase, 'Running');
  await eventually(
    "the target's new volumes removed",
    async () => ((await readdir(join(agentOf(target).dataDir, 'pools', 'local', ns)).catch(() => [])).length === 0 ? true : undefined),
    60_000,
  );
  const n1 = recs(await serialLog(agentOf(source).dataDir, ns, NAME)).at(-1)!;
  // What the user sees: the guest goes on writing (each record flushed to its disk) within
  // seconds. Counted in the time its QEMU could run: on a loaded host a QEMU (nice 19, batch)
  // waits for a CPU for minutes, which is starvation, not a guest frozen by the failed mirror.
  const [sourcePid] = await qemusIn(join(agentOf(source).dataDir, 'vms'));
  const t0Failed = Date.now();
  const delay0 = await runDelays(sourcePid);
  const resumed = await eventually(
    'the guest writing on its node again (or the time allowed spent)',
    async () => {
      // A wait that began before t0 is counted when it ends: never below 0.
      const runnable = Math.max(0, Date.now() - t0Failed - (await waitedSince(sourcePid, delay0)));
      const n = recs(await serialLog(agentOf(source).dataDir, ns, NAME)).at(-1)!;
      return n > n1 + 3 || runnable > RESUME_WITHIN_MS ? { n, runnable, wall: Date.now() - t0Failed } : undefined;
    },
    600_000,
  );
  const frozen = resumed.n > n1 + 3 ? '' : await frozenQemu(sourcePid, c.nodes.cluster.nodes.find((n) => n.name === source)!.netns);
  assert.ok(
    resumed.n > n1 + 3,
    `the guest wrote nothing for ${Math.round(resumed.runnable)} ms of the time its QEMU could run (${resumed.wall} ms in all)\n${frozen}`,
  );
  console.log(
    `figures: failed local-disk migration: ${failed.migrationState?.failureReason}; 3 more flushed records ${resumed.wall} ms after the Failed phase was seen (${Math.round(resumed.runnable)} ms not waiting for a CPU)`,
  );

  // A stale file at the target's path of the data claim (as a target agent killed mid-migration leaves): replaced, not a failure.
  const stale = join(
    agentOf(target).dataDir,
    'pools',
    'local',
    ns,
    targetFiles.find((f) => f.startsWith(`${DATA}-`))!,
  );
  await writeFile(stale, 'a stale copy of an earlier incoming migration');
  // The target agent "crashes" after the switch, before it records the claims: its next reconcile repairs them.
  let crashed = 0;
  setFaultHook((p) => {
    if (p === 'migration:target-claims' && crashed++ === 0) throw new Error('injected fault: target agent stopped before recording the claims');
  });

  // 2. The migration that succeeds.
  const t0 = Date.now();
  await migrate('local-ok');
  const done = await finished('local-ok');
  const took = Date.now() - t0;
  assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
  const lastOnSource = recs(await serialLog(agentOf(source).dataDir, ns, NAME)).at(-1)!;
  // The guest goes on writing on the target without a reboot (its boot script never ran again).
  const sum = await eventually(
    'a checksum printed on the target after the move',
    async () => {
      const log = await serialLog(agentOf(target).dataDir, ns, NAME);
      return checksums(log).find((s) => s.n > lastOnSource + 1);
    },
    180_000,
  );
  const targetLog = await serialLog(agentOf(target).dataDir, ns, NAME);
  assert.ok(!targetLog.includes('VESSEL-DEV'), 'the guest did not boot again on the target');
  assert.ok(recs(targetLog)[0] <= lastOnSource + 2, `records go on where they were: ${recs(targetLog)[0]} after ${lastOnSource}`);
  // The claims are the target's, on files of its local pool (repaired after the injected fault); the source's files are gone.
  assert.equal(crashed, 1, 'the fault before recording the claims was hit');
  setFaultHook(undefined);
  for (const claim of [ROOT, DATA]) {
    const a = await eventually(
      `claim ${claim} recorded on the target`,
      async () => {
        const a = await annotations(claim);
        return a['volume.kubernetes.io/selected-node'] === target ? a : undefined;
      },
      60_000,
    );
    assert.ok(a['vessel.io/volume-path'].startsWith(join(agentOf(target).dataDir, 'pools', 'local', ns)), a['vessel.io/volume-path']);
  }
  assert.equal((await annotations(DATA))['vessel.io/volume-path'], stale, 'the stale file was replaced by the copy');
  // The source removes its files once its QEMU has quit, after the switch: soon, not at once.
  for (const f of sourceFiles) await eventually(`${f} removed`, async () => ((await exists(f)) ? undefined : true), 60_000);
  // Every record up to the checksum is on the target's file, in order, and their md5 is the guest's.
  await checkRecordFile((await annotations(DATA))['vessel.io/volume-path'], sum, `on the target's file (${lastOnSource} the last written on the source)`);
  const ms = done.migrationState!;
  console.log(
    `figures: local-disk migration ${source} → ${target} (1 GiB root + 64 MiB data, local pool): ${took} ms from create to Succeeded, ` +
      `transfer ${Date.parse(ms.endTimestamp!) - Date.parse(ms.startTimestamp!)} ms; ${sum.n} records checked`,
  );
});
