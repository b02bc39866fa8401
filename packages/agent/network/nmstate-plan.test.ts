import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  enactmentConditions,
  parseInterfaces,
  phaseOf,
  PlanError,
  planApply,
  policyConditions,
  rollbackState,
  touchedNames,
  type CurrentInterface,
  type DesiredInterface,
} from './nmstate-plan.ts';

// Trimmed `ip -j -d link show` / `ip -j addr show` of a dev-cluster node after the policy below
// (the vlan as its VXLAN stand-in), plus an 802.1Q vlan as a kernel with 8021q shows one.
const LINKS = JSON.stringify([
  { ifindex: 1, ifname: 'lo', flags: ['LOOPBACK', 'UP', 'LOWER_UP'], mtu: 65536, link_type: 'loopback', address: '00:00:00:00:00:00' },
  {
    ifindex: 2,
    ifname: 'fab0',
    flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
    mtu: 1500,
    link_type: 'ether',
    address: '5a:1b:2c:3d:4e:5f',
    linkinfo: { info_kind: 'veth' },
  },
  {
    ifindex: 4,
    ifname: 'fab0.100',
    flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
    mtu: 1450,
    master: 'br-v100',
    link_type: 'ether',
    address: 'b6:a6:7c:01:a0:d8',
    linkinfo: { info_kind: 'vxlan', info_data: { id: 1048676, group: '239.1.0.100', link: 'fab0' }, info_slave_kind: 'bridge' },
    ifalias: 'vessel-vlan:fab0:100',
  },
  {
    ifindex: 5,
    ifname: 'br-v100',
    flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
    mtu: 1450,
    link_type: 'ether',
    address: 'b6:a6:7c:01:a0:d8',
    linkinfo: { info_kind: 'bridge', info_data: { stp_state: 0 } },
  },
  {
    ifindex: 6,
    ifname: 'eth1.7',
    link: 'eth1',
    flags: ['BROADCAST', 'MULTICAST'],
    mtu: 1500,
    link_type: 'ether',
    address: '02:00:00:00:00:07',
    linkinfo: { info_kind: 'vlan', info_data: { protocol: '802.1Q', id: 7 } },
  },
]);
const ADDRS = JSON.stringify([
  {
    ifname: 'lo',
    addr_info: [
      { family: 'inet', local: '127.0.0.1', prefixlen: 8 },
      { family: 'inet6', local: '::1', prefixlen: 128 },
    ],
  },
  { ifname: 'fab0', addr_info: [{ family: 'inet', local: '10.233.0.10', prefixlen: 24 }] },
  { ifname: 'br-v100', addr_info: [{ family: 'inet', local: '192.168.100.1', prefixlen: 24 }] },
]);

test('the node state from ip -j: types, state, MAC, MTU, addresses, bridge ports, vlans (also the stand-in)', () => {
  const s = parseInterfaces(LINKS, ADDRS);
  const by = new Map(s.map((i) => [i.name, i]));
  assert.deepEqual(
    s.map((i) => i.name),
    ['br-v100', 'eth1.7', 'fab0', 'fab0.100', 'lo'],
  );
  assert.deepEqual(by.get('fab0'), {
    name: 'fab0',
    type: 'veth',
    state: 'up',
    'mac-address': '5A:1B:2C:3D:4E:5F',
    mtu: 1500,
    ipv4: { enabled: true, address: [{ ip: '10.233.0.10', 'prefix-length': 24 }] },
  });
  assert.deepEqual(by.get('br-v100')?.bridge, { options: { stp: { enabled: false } }, port: [{ name: 'fab0.100' }] });
  assert.deepEqual(by.get('fab0.100')?.vlan, { 'base-iface': 'fab0', id: 100 });
  assert.equal(by.get('fab0.100')?.type, 'vlan');
  assert.equal(by.get('fab0.100')?.controller, 'br-v100');
  assert.deepEqual([by.get('eth1.7')?.type, by.get('eth1.7')?.state, by.get('eth1.7')?.vlan], ['vlan', 'down', { 'base-iface': 'eth1', id: 7 }]);
  assert.equal(by.get('lo')?.type, 'loopback');
  assert.deepEqual(parseInterfaces('[]', '[]'), []);
});

const POLICY: DesiredInterface[] = [
  {
    name: 'br-v100',
    type: 'linux-bridge',
    state: 'up',
    ipv4: { enabled: true, address: [{ ip: '192.168.100.1', 'prefix-length': 24 }] },
    bridge: { options: { stp: { enabled: false } }, port: [{ name: 'fab0.100' }] },
  },
  { name: 'fab0.100', type: 'vlan', state: 'up', vlan: { 'base-iface': 'fab0', id: 100 } },
];
const fresh = (): CurrentInterface[] => parseInterfaces(LINKS, ADDRS).filter((i) => i.name === 'lo' || i.name === 'fab0');
const text = (steps: { tool: string; args: string[] }[]) => steps.map((s) => `${s.tool} ${s.args.join(' ')}`);

test('a vlan and a bridge: made in dependency order, the port enslaved before links go up', () => {
  assert.deepEqual(text(planApply(POLICY, fresh(), 'kernel')), [
    'ip link add br-v100 type bridge stp_state 0',
    'ip link add link fab0 name fab0.100 type vlan id 100',
    'ip link set dev fab0.100 master br-v100',
    'ip addr add 192.168.100.1/24 dev br-v100',
    'ip link set dev fab0.100 up',
    'ip link set dev br-v100 up',
  ]);
  assert.deepEqual(text(planApply(POLICY, fresh(), 'vxlan')).slice(1, 3), [
    'ip link add fab0.100 type vxlan id 1048676 group 239.1.0.100 dev fab0 dstport 4789 ttl 1',
    'ip link set dev fab0.100 alias vessel-vlan:fab0:100',
  ]);
  // Applied already: nothing to do.
  assert.deepEqual(planApply(POLICY, parseInterfaces(LINKS, ADDRS), 'vxlan'), []);
});

test('a vlan on a vlan of the same policy comes after it; MTUs of ports before their bridge', () => {
  const d: DesiredInterface[] = [
    { name: 'br1', type: 'linux-bridge', mtu: 1400, bridge: { port: [{ name: 'v2' }] } },
    { name: 'v2', type: 'vlan', mtu: 1400, vlan: { 'base-iface': 'v1', id: 2 } },
    { name: 'v1', type: 'vlan', vlan: { 'base-iface': 'fab0', id: 1 } },
  ];
  const steps = text(planApply(d, fresh(), 'kernel'));
  assert.ok(steps.indexOf('ip link add link fab0 name v1 type vlan id 1') < steps.indexOf('ip link add link v1 name v2 type vlan id 2'));
  assert.ok(steps.indexOf('ip link set dev v2 mtu 1400') < steps.indexOf('ip link set dev br1 mtu 1400'));
});

test('what this node cannot do is refused before anything runs, the field named', () => {
  const missing: DesiredInterface[] = [{ name: 'br1', type: 'linux-bridge', bridge: { port: [{ name: 'fab0' }, { name: 'nope0' }] } }];
  assert.throws(
    () => planApply(missing, fresh(), 'kernel'),
    (e: unknown) => e instanceof PlanError && e.field === 'spec.desiredState.interfaces[0].bridge.port[1].name' && /nope0/.test(e.message),
  );
  assert.throws(
    () => planApply([{ name: 'eth9', type: 'ethernet' }], fresh(), 'kernel'),
    /interfaces\[0\]\.name: interface eth9 \(type ethernet\) does not exist/,
  );
  assert.throws(() => planApply([{ name: 'v', type: 'vlan', vlan: { 'base-iface': 'eth9', id: 3 } }], fresh(), 'kernel'), /interfaces\[0\]\.vlan\.base-iface/);
  assert.throws(() => planApply([{ name: 'fab0', type: 'linux-bridge' }], fresh(), 'kernel'), /interfaces\[0\]\.type: fab0 exists with type veth/);
});

test('absent deletes a bridge (nothing when gone), takes a NIC down; ethernet down; exact addresses and ports', () => {
  const applied = parseInterfaces(LINKS, ADDRS);
  assert.deepEqual(text(planApply([{ name: 'br-v100', state: 'absent' }], applied, 'vxlan')), ['ip link del dev br-v100']);
  assert.deepEqual(planApply([{ name: 'br-v100', state: 'absent' }], fresh(), 'vxlan'), []);
  assert.deepEqual(text(planApply([{ name: 'fab0', type: 'ethernet', state: 'down' }], fresh(), 'kernel')), ['ip link set dev fab0 down']);
  assert.deepEqual(
    text(planApply([{ name: 'fab0', type: 'ethernet', ipv4: { enabled: true, address: [{ ip: '10.233.0.99', 'prefix-length': 24 }] } }], fresh(), 'kernel')),
    ['ip addr del 10.233.0.10/24 dev fab0', 'ip addr add 10.233.0.99/24 dev fab0'],
  );
  assert.deepEqual(text(planApply([{ name: 'fab0', type: 'ethernet', ipv4: { enabled: false } }], fresh(), 'kernel')), ['ip addr del 10.233.0.10/24 dev fab0']);
  assert.deepEqual(text(planApply([{ name: 'br-v100', type: 'linux-bridge', bridge: { port: [] } }], applied, 'vxlan')), ['ip link set dev fab0.100 nomaster']);
  const access: DesiredInterface[] = [{ name: 'br-v100', type: 'linux-bridge', bridge: { port: [{ name: 'fab0.100', vlan: { mode: 'access', tag: 5 } }] } }];
  assert.deepEqual(text(planApply(access, applied, 'vxlan')), [
    'ip link set dev br-v100 type bridge vlan_filtering 1',
    'bridge vlan del dev fab0.100 vid 1',
    'bridge vlan add dev fab0.100 vid 5 pvid untagged',
  ]);
});

test('rollback: what the policy made goes, what it changed comes back', () => {
  const before = fresh();
  const after = parseInterfaces(LINKS, ADDRS);
  const touched = touchedNames(POLICY);
  assert.deepEqual(touched, ['br-v100', 'fab0.100']);
  assert.deepEqual(text(planApply(rollbackState(touched, before), after, 'vxlan')), ['ip link del dev br-v100', 'ip link del dev fab0.100']);
  // fab0 taken down and stripped: up again with its address.
  const down = before.map((i) => (i.name === 'fab0' ? { ...i, state: 'down' as const, ipv4: { enabled: false, address: [] } } : i));
  assert.deepEqual(text(planApply(rollbackState(['fab0'], before), down, 'kernel')), ['ip addr add 10.233.0.10/24 dev fab0', 'ip link set dev fab0 up']);
  // A deleted bridge comes back with its port and address.
  const steps = text(
    planApply(
      rollbackState(['br-v100'], after),
      after.filter((i) => i.name !== 'br-v100'),
      'vxlan',
    ),
  );
  assert.deepEqual(steps.slice(0, 2), ['ip link add br-v100 type bridge stp_state 0', 'ip link set dev br-v100 mtu 1450']);
  assert.ok(steps.includes('ip addr add 192.168.100.1/24 dev br-v100'));
});

test('conditions: an enactment has one True of five; a policy aggregates N/M', () => {
  const e = enactmentConditions('Failing', 'probe failed');
  assert.deepEqual(
    e.map((c) => `${c.type}=${c.status}`),
    ['Failing=True', 'Available=False', 'Progressing=False', 'Pending=False', 'Aborted=False'],
  );
  assert.equal(e[0].reason, 'FailedToConfigure');
  assert.equal(phaseOf(e), 'Failing');
  const pick = (c: ReturnType<typeof policyConditions>) => c.filter((x) => x.status === 'True').map((x) => `${x.type}/${x.reason}/${x.message}`);
  assert.deepEqual(pick(policyConditions(['Available', 'Available'])), ['Available/SuccessfullyConfigured/2/2 nodes successfully configured']);
  assert.deepEqual(pick(policyConditions(['Available', undefined])), ['Progressing/ConfigurationProgressing/Policy is progressing 1/2 nodes finished']);
  assert.deepEqual(pick(policyConditions(['Available', 'Failing'])), ['Degraded/FailedToConfigure/1/2 nodes failed to configure']);
  assert.deepEqual(pick(policyConditions(['Aborted', 'Failing'])), ['Degraded/FailedToConfigure/1/2 nodes failed to configure, 1 nodes aborted configuration']);
  assert.deepEqual(pick(policyConditions([])), ['Available/NoMatchingNode/Policy does not match any node']);
});
