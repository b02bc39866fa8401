/**
 * HA end to end on a three-node dev cluster (real QEMU under TCG, namespaces, VXLAN): a node
 * whose every process dies (agent, QEMUs) has its shared-pool VM Running on another node within
 * 30 s (the measured seconds printed), while a VM with a local-pool disk stays there and says
 * why; QEMU's image lock refuses a second read-write opener of the running VM's disk; the node
 * back runs no second copy. Then the
 * VM's new node is cut off from the fabric while its QEMU runs: it fences itself (its QEMU gone)
 * before the VM starts on the third node, two copies never run (both polled every 200 ms), and
 * once its link is back the node says it fenced itself (SelfFenced) and runs no copy.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const NODE: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const ns = 'default';
type Condition = { type: string; status: string; reason?: string; message?: string };
type VmiStatus = { phase?: string; nodeName?: string; conditions?: Condition[] };

let c: TestCluster;

const vmi = async (name: string) => c.client.get(VMI, name, { namespace: ns }).catch(() => undefined);
const statusOf = (o: KubeObject | undefined) => (o?.status ?? {}) as VmiStatus;
const nodeIndex = (name: string) => c.nodes.cluster.nodes.findIndex((n) => n.name === name);

/** Running on a node other than `not`: that node's name. */
const runningElsewhere = (name: string, not: string) =>
  eventually(
    `${name} Running on another node than ${not}`,
    async () => {
      const s = statusOf(await vmi(name));
      return s.phase === 'Running' && s.nodeName && s.nodeName !== not ? s.nodeName : undefined;
    },
    90_000,
    200,
  );

/** Per node: the QEMUs running VM `uid` (their command line names the node's data directory and the VM's run directory). */
async function copies(uid: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
    if (!cmd.startsWith('qemu-system') || !cmd.includes(`/vms/${ns}/${uid}`)) continue;
    const node = c.nodes.cluster.nodes.find((n) => cmd.includes(join(c.dataDir, 'nodes', n.name) + '/'));
    if (node) out[node.name] = (out[node.name] ?? 0) + 1;
  }
  return out;
}

before(async () => {
  c = await startCluster({ nodes: 3 });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  if (!c) return;
  // A dead node comes back so its agent can let go of what it ran.
  for (const [i, n] of c.nodes.cluster.nodes.entries()) {
    await c.nodes.setLink(i, true).catch(() => undefined);
    await c.client.patch(NODE, n.name, { spec: { unschedulable: null } }).catch(() => undefined);
  }
  if (deadNode) await c.nodes.reviveNode(nodeIndex(deadNode)).catch((e: Error) => console.error(`reviving ${deadNode}: ${e.message}`));
  for (const name of ['ha-shared', 'ha-local']) await c.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
  await eventually('the VMIs gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await c.close();
});

let deadNode = '';

test('a dead node: its shared-pool VM Running elsewhere within 30 s, its local-pool VM stays and says why; the disk lock refuses a second QEMU', async () => {
  // The local-pool VM first (its blank disk lives where it lands), then the shared one on the same
  // node: the others cordoned meanwhile, so the shared VM is free to move later.
  await c.client.create(
    DV,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'ha-local-disk', namespace: ns },
      spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '64Mi' } } } },
    },
    { namespace: ns },
  );
  await c.client.create(VM, tinyVm('ha-local', { namespace: ns, dataVolume: 'ha-local-disk', terminationGracePeriodSeconds: 1 }), { namespace: ns });
  const first = await eventually(
    'ha-local Running',
    async () => {
      const v = await vmi('ha-local');
      if (statusOf(v).phase === 'Running') return statusOf(v).nodeName;
      throw new Error(`VMI ${JSON.stringify(v?.status ?? 'none')}; VM ${JSON.stringify((await c.client.get(VM, 'ha-local', { namespace: ns })).status)}`);
    },
    120_000,
  );
  const others = c.nodes.cluster.nodes.filter((n) => n.name !== first).map((n) => n.name);
  for (const n of others) await c.client.patch(NODE, n, { spec: { unschedulable: true } });
  await c.client.create(VM, tinyVm('ha-shared', { namespace: ns, storageClass: 'shared', terminationGracePeriodSeconds: 5 }), { namespace: ns });
  await eventually('ha-shared Running', async () => (statusOf(await vmi('ha-shared')).phase === 'Running' ? true : undefined), 120_000);
  for (const n of others) await c.client.patch(NODE, n, { spec: { unschedulable: null } });
  assert.equal(statusOf(await vmi('ha-shared')).nodeName, first);
  // Failover reads where the claims are (nodeLocalClaims): ha-local's root is on the node-local pool.
  assert.equal((await c.client.get(PVC, 'ha-local-disk', { namespace: ns })).metadata!.annotations!['vessel.io/pool'], 'local');

  const t0 = Date.now();
  await c.nodes.killNode(nodeIndex(first));
  deadNode = first;
  const second = await runningElsewhere('ha-shared', first);
  const seconds = (Date.now() - t0) / 1000;
  console.log(`# node ${first} killed: ha-shared Running on ${second} after ${seconds.toFixed(1)} s`);
  assert.ok(seconds < 30, `node death → Running elsewhere took ${seconds} s`);

  const local = await eventually('ha-local says why it stays', async () => {
    const v = await vmi('ha-local');
    return statusOf(v).conditions?.find((x) => x.type === 'NodeFailover') ? v : undefined;
  });
  const why = statusOf(local).conditions!.find((x) => x.type === 'NodeFailover')!;
  assert.equal(why.reason, 'NodeLocalDisks');
  assert.match(why.message ?? '', new RegExp(`node ${first} is dead`));
  assert.equal(statusOf(local).nodeName, first);
  assert.equal(statusOf(local).phase, 'Running', 'left where it was');

  // QEMU's image lock, the last line: a second QEMU on the running VM's disk is refused.
  const pvc = await c.client.get(PVC, 'ha-shared-root', { namespace: ns });
  const disk = join(c.dataDir, 'pools', 'shared', pvc.metadata!.annotations!['vessel.io/volume-path']);
  const second2 = await run(
    'qemu-system-x86_64',
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-S', '-blockdev', `driver=qcow2,node-name=d0,file.driver=file,file.filename=${disk}`],
    { timeoutMs: 20_000 },
  );
  assert.notEqual(second2.code, 0, 'the second QEMU must not start');
  assert.match(second2.err, /lock/i, second2.err);

  // The dead node comes back (a failover needs at least half the nodes posting, so the next test
  // needs it): it runs no copy of the VM that moved.
  const vmUid = (await c.client.get(VM, 'ha-shared', { namespace: ns })).metadata!.uid!;
  await c.nodes.reviveNode(nodeIndex(first));
  deadNode = '';
  await eventually(`${first} Ready`, async () =>
    ((await c.client.get(NODE, first)).status as { conditions?: Condition[] }).conditions?.find((x) => x.type === 'Ready')?.status === 'True'
      ? true
      : undefined,
  );
  assert.deepEqual(await copies(vmUid), { [second]: 1 });
});

test('a node cut off from the fabric fences itself before its VM starts elsewhere, never two copies; back, it says so', async () => {
  const before = statusOf(await vmi('ha-shared'));
  const cut = before.nodeName!;
  const vm = await c.client.get(VM, 'ha-shared', { namespace: ns });
  const uid = vm.metadata!.uid!;
  assert.deepEqual(await copies(uid), { [cut]: 1 });
  let most = 0;
  let fencedAt = 0;
  let elsewhereAt = 0;
  let polling = true;
  const t0 = Date.now();
  const poll = (async () => {
    while (polling) {
      const per = await copies(uid);
      const total = Object.values(per).reduce((a, b) => a + b, 0);
      most = Math.max(most, total);
      if (!per[cut] && !fencedAt) fencedAt = Date.now();
      if (Object.keys(per).some((n) => n !== cut) && !elsewhereAt) elsewhereAt = Date.now();
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  try {
    await c.nodes.setLink(nodeIndex(cut), false);
    const third = await runningElsewhere('ha-shared', cut);
    await eventually('a QEMU elsewhere seen', async () => (elsewhereAt ? true : undefined), 10_000);
    console.log(
      `# node ${cut} cut off: its QEMU gone after ${((fencedAt - t0) / 1000).toFixed(1)} s, the VM's QEMU on ${third} after ${((elsewhereAt - t0) / 1000).toFixed(1)} s, Running there after ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    assert.ok(fencedAt > 0 && fencedAt < elsewhereAt, 'fenced before the VM started elsewhere');
    await c.nodes.setLink(nodeIndex(cut), true);
    const fenced = await eventually(
      `node ${cut} says it fenced itself`,
      async () => ((await c.client.get(NODE, cut)).status as { conditions?: Condition[] }).conditions?.find((x) => x.type === 'SelfFenced'),
      30_000,
    );
    assert.equal(fenced.status, 'True');
    assert.match(fenced.message ?? '', /killed this node's VMs/);
    await new Promise((r) => setTimeout(r, 3000));
  } finally {
    polling = false;
    await poll;
  }
  assert.equal(most, 1, 'never two copies');
  assert.deepEqual(await copies(uid), { [statusOf(await vmi('ha-shared')).nodeName!]: 1 });
});

test('an agent dead alone, its QEMU left: its watchdog kills the QEMU before the VM starts elsewhere, never two copies', async () => {
  const from = statusOf(await vmi('ha-shared')).nodeName!;
  const i = nodeIndex(from);
  const uid = (await c.client.get(VM, 'ha-shared', { namespace: ns })).metadata!.uid!;
  assert.deepEqual(await copies(uid), { [from]: 1 });
  const failoverAfter = Number((await c.client.get(NODE, from)).metadata!.annotations!['vessel.io/failover-after-seconds']);
  assert.ok(failoverAfter > 0, 'the control plane says when it fails the node over');
  let most = 0;
  let goneAt = 0;
  let elsewhereAt = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      const per = await copies(uid);
      most = Math.max(
        most,
        Object.values(per).reduce((a, b) => a + b, 0),
      );
      if (!per[from] && !goneAt) goneAt = Date.now();
      if (Object.keys(per).some((n) => n !== from) && !elsewhereAt) elsewhereAt = Date.now();
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  const t0 = Date.now();
  try {
    // The agent goes (as a crash would); its node's link and QEMU stay.
    await c.nodes.agents[i].stop();
    deadNode = from;
    const to = await runningElsewhere('ha-shared', from);
    await eventually('a QEMU elsewhere seen', async () => (elsewhereAt ? true : undefined), 10_000);
    console.log(
      `# agent of ${from} stopped: its QEMU killed by the watchdog after ${((goneAt - t0) / 1000).toFixed(1)} s, the VM's QEMU on ${to} after ${((elsewhereAt - t0) / 1000).toFixed(1)} s (failover after ${failoverAfter} s)`,
    );
    assert.ok(goneAt > 0 && goneAt < elsewhereAt, 'killed before the VM started elsewhere');
    const log = await readFile(join(c.dataDir, 'nodes', from, 'watchdog', 'watchdog.log'), 'utf8');
    assert.match(log, /killed 1 QEMU/);
  } finally {
    polling = false;
    await poll;
  }
  assert.equal(most, 1, 'never two copies');
});
