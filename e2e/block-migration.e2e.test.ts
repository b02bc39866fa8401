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
 * (repaired by the target's next reconcile), and the guest never rebooted. A second guest on
 * the same cluster has a containerDisk root (from a docker-registry on loopback), an emptyDisk
 * and a hotplugged local claim; the containerDisk's tag moves to other bytes before it migrates
 * (a migration with its digest record changed to the moved tag's is refused by the source): on the target the guest reads the base it booted from, the records on all three disks are
 * intact, the claim is the target's, and the source's copies are gone.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { setFaultHook } from '../packages/agent/faults.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { pushDiskImage, startRegistry, type TestRegistry } from '../packages/agent/storage/testing-registry.ts';
import { ensureTinyGuest } from '@vessel/guest';
import { captureStream, type StreamSummary } from './frames.ts';
import { runDelays } from './guest-report.ts';
import { checkSectorRecords, localClaim, runDirOf, SECTOR_RECORD_SH, sectorSums, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const KUBEVIRT: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'kubevirts', namespaced: true };
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
  migrationState?: {
    failed?: boolean;
    failureReason?: string;
    completed?: boolean;
    startTimestamp?: string;
    endTimestamp?: string;
    migrationUid?: string;
    migrationConfiguration?: { disableTLS?: boolean };
  };
  conditions?: { type: string; status: string; message?: string }[];
};

/**
 * Random per run; the guest writes 1 MiB of copies of it to its data disk at boot (sector 120000
 * on, far past the records), which the mirror then carries: over TLS no frame on the fabric may
 * hold it, over plain NBD (disableTLS) frames do.
 */
const MARKER = randomBytes(32).toString('hex');

/**
 * The writer: writes the marker, finds the 64 MiB disk, then record i (`REC i <hash of i>`, padded to 512 bytes)
 * at sector i, flushed to the device (`conv=fsync`: a FLUSH; `sync` alone leaves a new cluster's
 * qcow2 mapping in QEMU's memory, so the file could read zeros there); prints each, and every 25 the md5 of the sectors written so far.
 */
const USER_DATA = `#!/bin/sh
for d in /sys/block/vd*; do [ "$(cat $d/size)" = 131072 ] && DEV=/dev/\${d##*/}; done
echo "VESSEL-DEV $DEV"
m=${MARKER}; s=$m$m$m$m; s=$s$s$s$s; s=$s$s$s$s; s=$s$s$s$s
(j=0; while [ $j -lt 64 ]; do printf %s "$s"; j=$((j+1)); done) | dd of=$DEV bs=512 seek=120000 conv=notrunc,fsync 2>/dev/null
${SECTOR_RECORD_SH}
(i=0; while true; do
  rec $DEV $i 0
  echo "VESSEL-REC $i"
  i=$((i+1))
  [ $((i % 25)) = 0 ] && echo "VESSEL-SUM $i $(dd if=$DEV bs=512 count=$i 2>/dev/null | md5sum | cut -d' ' -f1)"
done) &
`;

let c: TestCluster;
const agentOf = (name: string) => c.nodes.agents.find((a) => a.nodeName === name)!;
const vmiStatus = async () => ((await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const recs = (text: string) => [...text.matchAll(/VESSEL-REC (\d+)/g)].map((m) => Number(m[1]));
const sums = (text: string) => sectorSums(text);
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

async function migrate(name: string, vmiName = NAME): Promise<void> {
  await c.client.create(
    VMIM,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName } },
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

/** The NBD server's port of the VMI's last migration (its `vessel.io/migration-nbd` annotation) and what the capture saw on it. */
async function onNbdPort(wire: StreamSummary): Promise<{ port: string; bytes: number; marked: number }> {
  const vmi = await c.client.get(VMI, NAME, { namespace: ns });
  const address = (JSON.parse(vmi.metadata?.annotations?.['vessel.io/migration-nbd'] ?? '{}') as { address?: string }).address ?? '';
  const port = address.split(':').at(-1) ?? '';
  return { port, ...(wire.ports[port] ?? { bytes: 0, marked: 0 }) };
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

let registry: TestRegistry | undefined;
before(async () => {
  // The agents pull the containerDisk from the test's registry on loopback.
  c = await startCluster({ nodes: 2, allowLoopbackImports: true });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  delete process.env.VESSEL_TEST_MIRROR_BYTES_PER_SEC;
  setFaultHook(undefined);
  await registry?.stop();
  if (!c) return;
  await c.client
    .patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { disableTLS: null } } } }, { namespace: 'kubevirt' })
    .catch(() => undefined);
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await c.client.delete(VM, CD, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.client.delete(PVC, DATA, { namespace: ns }).catch(() => undefined);
  await c.client.delete(PVC, HOTPLUG, { namespace: ns }).catch(() => undefined);
  await c.client.delete(DV, GOLDEN, { namespace: ns }).catch(() => undefined);
  await c.close();
});

test('a VM with local-pool disks: a failed mirror leaves it running, then it moves with its disks intact', { timeout: 1_500_000 }, async () => {
  await c.client.create(PVC, localClaim(DATA, '64Mi', { namespace: ns }), { namespace: ns });
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

  // 2. The migration that succeeds, every frame on the source's fabric interface captured (the mirror's way out).
  const netnsOf = (node: string) => c.nodes.cluster.nodes.find((n) => n.name === node)!.netns;
  let wire = await captureStream(netnsOf(source), 'fab0', MARKER);
  const t0 = Date.now();
  let done: Awaited<ReturnType<typeof finished>>;
  let tlsWire: StreamSummary;
  try {
    await migrate('local-ok');
    done = await finished('local-ok');
  } finally {
    tlsWire = await wire.stop();
  }
  const took = Date.now() - t0;
  assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
  // The mirror is TLS: the marker on the data disk is in no frame, though the NBD port carried the disks.
  const tlsNbd = await onNbdPort(tlsWire);
  assert.ok(tlsNbd.bytes > 2 << 20, `the disks crossed on the NBD port ${tlsNbd.port}: ${tlsNbd.bytes} bytes (${JSON.stringify(tlsWire.ports)})`);
  assert.equal(tlsWire.marked, 0, `frames with the data disk's marker in the TLS mirror (${JSON.stringify(tlsWire)})`);
  const lastOnSource = recs(await serialLog(agentOf(source).dataDir, ns, NAME)).at(-1)!;
  // The guest goes on writing on the target without a reboot (its boot script never ran again).
  const sum = await eventually(
    'a checksum printed on the target after the move',
    async () => {
      const log = await serialLog(agentOf(target).dataDir, ns, NAME);
      return sums(log).find((s) => s.n > lastOnSource + 1);
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
  await checkSectorRecords((await annotations(DATA))['vessel.io/volume-path'], sum, {
    what: `the data disk (${lastOnSource} the last record written on the source)`,
  });
  const ms = done.migrationState!;
  console.log(
    `figures: local-disk migration ${source} → ${target} (1 GiB root + 64 MiB data, local pool): ${took} ms from create to Succeeded, ` +
      `transfer ${Date.parse(ms.endTimestamp!) - Date.parse(ms.startTimestamp!)} ms; ${sum.n} records checked; ` +
      `on ${source}'s fab0 ${(tlsNbd.bytes / 1048576).toFixed(1)} MiB on the NBD port, 0 of ${tlsWire.frames} frames with the marker, ${tlsWire.drops} dropped`,
  );

  // 3. Back with TLS off (the KubeVirt object's disableTLS): the same capture finds the marker on
  // the NBD port, so the check above can fail; and the mirror runs plain on both sides.
  await c.client.patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { disableTLS: true } } } }, { namespace: 'kubevirt' });
  // The controller sees the KubeVirt object through a watch: a moment before the migration is created.
  await new Promise((r) => setTimeout(r, 2000));
  const t1 = Date.now();
  wire = await captureStream(netnsOf(target), 'fab0', MARKER);
  let plainWire: StreamSummary;
  let back: Awaited<ReturnType<typeof finished>>;
  try {
    await migrate('local-plain');
    back = await finished('local-plain');
  } finally {
    plainWire = await wire.stop();
    await c.client.patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { disableTLS: null } } } }, { namespace: 'kubevirt' });
  }
  assert.equal(back.phase, 'Succeeded', `the plain migration failed: ${back.migrationState?.failureReason}`);
  assert.equal((await vmiStatus()).migrationState?.migrationConfiguration?.disableTLS, true, 'the migration ran with TLS off');
  const plainNbd = await onNbdPort(plainWire);
  assert.ok(plainNbd.marked > 0, `the marker in the plain mirror on port ${plainNbd.port} (${JSON.stringify(plainWire)})`);
  const lastBefore = recs(await serialLog(agentOf(target).dataDir, ns, NAME)).at(-1)!;
  const sumBack = await eventually(
    'a checksum printed after the move back',
    async () => sums(await serialLog(agentOf(source).dataDir, ns, NAME)).find((s) => s.n > lastBefore + 1),
    180_000,
  );
  await checkSectorRecords((await annotations(DATA))['vessel.io/volume-path'], sumBack, { what: 'the data disk after the plain move back' });
  console.log(
    `figures: plain local-disk migration back ${target} → ${source}: ${Date.now() - t1} ms with its checks; ` +
      `${(plainNbd.bytes / 1048576).toFixed(1)} MiB on the NBD port, ${plainNbd.marked} frames there with the marker, ${plainWire.drops} dropped`,
  );
});

const CD = 'cdmover';
const HOTPLUG = `${CD}-hotplug`;
/** A shared-pool copy of the tiny image, under the guest's ephemeral volume. */
const GOLDEN = `${CD}-golden`;
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
/**
 * The second guest's writer: its root is a containerDisk (vda), with an emptyDisk of 64 MiB, an
 * ephemeral volume over a 1 GiB shared-pool claim and, once hotplugged, a local-pool claim (sda).
 * One loop writes record i to the emptyDisk (E), to the containerDisk's and the ephemeral
 * volume's overlays in the free gap before their first partition (sectors 1024-2023: C and P,
 * the first 1000 records) and record h to the hotplugged disk (H) once it is there; every 10 it
 * prints each disk's checksum and the md5 of 1 MiB of the containerDisk's base (8 MiB in, inside
 * the boot partition, which the booted guest never writes), read past the page cache: what the
 * base under its overlay holds.
 */
const CD_USER_DATA = `#!/bin/sh
for d in /sys/block/vd*; do [ "$(cat $d/size)" = 131072 ] && E=/dev/\${d##*/}; [ "$(cat $d/size)" = 2097152 ] && P=/dev/\${d##*/}; done
echo "VESSEL-DEV $E $P"
${SECTOR_RECORD_SH}
sum() { echo "VESSEL-SUM-$1 $3 $(dd if=$2 bs=512 skip=$4 count=$3 2>/dev/null | md5sum | cut -d' ' -f1)"; }
(i=0; h=0; H=
while true; do
  rec $E $i 0
  [ $i -lt 1000 ] && rec /dev/vda $i 1024 && rec $P $i 1024
  [ -z "$H" ] && [ -b /dev/sda ] && H=/dev/sda && echo "VESSEL-HOTPLUG $H"
  [ -n "$H" ] && rec $H $h 0 && h=$((h+1))
  i=$((i+1))
  echo "VESSEL-REC $i $h"
  if [ $((i % 10)) = 0 ]; then
    sum E $E $i 0
    [ $i -le 1000 ] && sum C /dev/vda $i 1024 && sum P $P $i 1024
    [ -n "$H" ] && sum H $H $h 0
    echo "VESSEL-BASESUM $(echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=1M skip=8 count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
  fi
done) &
`;
const baseSums = (text: string) => [...text.matchAll(/VESSEL-BASESUM ([0-9a-f]{32})/g)].map((m) => m[1]);
const cdStatus = async () =>
  ((await c.client.get(VMI, CD, { namespace: ns }).catch(() => undefined)) ?? undefined) as
    (Obj & { status?: VmiStatus; metadata: { annotations?: Record<string, string> } }) | undefined;

test(
  'a containerDisk, an emptyDisk, an ephemeral volume and a hotplugged local claim move with the guest; the containerDisk by the digest it booted from, although its tag moved',
  { timeout: 900_000 },
  async () => {
    const t0 = Date.now();
    registry = await startRegistry();
    const tiny = await ensureTinyGuest();
    const pushed = await pushDiskImage(registry.url, 'disks/tiny', 'v1', [[{ path: 'disk/disk.qcow2', file: tiny.disk }]], { gzip: false });
    const vm = tinyVm(CD, { namespace: ns, binding: 'bridge', userData: CD_USER_DATA, terminationGracePeriodSeconds: 5 }) as {
      spec: { dataVolumeTemplates?: unknown[]; template: { spec: { domain: { devices: { disks: Obj[] } }; volumes: Obj[] } } };
    };
    const t = vm.spec.template.spec;
    t.volumes[0] = { name: 'root', containerDisk: { image: `${registry.url}/disks/tiny:v1` } };
    delete vm.spec.dataVolumeTemplates;
    t.domain.devices.disks.push({ name: 'scratch', disk: { bus: 'virtio' } });
    t.volumes.push({ name: 'scratch', emptyDisk: { capacity: '64Mi' } });
    t.domain.devices.disks.push({ name: 'eph', disk: { bus: 'virtio' } });
    t.volumes.push({ name: 'eph', ephemeral: { persistentVolumeClaim: { claimName: GOLDEN } } });
    await c.client.create(
      DV,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataVolume',
        metadata: { name: GOLDEN, namespace: ns },
        spec: {
          sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' },
          storage: { storageClassName: 'shared', resources: { requests: { storage: '1Gi' } } },
        },
      },
      { namespace: ns },
    );
    await c.client.create(VM, vm as unknown as Obj, { namespace: ns });
    const running = await eventually(
      'the VMI Running and live-migratable',
      async () => {
        const v = await cdStatus();
        const lm = v?.status?.conditions?.find((x) => x.type === 'LiveMigratable');
        return v?.status?.phase === 'Running' && lm?.status === 'True' ? v : undefined;
      },
      600_000,
    );
    // The digest it pulled is recorded on the VMI.
    assert.deepEqual(JSON.parse(running.metadata.annotations?.['vessel.io/containerdisk-digests'] ?? '{}'), { root: pushed.digest });
    const source = running.status!.nodeName!;
    const target = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
    const srcLog = () => serialLog(agentOf(source).dataDir, ns, CD);
    await eventually('the guest writing records', async () => (baseSums(await srcLog()).length > 0 ? true : undefined), 600_000);

    // A local-pool claim made on the VM's node, hotplugged.
    await c.client.create(PVC, localClaim(HOTPLUG, '32Mi', { namespace: ns, node: source }), { namespace: ns });
    await eventually(
      `claim ${HOTPLUG} Bound`,
      async () => (((await c.client.get(PVC, HOTPLUG, { namespace: ns })).status as { phase?: string } | undefined)?.phase === 'Bound' ? true : undefined),
      120_000,
    );
    await c.client.request('PUT', `/apis/subresources.kubevirt.io/v1/namespaces/${ns}/virtualmachineinstances/${CD}/addvolume`, {
      body: {
        name: HOTPLUG,
        disk: { name: HOTPLUG, disk: { bus: 'scsi' } },
        volumeSource: { persistentVolumeClaim: { claimName: HOTPLUG, hotpluggable: true } },
      },
    });
    await eventually('records on the hotplugged disk', async () => (sectorSums(await srcLog(), 'H').length > 0 ? true : undefined), 300_000);
    const hotplugSource = (await annotations(HOTPLUG))['vessel.io/volume-path'];
    assert.ok(hotplugSource.startsWith(agentOf(source).dataDir), hotplugSource);
    const runDirSource = await runDirOf(agentOf(source).dataDir, ns, CD);
    assert.ok(runDirSource);

    // The tag moves: the same disk with other bytes where the guest reads its base.
    const work = await mkdtemp(join(tmpdir(), 'vessel-retag-'));
    let moved: { digest: string };
    try {
      const over = join(work, 'over.qcow2');
      const other = join(work, 'other.qcow2');
      for (const [cmd, args] of [
        ['qemu-img', ['create', '-q', '-f', 'qcow2', '-b', tiny.disk, '-F', 'qcow2', over]],
        ['qemu-io', ['-c', 'write -q -P 0x5a 8M 1M', over]],
        ['qemu-img', ['convert', '-O', 'qcow2', over, other]],
      ] as const) {
        const r = await run(cmd, [...args]);
        assert.equal(r.code, 0, r.err);
      }
      moved = await pushDiskImage(registry.url, 'disks/tiny', 'v1', [[{ path: 'disk/disk.qcow2', file: other }]], { gzip: false });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    assert.notEqual(moved.digest, pushed.digest);
    // The digest record changed since the start (its tenant may write it): the source refuses to
    // send rather than have the overlay go over other bytes; the target's copies go.
    const digests = (root: string) => ({ metadata: { annotations: { 'vessel.io/containerdisk-digests': JSON.stringify({ root }) } } });
    await c.client.patch(VMI, CD, digests(moved.digest), { namespace: ns });
    await migrate('cd-tampered', CD);
    const refused = await finished('cd-tampered');
    assert.equal(refused.phase, 'Failed');
    assert.match(refused.migrationState?.failureReason ?? '', /the target would pull containerDisk digest sha256:[0-9a-f]+, this node runs sha256:/);
    assert.equal((await cdStatus())?.status?.nodeName, source);
    const failedTarget = await runDirOf(agentOf(target).dataDir, ns, CD);
    if (failedTarget)
      for (const f of ['scratch.empty.qcow2', 'root.containerdisk.qcow2'])
        await eventually(`the failed target's ${f} removed`, async () => ((await exists(join(failedTarget, f))) ? undefined : true), 60_000);
    await c.client.patch(VMI, CD, digests(pushed.digest), { namespace: ns });
    const baseBefore = baseSums(await srcLog()).at(-1)!;

    const t1 = Date.now();
    await migrate('cd-ok', CD);
    const done = await finished('cd-ok');
    const took = Date.now() - t1;
    assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
    const last = Number([...(await srcLog()).matchAll(/VESSEL-REC (\d+)/g)].at(-1)![1]);
    const tgtLog = () => serialLog(agentOf(target).dataDir, ns, CD);
    // Checksums printed on the target after the move, for both disks that keep being written.
    const sumsAfter = await eventually(
      'checksums printed on the target after the move',
      async () => {
        const log = await tgtLog();
        const e = sectorSums(log, 'E').find((x) => x.n > last + 1);
        const h = e && sectorSums(log, 'H').at(-1);
        // The base's checksum comes last in each round.
        const base = baseSums(log);
        return e && h && base.length ? { e, h, base } : undefined;
      },
      180_000,
    );
    const log = await tgtLog();
    assert.ok(!log.includes('VESSEL-DEV'), 'the guest did not boot again on the target');
    // The base under the overlay is the one it booted from, not the moved tag's.
    assert.ok(sumsAfter.base.length > 0);
    for (const b of sumsAfter.base) assert.equal(b, baseBefore, "the containerDisk's base read on the target");
    const runDirTarget = (await runDirOf(agentOf(target).dataDir, ns, CD))!;
    assert.equal((await readFile(join(runDirTarget, 'root.containerdisk.digest'), 'utf8')).trim(), pushed.digest);
    // The records: the emptyDisk's and the hotplugged claim's files on the target (still written
    // to), and the containerDisk's overlay (its records all written on the source).
    await checkSectorRecords(join(runDirTarget, 'scratch.empty.qcow2'), sumsAfter.e, { what: `the emptyDisk (${last} records on the source)` });
    const hp = await eventually(
      `claim ${HOTPLUG} recorded on the target`,
      async () => {
        const a = await annotations(HOTPLUG);
        return a['volume.kubernetes.io/selected-node'] === target ? a : undefined;
      },
      60_000,
    );
    assert.ok(hp['vessel.io/volume-path'].startsWith(join(agentOf(target).dataDir, 'pools', 'local', ns)), hp['vessel.io/volume-path']);
    await checkSectorRecords(hp['vessel.io/volume-path'], sumsAfter.h, { what: 'the hotplugged claim' });
    const c1 = sectorSums(await srcLog(), 'C').at(-1)!;
    await checkSectorRecords(join(runDirTarget, 'root.overlay.qcow2'), c1, { first: 1024, what: "the containerDisk's overlay" });
    const p1 = sectorSums(await srcLog(), 'P').at(-1)!;
    await checkSectorRecords(join(runDirTarget, 'eph.overlay.qcow2'), p1, { first: 1024, what: "the ephemeral volume's overlay" });
    // The hotplugged disk stays attached on the target.
    const vs = ((await cdStatus())?.status as { volumeStatus?: { name: string; phase?: string }[] } | undefined)?.volumeStatus ?? [];
    assert.equal(vs.find((v) => v.name === HOTPLUG)?.phase, 'Ready', JSON.stringify(vs));
    // The source's copies go once its QEMU has quit.
    for (const f of [
      hotplugSource,
      ...['scratch.empty.qcow2', 'root.overlay.qcow2', 'root.containerdisk.qcow2', 'root.containerdisk.digest', 'eph.overlay.qcow2'].map((n) =>
        join(runDirSource!, n),
      ),
    ])
      await eventually(`${f} removed`, async () => ((await exists(f)) ? undefined : true), 60_000);
    const ms = done.migrationState!;
    console.log(
      `figures: containerDisk + emptyDisk + ephemeral + hotplugged claim migration ${source} → ${target}: ${took} ms from create to Succeeded, ` +
        `transfer ${Date.parse(ms.endTimestamp!) - Date.parse(ms.startTimestamp!)} ms; records checked: ${sumsAfter.e.n} emptyDisk, ${sumsAfter.h.n} hotplugged, ${c1.n} containerDisk overlay, ${p1.n} ephemeral overlay; the test ${Date.now() - t0} ms`,
    );
  },
);
