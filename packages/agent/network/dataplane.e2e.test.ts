/**
 * The node data plane on real namespaces, without QEMU: the dev cluster's fabric, the bridge,
 * VXLAN between two nodes with the FDB kept by syncFdb, the nftables table, dnsmasq's adoption
 * and restarts, and taps. Everything is made inside namespaces this test creates and destroys.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BRIDGE, ensureBridge, setBridgeAddress, enableForwarding } from './bridge.ts';
import { createDevCluster, runInNode, type DevCluster } from './devcluster.ts';
import { Dnsmasq } from './dnsmasq.ts';
import { inNs, ip, linkDetails } from './exec.ts';
import { installRuleset } from './nft.ts';
import { ensureTap, listTaps, removeTap, tapName } from './taps.ts';
import { VXLAN, ensureVxlan, fdbPeers, syncFdb } from './vxlan.ts';

let cluster: DevCluster;
let dir: string;
let rootLinks: string;
const links = async () =>
  (await ip(undefined, ['-o', 'link', 'show'])).stdout
    .split('\n')
    .map((l) => l.split(':')[1]?.trim())
    .sort()
    .join(' ');

before(async () => {
  rootLinks = await links();
  dir = await mkdtemp(join(tmpdir(), 'vessel-net-'));
  cluster = await createDevCluster({ nodes: 2 });
});
after(async () => {
  await cluster?.destroy();
  await rm(dir, { recursive: true, force: true });
});

test('the dev cluster: a namespace per node on a fabric, unique names, nothing in the host namespace', async () => {
  const [a, b] = cluster.nodes;
  assert.match(a.netns, /^vsl-[0-9a-f]{6}-n0$/);
  assert.deepEqual(
    cluster.nodes.map((n) => n.fabricIp),
    ['10.233.0.10', '10.233.0.11'],
  );
  const ping = await runInNode(a, ['busybox', 'ping', '-c', '1', '-W', '2', b.fabricIp]);
  assert.equal(ping.code, 0, ping.stdout + ping.stderr);
  assert.equal(await links(), rootLinks, 'no interface was added to the host namespace');
  const other = await createDevCluster({ nodes: 1 });
  try {
    assert.notEqual(other.fabricNetns, cluster.fabricNetns);
  } finally {
    await other.destroy();
  }
  assert.ok(!(await ip(undefined, ['netns', 'list'])).stdout.includes(other.fabricNetns), 'destroy removes the namespaces');
});

test('bridge + VXLAN: two nodes share one L2 segment once each has the other in its FDB', async () => {
  const [a, b] = cluster.nodes;
  for (const [i, n] of [a, b].entries()) {
    await ensureBridge(n.netns);
    await ensureBridge(n.netns); // idempotent
    await ensureVxlan(n.netns, n.fabricIp);
    await ensureVxlan(n.netns, n.fabricIp);
    await enableForwarding(n.netns);
    await setBridgeAddress(n.netns, `10.244.0.${i + 1}/16`);
  }
  const br = await linkDetails(a.netns, BRIDGE);
  assert.equal(br?.mtu, 1450);
  const vx = await linkDetails(a.netns, VXLAN);
  assert.equal(vx?.master, BRIDGE);
  assert.deepEqual((vx?.linkinfo as { info_data: { id: number; port: number; learning: boolean; local: string } }).info_data.local, a.fabricIp);
  assert.deepEqual(await syncFdb(a.netns, [b.fabricIp]), { added: [b.fabricIp], removed: [] });
  await syncFdb(b.netns, [a.fabricIp]);
  assert.deepEqual(await syncFdb(a.netns, [b.fabricIp]), { added: [], removed: [] });
  const ping = await runInNode(a, ['busybox', 'ping', '-c', '1', '-W', '3', '10.244.0.2']);
  assert.equal(ping.code, 0, `the other node's gateway answers over VXLAN: ${ping.stdout}${ping.stderr}`);
  // A node that leaves: its entry goes.
  assert.deepEqual(await syncFdb(a.netns, []), { added: [], removed: [b.fabricIp] });
  assert.deepEqual(await fdbPeers(a.netns), []);
  await syncFdb(a.netns, [b.fabricIp]);
  // The address is replaced, not added to.
  await setBridgeAddress(a.netns, '10.244.0.9/16');
  await setBridgeAddress(a.netns, '10.244.0.1/16');
  const addrs = (await ip(a.netns, ['-4', '-o', 'addr', 'show', 'dev', BRIDGE])).stdout.trim().split('\n');
  assert.equal(addrs.length, 1);
  assert.match(addrs[0], /10\.244\.0\.1\/16/);
});

test("the bridge keeps its MAC when a port with a lower MAC joins and leaves (the gateway MAC in guests' ARP caches)", async () => {
  const [a] = cluster.nodes;
  const mac = async () => (await linkDetails(a.netns, BRIDGE))?.address;
  const before = await mac();
  await ip(a.netns, ['link', 'add', 'vsl-lowmac', 'address', '02:00:00:00:00:01', 'type', 'veth', 'peer', 'name', 'vsl-lowmac-p']);
  try {
    await ip(a.netns, ['link', 'set', 'vsl-lowmac', 'master', BRIDGE, 'up']);
    assert.equal(await mac(), before, 'a lower MAC joining');
  } finally {
    await ip(a.netns, ['link', 'del', 'vsl-lowmac']);
  }
  assert.equal(await mac(), before, 'a port leaving');
  await ensureBridge(a.netns);
  assert.equal(await mac(), before, 'ensureBridge again');
});

test('nftables: the vessel table masquerades VM egress, and a rerun replaces it', async () => {
  const [a] = cluster.nodes;
  await installRuleset(a.netns, '10.244.0.0/16');
  await installRuleset(a.netns, '10.244.0.0/16');
  const out = (await inNs(a.netns, ['nft', 'list', 'table', 'inet', 'vessel'])).stdout;
  assert.equal(out.split('masquerade').length - 1, 1, out);
  assert.match(out, /ip saddr 10\.244\.0\.0\/16 ip daddr != 10\.244\.0\.0\/16/);
});

test('taps: made on the bridge with MTU 1450 in hairpin mode, re-made for multiqueue, removed', async () => {
  const [a] = cluster.nodes;
  const t = tapName('default', 'vm1');
  assert.equal(t.length, 14);
  await ensureTap(a.netns, t);
  let d = await linkDetails(a.netns, t);
  assert.equal(d?.master, BRIDGE);
  assert.equal(d?.mtu, 1450);
  await ensureTap(a.netns, t, { multiQueue: true });
  d = await linkDetails(a.netns, t);
  assert.equal((d?.linkinfo as { info_data: { multi_queue: boolean } }).info_data.multi_queue, true);
  // Hairpin mode (a VM's Service connection DNATed to itself goes back out its own port), also
  // on the re-made tap.
  assert.equal((d?.linkinfo as { info_slave_data?: { hairpin?: boolean } }).info_slave_data?.hairpin, true);
  assert.deepEqual(await listTaps(a.netns), [t]);
  await removeTap(a.netns, t);
  await removeTap(a.netns, t);
  assert.deepEqual(await listTaps(a.netns), []);
});

test('dnsmasq: started in the namespace, adopted with the same arguments, restarted when they change', async () => {
  const [a] = cluster.nodes;
  const d = new Dnsmasq(a.netns, join(dir, 'dnsmasq'));
  await d.ensure({ gateway: '10.244.0.1', cidr: '10.244.0.0/16' });
  const pid = await d.pid();
  assert.ok(pid);
  const pids = (await ip(undefined, ['netns', 'pids', a.netns])).stdout;
  assert.ok(pids.split(/\s+/).includes(String(pid)), 'it runs in the node namespace');
  const again = new Dnsmasq(a.netns, join(dir, 'dnsmasq')); // a restarted agent
  await again.ensure({ gateway: '10.244.0.1', cidr: '10.244.0.0/16' });
  assert.equal(await again.pid(), pid);
  await again.setHost(tapName('default', 'vm1'), { mac: '0a:58:0a:f4:00:05', ip: '10.244.0.5', hostname: 'vm1' });
  assert.equal(await readFile(join(dir, 'dnsmasq', 'hosts', tapName('default', 'vm1')), 'utf8'), '0a:58:0a:f4:00:05,10.244.0.5,vm1\n');
  await assert.rejects(again.setHost('x', { mac: 'zz', ip: '10.244.0.5' }), /bad static lease/);
  await again.removeHost(tapName('default', 'vm1'));
  assert.deepEqual(await again.hosts(), []);
  await again.ensure({ gateway: '10.244.0.3', cidr: '10.244.0.0/16' });
  const pid2 = await again.pid();
  assert.ok(pid2 && pid2 !== pid);
  await again.stop();
  assert.equal(await again.pid(), undefined);
});
