/**
 * The cluster network end to end on a two-node dev cluster (real namespaces, bridges, VXLAN,
 * dnsmasq, nftables, QEMU): two tiny guests with the bridge binding on different nodes get
 * their allocated addresses by DHCP, one answers HTTP from the other node's namespace and TCP
 * from the other guest (over VXLAN) and reaches the outside through its node's masquerade, a stopped and started VM comes back with the same IP and
 * MAC, an agent restart keeps the guests' network, and a VM without an address waits.
 *
 * The addresses come from the control plane's IPAM controller (IPAddress objects, docs/network.md):
 * the test only reads them and checks that the data plane follows.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { FABRIC_IP_ANNOTATION, IPADDRESSES, runInNode, type DevNode } from '@vessel/agent';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NODES: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const ns = 'default';
const CIDR = '10.244.0.0/16';
type Obj = Record<string, unknown>;

let c: TestCluster;
let nodeA: DevNode;
let nodeB: DevNode;
let outside: ChildProcess | undefined;

const mac = (ip: string) => ['0a', '58', ...ip.split('.').map((o) => Number(o).toString(16).padStart(2, '0'))].join(':');

/** IPAM's allocation for a parent (its first IPAddress), once it exists. */
async function allocation(resource: string, name: string, namespace?: string): Promise<{ ip: string; mac?: string; cidr: string }> {
  return eventually(
    `IPAM's address for ${resource}/${name}`,
    async () => {
      const a = (await c.client.list(IPADDRESSES)).items.find((o) => {
        const p = (o.spec as { parentRef?: Obj }).parentRef ?? {};
        return p.resource === resource && p.name === name && (namespace === undefined || p.namespace === namespace);
      });
      const ann = (a?.metadata?.annotations ?? {}) as Record<string, string>;
      return a && { ip: a.metadata!.name!, mac: ann['vessel.io/mac'], cidr: ann['vessel.io/cidr'] };
    },
    30_000,
  );
}

/** A tiny guest with the bridge binding, pinned to `node`; its root disk on the shared pool, where every node can clone the golden image. */
function bridgedVm(name: string, node: string, userData?: string): Obj {
  return tinyVm(name, { namespace: ns, node, binding: 'bridge', userData, storageClass: 'shared', terminationGracePeriodSeconds: 10 });
}

type VmiStatus = {
  phase?: string;
  nodeName?: string;
  conditions?: { type: string; reason?: string; message?: string }[];
  interfaces?: Obj[];
  phaseTransitionTimestamps?: { phase: string; phaseTransitionTimestamp: string }[];
};
const vmiStatus = async (name: string) => ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const serialIps = async (name: string) =>
  [...(await serialLog(c.nodes.agents.find((a) => a.nodeName === nodeOf[name])!.dataDir, ns, name)).matchAll(/VESSEL-IP (\S+)/g)].map((m) => m[1]);
const nodeOf: Record<string, string> = {};

/** A failed wait for a guest's DHCP, with what its node's dnsmasq and the guest's console said. */
const explain =
  (name: string) =>
  async (e: Error): Promise<never> => {
    const agent = c.nodes.agents.find((a) => a.nodeName === nodeOf[name])!;
    const log = await readFile(join(agent.dataDir, 'network', 'dnsmasq.log'), 'utf8').catch(() => '');
    const serial = await serialLog(agent.dataDir, ns, name);
    throw new Error(
      `${e.message}\n--- ${agent.nodeName}'s dnsmasq.log (tail)\n${log.slice(-2500)}\n--- ${name}'s serial console (tail)\n${serial.slice(-2500)}`,
    );
  };

/** A TCP server on ADDR:PORT that answers each connection with `seen <the peer's address>`. */
const OUTSIDE_SERVER = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    conn, peer = s.accept(); conn.sendall(('seen %s\\n' % peer[0]).encode()); conn.close()
`;

before(async () => {
  c = await startCluster({ nodes: 2 });
  [nodeA, nodeB] = c.nodes.cluster.nodes;
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  outside?.kill();
  if (!c) return;
  for (const vm of (await c.client.list(VM, { namespace: ns }).catch(() => ({ items: [] as KubeObject[] }))).items)
    await c.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

test('each agent publishes its fabric IP, keeps the other node in its VXLAN FDB, and takes its gateway from IPAM', async () => {
  for (const n of [nodeA, nodeB]) {
    const node = await c.client.get(NODES, n.name);
    assert.equal((node.metadata!.annotations as Record<string, string>)[FABRIC_IP_ANNOTATION], n.fabricIp);
  }
  for (const [n, other] of [
    [nodeA, nodeB],
    [nodeB, nodeA],
  ]) {
    await eventually(
      `${n.name}'s FDB entry for ${other.name}`,
      async () => {
        const r = await runInNode(n, ['bridge', 'fdb', 'show', 'dev', 'vsl-vx0']);
        return r.stdout.includes(`00:00:00:00:00:00 dst ${other.fabricIp}`) ? true : undefined;
      },
      20_000,
    );
  }
  // A node that comes and goes: every agent adds its entry, then drops it. An annotation that is
  // not an address (a hostile or broken Node) never reaches the bridge command.
  await c.client.create(NODES, { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-x', annotations: { [FABRIC_IP_ANNOTATION]: '10.233.0.99' } } });
  await c.client.create(NODES, {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name: 'node-y', annotations: { [FABRIC_IP_ANNOTATION]: '10.233.0.98 dev lo self' } },
  });
  const fdb = async (n: DevNode) => (await runInNode(n, ['bridge', 'fdb', 'show', 'dev', 'vsl-vx0'])).stdout;
  for (const n of [nodeA, nodeB])
    await eventually(`${n.name} adds node-x`, async () => ((await fdb(n)).includes('dst 10.233.0.99') ? true : undefined), 20_000);
  await c.client.delete(NODES, 'node-x');
  await c.client.delete(NODES, 'node-y');
  for (const n of [nodeA, nodeB]) await eventually(`${n.name} drops node-x`, async () => ((await fdb(n)).includes('10.233.0.99') ? undefined : true), 20_000);
  for (const n of [nodeA, nodeB]) assert.doesNotMatch(await fdb(n), /10\.233\.0\.98/);
  // The gateways IPAM gave the nodes end up on their bridges, and dnsmasq serves there.
  const gateways: string[] = [];
  for (const n of [nodeA, nodeB]) {
    const gw = await allocation('nodes', n.name);
    assert.equal(gw.cidr, CIDR);
    gateways.push(gw.ip);
    await eventually(
      `${n.name}'s bridge holds ${gw.ip}/16 and dnsmasq runs`,
      async () => {
        const addr = await runInNode(n, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'vsl-br0']);
        const dns = await runInNode(n, ['ss', '-lnup']);
        return addr.stdout.includes(`${gw.ip}/16`) && dns.stdout.includes('dnsmasq') ? true : undefined;
      },
      20_000,
    );
  }
  const nft = await runInNode(nodeA, ['nft', 'list', 'table', 'inet', 'vessel']);
  assert.match(nft.stdout, /masquerade/);
  const ping = await runInNode(nodeA, ['busybox', 'ping', '-c', '1', '-W', '3', gateways[1]]);
  assert.equal(ping.code, 0, `node B's gateway answers node A over VXLAN: ${ping.stdout}`);
});

test('two bridged VMs on two nodes get their addresses by DHCP; one answers the other node and the other guest across VXLAN', async () => {
  const vms = [
    { name: 'web-a', node: nodeA },
    { name: 'web-b', node: nodeB },
  ];
  // The outside (the fabric's .1, every node's default gateway): a listener that answers with the
  // address it saw, so egress through node A's masquerade can be checked from web-a's console.
  outside = spawn('ip', ['netns', 'exec', c.nodes.cluster.fabricNetns, '/usr/bin/python3', '-c', OUTSIDE_SERVER, c.nodes.cluster.outsideIp, '9000'], {
    stdio: 'ignore',
  });
  const createdAt = Date.now();
  const got: Record<string, { ip: string; mac?: string }> = {};
  // web-b first: web-a's user data asks web-b's address (IPAM allocates when a VM is created)
  // for its TCP 8080 line every 2 s, from guest to guest across the nodes (busybox nc: the
  // guest's static busybox wget crashes).
  for (const v of [...vms].reverse()) {
    nodeOf[v.name] = v.node.name;
    const userData =
      v.name === 'web-a'
        ? `#!/bin/sh\n(while true; do if nc ${got['web-b'].ip} 8080 </dev/null | grep -q counter=; then echo VESSEL-PEER-OK; fi; sleep 2; done) &\n` +
          `(while true; do nc ${c.nodes.cluster.outsideIp} 9000 </dev/null | sed -n 's/^seen /VESSEL-EGRESS /p'; sleep 3; done) &\n`
        : undefined;
    await c.client.create(VM, bridgedVm(v.name, v.node.name, userData), { namespace: ns });
    got[v.name] = await allocation('virtualmachines', v.name, ns);
  }
  for (const v of vms) {
    assert.equal(got[v.name].mac, mac(got[v.name].ip), "the contract's MAC: 0a:58: + the address");
  }
  for (const v of vms) {
    const s = await eventually(
      `${v.name} Running with its IP in status`,
      async () => {
        const st = await vmiStatus(v.name);
        return st.phase === 'Running' ? st : undefined;
      },
      180_000,
    );
    assert.equal(s.nodeName, v.node.name);
    const iface = s.interfaces?.[0] ?? {};
    assert.equal(iface.name, 'default');
    assert.equal(iface.ipAddress, got[v.name].ip, 'the IP is in status with Running');
    assert.deepEqual(iface.ipAddresses, [got[v.name].ip]);
    assert.equal(iface.mac, got[v.name].mac);
    assert.match(String(iface.infoSource), /^domain(, guest-agent)?$/); // the guest agent's part comes once it answers
    const tap = await runInNode(v.node, ['ip', '-d', 'link', 'show', 'dev', String(iface.podInterfaceName)]);
    assert.match(tap.stdout, /master vsl-br0/);
    assert.match(tap.stdout, /mtu 1450/);
  }
  for (const v of vms) {
    await eventually(
      `${v.name} prints VESSEL-IP ${got[v.name].ip}`,
      async () => ((await serialIps(v.name)).includes(got[v.name].ip) ? true : undefined),
      300_000,
    ).catch(explain(v.name));
    const running = Date.parse((await vmiStatus(v.name)).phaseTransitionTimestamps?.find((p) => p.phase === 'Running')?.phaseTransitionTimestamp ?? '');
    console.log(
      `figures: ${v.name}: VM created → Running ${running - createdAt} ms (IP in status with Running: 0 ms); Running → guest's VESSEL-IP seen ≤ ${Date.now() - running} ms`,
    );
  }
  // From node A's namespace, the VM on node B answers: over the bridge, VXLAN and the fabric.
  const b = got['web-b'].ip;
  const answer = await eventually(
    `web-b (${b}) answering HTTP from ${nodeA.name}`,
    async () => {
      const r = await runInNode(nodeA, ['curl', '-sS', '--max-time', '5', `http://${b}/`]);
      return r.code === 0 && r.stdout.includes('counter=') ? r.stdout : undefined;
    },
    60_000,
  );
  assert.match(answer, /hostname=\S+ counter=\d+/);
  // Through the API (the host has no route to the VM network): `vessel port-forward` reaches
  // web-b at its cluster address, dialled by its agent inside node B's namespace.
  const forwarded = await run('bin/vessel', ['--kubeconfig', c.kubeconfig, 'port-forward', '--stdio', 'vm/web-b', '80'], {
    input: 'GET / HTTP/1.0\r\n\r\n',
    timeoutMs: 60_000,
    env: { ...process.env, KUBECONFIG: '' },
  });
  assert.equal(forwarded.code, 0, forwarded.err);
  assert.match(forwarded.out, /counter=\d+/);
  // And guest to guest: web-a (node A) reads web-b's page (node B) by its cluster IP.
  await eventually(
    'web-a reaching web-b guest to guest',
    async () => ((await serialLog(c.nodes.agents[0].dataDir, ns, 'web-a')).includes('VESSEL-PEER-OK') ? true : undefined),
    120_000,
  ).catch(explain('web-a'));
  // And out of the cluster: the outside sees node A's fabric address (the VM's masqueraded), never the VM's.
  const egress = await eventually(
    'web-a reaching the outside',
    async () => /VESSEL-EGRESS (\S+)/.exec(await serialLog(c.nodes.agents[0].dataDir, ns, 'web-a'))?.[1],
    120_000,
  ).catch(explain('web-a'));
  assert.equal(egress, nodeA.fabricIp, "egress leaves masqueraded to the node's own address");
  // QEMU runs in its node's namespace (nsenter in front of its launch chain).
  const dir = await runDirOf(c.nodes.agents[1].dataDir, ns, 'web-b');
  const pid = (await readFile(join(dir!, 'qemu.pid'), 'utf8')).trim();
  const pids = (await run('ip', ['netns', 'pids', nodeB.netns])).out.split(/\s+/);
  assert.ok(pids.includes(pid), `QEMU pid ${pid} is in ${nodeB.netns}`);
});

test('stop and start: the VM comes back with the same IP and MAC; its tap goes while it is stopped', async () => {
  const name = 'web-b';
  const before = (await vmiStatus(name)).interfaces?.[0] ?? {};
  const tap = String(before.podInterfaceName);
  await c.client.patch(VM, name, { spec: { runStrategy: 'Halted' } }, { namespace: ns });
  await eventually(`${name} stopped`, async () => ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined)) ? undefined : true), 90_000);
  await eventually(`tap ${tap} removed`, async () => ((await runInNode(nodeB, ['ip', 'link', 'show', 'dev', tap])).code !== 0 ? true : undefined), 20_000);
  const ipsBefore = (await serialIps(name)).length;
  await c.client.patch(VM, name, { spec: { runStrategy: 'Always' } }, { namespace: ns });
  const s = await eventually(
    `${name} Running again`,
    async () => {
      const st = await vmiStatus(name);
      return st.phase === 'Running' ? st : undefined;
    },
    180_000,
  );
  const again = s.interfaces?.[0] ?? {};
  assert.equal(again.ipAddress, before.ipAddress);
  assert.equal(again.mac, before.mac);
  await eventually(
    `${name} got its address again by DHCP`,
    async () => {
      const ips = await serialIps(name);
      return ips.length > ipsBefore && ips.at(-1) === before.ipAddress ? true : undefined;
    },
    300_000,
  ).catch(explain(name));
  // httpd's page is written by the guest's counter loop: it may be missing for a moment after boot.
  const r = await eventually(
    `${name} answering again`,
    async () => {
      const out = await runInNode(nodeA, ['curl', '-sS', '--max-time', '5', `http://${String(before.ipAddress)}/`]);
      return out.code === 0 && out.stdout.includes('counter=') ? out.stdout : undefined;
    },
    60_000,
  );
  assert.match(r, /counter=/);
});

test("an agent restart keeps its guests' network: dnsmasq adopted, taps kept, the VM answers throughout", async () => {
  const name = 'web-b';
  const ip = String((await vmiStatus(name)).interfaces?.[0]?.ipAddress);
  const tap = String((await vmiStatus(name)).interfaces?.[0]?.podInterfaceName);
  const pidFile = join(c.nodes.agents[1].dataDir, 'network', 'dnsmasq.pid');
  const dnsmasqPid = (await readFile(pidFile, 'utf8')).trim();
  const curl = async () => (await runInNode(nodeA, ['curl', '-sS', '--max-time', '5', `http://${ip}/`])).stdout;
  await c.nodes.agents[1].stop();
  assert.match(await curl(), /counter=/, 'the guest answers while its agent is down');
  await c.nodes.restartAgent(1);
  assert.equal((await readFile(pidFile, 'utf8')).trim(), dnsmasqPid, 'the same dnsmasq');
  assert.equal((await runInNode(nodeB, ['ip', 'link', 'show', 'dev', tap])).code, 0, 'the tap is kept');
  const s = await vmiStatus(name);
  assert.equal(s.phase, 'Running');
  assert.equal(s.interfaces?.[0]?.ipAddress, ip);
  assert.match(await curl(), /counter=/);
});

test('a VM whose address IPAM cannot give (the VM network is full) is not started, and its VMI says it waits for it', async () => {
  // A /30 has two host addresses: the two nodes' gateways take both.
  const small = await startCluster({ nodes: 2, vmNetworkCidr: '10.250.0.0/30' });
  try {
    const vm = bridgedVm('waiter', small.nodes.cluster.nodes[0].name) as { spec: { template: { spec: Obj }; dataVolumeTemplates?: unknown } };
    // No disk: the agent gets as far as the network, which is what this is about.
    delete vm.spec.dataVolumeTemplates;
    Object.assign(vm.spec.template.spec, {
      volumes: [],
      domain: { resources: { requests: { memory: '64Mi' } }, devices: { interfaces: [{ name: 'default', bridge: {} }] } },
    });
    await small.client.create(VM, vm, { namespace: ns });
    const s = await eventually(
      'the VMI waiting for its address',
      async () => {
        const st = ((await small.client.get(VMI, 'waiter', { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
        return st.conditions?.some((x) => x.reason === 'AddressPending') ? st : undefined;
      },
      60_000,
    );
    assert.equal(s.phase, 'Scheduled');
    assert.equal(s.nodeName, small.nodes.cluster.nodes[0].name);
    assert.match(s.conditions!.find((x) => x.reason === 'AddressPending')!.message ?? '', /waits for its address/);
    await small.client.delete(VM, 'waiter', { namespace: ns });
    await eventually(
      'the waiting VMI gone',
      async () => ((await small.client.get(VMI, 'waiter', { namespace: ns }).catch(() => undefined)) ? undefined : true),
      60_000,
    );
  } finally {
    await small.close();
  }
});
