import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind, resolveName } from './kinds.ts';
import { isIPv4Cidr, nadRef, parseConfig } from './nad.ts';
import type { KubeObject } from './types.ts';
import { validateObject } from './validate.ts';

const nadObj = (config: unknown): KubeObject => ({
  apiVersion: 'k8s.cni.cncf.io/v1',
  kind: 'NetworkAttachmentDefinition',
  metadata: { name: 'v100', namespace: 'a' },
  spec: config === undefined ? {} : { config },
});
const causes = (o: KubeObject) => validateObject(findByKind('k8s.cni.cncf.io/v1', 'NetworkAttachmentDefinition')!, o, 'create').causes;

test('a bridge config parses: bridge, vlan, mtu, static addresses; conflists take their first plugin', () => {
  assert.deepEqual(
    parseConfig(
      '{"cniVersion":"0.3.1","name":"v100","type":"bridge","bridge":"br-v100","vlan":100,"mtu":1400,"ipam":{"type":"static","addresses":[{"address":"10.1.0.5/24"}]}}',
    ),
    {
      config: { cniVersion: '0.3.1', name: 'v100', bridge: 'br-v100', vlan: 100, mtu: 1400, addresses: ['10.1.0.5/24'] },
    },
  );
  assert.deepEqual(parseConfig('{"cniVersion":"1.0.0","plugins":[{"type":"bridge","bridge":"br1","ipam":{}},{"type":"tuning"}]}').config, {
    cniVersion: '1.0.0',
    name: undefined,
    bridge: 'br1',
    vlan: 0,
    mtu: undefined,
    addresses: [],
  });
  assert.equal(parseConfig('{"cniVersion":"0.3.1","type":"bridge"}').config?.bridge, 'cni0');
});

test('bad configs are refused with a reason', () => {
  const bad: Array<[unknown, RegExp]> = [
    ['', /JSON string/],
    ['{', /valid JSON/],
    ['[]', /JSON object/],
    ['{"type":"bridge"}', /cniVersion/],
    ['{"cniVersion":3,"type":"bridge"}', /cniVersion/],
    ['{"cniVersion":"0.3.1"}', /plugin type/],
    ['{"cniVersion":"0.3.1","type":"macvlan","master":"eth0"}', /"macvlan" is not supported: supported types are bridge/],
    ['{"cniVersion":"0.3.1","plugins":[{"type":"tuning"},{"type":"bridge"}]}', /first plugin/],
    ['{"cniVersion":"0.3.1","plugins":[]}', /non-empty/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"a-name-too-long-x"}', /interface name/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"br/0"}', /interface name/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"br 0"}', /interface name/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"br:0"}', /interface name/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":""}', /interface name/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"vsl-br0"}', /Vessel's own devices/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"vsn0123456789a"}', /Vessel's own devices/],
    ['{"cniVersion":"0.3.1","type":"bridge","bridge":"lo"}', /Vessel's own devices/],
    ['{"cniVersion":"0.3.1","type":"bridge","vlan":4095}', /vlan/],
    ['{"cniVersion":"0.3.1","type":"bridge","vlan":-1}', /vlan/],
    ['{"cniVersion":"0.3.1","type":"bridge","vlan":"100"}', /vlan/],
    ['{"cniVersion":"0.3.1","type":"bridge","vlan":1.5}', /vlan/],
    ['{"cniVersion":"0.3.1","type":"bridge","mtu":575}', /mtu/],
    ['{"cniVersion":"0.3.1","type":"bridge","mtu":9001}', /mtu/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}', /"host-local" is not supported/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":{"type":"static"}}', /addresses/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":{"type":"static","addresses":[{"address":"10.1.0.5"}]}}', /addresses\[0\]/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":{"type":"static","addresses":[{"address":"10.1.0.300/24"}]}}', /addresses\[0\]/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":{"type":"static","addresses":[{"address":"fd00::5/64"}]}}', /IPv4/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":[]}', /ipam must be an object/],
    ['{"cniVersion":"0.3.1","type":"bridge","ipam":{"subnet":"10.0.0.0/8"}}', /ipam must be \{\}/],
  ];
  for (const [text, re] of bad) {
    const r = parseConfig(text);
    assert.ok(r.problem, String(text));
    assert.match(r.problem, re, String(text));
  }
  assert.ok(isIPv4Cidr('10.1.0.5/32') && !isIPv4Cidr('10.1.0.5/0') && !isIPv4Cidr('10.1.0.5/024'));
});

test('the API refuses a bad NAD with spec.config named; a good one passes', () => {
  assert.deepEqual(causes(nadObj('{"cniVersion":"0.3.1","type":"bridge","bridge":"br-v100","vlan":100}')), []);
  for (const bad of [undefined, '{', '{"cniVersion":"0.3.1","type":"macvlan"}', '{"cniVersion":"0.3.1","type":"bridge","vlan":5000}']) {
    const c = causes(nadObj(bad));
    assert.equal(c.length, 1, String(bad));
    assert.equal(c[0].field, 'spec.config', String(bad));
  }
  // A number is a type error of the structural walk, still at spec.config.
  assert.deepEqual(
    causes(nadObj(5)).map((c) => c.field),
    ['spec.config'],
  );
});

test('the kind is served as Multus names it; networkName resolves as KubeVirt does', () => {
  for (const n of ['net-attach-def', 'network-attachment-definitions', 'network-attachment-definition', 'network-attachment-definitions.k8s.cni.cncf.io'])
    assert.equal(resolveName(n)?.kind, 'NetworkAttachmentDefinition', n);
  assert.deepEqual(nadRef('a', 'v100'), { namespace: 'a', name: 'v100' });
  assert.deepEqual(nadRef('a', 'net/v100'), { namespace: 'net', name: 'v100' });
});
