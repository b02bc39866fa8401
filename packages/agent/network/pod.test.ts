/** The pure parts of the masquerade binding's pod: its names, its nftables ruleset, its dnsmasq's arguments. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GUEST_IP, masqRuleset, podDnsmasqArgs, podNetnsName } from './pod.ts';
import { tapName } from './taps.ts';

test('pod namespaces: named after the node namespace (or vsl-pod- on a real host) and the tap hex, stable per VMI', () => {
  const hex = tapName('default', 'web').slice(3);
  assert.equal(podNetnsName('vsl-ab12cd-n0', 'default', 'web'), `vsl-ab12cd-n0-p${hex}`);
  assert.equal(podNetnsName(undefined, 'default', 'web'), `vsl-pod-${hex}`);
  assert.notEqual(podNetnsName(undefined, 'other', 'web'), podNetnsName(undefined, 'default', 'web'));
  assert.throws(() => podNetnsName('../x', 'default', 'web'), /bad network namespace/);
});

test('the pod ruleset DNATs every port of the cluster IP to the guest when no ports are listed, and SNATs the guest', () => {
  const r = masqRuleset('10.244.1.7');
  assert.equal(r.split('\n')[0], 'table ip vessel-masq');
  assert.equal(r.split('\n')[1], 'delete table ip vessel-masq');
  assert.match(r, /type nat hook prerouting priority dstnat; policy accept;\n {4}iifname "eth0" ip daddr 10\.244\.1\.7 dnat to 10\.0\.2\.2\n/);
  assert.match(r, /ip saddr 10\.0\.2\.2 oifname "eth0" snat to 10\.244\.1\.7/);
  assert.equal(GUEST_IP, '10.0.2.2');
});

test('the pod ruleset forwards exactly the listed ports (TCP by default), and refuses bad ones', () => {
  const r = masqRuleset('10.244.1.7', [{ port: 80 }, { port: 53, protocol: 'UDP' }, { port: 8443, protocol: 'tcp' }]);
  const dnat = r.split('\n').filter((l) => l.includes('dnat'));
  assert.deepEqual(dnat, [
    '    iifname "eth0" ip daddr 10.244.1.7 tcp dport 80 dnat to 10.0.2.2',
    '    iifname "eth0" ip daddr 10.244.1.7 udp dport 53 dnat to 10.0.2.2',
    '    iifname "eth0" ip daddr 10.244.1.7 tcp dport 8443 dnat to 10.0.2.2',
  ]);
  assert.throws(() => masqRuleset('10.244.1.7', [{ port: 0 }]), /ports\[0\]/);
  assert.throws(() => masqRuleset('10.244.1.7', [{ port: 80, protocol: 'SCTP; flush ruleset' }]), /ports\[0\]/);
  assert.throws(() => masqRuleset('10.244.1.7; flush ruleset'), /bad cluster IP/);
});

test("the pod's dnsmasq: DHCP only on k6t-eth0, the guest's MAC to 10.0.2.2, router 10.0.2.1, DNS the node's gateway, search list", () => {
  const a = podDnsmasqArgs({ mac: '0a:58:0a:f4:01:07', dns: '10.244.0.9', namespace: 'team-a', hostname: 'web' }, '/state/pods/p1');
  assert.ok(a.includes('--port=0'));
  assert.ok(a.includes('--interface=k6t-eth0'));
  assert.ok(a.includes('--dhcp-host=0a:58:0a:f4:01:07,10.0.2.2,web,infinite'));
  assert.ok(a.includes('--dhcp-option=option:router,10.0.2.1'));
  assert.ok(a.includes('--dhcp-option=option:dns-server,10.244.0.9'));
  assert.ok(a.includes('--dhcp-option=option:mtu,1450'));
  assert.ok(a.includes('--dhcp-option=option:domain-search,team-a.svc.cluster.local,svc.cluster.local,cluster.local'));
  assert.ok(a.includes('--pid-file=/state/pods/p1/dnsmasq.pid'));
  assert.ok(a.includes('--conf-file=/dev/null'));
  // A hostname that is not a DNS label is left out; a bad MAC or namespace is refused.
  assert.ok(
    podDnsmasqArgs({ mac: '0a:58:0a:f4:01:07', dns: '10.244.0.9', namespace: 'a', hostname: 'x,y' }, '/s').includes(
      '--dhcp-host=0a:58:0a:f4:01:07,10.0.2.2,infinite',
    ),
  );
  assert.throws(() => podDnsmasqArgs({ mac: '0a:58:0a:f4:01:07,1.2.3.4', dns: '10.244.0.9', namespace: 'a' }, '/s'), /bad MAC/);
  assert.throws(() => podDnsmasqArgs({ mac: '0a:58:0a:f4:01:07', dns: '10.244.0.9', namespace: 'a,b' }, '/s'), /namespace/);
});
