/**
 * Migration settings end to end (docs/migration.md "Settings") on a two-node dev cluster, one
 * tiny guest on the shared pool that dirties its memory all the time (urandom into a tmpfs).
 * The KubeVirt object set to a tiny bandwidth and a short completion timeout makes its migration
 * fail with the timeout's reason, the guest still running on its node, one QEMU; then a
 * MigrationPolicy matching its label (auto-converge, no bandwidth limit, a longer timeout) lets
 * the next migration succeed, the VMI naming the policy.
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
const POLICY: ResourceRef = { group: 'migrations.kubevirt.io', version: 'v1alpha1', plural: 'migrationpolicies', namespaced: false };
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
  await c.client.delete(POLICY, 'busy-vms').catch(() => undefined);
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

test(
  'KubeVirt settings: a tiny bandwidth and short completion timeout fail the migration; a MigrationPolicy lets it through',
  { timeout: 900_000 },
  async () => {
    // The server made kubevirt/kubevirt at its first start.
    const kv = await c.client.get(KV, 'kubevirt', { namespace: 'kubevirt' });
    assert.equal(kv.kind, 'KubeVirt');
    // Bad settings are refused with the field named, and change nothing.
    await assert.rejects(
      c.client.patch(KV, 'kubevirt', { spec: { configuration: { migrations: { completionTimeoutPerGiB: 0 } } } }, { namespace: 'kubevirt' }),
      (e: Error) => /spec\.configuration\.migrations\.completionTimeoutPerGiB/.test(e.message),
    );
    // 128 MiB guest × 40 s/GiB: 5 s; 1 MiB/s cannot keep up with the guest's writes.
    await c.client.patch(
      KV,
      'kubevirt',
      { spec: { configuration: { migrations: { bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 40 } } } },
      { namespace: 'kubevirt' },
    );

    await c.client.create(
      VM,
      tinyVm(NAME, {
        namespace: ns,
        binding: 'bridge',
        userData: USER_DATA,
        storageClass: 'shared',
        terminationGracePeriodSeconds: 5,
        labels: { workload: 'busy' },
      }),
      { namespace: ns },
    );
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
    const failed = await migrateAndWait('slow');
    const failSecs = (Date.now() - t0) / 1000;
    assert.equal(failed.phase, 'Failed', JSON.stringify(failed));
    assert.match(failed.migrationState.failureReason ?? '', /completion timeout: not done within 5\.0 s/);
    assert.equal(failed.migrationState.migrationConfiguration?.bandwidthPerMigration, '1Mi');
    assert.equal(failed.migrationState.migrationPolicyName, undefined);
    const after1 = await vmiStatus();
    assert.equal(after1.phase, 'Running');
    assert.equal(after1.nodeName, source);
    const rounds = await dirtyRounds(source);
    await eventually('the guest still writing on its node', async () => ((await dirtyRounds(source)) > rounds ? true : undefined), 120_000, 500);
    await eventually('one QEMU (the target ended)', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);

    // A policy for the VMI's label: auto-converge, no bandwidth limit, 800 s/GiB (100 s).
    await c.client.create(POLICY, {
      apiVersion: 'migrations.kubevirt.io/v1alpha1',
      kind: 'MigrationPolicy',
      metadata: { name: 'busy-vms' },
      spec: {
        selectors: { virtualMachineInstanceSelector: { workload: 'busy' } },
        allowAutoConverge: true,
        bandwidthPerMigration: '0',
        completionTimeoutPerGiB: 800,
      },
    });
    const t1 = Date.now();
    const ok = await migrateAndWait('converging');
    const okSecs = (Date.now() - t1) / 1000;
    assert.equal(ok.phase, 'Succeeded', JSON.stringify(ok));
    assert.equal(ok.migrationState.migrationPolicyName, 'busy-vms');
    assert.equal(ok.migrationState.migrationConfiguration?.allowAutoConverge, true);
    const moved = await vmiStatus();
    assert.notEqual(moved.nodeName, source);
    await eventually('the guest writing on its new node', async () => ((await dirtyRounds(moved.nodeName!)) > 0 ? true : undefined), 120_000, 500);
    await eventually('one QEMU', async () => ((await qemus()) === 1 ? true : undefined), 60_000, 300);
    console.log(`# figures: timed-out migration ${failSecs.toFixed(1)} s from creation to Failed; auto-converge migration ${okSecs.toFixed(1)} s to Succeeded`);
  },
);
