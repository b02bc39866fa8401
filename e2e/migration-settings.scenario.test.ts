/**
 * Migration settings, the long cases (a scenario: CI skips it; `bash scripts/test.sh
 * --scenarios`): the guest of e2e/migration-settings.e2e.test.ts dirtying its memory, on a
 * two-node dev cluster. With post-copy allowed, the completion timeout switches a migration
 * that cannot converge to post-copy and it succeeds (mode PostCopy, the guest going on at the
 * target, one QEMU); without it, a progress timeout cancels one whose remaining memory stops
 * going down.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const KV: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'kubevirts', namespaced: true };
const ns = 'default';
const NAME = 'busy';
type Obj = Record<string, unknown>;
type MigrationState = {
  sourceNode?: string;
  targetNode?: string;
  completed?: boolean;
  failed?: boolean;
  failureReason?: string;
  mode?: string;
  migrationPolicyName?: string;
  migrationConfiguration?: Obj;
};
type VmiStatus = { phase?: string; nodeName?: string; migrationState?: MigrationState; conditions?: { type: string; status: string }[] };

let c: TestCluster;

/**
 * Rewrites 24 MiB of a tmpfs forever with 1 MiB of random bytes (not zero pages, which QEMU
 * sends for nearly nothing; copied, as urandom itself is slow under TCG), counting the rounds.
 */
const USER_DATA = [
  '#!/bin/sh',
  'mkdir -p /mnt/dirty && mount -t tmpfs -o size=40m tmpfs /mnt/dirty',
  'dd if=/dev/urandom of=/mnt/dirty/r bs=64k count=16 2>/dev/null',
  '(n=0; while true; do i=0; while [ $i -lt 24 ]; do dd if=/mnt/dirty/r of=/mnt/dirty/x bs=1024k count=1 seek=$i conv=notrunc 2>/dev/null; i=$((i+1)); done; n=$((n+1)); echo "VESSEL-DIRTY $n"; done) &',
  '',
].join('\n');

const vmiStatus = async () => ((await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const agentOf = (name: string) => c.nodes.agents.find((a) => a.nodeName === name)!;
const dirtyRounds = async (node: string) => [...(await serialLog(agentOf(node).dataDir, ns, NAME)).matchAll(/VESSEL-DIRTY (\d+)/g)].length;

async function qemus(): Promise<number> {
  let n = 0;
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-system') && cmd.includes(c.dataDir)) n++;
  }
  return n;
}

async function migrateAndWait(name: string): Promise<{ phase: string; migrationState: MigrationState }> {
  await c.client.create(
    VMIM,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
    { namespace: ns },
  );
  return eventually(
    `${name} finished`,
    async () => {
      const s = ((await c.client.get(VMIM, name, { namespace: ns })).status ?? {}) as { phase?: string; migrationState?: MigrationState };
      return s.phase === 'Succeeded' || s.phase === 'Failed' ? { phase: s.phase, migrationState: s.migrationState ?? {} } : undefined;
    },
    300_000,
    300,
  );
}

before(async () => {
  c = await startCluster({ nodes: 2 });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
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
  // 1 MiB/s cannot keep up; 40 s/GiB × 128 MiB: 5 s, then post-copy.
  await settings({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 40, allowPostCopy: true });
  await c.client.create(VM, tinyVm(NAME, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }), {
    namespace: ns,
  });
  const running = await eventually(
    'the VMI Running and live-migratable',
    async () => {
      const s = await vmiStatus();
      return s.phase === 'Running' && s.conditions?.find((x) => x.type === 'LiveMigratable')?.status === 'True' ? s : undefined;
    },
    300_000,
  );
  const source = running.nodeName!;
  await eventually('the guest dirtying its memory', async () => ((await dirtyRounds(source)) >= 1 ? true : undefined), 600_000, 500).catch(
    async (e: unknown) => {
      console.log(`# serial log of ${NAME} on ${source}:\n${(await serialLog(agentOf(source).dataDir, ns, NAME)).slice(-2000)}`);
      throw e;
    },
  );
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
