/**
 * Dedicated CPUs across a live migration (docs/pinning.md "Live migration"), on a three-node dev
 * cluster whose nodes have CPU manager pools of one CPU on this 2-CPU host: node 0 reserves CPU 0
 * (its pool: CPU 1), node 1 reserves CPU 1 (its pool: CPU 0), node 2 reserves CPU 0 (its pool:
 * CPU 1; each node's manager counts only its own VMIs). A 1-vCPU dedicated tiny guest on the
 * shared pool runs pinned to its node's pool CPU; migrated, it holds the target's pool CPU
 * (annotation rewritten, the target record gone), its target vCPU thread is pinned to exactly that
 * CPU, its uptime goes on, one QEMU runs. Then two dedicated VMIs on two full nodes migrate at
 * once while one pool is free: only one is sent there, the other fails at once with the
 * scheduler's reason (the target choice counts migrations in flight). A scenario (CI skips it).
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
const NAME = 'pinned-mover';
const USER_DATA = `#!/bin/sh\n(while true; do echo "VESSEL-UPTIME $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &\n`;
type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const skip = ((): string | false => {
  if (process.getuid?.() !== 0) return 'needs root (namespaces, taskset on QEMU)';
  return false;
})();

let c: TestCluster;
/** Node i's exclusive pool CPU (the other one is reserved). */
const POOL = ['1', '0', '1'];

before(async () => {
  if (skip) return;
  const online = (await readFile('/sys/devices/system/cpu/online', 'utf8')).trim();
  assert.notEqual(online, '0', 'needs two CPUs');
  // QEMU at the agents' priority: a guest confined to one CPU of a loaded host would starve at nice 10.
  c = await startCluster({ nodes: 3, reservedCpus: ['0', '1', '0'], qemuPriority: { nice: 0, batch: false, cgroups: false } });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});

after(async () => {
  if (!c) return;
  for (const n of [NAME, ...PAIR]) await c.client.delete(VM, n, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await c.close();
});

const PAIR = ['pinned-b', 'pinned-c'];
const vmi = async (name = NAME) => (await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined)) as Obj | undefined;
const dedicatedVm = (name: string) => {
  const vm = tinyVm(name, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }) as Obj;
  vm.spec.template.spec.domain.cpu = { cores: 1, dedicatedCpuPlacement: true };
  return vm;
};
const runningMigratable = (name: string) =>
  eventually(
    `${name} Running and live-migratable`,
    async () => {
      const o = await vmi(name);
      const lm = (o?.status?.conditions ?? []).find((x: Obj) => x.type === 'LiveMigratable');
      return o?.status?.phase === 'Running' && lm?.status === 'True' ? o : undefined;
    },
    300_000,
  );
const agentOf = (node: string) => c.nodes.agents.find((a) => a.nodeName === node)!;
const uptimes = (text: string) => [...text.matchAll(/VESSEL-UPTIME (\d+(?:\.\d+)?)/g)].map((m) => Number(m[1]));

/** The allowed CPUs of the QEMU's vCPU thread ("CPU 0/TCG" with debug-threads) on `node`. */
async function vcpuAffinity(node: string): Promise<string | undefined> {
  const dir = await runDirOf(agentOf(node).dataDir, ns, NAME);
  if (!dir) return undefined;
  const pid = Number((await readFile(join(dir, 'qemu.pid'), 'utf8').catch(() => '')).trim());
  if (!pid) return undefined;
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const comm = (await readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8').catch(() => '')).trim();
    if (!comm.startsWith('CPU 0/')) continue;
    return /^Cpus_allowed_list:\s*(.*)$/m.exec(await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1];
  }
  return undefined;
}

test('a dedicated VM migrates onto the target node’s own CPU: re-assigned, pinned there, the source’s CPU freed', { skip, timeout: 1_200_000 }, async () => {
  await c.client.create(VM, dedicatedVm(NAME), { namespace: ns });
  const running = await runningMigratable(NAME);
  const nodes = c.nodes.cluster.nodes.map((n) => n.name);
  const source = running.status.nodeName as string;
  const sourceCpu = POOL[nodes.indexOf(source)];
  assert.equal(running.metadata.annotations['vessel.io/dedicated-cpus'], sourceCpu);
  await eventually(`the vCPU thread pinned to ${sourceCpu} on ${source}`, async () => ((await vcpuAffinity(source)) === sourceCpu ? true : undefined), 60_000);
  await eventually(
    'the guest printing its uptime',
    async () => (uptimes(await serialLog(agentOf(source).dataDir, ns, NAME)).length ? true : undefined),
    600_000,
  );

  const t0 = Date.now();
  await c.client.create(
    VMIM,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name: 'pinned-1', namespace: ns }, spec: { vmiName: NAME } },
    { namespace: ns },
  );
  const done = await eventually(
    'the migration Succeeded or Failed',
    async () => {
      const s = ((await c.client.get(VMIM, 'pinned-1', { namespace: ns })).status ?? {}) as Obj;
      return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
    },
    600_000,
  );
  assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
  const took = Date.now() - t0;
  const target = done.migrationState.targetNode as string;
  const targetCpu = POOL[nodes.indexOf(target)];
  const after = await eventually(
    `the target's CPU ${targetCpu} recorded as the VMI's`,
    async () => {
      const o = await vmi();
      const a = o?.metadata?.annotations ?? {};
      return o?.status?.nodeName === target && a['vessel.io/dedicated-cpus'] === targetCpu && !a['vessel.io/migration-target-cpus'] ? o : undefined;
    },
    60_000,
  );
  assert.equal(after.metadata.annotations['vessel.io/emulator-cpus'], undefined);
  const pinnedAt = await eventually(
    `the vCPU thread pinned to ${targetCpu} on ${target}`,
    async () => ((await vcpuAffinity(target)) === targetCpu ? Date.now() : undefined),
    60_000,
  );
  // The guest did not reboot: the target's serial log goes on.
  const before = uptimes(await serialLog(agentOf(source).dataDir, ns, NAME)).at(-1) ?? 0;
  await eventually(
    "the guest's uptime going on on the target",
    async () => {
      const u = uptimes(await serialLog(agentOf(target).dataDir, ns, NAME));
      return u.length >= 2 && u[0] >= before - 2 ? true : undefined;
    },
    180_000,
  );
  // The source's QEMU is gone (its CPU is back in the source's shared pool).
  await eventually('the source QEMU gone', async () => ((await vcpuAffinity(source)) === undefined ? true : undefined), 60_000);
  console.log(
    `figures: dedicated migration ${source} (CPU ${sourceCpu}) → ${target} (CPU ${targetCpu}): ${took} ms create → Succeeded; ` +
      `vCPU pinned on the target ${pinnedAt - t0 - took} ms after Succeeded was seen`,
  );
});

test('two dedicated VMIs migrating at once toward the one free pool: one is sent there, the other refused at once', { skip, timeout: 1_200_000 }, async () => {
  // Two more dedicated VMIs fill the two pools the first one leaves free; then it goes, freeing its node.
  for (const n of PAIR) await c.client.create(VM, dedicatedVm(n), { namespace: ns });
  const placed = await Promise.all(PAIR.map((n) => runningMigratable(n)));
  const first = (await vmi())!.status.nodeName as string;
  const taken = placed.map((o) => o.status.nodeName as string);
  assert.equal(new Set([first, ...taken]).size, 3, `one dedicated VMI per node: ${first} ${taken}`);
  await c.client.delete(VM, NAME, { namespace: ns });
  await eventually(`${NAME} gone`, async () => ((await vmi()) ? undefined : true), 120_000);
  // Both at once: each may go only to the freed node (the other's node is full).
  const t0 = Date.now();
  for (const [i, n] of PAIR.entries())
    await c.client.create(
      VMIM,
      { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name: `pair-${i}`, namespace: ns }, spec: { vmiName: n } },
      { namespace: ns },
    );
  const status = async (i: number) => ((await c.client.get(VMIM, `pair-${i}`, { namespace: ns })).status ?? {}) as Obj;
  const ends = await eventually(
    'one migration sent to the freed node, the other refused',
    async () => {
      const st = [await status(0), await status(1)];
      return st.some((s) => s.phase === 'Failed') && st.some((s) => s.migrationState?.targetNode) ? st : undefined;
    },
    300_000,
  );
  const refusedAt = Date.now() - t0;
  const refused = ends.find((s) => s.phase === 'Failed')!;
  const sent = ends.find((s) => s !== refused)!;
  assert.equal(sent.migrationState.targetNode, first, 'the one sent goes to the freed node');
  // Refused by the controller (no target named), not by the target agent's CPU manager.
  assert.equal(refused.migrationState.targetNode, undefined, JSON.stringify(refused));
  assert.match(refused.migrationState.failureReason, /0\/2 nodes are available: 2 Insufficient vessel\.io\/dedicated-cpus/);
  const done = await eventually(
    'the sent one Succeeded',
    async () => {
      const s = await status(ends.indexOf(sent));
      return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
    },
    600_000,
  );
  assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
  console.log(`figures: two dedicated migrations toward one free pool: one refused ${refusedAt} ms after creation; the other Succeeded`);
});
