/**
 * Secondary networks (NetworkAttachmentDefinitions) end to end on a two-node dev cluster. An
 * NNCP makes VLANs 100 and 200 on each node's fabric link (`fab0.100`, `fab0.200`) with bridges
 * `br-v100` and `br-v200` on them (this machine's kernel has no 802.1Q devices: the agent's
 * stand-in is a VXLAN segment per VLAN, docs/network.md).
 * Two tiny guests on different nodes get a second NIC (eth1) on NADs over br-v100 and configure
 * it from user data; a veth "guest" namespace on br-v200 in the same subnet is the other VLAN.
 * The first guest names its NAD before it exists: it waits, saying why, and starts once it does.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { refs } from '@vessel/api';
import { runInNode, type DevNode } from '@vessel/agent';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, kubectlFor, KUBECTL_SKIP, rejects, run, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NS: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const NAD: ResourceRef = { group: 'k8s.cni.cncf.io', version: 'v1', plural: 'network-attachment-definitions', namespaced: true };
type Obj = Record<string, unknown>;
const NSN = 'sn';
const id = randomBytes(3).toString('hex');
// veth "guests" in namespaces of their own: g100 on node A's br-v100, g200 on node B's br-v200.
const G100 = `vsl-${id}-g100`;
const G200 = `vsl-${id}-g200`;

let c: TestCluster;
let nodeA: DevNode;
let nodeB: DevNode;
const { kubectl, ok: kubectlOk } = kubectlFor(() => c);

const nad = (name: string, bridge: string, extra: Obj = {}): Obj => ({
  apiVersion: 'k8s.cni.cncf.io/v1',
  kind: 'NetworkAttachmentDefinition',
  metadata: { name, namespace: NSN },
  spec: { config: JSON.stringify({ cniVersion: '0.3.1', name, type: 'bridge', bridge, mtu: 1450, ...extra }) },
});

/** eth0 on the pod network (masquerade), eth1 (`lan`) on the NAD `networkName`. */
function vm(name: string, node: string, networkName: string, userData: string): Obj {
  return tinyVm(name, {
    namespace: NSN,
    node,
    binding: 'masquerade',
    multus: { lan: networkName },
    userData,
    storageClass: 'shared',
    terminationGracePeriodSeconds: 5,
  });
}

/** User data: eth1 gets `addr`; with `probe`, every 2 s a line `VESSEL-SN <n> peer=<ok|no> g200=<ok|no>`. */
const userData = (addr: string, probe?: { peer: string; g200: string }): string =>
  `#!/bin/sh\n(ip addr add ${addr}/24 dev eth1; ip link set eth1 up; echo "VESSEL-ETH1 $(ip -o -4 addr show dev eth1 | wc -l)" >/dev/console\n` +
  (probe
    ? `i=0; while true; do i=$((i+1)); p=no; g=no; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${probe.peer} 80 2>/dev/null | grep -q counter= && p=ok; nc -w 3 ${probe.g200} 80 </dev/null 2>/dev/null | grep -q g200 && g=ok; echo "VESSEL-SN $i peer=$p g200=$g" >/dev/console; sleep 2; done\n`
    : '') +
  `) &\n`;

const ipIn = (netns: string, args: string[]) => run('ip', ['-n', netns, ...args]);
async function must(p: ReturnType<typeof run>, what: string): Promise<void> {
  const r = await p;
  assert.equal(r.code, 0, `${what}: ${r.err}`);
}

before(async () => {
  c = await startCluster({ nodes: 2 });
  [nodeA, nodeB] = c.nodes.cluster.nodes;
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
  await c.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NSN } });
  // The node networks, as an admin makes them: one NNCP with VLANs 100 and 200 on every node's
  // fabric link and a bridge on each (nncp.e2e.test.ts tests the policy itself).
  await c.client.create(refs.NNCPS, {
    apiVersion: 'nmstate.io/v1',
    kind: 'NodeNetworkConfigurationPolicy',
    metadata: { name: 'vlans' },
    spec: {
      desiredState: {
        interfaces: [100, 200].flatMap((id) => [
          { name: `fab0.${id}`, type: 'vlan', state: 'up', vlan: { 'base-iface': 'fab0', id } },
          { name: `br-v${id}`, type: 'linux-bridge', state: 'up', bridge: { options: { stp: { enabled: false } }, port: [{ name: `fab0.${id}` }] } },
        ]),
      },
    },
  });
  await eventually(
    'the NNCP Available on both nodes',
    async () => {
      const conds = ((await c.client.get(refs.NNCPS, 'vlans')).status as { conditions?: { type: string; status: string; message?: string }[] } | undefined)
        ?.conditions;
      return conds?.find((x) => x.type === 'Available' && x.status === 'True')?.message === '2/2 nodes successfully configured' ? true : undefined;
    },
    120_000,
  );
  for (const [g, node, br, addr] of [
    [G100, nodeA, 'br-v100', '10.100.0.11'],
    [G200, nodeB, 'br-v200', '10.100.0.12'],
  ] as const) {
    await must(run('ip', ['netns', 'add', g]), `netns ${g}`);
    await must(run('ip', ['-n', node.netns, 'link', 'add', `p-${g.slice(-4)}`, 'type', 'veth', 'peer', 'name', 'eth1', 'netns', g]), 'veth');
    await must(run('ip', ['-n', node.netns, 'link', 'set', `p-${g.slice(-4)}`, 'master', br, 'up']), 'veth port');
    await must(ipIn(g, ['addr', 'add', `${addr}/24`, 'dev', 'eth1']), 'addr');
    await must(ipIn(g, ['link', 'set', 'eth1', 'up']), 'up');
    await must(ipIn(g, ['link', 'set', 'lo', 'up']), 'lo');
  }
  // g200 serves "g200" on 80: reached only from VLAN 200.
  void run(
    'ip',
    ['netns', 'exec', G200, 'timeout', '900', process.execPath, '-e', "require('net').createServer((s)=>{s.on('error',()=>{});s.end('g200\\n')}).listen(80)"],
    {
      timeoutMs: 900_000,
    },
  );
});

after(async () => {
  if (c) {
    for (const v of (await c.client.list(VM, { namespace: NSN }).catch(() => ({ items: [] as KubeObject[] }))).items)
      await c.client.delete(VM, v.metadata!.name!, { namespace: NSN }).catch(() => undefined);
    await eventually('VMIs gone', async () => ((await c.client.list(VMI, { namespace: NSN })).items.length === 0 ? true : undefined), 60_000).catch(
      () => undefined,
    );
    await c.client.delete(NS, NSN).catch(() => undefined);
  }
  await run('ip', ['netns', 'pids', G200]).then(async (r) => {
    for (const pid of r.out.split('\n').filter(Boolean)) await run('kill', [pid]);
  });
  for (const g of [G100, G200]) await run('ip', ['netns', 'del', g]);
  await c?.close();
});

const vmiOf = (name: string) => c.client.get(VMI, name, { namespace: NSN }).catch(() => undefined);
const phaseOf = (o: KubeObject | undefined) => (o?.status as { phase?: string } | undefined)?.phase;

test('NADs: a bad config is refused with spec.config named; kubectl get net-attach-def lists them', async () => {
  const bad = await rejects(c.client.create(NAD, nad('bad', 'br-v100', { type: 'macvlan' }), { namespace: NSN }), 422, /spec\.config/);
  assert.match(bad.message, /supported types are bridge/);
  await c.client.create(NAD, nad('v100', 'br-v100'), { namespace: NSN });
  if (KUBECTL_SKIP) await c.client.create(NAD, nad('v200', 'br-v200'), { namespace: NSN });
  else {
    // As users write them: YAML through kubectl apply, the config a JSON string.
    const yaml = (name: string, config: string) =>
      `apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: ${name}\n  namespace: ${NSN}\nspec:\n  config: '${config}'\n`;
    await kubectlOk(['apply', '-f', '-'], yaml('v200', '{"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-v200", "mtu": 1450}'));
    const refused = await kubectl(['apply', '-f', '-'], yaml('v300', '{"cniVersion": "0.3.1", "type": "bridge", "vlan": 5000}'));
    assert.notEqual(refused.code, 0);
    assert.match(refused.err, /spec\.config.*vlan must be an integer from 0 to 4094/);
    const out = await kubectlOk(['-n', NSN, 'get', 'net-attach-def']);
    assert.match(out, /^NAME\s+AGE/m);
    assert.match(out, /^v100\s/m);
    assert.match(out, /^v200\s/m);
  }
});

test('a VM naming a missing NAD waits, saying which network and why; the NAD appearing starts it', async () => {
  // vm-a's own NAD (a static address for status.interfaces) does not exist yet.
  await c.client.create(VM, vm('vm-a', nodeA.name, 'v100a', userData('10.100.0.1', { peer: '10.100.0.2', g200: '10.100.0.12' })), { namespace: NSN });
  const cond = await eventually(
    'vm-a waiting for its NAD',
    async () => {
      const v = await vmiOf('vm-a');
      return ((v?.status as { conditions?: Obj[] } | undefined)?.conditions ?? []).find((x) => x.type === 'Ready' && x.reason === 'NetworkNotFound');
    },
    120_000,
    500,
  );
  assert.match(String(cond.message), /network lan: NetworkAttachmentDefinition sn\/v100a does not exist/);
  assert.notEqual(phaseOf(await vmiOf('vm-a')), 'Running');
  const events = (await c.client.list(EVENTS, { namespace: NSN })).items;
  assert.ok(
    events.some((e) => (e as Obj).reason === 'NetworkNotFound' && ((e as Obj).involvedObject as Obj).name === 'vm-a'),
    'a NetworkNotFound Event on the VMI',
  );
  await c.client.create(NAD, nad('v100a', 'br-v100', { ipam: { type: 'static', addresses: [{ address: '10.100.0.1/24' }] } }), { namespace: NSN });
  await eventually('vm-a Running', async () => (phaseOf(await vmiOf('vm-a')) === 'Running' ? true : undefined), 240_000, 1000);
  const lan = ((await vmiOf('vm-a'))!.status as { interfaces: Obj[] }).interfaces.find((i) => i.name === 'lan');
  assert.equal(lan?.ipAddress, '10.100.0.1');
  assert.match(String(lan?.infoSource), /^domain(, guest-agent)?$/); // the guest agent's part comes once it answers
  assert.match(String(lan?.mac), /^52:54:00(:[0-9a-f]{2}){3}$/);
});

test('two guests on v100 (two nodes) reach each other over eth1; VLAN 200 reaches neither', async () => {
  await c.client.create(VM, vm('vm-b', nodeB.name, 'v100', userData('10.100.0.2')), { namespace: NSN });
  await eventually('vm-b Running', async () => (phaseOf(await vmiOf('vm-b')) === 'Running' ? true : undefined), 240_000, 1000);
  const lanB = ((await vmiOf('vm-b'))!.status as { interfaces: Obj[] }).interfaces.find((i) => i.name === 'lan');
  assert.equal(lanB?.ipAddress, undefined, 'no ipam: the guest configures its address; no IP reported');
  const dataDirA = c.nodes.agents.find((a) => a.nodeName === nodeA.name)!.dataDir;
  // vm-a's probes: vm-b over VLAN 100 answers; g200 (same subnet, VLAN 200) does not.
  // Under a loaded machine a TCG guest takes minutes to boot: the wait is generous, and a failure shows what the guests printed.
  const dataDirB = c.nodes.agents.find((a) => a.nodeName === nodeB.name)!.dataDir;
  const last = await eventually(
    "vm-a's probe reaching vm-b",
    async () => {
      const lines = [...(await serialLog(dataDirA, NSN, 'vm-a')).matchAll(/VESSEL-SN (\d+) peer=(ok|no) g200=(ok|no)/g)];
      const oks = lines.filter((m) => m[2] === 'ok');
      return oks.length >= 2 ? oks : undefined;
    },
    480_000,
    1000,
  ).catch(async (e: Error) => {
    const tail = async (dir: string, name: string) =>
      (await serialLog(dir, NSN, name))
        .split('\n')
        .filter((l) => /VESSEL/.test(l))
        .slice(-6)
        .join(' | ');
    throw new Error(`${e.message}; vm-a: ${await tail(dataDirA, 'vm-a')}; vm-b: ${await tail(dataDirB, 'vm-b')}`);
  });
  assert.ok(
    last.every((m) => m[3] === 'no'),
    'vm-a never reached g200 on VLAN 200',
  );
  // From the veth "guests": g100 (node A, VLAN 100) reaches vm-b on node B; g200 reaches neither guest.
  const curl = (g: string, to: string) => run('ip', ['netns', 'exec', g, 'curl', '-sS', '--max-time', '4', `http://${to}/`]);
  assert.match((await curl(G100, '10.100.0.2')).out, /counter=/, 'g100 on VLAN 100 reaches vm-b across nodes');
  assert.match((await curl(G100, '10.100.0.1')).out, /counter=/, 'g100 reaches vm-a on its own node');
  for (const to of ['10.100.0.1', '10.100.0.2']) assert.notEqual((await curl(G200, to)).code, 0, `g200 on VLAN 200 does not reach ${to}`);
});

test('stopping the VMs removes their secondary ports from the nodes', async () => {
  for (const name of ['vm-a', 'vm-b']) await c.client.delete(VM, name, { namespace: NSN });
  await eventually('VMIs gone', async () => ((await c.client.list(VMI, { namespace: NSN })).items.length === 0 ? true : undefined), 120_000, 500);
  for (const node of [nodeA, nodeB]) {
    await eventually(
      `no secondary port left on ${node.name}`,
      async () => {
        const r = await runInNode(node, ['ip', '-o', 'link', 'show']);
        return /vsn[0-9a-f]{11}/.test(r.stdout) ? undefined : true;
      },
      30_000,
      500,
    );
  }
});
