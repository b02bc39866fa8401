/**
 * HA scenarios (minutes; `bash scripts/test.sh --scenarios`), on a three-node dev cluster with one
 * tiny guest on the shared pool:
 *  1. node death → VM Running elsewhere, measured three times (the node killed, then revived);
 *  2. a control-plane outage every node sees (the fabric's outside address, the control plane's
 *     side, gone; peers reachable) for longer than any deadline: no agent fences, nothing is
 *     restarted, the same QEMU runs on;
 *  3. an agent that dies alone (its QEMU left running, its node cut off, so it cannot fence):
 *     its watchdog (agent/watchdog.ts) kills the leftover before the control plane restarts
 *     the VM elsewhere, never two copies; the node back, it runs no copy.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const ns = 'default';
const NAME = 'ha-scenario';
type VmiStatus = { phase?: string; nodeName?: string; reason?: string; conditions?: { type: string; message?: string }[] };

let c: TestCluster;
const dead = new Set<number>();

const status = async () => ((await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const nodeIndex = (name: string) => c.nodes.cluster.nodes.findIndex((n) => n.name === name);
const runningElsewhere = (not: string, ms = 120_000) =>
  eventually(
    `Running on another node than ${not}`,
    async () => {
      const s = await status();
      return s.phase === 'Running' && s.nodeName && s.nodeName !== not ? s.nodeName : undefined;
    },
    ms,
    200,
  );

/** Per node: pids of the QEMUs of VM `uid`. */
async function copies(uid: string): Promise<Record<string, number[]>> {
  const out: Record<string, number[]> = {};
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
    if (!cmd.startsWith('qemu-system') || !cmd.includes(`/vms/${ns}/${uid}`)) continue;
    const node = c.nodes.cluster.nodes.find((n) => cmd.includes(join(c.dataDir, 'nodes', n.name) + '/'));
    if (node) (out[node.name] ??= []).push(Number(d));
  }
  return out;
}

function ipFabric(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('ip', ['-n', c.nodes.cluster.fabricNetns, ...args], { stdio: 'ignore' });
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`ip ${args.join(' ')}: ${code}`))));
  });
}

before(async () => {
  c = await startCluster({ nodes: 3 });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
  await c.client.create(VM, tinyVm(NAME, { namespace: ns, storageClass: 'shared', terminationGracePeriodSeconds: 5 }), { namespace: ns });
  await eventually('Running', async () => ((await status()).phase === 'Running' ? true : undefined), 120_000);
});
after(async () => {
  if (!c) return;
  await ipFabric(['addr', 'add', `${c.nodes.cluster.outsideIp}/24`, 'dev', 'fabric']).catch(() => undefined);
  for (const i of c.nodes.cluster.nodes.keys()) await c.nodes.setLink(i, true).catch(() => undefined);
  for (const i of dead) await c.nodes.reviveNode(i).catch((e: Error) => console.error(`reviving node ${i}: ${e.message}`));
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await c.close();
});

test('node death → VM Running elsewhere, three times', async () => {
  const seconds: number[] = [];
  for (let round = 0; round < 3; round++) {
    const from = (await status()).nodeName!;
    const t0 = Date.now();
    await c.nodes.killNode(nodeIndex(from));
    dead.add(nodeIndex(from));
    const to = await runningElsewhere(from);
    seconds.push((Date.now() - t0) / 1000);
    console.log(`# round ${round + 1}: ${from} killed → Running on ${to} after ${seconds.at(-1)!.toFixed(1)} s`);
    await c.nodes.reviveNode(nodeIndex(from));
    dead.delete(nodeIndex(from));
    // Back and Ready before the next round (the scheduler needs it as a target again).
    await eventually(`${from} Ready`, async () => {
      const n = await c.client.get({ group: '', version: 'v1', plural: 'nodes', namespaced: false }, from);
      return (n.status as { conditions?: { type: string; status: string }[] }).conditions?.find((x) => x.type === 'Ready')?.status === 'True'
        ? true
        : undefined;
    });
  }
  const sorted = [...seconds].sort((a, b) => a - b);
  console.log(`# node death → Running elsewhere: ${seconds.map((s) => s.toFixed(1)).join(' ')} s (median ${sorted[1].toFixed(1)} s)`);
  for (const s of seconds) assert.ok(s < 30, `${s} s`);
});

test('a control-plane outage every node sees stops nothing', async () => {
  const s0 = await status();
  const uid = (await c.client.get(VM, NAME, { namespace: ns })).metadata!.uid!;
  const before = await copies(uid);
  assert.equal(Object.keys(before).length, 1);
  await ipFabric(['addr', 'del', `${c.nodes.cluster.outsideIp}/24`, 'dev', 'fabric']);
  try {
    // grace 8 + fencing 8 + margin 4 = 20 s: well past it.
    await new Promise((r) => setTimeout(r, 35_000));
    assert.deepEqual(await copies(uid), before, 'the same QEMU runs on');
  } finally {
    await ipFabric(['addr', 'add', `${c.nodes.cluster.outsideIp}/24`, 'dev', 'fabric']);
  }
  await new Promise((r) => setTimeout(r, 10_000));
  const s1 = await status();
  assert.equal(s1.phase, 'Running');
  assert.equal(s1.nodeName, s0.nodeName);
  assert.deepEqual(await copies(uid), before);
});

test('an agent dead alone with its QEMU left, its node cut off: the watchdog kills the leftover before the VM starts elsewhere', async () => {
  const from = (await status()).nodeName!;
  const i = nodeIndex(from);
  const uid = (await c.client.get(VM, NAME, { namespace: ns })).metadata!.uid!;
  assert.equal((await copies(uid))[from]?.length, 1);
  let most = 0;
  let goneAt = 0;
  let elsewhereAt = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      const per = await copies(uid);
      most = Math.max(
        most,
        Object.values(per).reduce((a, b) => a + b.length, 0),
      );
      if (!per[from] && !goneAt) goneAt = Date.now();
      if (Object.keys(per).some((n) => n !== from) && !elsewhereAt) elsewhereAt = Date.now();
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  const t0 = Date.now();
  try {
    // The agent stops (as a crash would) and the node is cut off: only its watchdog is left.
    await c.nodes.agents[i].stop();
    dead.add(i);
    await c.nodes.setLink(i, false);
    const to = await runningElsewhere(from, 180_000);
    await eventually('a QEMU elsewhere seen', async () => (elsewhereAt ? true : undefined), 10_000);
    console.log(
      `# agent dead and node cut off: leftover killed after ${((goneAt - t0) / 1000).toFixed(1)} s, the VM's QEMU on ${to} after ${((elsewhereAt - t0) / 1000).toFixed(1)} s`,
    );
    assert.ok(goneAt > 0 && goneAt < elsewhereAt, 'the leftover was killed before the VM started elsewhere');
    await c.nodes.setLink(i, true);
    await c.nodes.reviveNode(i);
    dead.delete(i);
    await new Promise((r) => setTimeout(r, 5000));
  } finally {
    polling = false;
    await poll;
  }
  assert.equal(most, 1, 'never two copies');
  const now = await copies(uid);
  assert.deepEqual(Object.keys(now), [(await status()).nodeName]);
});
