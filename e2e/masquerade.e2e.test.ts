/**
 * The masquerade binding end to end on a two-node dev cluster (real namespaces, veths, nftables,
 * dnsmasq, QEMU): VM `a` with the bridge binding on node 0, VM `b` with masquerade (no `ports`)
 * on node 1 in its own pod namespace. `b`'s guest gets 10.0.2.2 by DHCP from its pod; `a`
 * reaches `b` at `b`'s cluster IP, `b` reaches `a` by address and by DNS name (headless Service
 * + hostname/subdomain); port-forward reaches `b`; an agent restart adopts the pod; stop/start
 * and a move to node 0 keep `b`'s IP and MAC, and `a` still reaches it; a live migration of `b`
 * back to node 1 (its QEMU in the pod: through the migration relay) keeps them too, no reboot.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { refs } from '@vessel/api';
import { IPADDRESSES, podNetnsName, runInNode, type DevNode } from '@vessel/agent';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { captureFrames, type Capture } from './frames.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { runDirOf, serialLog, tinyVm, type TinyVmOptions } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const SVC: ResourceRef = { group: '', version: 'v1', plural: 'services', namespaced: true };
const NODE: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
type Obj = Record<string, unknown>;

let c: TestCluster;
let node0: DevNode;
let node1: DevNode;
const ips: Record<string, string> = {};
const nodeOf: Record<string, DevNode> = {};

/** A tiny guest pinned to `node`, its root disk on the shared pool (so it may move). */
function vm(name: string, node: string, binding: 'bridge' | 'masquerade', userData: string, extra: Pick<TinyVmOptions, 'hostname' | 'subdomain'> = {}): Obj {
  return tinyVm(name, {
    namespace: ns,
    node,
    binding,
    userData,
    labels: { app: 'peer', peer: name },
    storageClass: 'shared',
    terminationGracePeriodSeconds: 5,
    ...extra,
  });
}

async function allocation(name: string): Promise<string> {
  return eventually(
    `IPAM's address for ${name}`,
    async () =>
      (await c.client.list(IPADDRESSES)).items.find((o) => {
        const p = (o.spec as { parentRef?: Obj }).parentRef ?? {};
        return p.resource === 'virtualmachines' && p.name === name && p.namespace === ns;
      })?.metadata?.name,
    30_000,
  );
}

type Status = { phase?: string; nodeName?: string; interfaces?: Obj[] };
const status = async (name: string) => ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as Status;
const agentOf = (n: DevNode) => c.nodes.agents.find((a) => a.nodeName === n.name)!;
const serial = async (name: string) => serialLog(agentOf(nodeOf[name]).dataDir, ns, name);

async function running(name: string): Promise<Status> {
  return eventually(
    `${name} Running`,
    async () => {
      const s = await status(name);
      return s.phase === 'Running' ? s : undefined;
    },
    240_000,
  );
}

/** Waits for a line in the guest's console; on timeout says what the console and the pod's dnsmasq said. */
async function sees(name: string, re: RegExp, what: string, ms = 300_000): Promise<string> {
  return eventually(
    `${name}: ${what}`,
    async () => {
      const m = re.exec(await serial(name));
      return m ? m[0] : undefined;
    },
    ms,
  ).catch(async (e: Error) => {
    const pod = podNetnsName(nodeOf[name].netns, ns, name);
    const log = await readFile(join(agentOf(nodeOf[name]).dataDir, 'network', 'pods', pod, 'dnsmasq.log'), 'utf8').catch(() => '');
    throw new Error(
      `${e.message}\n--- ${name}'s pod dnsmasq.log (tail)\n${log.slice(-2000)}\n--- ${name}'s serial console (tail)\n${(await serial(name)).slice(-3000)}`,
    );
  });
}

const curl = (n: DevNode, ip: string) => runInNode(n, ['curl', '-sS', '--max-time', '5', `http://${ip}/`]);

async function stop(name: string): Promise<void> {
  await c.client.patch(VM, name, { spec: { runStrategy: 'Halted' } }, { namespace: ns });
  await eventually(`${name} stopped`, async () => ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined)) ? undefined : true), 120_000);
}

before(async () => {
  c = await startCluster({ nodes: 2 });
  [node0, node1] = c.nodes.cluster.nodes;
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
/** Packet captures a test started: they must not outlive the file. */
const captures: Capture[] = [];
after(async () => {
  for (const p of captures) p.stop();
  if (!c) return;
  for (const n of c.nodes.cluster.nodes) await c.client.patch(NODE, n.name, { spec: { unschedulable: null } }).catch(() => undefined);
  for (const name of ['peers', 'b-web']) await c.client.delete(SVC, name, { namespace: ns }).catch(() => undefined);
  for (const v of (await c.client.list(VM, { namespace: ns }).catch(() => ({ items: [] as KubeObject[] }))).items)
    await c.client.delete(VM, v.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

test('a masquerade guest gets 10.0.2.2 from its pod, answers at its cluster IP and reaches a bridged guest by address and DNS name', async () => {
  // a's DNS name: a.peers.default.svc.cluster.local (headless Service + hostname/subdomain).
  await c.client.create(
    SVC,
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'peers', namespace: ns },
      spec: { clusterIP: 'None', selector: { app: 'peer' }, ports: [{ port: 8080 }] },
    },
    { namespace: ns },
  );
  // b first: its user data finds a by name; a's polls b's cluster IP (IPAM allocates it when
  // the VM is created). busybox nc: the guest's static busybox wget crashes.
  nodeOf.a = node0;
  nodeOf.b = node1;
  const aUser = (b: string) => `#!/bin/sh\n(while true; do if nc ${b} 8080 </dev/null | grep -q counter=; then echo VESSEL-TO-B-OK; fi; sleep 3; done) &\n`;
  // User data runs before DHCP: b waits for its address, then prints it and its resolver.
  const bUser =
    '#!/bin/sh\n(' +
    "while ! ip addr | grep -q 'inet 10.0.2.2'; do sleep 1; done; " +
    "ip addr | grep 'inet 10.0.2.2' | sed 's/^/VESSEL-ADDR /'; " +
    "sed 's/^/VESSEL-RESOLV /' /etc/resolv.conf; " +
    'while true; do ' +
    'echo "VESSEL-UPTIME $(cut -d" " -f1 /proc/uptime)"; ' +
    'A=$(nslookup a.peers.default.svc.cluster.local 2>/dev/null | sed -n "s/^Address:[[:space:]]*//p" | grep -v ":53$" | head -n1); ' +
    'if [ -n "$A" ] && nc a.peers.default.svc.cluster.local 8080 </dev/null | grep -q counter=; then echo "VESSEL-TO-A-BY-NAME $A"; fi; ' +
    'if [ -n "$A" ] && nc $A 8080 </dev/null | grep -q counter=; then echo "VESSEL-TO-A-BY-IP $A"; fi; ' +
    'sleep 3; done) &\n';
  await c.client.create(VM, vm('b', node1.name, 'masquerade', bUser), { namespace: ns });
  ips.b = await allocation('b');
  await c.client.create(VM, vm('a', node0.name, 'bridge', aUser(ips.b), { hostname: 'a', subdomain: 'peers' }), { namespace: ns });
  ips.a = await allocation('a');
  const sb = await running('b');
  const nic = sb.interfaces?.[0] ?? {};
  assert.equal(sb.nodeName, node1.name);
  assert.equal(nic.ipAddress, ips.b, "b's status carries its cluster IP");
  assert.deepEqual(nic.ipAddresses, [ips.b]);
  assert.match(String(nic.mac), /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  assert.match(String(nic.infoSource), /^domain(, guest-agent)?$/); // the guest agent's part comes once it answers
  // The pod: its namespace, the veth's node end on vsl-br0 (podInterfaceName), QEMU inside the pod.
  const pod = podNetnsName(node1.netns, ns, 'b');
  const veth = await runInNode(node1, ['ip', '-d', 'link', 'show', 'dev', String(nic.podInterfaceName)]);
  assert.match(veth.stdout, /veth/);
  assert.match(veth.stdout, /master vsl-br0/);
  const eth0 = (await run('ip', ['-n', pod, '-4', '-o', 'addr', 'show', 'dev', 'eth0'])).out;
  assert.match(eth0, new RegExp(`inet ${ips.b.replaceAll('.', '\\.')}/16`));
  const nft = (await run('ip', ['netns', 'exec', pod, 'nft', 'list', 'table', 'ip', 'vessel-masq'])).out;
  assert.match(nft, /dnat to 10\.0\.2\.2/);
  const qemuPid = (await readFile(join((await runDirOf(agentOf(node1).dataDir, ns, 'b'))!, 'qemu.pid'), 'utf8')).trim();
  assert.ok((await run('ip', ['netns', 'pids', pod])).out.split(/\s+/).includes(qemuPid), `QEMU runs in ${pod}`);

  await sees('b', /^VESSEL-IP 10\.0\.2\.2$/m, 'DHCP gave the guest 10.0.2.2');
  await sees('b', /VESSEL-ADDR .*inet 10\.0\.2\.2\/24/, 'eth0 holds 10.0.2.2/24', 60_000);
  await sees('b', /VESSEL-RESOLV nameserver 10\.244\./, "the resolver is the node's gateway", 60_000);
  // From node 0's namespace and from a's guest: b at its cluster IP (pod DNAT, all ports).
  await eventually(
    `b (${ips.b}) answering HTTP from ${node0.name}`,
    async () => ((await curl(node0, ips.b)).stdout.includes('counter=') ? true : undefined),
    90_000,
  ).catch(async (e: Error) => {
    const out: string[] = [e.message];
    for (const argv of [
      ['ip', '-n', pod, 'addr'],
      ['ip', '-n', pod, 'route'],
      ['ip', '-n', pod, 'neigh'],
      ['ip', 'netns', 'exec', pod, 'nft', 'list', 'ruleset'],
      ['ip', 'netns', 'exec', pod, 'sysctl', 'net.ipv4.ip_forward'],
      ['ip', 'netns', 'exec', node1.netns, 'bridge', 'fdb', 'show', 'br', 'vsl-br0'],
      ['ip', 'netns', 'exec', node0.netns, 'curl', '-sS', '-v', '--max-time', '5', `http://${ips.b}/`],
      ['ip', 'netns', 'exec', pod, 'curl', '-sS', '--max-time', '5', 'http://10.0.2.2/'],
      ['ip', '-n', node0.netns, 'neigh'],
    ])
      out.push(`--- ${argv.join(' ')}\n${JSON.stringify(await run(argv[0], argv.slice(1)))}`);
    throw new Error(out.join('\n'));
  });
  await sees('a', /^VESSEL-TO-B-OK$/m, "a's guest reaches b's cluster IP");
  // b's guest reaches a by name and by address (its traffic leaves the pod masqueraded).
  await sees('b', new RegExp(`^VESSEL-TO-A-BY-NAME ${ips.a.replaceAll('.', '\\.')}$`, 'm'), 'b reaches a by its DNS name');
  await sees('b', new RegExp(`^VESSEL-TO-A-BY-IP ${ips.a.replaceAll('.', '\\.')}$`, 'm'), 'b reaches a by address');
  // Through the API: `vessel port-forward` to b (its agent dials the cluster IP in node 1's namespace).
  const forwarded = await run('bin/vessel', ['--kubeconfig', c.kubeconfig, 'port-forward', '--stdio', 'vm/b', '80'], {
    input: 'GET / HTTP/1.0\r\n\r\n',
    timeoutMs: 60_000,
    env: { ...process.env, KUBECONFIG: '' },
  });
  assert.equal(forwarded.code, 0, forwarded.err);
  assert.match(forwarded.out, /counter=\d+/);
});

test('an agent restart adopts the pod: its dnsmasq is the same process and b answers throughout', async () => {
  const pod = podNetnsName(node1.netns, ns, 'b');
  const pidFile = join(agentOf(node1).dataDir, 'network', 'pods', pod, 'dnsmasq.pid');
  const pid = (await readFile(pidFile, 'utf8')).trim();
  const i = c.nodes.agents.indexOf(agentOf(node1));
  await c.nodes.agents[i].stop();
  try {
    assert.match((await curl(node0, ips.b)).stdout, /counter=/, 'b answers while its agent is down');
  } finally {
    await c.nodes.restartAgent(i);
  }
  assert.equal((await readFile(pidFile, 'utf8')).trim(), pid, 'the same pod dnsmasq');
  assert.equal((await status('b')).phase, 'Running');
  assert.match((await curl(node0, ips.b)).stdout, /counter=/);
});

test('stop/start keeps b its IP and MAC; moved to node 0 it keeps them too, its old pod is gone and a still reaches it', async () => {
  const before = (await status('b')).interfaces?.[0] ?? {};
  const pod1 = podNetnsName(node1.netns, ns, 'b');
  await stop('b');
  const pods = async () => (await run('ip', ['netns', 'list'])).out;
  await eventually(`${pod1} deleted`, async () => (!(await pods()).includes(pod1) ? true : undefined), 30_000);
  assert.notEqual((await runInNode(node1, ['ip', 'link', 'show', 'dev', String(before.podInterfaceName)])).code, 0, 'the veth went with it');
  await c.client.patch(VM, 'b', { spec: { runStrategy: 'Always' } }, { namespace: ns });
  const again = (await running('b')).interfaces?.[0] ?? {};
  assert.equal(again.ipAddress, before.ipAddress);
  assert.equal(again.mac, before.mac);
  await eventually(`b answering again from ${node0.name}`, async () => ((await curl(node0, ips.b)).stdout.includes('counter=') ? true : undefined), 300_000);

  // Reschedule: stop, unpin, start with node 1 cordoned (b stays free to move back by live migration).
  await stop('b');
  await c.client.patch(VM, 'b', { spec: { template: { spec: { nodeSelector: null } } } }, { namespace: ns });
  await c.client.patch(NODE, node1.name, { spec: { unschedulable: true } });
  nodeOf.b = node0;
  await c.client.patch(VM, 'b', { spec: { runStrategy: 'Always' } }, { namespace: ns });
  const moved = await running('b').finally(() => c.client.patch(NODE, node1.name, { spec: { unschedulable: null } }));
  assert.equal(moved.nodeName, node0.name);
  assert.equal(moved.interfaces?.[0]?.ipAddress, before.ipAddress);
  assert.equal(moved.interfaces?.[0]?.mac, before.mac);
  assert.ok(!(await pods()).includes(pod1), 'no pod of b is left on node 1');
  assert.ok((await pods()).includes(podNetnsName(node0.netns, ns, 'b')), 'b has its pod on node 0');
  await sees('b', /^VESSEL-IP 10\.0\.2\.2$/m, 'DHCP on node 0 gave the guest 10.0.2.2');
  // a's guest keeps polling b's cluster IP: a fresh success after the move, and node 1 too.
  const seen = ((await serial('a')).match(/^VESSEL-TO-B-OK$/gm) ?? []).length;
  await eventually(
    "a's guest reaching b on node 0",
    async () => (((await serial('a')).match(/^VESSEL-TO-B-OK$/gm) ?? []).length > seen ? true : undefined),
    300_000,
  );
  await eventually(
    `b answering from ${node1.name} over VXLAN`,
    async () => ((await curl(node1, ips.b)).stdout.includes('counter=') ? true : undefined),
    60_000,
  );
});

/** QEMU processes of this cluster (their command lines name its data directory). */
async function qemus(): Promise<number[]> {
  const pids: number[] = [];
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-system') && cmd.includes(c.dataDir)) pids.push(Number(d));
  }
  return pids;
}

const uptimes = (text: string) => [...text.matchAll(/VESSEL-UPTIME (\d+(?:\.\d+)?)/g)].map((m) => Number(m[1]));
const toB = async () => ((await serial('a')).match(/^VESSEL-TO-B-OK$/gm) ?? []).length;

test('a live migration of b (masquerade) to node 1: Succeeded through the relay, same IP and MAC, no reboot, a reaches it, one QEMU each', async () => {
  const before = await running('b');
  assert.equal(before.nodeName, node0.name);
  const nic = before.interfaces?.[0] ?? {};
  // Only what node 1's serial log gets from now on is the migrated guest's.
  const targetDir = (await runDirOf(agentOf(node1).dataDir, ns, 'b'))!;
  const offset = (await stat(join(targetDir, 'serial.log')).catch(() => ({ size: 0 }))).size;
  const up0 = await eventually('b printing its uptime', async () => uptimes(await serial('b')).at(-1), 60_000);
  const seen = await toB();
  // A ClusterIP Service of b alone: its endpoint must follow b to node 1 (EndpointSlice nodeName, the dataplane).
  const svc = await c.client.create(
    SVC,
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'b-web', namespace: ns },
      spec: { selector: { peer: 'b' }, ports: [{ port: 8080, targetPort: 80 }] },
    },
    { namespace: ns },
  );
  const clusterIP = (svc.spec as { clusterIP: string }).clusterIP;
  const endpointNode = async () =>
    (await c.client.list(refs.ENDPOINTSLICES, { namespace: ns })).items
      .filter((o) => o.metadata?.labels?.['kubernetes.io/service-name'] === 'b-web')
      .flatMap((o) => (o as { endpoints?: { nodeName?: string }[] }).endpoints ?? [])
      .map((e) => e.nodeName)
      .join(',');
  await eventually(`b-web's endpoint on ${node0.name}`, async () => ((await endpointNode()) === node0.name ? true : undefined), 30_000);
  // Node 0's VXLAN port: where b's pod announces itself from node 1 after the switch (a third
  // node's bridge would otherwise send b's frames to node 0 until its entry aged out).
  const capture = await captureFrames(node0.netns, 'vsl-vx0', String(nic.mac));
  captures.push(capture);
  const t0 = Date.now();
  await c.client.create(
    VMIM,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceMigration',
      metadata: { name: 'b-live', namespace: ns, annotations: { 'vessel.io/migration-target-node': node1.name } },
      spec: { vmiName: 'b' },
    },
    { namespace: ns },
  );
  type Vmim = { phase?: string; migrationState?: { failureReason?: string; startTimestamp?: string; endTimestamp?: string } };
  const done = await eventually(
    'the migration of b finished',
    async () => {
      const st = ((await c.client.get(VMIM, 'b-live', { namespace: ns })).status ?? {}) as Vmim;
      return st.phase === 'Succeeded' || st.phase === 'Failed' ? st : undefined;
    },
    180_000,
  );
  assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
  const ms = done.migrationState ?? {};
  console.log(
    `figures: masquerade migration ${node0.name} → ${node1.name} through the relay: ${Date.now() - t0} ms to Succeeded, ` +
      `transfer ${Date.parse(ms.endTimestamp ?? '') - Date.parse(ms.startTimestamp ?? '')} ms`,
  );
  nodeOf.b = node1;
  // Sender IP = target IP = the VM's: only the pod's announce sends that (the guest is 10.0.2.2
  // behind the NAT; the pod's own ARP asks for its gateway).
  await eventually(
    `a gratuitous ARP for ${nic.ipAddress} from b's pod on node 1, seen on node 0's VXLAN port`,
    async () => (capture.frames().some((f) => f.type === '0806' && f.senderIp === nic.ipAddress && f.targetIp === nic.ipAddress) ? true : undefined),
    15_000,
  );
  capture.stop();
  const moved = await status('b');
  assert.equal(moved.nodeName, node1.name);
  assert.equal(moved.interfaces?.[0]?.ipAddress, nic.ipAddress, 'the same cluster IP');
  assert.equal(moved.interfaces?.[0]?.mac, nic.mac, 'the same MAC');
  // The guest did not reboot: its uptime goes on in the target's log, which shows no new DHCP at boot.
  const fresh = async () => (await readFile(join(targetDir, 'serial.log'), 'utf8')).slice(offset);
  const up1 = await eventually('b printing its uptime on node 1', async () => uptimes(await fresh()).at(0), 60_000);
  assert.ok(up1 >= up0, `uptime ${up1} after the move, ${up0} before: no reboot`);
  assert.doesNotMatch(await fresh(), /VESSEL-IP /, 'no boot-time DHCP on node 1');
  // Pods: the target's exists (same IP on eth0), the source's is gone; one QEMU each for a and b.
  const pods = async () => (await run('ip', ['netns', 'list'])).out;
  const pod1 = podNetnsName(node1.netns, ns, 'b');
  assert.ok((await pods()).includes(pod1), 'b has its pod on node 1');
  assert.match((await run('ip', ['-n', pod1, '-4', '-o', 'addr', 'show', 'dev', 'eth0'])).out, new RegExp(`inet ${ips.b.replaceAll('.', '\\.')}/`));
  await eventually('the source pod gone', async () => (!(await pods()).includes(podNetnsName(node0.netns, ns, 'b')) ? true : undefined), 30_000);
  await eventually('one QEMU for each of a and b', async () => ((await qemus()).length === 2 ? true : undefined), 30_000);
  // The relays are gone with their sockets.
  const sourceDir = (await runDirOf(agentOf(node0).dataDir, ns, 'b'))!;
  for (const f of ['mig.sock', 'nbd.sock', 'migout.sock', 'nbdout.sock'])
    for (const d of [sourceDir, targetDir])
      assert.equal(
        await stat(join(d, f)).then(
          () => true,
          () => false,
        ),
        false,
        `${f} removed from ${d}`,
      );
  // Reached at its cluster IP after the move: from a's guest and from both nodes.
  await eventually("a's guest reaching b on node 1", async () => ((await toB()) > seen ? true : undefined), 120_000);
  for (const n of [node0, node1])
    await eventually(`b answering from ${n.name}`, async () => ((await curl(n, ips.b)).stdout.includes('counter=') ? true : undefined), 60_000);
  await eventually(`b-web's endpoint on ${node1.name}`, async () => ((await endpointNode()) === node1.name ? true : undefined), 30_000);
  for (const n of [node0, node1])
    await eventually(
      `b answering at b-web's ClusterIP from ${n.name}`,
      async () => ((await curl(n, `${clusterIP}:8080`)).stdout.includes('counter=') ? true : undefined),
      30_000,
    );
});
