/**
 * NetworkPolicy end to end on a two-node dev cluster (real namespaces, bridges, VXLAN, nftables,
 * QEMU): a tiny guest `web` in namespace b on node B, a tiny guest `client` in namespace a on
 * node A whose user data probes web's HTTP (80) and TCP (8080) every second and prints the outcome
 * on its serial console. A default-deny ingress policy in b cuts a off; an allow rule for TCP 80
 * from namespace a opens exactly that port; the node itself still reaches its VM. Then web
 * live-migrates to node A under both policies: node A's rules for it are in place when the
 * target says it is ready, and right after Succeeded 80 is open and 8080 shut as before.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { IPADDRESSES, runInNode, type DevNode } from '@vessel/agent';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { tapName } from '../packages/agent/network/taps.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { serialLog } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NS: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const NETPOL: ResourceRef = { group: 'networking.k8s.io', version: 'v1', plural: 'networkpolicies', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
type Obj = Record<string, unknown>;

let c: TestCluster;
let nodeA: DevNode;
let nodeB: DevNode;
let webIp: string;

/**
 * `place`: `pinned` (nodeSelector) or `preferred` (preferred node affinity: starts on `node`,
 * and may migrate elsewhere, which a nodeSelector would refuse).
 */
function bridgedVm(
  name: string,
  namespace: string,
  node: string,
  labels: Record<string, string>,
  userData?: string,
  place: 'pinned' | 'preferred' = 'pinned',
): Obj {
  const cloudInit = userData
    ? { disks: [{ name: 'cloudinit', disk: { bus: 'virtio' } }], volumes: [{ name: 'cloudinit', cloudInitNoCloud: { userData } }] }
    : { disks: [], volumes: [] };
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace },
    spec: {
      runStrategy: 'Always',
      template: {
        metadata: { labels },
        spec: {
          terminationGracePeriodSeconds: 5,
          ...(place === 'pinned'
            ? { nodeSelector: { 'kubernetes.io/hostname': node } }
            : {
                affinity: {
                  nodeAffinity: {
                    preferredDuringSchedulingIgnoredDuringExecution: [
                      { weight: 100, preference: { matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [node] }] } },
                    ],
                  },
                },
              }),
          domain: {
            resources: { requests: { memory: '128Mi' } },
            devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }, ...cloudInit.disks], interfaces: [{ name: 'default', bridge: {} }] },
          },
          networks: [{ name: 'default', pod: {} }],
          volumes: [{ name: 'root', dataVolume: { name: `${name}-root` } }, ...cloudInit.volumes],
        },
      },
      dataVolumeTemplates: [
        {
          metadata: { name: `${name}-root` },
          spec: {
            sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' },
            storage: { storageClassName: 'shared', resources: { requests: { storage: '1Gi' } } },
          },
        },
      ],
    },
  };
}

/** The client's probe lines, `VESSEL-PROBE <n> 80=<ok|no> 8080=<ok|no>`, in order. */
async function probes(): Promise<{ n: number; p80: boolean; p8080: boolean }[]> {
  const log = await serialLog(c.nodes.agents.find((a) => a.nodeName === nodeA.name)!.dataDir, 'a', 'client');
  return [...log.matchAll(/VESSEL-PROBE (\d+) 80=(ok|no) 8080=(ok|no)/g)].map((m) => ({ n: Number(m[1]), p80: m[2] === 'ok', p8080: m[3] === 'ok' }));
}

/** Waits until three probes in a row, all made after this call, give the expected outcome. */
async function expectProbes(what: string, p80: boolean, p8080: boolean, timeoutMs = 120_000): Promise<void> {
  const from = (await probes()).at(-1)?.n ?? -1;
  await eventually(
    what,
    async () => {
      const fresh = (await probes()).filter((p) => p.n > from + 1); // the probe running at the change may have raced it
      const last = fresh.slice(-3);
      return last.length === 3 && last.every((p) => p.p80 === p80 && p.p8080 === p8080) ? true : undefined;
    },
    timeoutMs,
    1000,
  );
}

before(async () => {
  c = await startCluster({ nodes: 2 });
  [nodeA, nodeB] = c.nodes.cluster.nodes;
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
  for (const name of ['a', 'b']) await c.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
});
after(async () => {
  if (!c) return;
  for (const ns of ['a', 'b']) {
    for (const vm of (await c.client.list(VM, { namespace: ns }).catch(() => ({ items: [] as KubeObject[] }))).items)
      await c.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  }
  for (const ns of ['a', 'b'])
    await eventually(`VMIs in ${ns} gone`, async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
      () => undefined,
    );
  for (const ns of ['a', 'b']) await c.client.delete(NS, ns).catch(() => undefined);
  await c.close();
});

test('both guests run; without a policy the client reaches web on 80 and 8080', async () => {
  await c.client.create(VM, bridgedVm('web', 'b', nodeB.name, { app: 'web' }, undefined, 'preferred'), { namespace: 'b' });
  webIp = await eventually(
    "IPAM's address for b/web",
    async () =>
      (await c.client.list(IPADDRESSES)).items.find((o) => {
        const p = (o.spec as { parentRef?: Obj }).parentRef ?? {};
        return p.resource === 'virtualmachines' && p.namespace === 'b' && p.name === 'web';
      })?.metadata?.name,
    30_000,
  );
  // busybox nc: -w bounds the connect, so a dropped SYN reads as "no" within 2 s; a probe ends
  // in 1-5 s, and expectProbes waits for three fresh ones.
  const userData = `#!/bin/sh\n(i=0; while true; do i=$((i+1)); a=no; b=no; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${webIp} 80 2>/dev/null | grep -q counter= && a=ok; nc -w 2 ${webIp} 8080 </dev/null 2>/dev/null | grep -q counter= && b=ok; echo "VESSEL-PROBE $i 80=$a 8080=$b"; sleep 1; done) &\n`;
  await c.client.create(VM, bridgedVm('client', 'a', nodeA.name, { app: 'client' }, userData), { namespace: 'a' });
  for (const [ns, name] of [
    ['b', 'web'],
    ['a', 'client'],
  ]) {
    await eventually(
      `${ns}/${name} Running`,
      async () =>
        ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status as { phase?: string } | undefined)?.phase === 'Running'
          ? true
          : undefined,
      240_000,
    );
  }
  await expectProbes('the client reaching web on 80 and 8080', true, true);
});

test("a default-deny ingress policy in b: the client in a reaches neither port; web's own node still does", async () => {
  await c.client.create(
    NETPOL,
    {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'default-deny', namespace: 'b' },
      spec: { podSelector: {}, policyTypes: ['Ingress'] },
    },
    { namespace: 'b' },
  );
  await expectProbes('the client cut off from web', false, false);
  const curl = await runInNode(nodeB, ['curl', '-sS', '--max-time', '5', `http://${webIp}/`]);
  assert.match(curl.stdout, /counter=/, 'node B reaches its own VM: host traffic is not isolated');
  const other = await runInNode(nodeA, ['curl', '-sS', '--max-time', '3', `http://${webIp}/`]);
  assert.notEqual(other.code, 0, 'node A is another host: to web it is a source like any other');
});

test('an allow rule for TCP 80 from namespace a opens exactly that port', async () => {
  await c.client.create(
    NETPOL,
    {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'web-from-a', namespace: 'b' },
      spec: {
        podSelector: { matchLabels: { app: 'web' } },
        ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'a' } } }], ports: [{ protocol: 'TCP', port: 80 }] }],
      },
    },
    { namespace: 'b' },
  );
  await expectProbes('the client reaching web on 80 only', true, false);
});

test("web live-migrates to the client's node under both policies: its rules are there at TargetReady, 80 stays open, 8080 and node B stay shut", async () => {
  const t0 = Date.now();
  const vmiNode = async () => String(((await c.client.get(VMI, 'web', { namespace: 'b' })).status as { nodeName?: string }).nodeName);
  assert.equal(await vmiNode(), nodeB.name, 'web starts on node B (preferred affinity)');
  const chainOfWeb = `chain in_${tapName('b', 'web')} {`;
  const table = async (node: DevNode) => (await runInNode(node, ['nft', 'list', 'table', 'bridge', 'vessel_policy'])).stdout;
  const from = (await probes()).at(-1)?.n ?? 0;
  await c.client.create(
    VMIM,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceMigration',
      metadata: { name: 'web-move', namespace: 'b', annotations: { 'vessel.io/migration-target-node': nodeA.name } },
      spec: { vmiName: 'web' },
    },
    { namespace: 'b' },
  );
  // TargetReady = the target published its address; the guest can arrive only after that. The
  // target waits for its node's table to cover web first, so the chain must be there now.
  type Ms = { targetNodeAddress?: string; completed?: boolean; failed?: boolean; failureReason?: string };
  const ready = await eventually(
    "web's migration at TargetReady",
    async () => {
      const ms = ((await c.client.get(VMI, 'web', { namespace: 'b' })).status as { migrationState?: Ms }).migrationState;
      return ms?.targetNodeAddress || ms?.failed ? { ms, tableA: await table(nodeA) } : undefined;
    },
    120_000,
    25,
  );
  assert.ok(!ready.ms.failed, `the migration failed: ${ready.ms.failureReason}`);
  assert.ok(
    ready.tableA.includes(chainOfWeb),
    `node A's table holds web's ingress chain at TargetReady (completed then: ${!!ready.ms.completed}):\n${ready.tableA}`,
  );
  type Vmim = { phase?: string; migrationState?: Ms & { startTimestamp?: string; endTimestamp?: string } };
  const done = await eventually(
    'the migration of web finished',
    async () => {
      const st = ((await c.client.get(VMIM, 'web-move', { namespace: 'b' })).status ?? {}) as Vmim;
      return st.phase === 'Succeeded' || st.phase === 'Failed' ? st : undefined;
    },
    120_000,
    100,
  );
  const tDone = Date.now();
  assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
  // Right after Succeeded (no wait): node B is now another host to web, node A its own node.
  const [fromB, fromA] = await Promise.all([
    runInNode(nodeB, ['curl', '-sS', '--max-time', '3', `http://${webIp}/`]),
    runInNode(nodeA, ['curl', '-sS', '--max-time', '5', `http://${webIp}/`]),
  ]);
  const checkedMs = Date.now() - tDone;
  assert.notEqual(fromB.code, 0, `node B reached web on node A right after the migration: ${fromB.stdout}`);
  assert.match(fromA.stdout, /counter=/, 'node A reaches its own VM');
  assert.equal(await vmiNode(), nodeA.name);
  assert.ok((await table(nodeA)).includes(chainOfWeb));
  await eventually("node B's table without web's chain", async () => (!(await table(nodeB)).includes(chainOfWeb) ? true : undefined), 10_000);
  // Longer than the others: a run at load ~20 timed out here at 120 s (its next test, 3 fresh probes, took 95 s vs 8 s at load ~10).
  await expectProbes('the client (now on the same node) reaching web on 80 only', true, false, 300_000).catch(async (e: Error) => {
    const links = await runInNode(nodeA, ['ip', '-br', 'link']);
    throw new Error(
      `${e.message}\nlast probes: ${JSON.stringify((await probes()).slice(-8))}\nnode A's table:\n${await table(nodeA)}\nnode A's links:\n${links.stdout}`,
    );
  });
  const leaked = (await probes()).filter((p) => p.n > from && p.p8080);
  assert.deepEqual(leaked, [], 'a probe of 8080 got through during or after the migration');
  const ms = done.migrationState ?? {};
  console.log(
    `figures: netpol migration of web ${nodeB.name} → ${nodeA.name}: transfer ${Date.parse(ms.endTimestamp ?? '') - Date.parse(ms.startTimestamp ?? '')} ms, ` +
      `node checks ${checkedMs} ms after Succeeded, the test ${Date.now() - t0} ms`,
  );
});

test('removing both policies opens web again', async () => {
  for (const name of ['web-from-a', 'default-deny']) await c.client.delete(NETPOL, name, { namespace: 'b' });
  await expectProbes('the client reaching web on both ports again', true, true);
});
