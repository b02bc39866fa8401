/**
 * Secondary NICs on real links, without QEMU: a node namespace where the NAD's bridge is made
 * (VLAN filtering, the port's PVID), both attach paths (QEMU in the node's namespace: a tap on
 * the bridge; QEMU in a "pod" namespace: veth + in-pod bridge + tap), traffic from the pod over
 * the NAD's bridge to a veth "peer" on it and not to one on another bridge, then release and
 * collect. VLANs are checked only where the kernel filters VLANs on bridges (this machine's does
 * not: then the refusal is checked).
 * Everything is made inside namespaces this test creates and deletes.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import type { nad } from '@vessel/api';
import { bridgeCmd, inNs, ip, linkDetails } from './exec.ts';
import { NetworkError } from './errors.ts';
import { attachSecondary, collectSecondary, releaseSecondary, secondaryNames, vlanFilteringSupported } from './secondary.ts';

const id = randomBytes(3).toString('hex');
const node = `vsl-${id}-sn`;
const pod = `vsl-${id}-sp`;
const peers = { same: `vsl-${id}-s1`, other: `vsl-${id}-s2` };
const BR = `br-${id}`;
const cfg = (vlan: number): nad.BridgeConfig => ({ cniVersion: '0.3.1', bridge: BR, vlan, mtu: 1400, addresses: [] });

before(async () => {
  for (const ns of [node, pod, peers.same, peers.other]) await ip(undefined, ['netns', 'add', ns]);
});

after(async () => {
  for (const ns of [node, pod, peers.same, peers.other]) await ip(undefined, ['netns', 'del', ns], { okCodes: [1, 255] });
});

const master = async (ns: string, dev: string) => (await linkDetails(ns, dev))?.master;
const pvid = async (ns: string, dev: string): Promise<number[]> => {
  const r = await bridgeCmd(ns, ['-j', 'vlan', 'show', 'dev', dev]);
  const rows = JSON.parse(r.stdout || '[]') as { ifname: string; vlans: { vlan: number; flags?: string[] }[] }[];
  return rows.flatMap((x) => x.vlans.filter((v) => v.flags?.includes('PVID') && v.flags.includes('Egress Untagged')).map((v) => v.vlan));
};

test('QEMU in the node namespace: the port is a tap on the NAD bridge, MTU from the config; VLAN as PVID untagged', async () => {
  const vm = { namespace: 'a', name: 'vm1' };
  const nic = await attachSecondary({ nodeNetns: node, qemuNetns: node, vmi: vm, iface: 'lan', config: cfg(0) });
  const n = secondaryNames('a', 'vm1', 'lan');
  assert.equal(nic.tap, n.port);
  assert.match(n.port, /^vsn[0-9a-f]{11}$/);
  assert.equal((await linkDetails(node, BR))?.linkinfo && (await master(node, n.port)), BR);
  assert.equal((await linkDetails(node, n.port))?.mtu, 1400);
  // Idempotent: a second start finds the tap.
  await attachSecondary({ nodeNetns: node, qemuNetns: node, vmi: vm, iface: 'lan', config: cfg(0) });
  if (await vlanFilteringSupported(node)) {
    await attachSecondary({ nodeNetns: node, qemuNetns: node, vmi: vm, iface: 'lan', config: cfg(100) });
    const br = await linkDetails(node, BR);
    assert.equal((br?.linkinfo as { info_data?: { vlan_filtering?: number } }).info_data?.vlan_filtering, 1);
    assert.deepEqual(await pvid(node, n.port), [100]);
  } else {
    await assert.rejects(
      attachSecondary({ nodeNetns: node, qemuNetns: node, vmi: vm, iface: 'lan', config: cfg(100) }),
      (e: unknown) => e instanceof NetworkError && e.code === 'Unsupported' && /VLAN filtering/.test(e.message),
    );
  }
  await releaseSecondary(node, 'a', 'vm1');
  assert.equal(await linkDetails(node, n.port), undefined);
});

test('QEMU in a pod namespace: veth across, in-pod bridge with the tap; the NAD bridge reaches its peers only', async () => {
  const n = secondaryNames('a', 'vm2', 'lan');
  const nic = await attachSecondary({ nodeNetns: node, qemuNetns: pod, vmi: { namespace: 'a', name: 'vm2' }, iface: 'lan', config: cfg(0) });
  assert.equal(nic.tap, n.tap);
  assert.equal(await master(node, n.port), BR);
  assert.equal(await master(pod, n.veth), n.bridge);
  assert.equal(await master(pod, n.tap), n.bridge);
  assert.equal((await linkDetails(node, n.port))?.mtu, 1400);
  // Two "peers" in one subnet: one on the NAD's bridge, one on another bridge; the in-pod bridge holds an address as the guest would.
  await ip(node, ['link', 'add', `x-${id}`, 'type', 'bridge']);
  await ip(node, ['link', 'set', `x-${id}`, 'up']);
  for (const [peer, br, addr] of [
    [peers.same, BR, '10.9.0.2'],
    [peers.other, `x-${id}`, '10.9.0.3'],
  ] as const) {
    const port = `p${addr.split('.')[3]}-${id}`;
    await ip(node, ['link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth1', 'netns', peer]);
    await ip(node, ['link', 'set', port, 'master', br, 'up']);
    await ip(peer, ['addr', 'add', `${addr}/24`, 'dev', 'eth1']);
    await ip(peer, ['link', 'set', 'eth1', 'up']);
  }
  await ip(pod, ['addr', 'add', '10.9.0.1/24', 'dev', n.bridge]);
  // Reached: the peer's kernel answers a TCP SYN to a closed port with a reset (no ping here).
  const ping = (to: string) =>
    inNs(pod, [
      process.execPath,
      '-e',
      `const s=require('net').connect(9,${JSON.stringify(to)});s.setTimeout(1500,()=>{console.log('TIMEOUT');s.destroy()});s.on('error',(e)=>console.log(e.code));s.on('connect',()=>{console.log('OPEN');s.end()})`,
    ]).then((r) => /ECONNREFUSED|OPEN/.test(r.stdout));
  let ok = false;
  for (let i = 0; i < 5 && !ok; i++) ok = await ping('10.9.0.2');
  assert.ok(ok, 'the peer on the NAD bridge answers');
  assert.equal(await ping('10.9.0.3'), false, 'the peer on another bridge is not reached');
  await releaseSecondary(node, 'a', 'vm2', pod);
  for (const [ns, dev] of [
    [node, n.port],
    [pod, n.veth],
    [pod, n.bridge],
    [pod, n.tap],
  ] as const)
    assert.equal(await linkDetails(ns, dev), undefined, dev);
});

test('collect removes the links of VMIs that no longer run, keeps the others', async () => {
  for (const name of ['keep', 'gone']) await attachSecondary({ nodeNetns: node, qemuNetns: node, vmi: { namespace: 'b', name }, iface: 'lan', config: cfg(0) });
  assert.equal(await collectSecondary(node, ['b/keep']), 1);
  assert.ok(await linkDetails(node, secondaryNames('b', 'keep', 'lan').port));
  assert.equal(await linkDetails(node, secondaryNames('b', 'gone', 'lan').port), undefined);
  await releaseSecondary(node, 'b', 'keep');
});
