/** The pure parts of the node data plane: names, addresses, the nftables ruleset, dnsmasq's arguments. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addressParent } from './cluster.ts';
import { fabricAddress } from './devcluster.ts';
import { Dnsmasq } from './dnsmasq.ts';
import { inNetns } from './exec.ts';
import { vesselRuleset } from './nft.ts';
import { isTapName, tapName } from './taps.ts';

test('fabric addresses: node i is host .10+i of the fabric range; a bad range is refused', () => {
  assert.deepEqual(fabricAddress('10.233.0.0/24', 0), { ip: '10.233.0.10', cidr: '10.233.0.10/24' });
  assert.deepEqual(fabricAddress('192.168.7.0/24', 3), { ip: '192.168.7.13', cidr: '192.168.7.13/24' });
  assert.throws(() => fabricAddress('10.233.0.0/28', 0), /bad fabric CIDR/);
  assert.throws(() => fabricAddress('10.233.0.0', 0), /bad fabric CIDR/);
});

test('tap names fit IFNAMSIZ, are stable per VMI and differ between VMIs', () => {
  const t = tapName('default', 'web');
  assert.equal(t.length, 14);
  assert.ok(isTapName(t));
  assert.equal(tapName('default', 'web'), t);
  assert.notEqual(tapName('other', 'web'), t);
  assert.ok(!isTapName('vsl-br0'));
});

test('commands in a namespace go through nsenter; a hostile namespace name is refused', () => {
  assert.deepEqual(inNetns('vsl-ab12cd-n0'), ['nsenter', '--net=/run/netns/vsl-ab12cd-n0', '--']);
  assert.deepEqual(inNetns(undefined), []);
  assert.throws(() => inNetns('../../proc/1/ns/net'), /bad network namespace/);
  assert.throws(() => inNetns('a b'), /bad network namespace/);
});

test('nftables: one masquerade rule for traffic leaving the VM network, replaced as a whole', () => {
  const r = vesselRuleset('10.244.0.0/16');
  assert.match(r, /^table inet vessel\ndelete table inet vessel\ntable inet vessel \{/);
  assert.match(r, /ip saddr 10\.244\.0\.0\/16 ip daddr != 10\.244\.0\.0\/16 oifname != "vsl-br0" masquerade/);
  assert.throws(() => vesselRuleset('10.244.0.0/16; flush ruleset'), /bad VM network CIDR/);
});

test('dnsmasq: static leases only, router, DNS and MTU from the gateway, on the bridge only', () => {
  const args = new Dnsmasq('ns', '/d').args({ gateway: '10.244.0.1', cidr: '10.244.0.0/16' });
  for (const a of [
    '--dhcp-range=10.244.0.0,static,255.255.0.0,12h',
    '--dhcp-hostsdir=/d/hosts',
    '--dhcp-option=option:router,10.244.0.1',
    '--dhcp-option=option:dns-server,10.244.0.1',
    '--dhcp-option=option:mtu,1450',
    '--leasefile-ro',
    '--pid-file=/d/dnsmasq.pid',
    '--interface=vsl-br0',
    '--conf-file=/dev/null',
  ]) {
    assert.ok(args.includes(a), a);
  }
  assert.ok(!args.includes('--dhcp-authoritative'), 'not authoritative: the other nodes answer their own VMs');
  assert.throws(() => new Dnsmasq('ns', '/d').args({ gateway: '10.244.0.1,evil', cidr: '10.244.0.0/16' }), /bad gateway/);
});

test("a VMI's addresses belong to its VirtualMachine, or to itself when it has none", () => {
  assert.deepEqual(
    addressParent({
      metadata: { name: 'web', namespace: 'ns', uid: 'u1', ownerReferences: [{ kind: 'VirtualMachine', name: 'web', uid: 'vm1', controller: true }] },
    }),
    { resource: 'virtualmachines', namespace: 'ns', name: 'web', uid: 'vm1' },
  );
  assert.deepEqual(addressParent({ metadata: { name: 'solo', namespace: 'ns', uid: 'u2' } }), {
    resource: 'virtualmachineinstances',
    namespace: 'ns',
    name: 'solo',
    uid: 'u2',
  });
});
