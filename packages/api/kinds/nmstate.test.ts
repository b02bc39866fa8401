import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind, findByResource } from '../kinds.ts';
import { selectsNode } from '../nmstate.ts';
import type { KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';

const policy = (interfaces: unknown[], extra: Record<string, unknown> = {}): KubeObject => ({
  apiVersion: 'nmstate.io/v1',
  kind: 'NodeNetworkConfigurationPolicy',
  metadata: { name: 'p' },
  spec: { desiredState: { interfaces }, ...extra },
});
const fields = (o: KubeObject) => {
  const info = findByKind(o.apiVersion as string, o.kind as string)!;
  return validateObject(info, o, 'create').causes.map((c) => c.field);
};

const good = [
  { name: 'fab0.100', type: 'vlan', state: 'up', vlan: { 'base-iface': 'fab0', id: 100 } },
  {
    name: 'br-v100',
    type: 'linux-bridge',
    state: 'up',
    mtu: 1400,
    ipv4: { enabled: true, dhcp: false, address: [{ ip: '192.168.100.1', 'prefix-length': 24 }] },
    bridge: { options: { stp: { enabled: false } }, port: [{ name: 'fab0.100' }] },
  },
];

test('the three kinds are served as kubernetes-nmstate serves them', () => {
  const nncp = findByResource('nmstate.io', 'v1', 'nodenetworkconfigurationpolicies')!;
  assert.deepEqual([nncp.namespaced, nncp.shortNames, nncp.printerColumns.map((c) => c.name)], [false, ['nncp'], ['Status', 'Reason']]);
  const nnce = findByResource('nmstate.io', 'v1beta1', 'nodenetworkconfigurationenactments')!;
  assert.deepEqual([nnce.namespaced, nnce.shortNames, nnce.printerColumns.map((c) => c.name)], [false, ['nnce'], ['Status', 'Status Age', 'Reason']]);
  const nns = findByResource('nmstate.io', 'v1beta1', 'nodenetworkstates')!;
  assert.deepEqual([nns.namespaced, nns.shortNames], [false, ['nns']]);
});

test('a vlan and a bridge with a static address pass', () => {
  assert.deepEqual(fields(policy(good, { nodeSelector: { 'kubernetes.io/hostname': 'node-0' } })), []);
  assert.deepEqual(fields(policy([{ name: 'br-v100', state: 'absent' }])), []);
  assert.deepEqual(fields(policy([{ name: 'fab0', type: 'ethernet', state: 'down' }])), []);
  const trunk = { name: 'br1', type: 'linux-bridge', bridge: { port: [{ name: 'eth1', vlan: { mode: 'trunk', 'trunk-tags': [{ id: 10 }] } }] } };
  assert.deepEqual(fields(policy([trunk])), []);
});

test('bad policies are refused with the field named', () => {
  const cases: [unknown[], string[]][] = [
    [[{ name: 'x0', type: 'bond' }], ['spec.desiredState.interfaces[0].type']],
    [[{ name: 'a-name-far-too-long', type: 'linux-bridge' }], ['spec.desiredState.interfaces[0].name']],
    [[{ name: 'bad/name', type: 'linux-bridge' }], ['spec.desiredState.interfaces[0].name']],
    [[{ type: 'linux-bridge' }], ['spec.desiredState.interfaces[0].name']],
    [[{ name: 'v', type: 'vlan', vlan: { 'base-iface': 'fab0', id: 4095 } }], ['spec.desiredState.interfaces[0].vlan.id']],
    [[{ name: 'v', type: 'vlan', vlan: { 'base-iface': 'fab0', id: 0 } }], ['spec.desiredState.interfaces[0].vlan.id']],
    [[{ name: 'v', type: 'vlan', vlan: { id: 5 } }], ['spec.desiredState.interfaces[0].vlan.base-iface']],
    [[{ name: 'v', type: 'vlan' }], ['spec.desiredState.interfaces[0].vlan']],
    [
      [{ name: 'b', type: 'linux-bridge', ipv4: { enabled: true, address: [{ ip: '10.0.0.300', 'prefix-length': 24 }] } }],
      ['spec.desiredState.interfaces[0].ipv4.address[0].ip'],
    ],
    [
      [{ name: 'b', type: 'linux-bridge', ipv4: { enabled: true, address: [{ ip: '10.0.0.3', 'prefix-length': 33 }] } }],
      ['spec.desiredState.interfaces[0].ipv4.address[0].prefix-length'],
    ],
    [[{ name: 'b', type: 'linux-bridge', ipv4: { enabled: true, dhcp: true } }], ['spec.desiredState.interfaces[0].ipv4.dhcp']],
    [[{ name: 'b', type: 'linux-bridge', mtu: 20 }], ['spec.desiredState.interfaces[0].mtu']],
    [[{ name: 'b', type: 'linux-bridge', state: 'gone' }], ['spec.desiredState.interfaces[0].state']],
    [[{ name: 'b', type: 'ethernet', bridge: { port: [] } }], ['spec.desiredState.interfaces[0].bridge']],
    [[{ name: 'b', type: 'linux-bridge', bridge: { port: [{ name: 'b' }] } }], ['spec.desiredState.interfaces[0].bridge.port[0].name']],
    [
      [{ name: 'b', type: 'linux-bridge', bridge: { port: [{ name: 'e', vlan: { mode: 'access', tag: 5000 } }] } }],
      ['spec.desiredState.interfaces[0].bridge.port[0].vlan.tag'],
    ],
    [
      [
        { name: 'b', type: 'linux-bridge', bridge: { port: [{ name: 'e' }] } },
        { name: 'e', state: 'absent' },
      ],
      ['spec.desiredState.interfaces[0].bridge.port[0].name'],
    ],
    [
      [
        { name: 'b', type: 'linux-bridge' },
        { name: 'b', type: 'linux-bridge' },
      ],
      ['spec.desiredState.interfaces[1].name'],
    ],
    [[{ name: 'b', type: 'linux-bridge', 'link-aggregation': {} }], ['spec.desiredState.interfaces[0].link-aggregation']],
  ];
  for (const [ifaces, want] of cases) assert.deepEqual(fields(policy(ifaces)), want, JSON.stringify(ifaces));
  assert.deepEqual(fields({ ...policy([]), spec: { desiredState: { interfaces: [], routes: {} } } }), ['spec.desiredState.routes']);
  assert.deepEqual(fields({ ...policy([]), spec: {} }), ['spec.desiredState']);
});

test('nodeSelector: every label must match; none selects every node', () => {
  assert.equal(selectsNode({}, { a: '1' }), true);
  assert.equal(selectsNode({ nodeSelector: { a: '1' } }, { a: '1', b: '2' }), true);
  assert.equal(selectsNode({ nodeSelector: { a: '1', b: '3' } }, { a: '1', b: '2' }), false);
});
