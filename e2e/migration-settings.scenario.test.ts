/**
 * Migration settings, the long cases (a scenario: CI skips it; `bash scripts/test.sh
 * --scenarios`): the guest of e2e/migration-settings.e2e.test.ts dirtying its memory, on a
 * two-node dev cluster. With post-copy allowed, the completion timeout switches a migration
 * that cannot converge to post-copy and it succeeds (mode PostCopy, the guest going on at the
 * target, one QEMU); without it, a progress timeout cancels one whose remaining memory stops
 * going down. With allowWorkloadDisruption (no post-copy) the completion timeout pauses the guest
 * instead, the migration succeeds (mode Paused) and the target resumes the guest.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { eventually, type TestCluster } from './harness.ts';
import { DirtyGuestCluster, KV, NAME, ns, USER_DATA, VM, VMI, type Obj } from './migration-settings-fixture.ts';
import { tinyVm } from './tiny-vm.ts';

const g = new DirtyGuestCluster();
const { vmiStatus, dirtyRounds, qemus, migrateAndWait, runningAndDirtying } = g;
let c: TestCluster;

before(async () => {
  c = await g.start();
});
after(async () => {
  if (!c) return;
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

test('post-copy after the completion timeout, then a progress timeout', { timeout: 1_800_000 }, async () => {
  const settings = (migrations: Obj) => c.client.patch(KV, 'kubevirt', { spec: { configuration: { migrations } } }, { namespace: 'kubevirt' });
  // 1 MiB/s cannot keep up; 5 s/GiB × 128 MiB (one GiB, rounded up): 5 s, then post-copy.
  await settings({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 5, allowPostCopy: true });
  await c.client.create(VM, tinyVm(NAME, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }), {
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
    const settings = (migrations: Obj) => c.client.patch(KV, 'kubevirt', { spec: { configuration: { migrations } } }, { namespace: 'kubevirt' });
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
      await c.client.create(
        VM,
        tinyVm(NAME, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }),
        {
          namespace: ns,
        },
      );
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
