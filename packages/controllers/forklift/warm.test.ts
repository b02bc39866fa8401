/**
 * The warm pipeline's moves (warmNext) and a WarmRun over fake ops and a fake clock: a full
 * round, incremental rounds every interval, the cutover at its time (source quiesced, last
 * round, source stopped, target made), failures counted and retried, a lost bitmap copied in
 * full again, too many failures failing the VM, a cancel passing through; a cancelled warm VM's
 * target volumes deleted (MigrationRun, and clusterWarmOps.discard over the in-memory API server).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { forklift, refs } from '@vessel/api';
import { InMemoryClient } from '../testing/harness.ts';
import { MigrationRun, type VmStatus } from './migration.ts';
import type { PlanVmResult } from './validation.ts';
import { planAndMigration } from './testdata.ts';
import { cutoverTime, warmNext, warmPipeline, WarmRun, type WarmDisk, type WarmOps, type WarmVmStatus } from './warm.ts';
import { clusterWarmOps } from './warm-ops.ts';

const MIN = 60_000;

test('warmNext: full copy first (even past the cutover), then cutover at its time, else rounds at nextPrecopyAt', () => {
  const fresh = { successes: 0, failures: 0, consecutiveFailures: 0 };
  assert.deepEqual(warmNext(fresh, 1000, 0), { do: 'precopy', full: true });
  const one = { successes: 1, failures: 0, consecutiveFailures: 0, nextPrecopyAt: new Date(10 * MIN).toISOString() };
  assert.deepEqual(warmNext(one, 5 * MIN, undefined), { do: 'wait', until: 10 * MIN });
  assert.deepEqual(warmNext(one, 5 * MIN, 7 * MIN), { do: 'wait', until: 7 * MIN });
  assert.deepEqual(warmNext(one, 7 * MIN, 7 * MIN), { do: 'cutover' });
  assert.deepEqual(warmNext(one, 10 * MIN, undefined), { do: 'precopy', full: false });
  assert.equal(warmNext({ ...one, consecutiveFailures: 5 }, 0, undefined).do, 'fail');
  assert.equal(warmNext({ ...one, consecutiveFailures: 2 }, 0, undefined, 2).do, 'fail');
  assert.equal(cutoverTime({ cutover: '2026-12-07T03:00:00Z' }), Date.parse('2026-12-07T03:00:00Z'));
  assert.equal(cutoverTime({ cutover: 'soon' }), undefined);
  assert.equal(cutoverTime(undefined), undefined);
});

interface Fake {
  ops: WarmOps;
  calls: string[];
  clock: { t: number };
  fail: { next: number; noBitmap: boolean };
}

function fake(disks: WarmDisk[]): Fake {
  const calls: string[] = [];
  const clock = { t: 0 };
  const fail = { next: 0, noBitmap: false };
  let n = 0;
  return {
    calls,
    clock,
    fail,
    ops: {
      initialize: async () => (calls.push('initialize'), disks),
      allocate: async (d) => void calls.push(`allocate ${d.claim}`),
      copy: async (d, mode, progress) => {
        clock.t += 1000; // a round takes a second
        if (fail.noBitmap && mode === 'incremental') {
          fail.noBitmap = false;
          calls.push(`copy ${d.volume} incremental: no bitmap`);
          throw Object.assign(new Error('no bitmap'), { code: 'WarmNoBitmap' });
        }
        if (fail.next > 0) {
          fail.next--;
          calls.push(`copy ${d.volume} ${mode}: failed`);
          throw new Error('target gone');
        }
        calls.push(`copy ${d.volume} ${mode}`);
        progress(d.size, d.size);
        return { bytes: mode === 'full' ? d.size : 4096, deltaId: `${d.volume}-${++n}` };
      },
      quiesceSource: async () => void calls.push('quiesce'),
      stopSource: async () => void calls.push('stop source'),
      createTarget: async () => void calls.push('create target'),
      release: async () => void calls.push('release'),
      discard: async () => void calls.push('discard'),
    },
  };
}

const disks: WarmDisk[] = [
  { volume: 'root', size: 10_000_000, claim: 'vm-disk0' },
  { volume: 'data', size: 2_000_000, claim: 'vm-disk1' },
];

function status(): WarmVmStatus {
  return { id: 'ns/vm', name: 'vm', phase: 'Pending', pipeline: warmPipeline(disks) };
}

/** Runs with a fake sleep that advances the clock; `cutoverAt` may be changed by `onSleep` (a user setting it). */
function runner(
  f: Fake,
  s: WarmVmStatus,
  opts: { cutoverAt?: number; intervalMs?: number; onSleep?: (t: number) => number | undefined; checkpoint?: () => void },
) {
  let cutoverAt = opts.cutoverAt;
  let writes = 0;
  const run = new WarmRun(s, f.ops, {
    precopyIntervalMs: opts.intervalMs ?? 10 * MIN,
    cutover: () => cutoverAt,
    write: async () => void writes++,
    checkpoint: opts.checkpoint ?? (() => undefined),
    now: () => f.clock.t,
    sleep: async (ms) => {
      f.clock.t += Math.max(ms, 1);
      cutoverAt = opts.onSleep?.(f.clock.t) ?? cutoverAt;
    },
  });
  return { run, writes: () => writes };
}

test('WarmRun: a full round, incremental rounds every interval, the cutover when its time is set and past', async () => {
  const f = fake(disks);
  const s = status();
  // The user sets the cutover after 25 minutes: rounds at 0 (full), ~10, ~20 min, then the cutover.
  const { run, writes } = runner(f, s, { onSleep: (t) => (t >= 25 * MIN ? t : undefined) });
  await run.run();
  assert.deepEqual(f.calls, [
    'initialize',
    'allocate vm-disk0',
    'allocate vm-disk1',
    'copy root full',
    'copy data full',
    'copy root incremental',
    'copy data incremental',
    'copy root incremental',
    'copy data incremental',
    'quiesce',
    'copy root incremental',
    'copy data incremental',
    'stop source',
    'create target',
    'release',
  ]);
  const w = s.warm!;
  assert.equal(w.successes, 3);
  assert.equal(w.failures, 0);
  assert.equal(w.precopies?.length, 4, '3 precopies and the cutover round');
  assert.deepEqual(
    w.precopies![0].deltas!.map((d) => d.disk),
    ['root', 'data'],
  );
  assert.ok(w.precopies!.every((p) => p.start && p.end && p.end >= p.start));
  const gap = Date.parse(w.precopies![2].start) - Date.parse(w.precopies![1].end!);
  assert.ok(gap >= 10 * MIN && gap < 11 * MIN, `rounds an interval apart (${gap} ms)`);
  assert.deepEqual(
    s.pipeline.map((p) => [p.name, p.phase]),
    [
      ['Initialize', 'Completed'],
      ['DiskAllocation', 'Completed'],
      ['DiskTransfer', 'Completed'],
      ['Cutover', 'Completed'],
      ['VirtualMachineCreation', 'Completed'],
    ],
  );
  const transfer = s.pipeline.find((p) => p.name === 'DiskTransfer')!;
  assert.deepEqual(
    transfer.tasks!.map((t) => [t.name, t.phase, t.progress.completed]),
    [
      ['vm-disk0', 'Completed', 10],
      ['vm-disk1', 'Completed', 2],
    ],
  );
  assert.ok(writes() > 5);
});

test('WarmRun: a cutover already past copies the full base first; failures are counted and retried; a lost bitmap goes full', async () => {
  const f = fake([disks[0]]);
  const s = status();
  s.pipeline = warmPipeline([disks[0]]);
  f.fail.next = 1;
  let round = 0;
  const { run } = runner(f, s, {
    cutoverAt: undefined,
    intervalMs: MIN,
    onSleep: (t) => {
      // After the second success, the source's QEMU "restarts" (its bitmap gone); the cutover comes after the 3rd.
      if (s.warm!.successes === 2 && round++ === 0) f.fail.noBitmap = true;
      return s.warm!.successes >= 3 ? t : undefined;
    },
  });
  await run.run();
  assert.deepEqual(f.calls, [
    'initialize',
    'allocate vm-disk0',
    'copy root full: failed',
    'copy root full',
    'copy root incremental',
    'copy root incremental: no bitmap',
    'copy root full',
    'quiesce',
    'copy root incremental',
    'stop source',
    'create target',
    'release',
  ]);
  assert.deepEqual(
    { ...s.warm!, precopies: undefined, nextPrecopyAt: undefined },
    {
      successes: 3,
      failures: 1,
      consecutiveFailures: 0,
      precopies: undefined,
      nextPrecopyAt: undefined,
    },
  );
  assert.equal(s.pipeline.find((p) => p.name === 'DiskTransfer')!.warning, undefined, 'a later success clears the warning');

  // The cutover time already past at the start: still the full copy first.
  const g = fake([disks[0]]);
  const t = status();
  t.pipeline = warmPipeline([disks[0]]);
  await runner(g, t, { cutoverAt: 0 }).run.run();
  assert.deepEqual(g.calls.slice(2), ['copy root full', 'quiesce', 'copy root incremental', 'stop source', 'create target', 'release']);
});

test('WarmRun: too many failed rounds fail the run in DiskTransfer; a cancel passes through, not counted', async () => {
  const f = fake([disks[0]]);
  const s = status();
  s.pipeline = warmPipeline([disks[0]]);
  f.fail.next = 100;
  const { run } = runner(f, s, { intervalMs: MIN });
  await assert.rejects(run.run(), /5 precopy rounds failed in a row/);
  assert.equal(run.current(), 'DiskTransfer');
  assert.equal(s.warm!.failures, 5);
  assert.ok(!f.calls.includes('quiesce'));
  assert.match(s.pipeline.find((p) => p.name === 'DiskTransfer')!.warning!.reasons[0], /target gone/);

  class Canceled extends Error {}
  const g = fake([disks[0]]);
  const t = status();
  t.pipeline = warmPipeline([disks[0]]);
  let checks = 0;
  const r = runner(g, t, {
    intervalMs: MIN,
    checkpoint: () => {
      if (++checks > 6) throw new Canceled('canceled');
    },
  });
  await assert.rejects(r.run.run(), Canceled);
  assert.equal(t.warm!.failures, 0);
  assert.ok(t.warm!.successes >= 1);
});

test('MigrationRun: a warm plan runs the warm pipeline through its hook; a failure releases the tracking and names the step', async () => {
  const { FORKLIFT_MIGRATIONS } = refs;
  const c = new InMemoryClient();
  const ns = 'fk';
  const { plan, migration } = await planAndMigration(c, ns, 'cluster', { warm: true });
  const vms: PlanVmResult[] = ['ok', 'bad'].map((n) => ({
    targetName: n,
    vm: { id: `id-${n}`, name: n, ovfId: n, source: 'src', osType: '', cpus: 1, memoryMB: 64, firmware: 'bios', disks: [], nics: [] },
  }));
  const fakes = { ok: fake([disks[0]]), bad: fake([disks[1]]) };
  fakes.bad.fail.next = 100;
  const run = new MigrationRun(
    c,
    {
      migration,
      plan,
      vms,
      initialize: async () => Object.assign(() => Promise.reject(new Error('cold path used')), {}),
      storage: () => undefined,
      network: () => undefined,
      warm: (v) => fakes[v.vm.name as 'ok' | 'bad'].ops,
      cutover: () => 0,
      precopyIntervalMs: 1,
    },
    () => undefined,
  );
  await run.run();
  const status = (await c.get(FORKLIFT_MIGRATIONS, 'm', { namespace: ns })).status as { vms: (VmStatus & WarmVmStatus)[] };
  const [ok, bad] = status.vms;
  assert.equal(ok.conditions?.[0].type, 'Succeeded');
  assert.deepEqual(
    ok.pipeline.map((p) => p.name),
    ['Initialize', 'DiskAllocation', 'DiskTransfer', 'Cutover', 'VirtualMachineCreation'],
  );
  assert.equal(ok.warm?.successes, 1);
  assert.deepEqual(fakes.ok.calls.slice(-5), ['quiesce', 'copy root incremental', 'stop source', 'create target', 'release']);
  assert.equal(bad.phase, 'Failed');
  assert.equal(bad.error?.phase, 'DiskTransfer');
  assert.equal(bad.warm?.failures, 5);
  assert.equal(fakes.bad.calls.at(-1), 'release');
});

test('MigrationRun: a cancelled warm VM is Canceled; its tracking and exports are released, then its target volumes discarded', async () => {
  const { FORKLIFT_MIGRATIONS } = refs;
  const c = new InMemoryClient();
  const ns = 'fkc';
  const { plan, migration } = await planAndMigration(c, ns, 'cluster', { warm: true });
  const vm: PlanVmResult = {
    targetName: 'w',
    vm: { id: 'id-w', name: 'w', ovfId: 'w', source: 'src', osType: '', cpus: 1, memoryMB: 64, firmware: 'bios', disks: [], nics: [] },
  };
  const f = fake([disks[0]]);
  let cancel = false;
  // The user cancels once the full copy is done (the run then waits for its next round).
  const ops: WarmOps = {
    ...f.ops,
    copy: async (d, mode, progress) => {
      const r = await f.ops.copy(d, mode, progress);
      cancel = true;
      return r;
    },
  };
  const run = new MigrationRun(
    c,
    {
      migration,
      plan,
      vms: [vm],
      initialize: async () => Object.assign(() => Promise.reject(new Error('cold path used')), {}),
      storage: () => undefined,
      network: () => undefined,
      warm: () => ops,
      canceled: () => cancel,
      precopyIntervalMs: 60 * MIN,
    },
    () => undefined,
  );
  await run.run();
  const st = (await c.get(FORKLIFT_MIGRATIONS, 'm', { namespace: ns })).status as { vms: (VmStatus & WarmVmStatus)[]; conditions: { type: string }[] };
  assert.equal(st.vms[0].conditions?.[0].type, 'Canceled');
  assert.equal(st.vms[0].pipeline.find((p) => p.name === 'DiskTransfer')?.phase, 'Canceled');
  assert.deepEqual(f.calls.slice(-2), ['release', 'discard'], 'exports end before their volumes go');
  assert.ok(!f.calls.includes('create target'));
  assert.ok(st.conditions.some((x) => x.type === 'Canceled'));
});

test('clusterWarmOps.discard deletes the DataVolumes, claims and PSK secrets the run made, and nothing else', async () => {
  const { DATAVOLUMES, PVCS, SECRETS, NAMESPACES } = refs;
  const c = new InMemoryClient();
  const ns = 'dst';
  await c.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  const labels = { 'forklift.konveyor.io/plan': 'p', 'forklift.konveyor.io/vm-id': 'vm-1' };
  const dv = (name: string, l: Record<string, string>) =>
    c.create(
      DATAVOLUMES,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataVolume',
        metadata: { name, namespace: ns, labels: l },
        spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '1Mi' } } } },
      },
      { namespace: ns },
    );
  await dv('moved-root', labels);
  await dv('moved-data', labels);
  await dv('other-vm-root', { ...labels, 'forklift.konveyor.io/vm-id': 'vm-2' });
  await dv('users-own', {});
  const id = 'uid-1/vm-1';
  await c.create(
    SECRETS,
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: forklift.warmPskSecretName(id, 'moved-root'), namespace: ns },
      type: forklift.WARM_PSK_SECRET_TYPE,
      data: {},
    },
    { namespace: ns },
  );
  const ops = clusterWarmOps(c, { namespace: 'src', name: 'vm', targetNamespace: ns, targetName: 'moved', id, labels });
  await ops.discard();
  await ops.discard(); // again: nothing left to delete, no error
  const left = (await c.list(DATAVOLUMES, { namespace: ns })).items.map((o) => o.metadata!.name).sort();
  assert.deepEqual(left, ['other-vm-root', 'users-own']);
  assert.deepEqual(
    (await c.list(SECRETS, { namespace: ns })).items.filter((o) => o.metadata!.name!.startsWith('vessel-warm-psk-')),
    [],
  );
  assert.ok((await c.list(PVCS, { namespace: ns })).items.every((o) => !o.metadata!.name!.startsWith('moved-')));
});
