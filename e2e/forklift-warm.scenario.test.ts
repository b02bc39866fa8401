/**
 * Warm migration of a running Vessel VM on one node (docs/forklift.md, "Warm migration"): the
 * tiny guest writes numbered records to a 64 MiB data claim without pause; the warm pipeline
 * (WarmRun over clusterWarmOps: the agents' dirty bitmaps, blockdev-backup rounds into qemu-nbd
 * exports of blank DataVolumes in another namespace) makes a full copy and 3 precopy rounds 3 s
 * apart, then the cutover: the source paused, the last round, the source stopped, the target VM
 * made. The target claims equal the source's (qemu-img compare) and hold the last record the
 * guest wrote; the target VM then boots (its ready line). Prints the cutover's downtime (source paused → target
 * VMI Running). WarmRun directly; e2e/forklift-warm-plan.e2e.test.ts goes through a Plan.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { TINY_SERIAL } from '@vessel/guest';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { clusterWarmOps } from '../packages/controllers/forklift/warm-ops.ts';
import { warmPipeline, WarmRun, type WarmOps, type WarmVmStatus } from '../packages/controllers/forklift/warm.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { recordSlot, recordsWritten, recordText, recordWriter, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const NS: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const SRC = 'warm-src';
const DST = 'warm-dst';
const NAME = 'busy';
type Obj = Record<string, unknown>;

let v: Vessel;
let dir: string;

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  dir = await mkdtemp(join(tmpdir(), 'vessel-warm-'));
  await ensureTinyImage(v.client, () => undefined);
  for (const name of [SRC, DST]) await v.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
});

after(async () => {
  if (!v) return;
  for (const name of [SRC, DST]) await v?.client.delete(NS, name).catch(() => undefined);
  // The agent leaves running guests alive when it stops: their VMIs go first.
  for (const name of [SRC, DST])
    await eventually(
      `the VMIs of ${name} gone`,
      async () => ((await v.client.list(VMI, { namespace: name })).items.length === 0 ? true : undefined),
      120_000,
    ).catch(() => undefined);
  await v?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);
const pathOf = async (ns: string, claim: string) =>
  String((await v.client.get(PVC, claim, { namespace: ns })).metadata?.annotations?.['vessel.io/volume-path']);

test('warm: full copy, 3 precopy rounds while the guest writes, cutover; the target has every write', { timeout: 2_400_000 }, async () => {
  await v.client.create(
    PVC,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: `${NAME}-data`, namespace: SRC },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '64Mi' } } },
    },
    { namespace: SRC },
  );
  const vm = tinyVm(NAME, { namespace: SRC, userData: recordWriter(), terminationGracePeriodSeconds: 2 }) as {
    spec: { template: { spec: { domain: { devices: { disks: Obj[] } }; volumes: Obj[] } } };
  };
  vm.spec.template.spec.domain.devices.disks.push({ name: 'data', disk: { bus: 'virtio' } });
  vm.spec.template.spec.volumes.push({ name: 'data', persistentVolumeClaim: { claimName: `${NAME}-data` } });
  await v.client.create(VM, vm as unknown as Obj, { namespace: SRC });
  await eventually('the guest writing', async () => (recordsWritten(await serialLog(v.dataDir, SRC, NAME)).length > 5 ? true : undefined), 900_000, 500);
  log('source guest writes');

  const s: WarmVmStatus = { id: `${SRC}/${NAME}`, name: NAME, phase: 'Pending', pipeline: warmPipeline([]) };
  const inner = clusterWarmOps(v.client, { namespace: SRC, name: NAME, targetNamespace: DST, targetName: 'moved', id: 'warm-test-1', start: false });
  const rounds: { mode: string; bytes: number; seconds: number }[] = [];
  let pausedAt = 0;
  // The same ops, timed.
  const ops: WarmOps = {
    ...inner,
    async copy(d, mode, progress) {
      const t = performance.now();
      const r = await inner.copy(d, mode, progress);
      rounds.push({ mode, bytes: r.bytes, seconds: (performance.now() - t) / 1000 });
      log(`${d.volume}: ${mode} round: ${r.bytes} bytes in ${rounds.at(-1)!.seconds.toFixed(1)} s`);
      return r;
    },
    async quiesceSource() {
      pausedAt = performance.now();
      await inner.quiesceSource();
    },
  };
  const warm = new WarmRun(s, ops, {
    precopyIntervalMs: 3000,
    // The user sets the cutover once 3 precopies are done.
    cutover: () => ((s.warm?.successes ?? 0) >= 3 ? Date.now() : undefined),
    write: async () => undefined,
    checkpoint: () => undefined,
    log: (l) => log(l),
  });
  try {
    await warm.run();
  } catch (e) {
    await inner.release();
    throw e;
  }
  log(`cutover done, ${((performance.now() - pausedAt) / 1000).toFixed(1)} s after the pause`);
  assert.equal(s.warm?.successes, 3);
  assert.equal(s.warm?.precopies?.length, 4);
  assert.deepEqual(
    s.pipeline.map((p) => p.phase),
    ['Completed', 'Completed', 'Completed', 'Completed', 'Completed'],
  );
  // Per disk: a full round first, then increments far smaller than the disk (the root disk's too).
  const full = rounds.filter((r) => r.mode === 'full');
  const incr = rounds.filter((r) => r.mode === 'incremental');
  assert.equal(full.length, 2, 'root and data, once each');
  assert.equal(incr.length, 6, '3 rounds of 2 disks');
  for (const r of incr) assert.ok(r.bytes < 16 * 1024 * 1024, `an increment of ${r.bytes} bytes`);

  // The source is gone; the target claims equal the source's and hold the last record written.
  await assert.rejects(v.client.get(VMI, NAME, { namespace: SRC }));
  const last = Math.max(...recordsWritten(await serialLog(v.dataDir, SRC, NAME)));
  for (const vol of ['root', 'data']) {
    const src = await pathOf(SRC, vol === 'root' ? `${NAME}-root` : `${NAME}-data`);
    const dst = await pathOf(DST, `moved-${vol}`);
    const cmp = await run('qemu-img', ['compare', '-U', src, dst]);
    assert.equal(cmp.code, 0, `${vol}: ${cmp.out} ${cmp.err}`);
  }
  const raw = join(dir, 'data.raw');
  const conv = await run('qemu-img', ['convert', '-U', '-O', 'raw', await pathOf(DST, 'moved-data'), raw]);
  assert.equal(conv.code, 0, conv.err);
  const bytes = await readFile(raw);
  assert.equal(recordSlot(bytes, last), recordText(last), `record ${last}`);
  log(`target holds record ${last}, the last the source wrote`);

  // The target boots on the copied disks.
  await v.client.patch(VM, 'moved', { spec: { runStrategy: 'Always' } }, { namespace: DST });
  await eventually(
    'the target VMI Running',
    async () => ((await v.client.get(VMI, 'moved', { namespace: DST }).catch(() => undefined))?.status as Obj | undefined)?.phase === 'Running' || undefined,
    300_000,
    250,
  );
  log(`target Running; downtime (source paused → target Running, target start included) ${((performance.now() - pausedAt) / 1000).toFixed(1)} s`);
  // Its guest comes up (slow under TCG on a loaded host: only the ready line is waited for).
  await eventually(
    'the target guest ready',
    async () => ((await serialLog(v.dataDir, DST, 'moved')).includes(TINY_SERIAL.ready) ? true : undefined),
    600_000,
    1000,
  );
  log('target guest ready');
});
