import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind } from '../kinds.ts';
import { validateObject } from '../validate.ts';
import { firstFree, macForIPv4, parseCidr, parseIPv4 } from '../ip.ts';
import type { KubeObject } from '../types.ts';

const fields = (o: KubeObject, old?: KubeObject) => {
  const info = findByKind(o.apiVersion as string, o.kind as string)!;
  return validateObject(info, o, old ? 'update' : 'create', old).causes.map((c) => c.field);
};

const ipAddress = (name: string, parentRef?: Record<string, string>): KubeObject => ({
  apiVersion: 'networking.k8s.io/v1',
  kind: 'IPAddress',
  metadata: { name },
  spec: parentRef ? { parentRef } : {},
});

test('IPv4 parsing is canonical only; ranges need zero host bits', () => {
  assert.equal(parseIPv4('10.244.0.5'), 0x0af40005);
  for (const bad of ['10.244.0.05', '10.244.0', '256.1.1.1', ' 10.0.0.1', '::1']) assert.equal(parseIPv4(bad), undefined, bad);
  assert.deepEqual(parseCidr('10.244.0.0/16'), { base: 0x0af40000, prefix: 16, size: 65536, text: '10.244.0.0/16' });
  assert.equal(parseCidr('10.244.0.1/16'), undefined);
  assert.equal(parseCidr('10.0.0.0/31'), undefined);
  assert.equal(macForIPv4(0x0af40005), '0a:58:0a:f4:00:05');
});

test('an IPAddress is named by a canonical address and names its parent, which never changes', () => {
  const vm = { group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'a', name: 'web' };
  assert.deepEqual(fields(ipAddress('10.244.0.5', vm)), []);
  assert.deepEqual(fields(ipAddress('10.244.0.005', vm)), ['metadata.name']);
  assert.deepEqual(fields(ipAddress('10.244.0.6')), ['spec.parentRef']);
  assert.deepEqual(fields(ipAddress('10.244.0.6', { group: '', resource: 'nodes' } as Record<string, string>)), ['spec.parentRef.name']);
  assert.deepEqual(fields(ipAddress('10.244.0.5', { ...vm, name: 'db' }), ipAddress('10.244.0.5', vm)), ['spec.parentRef']);
});

test('an EndpointSlice has a known address type, addresses of that type and valid ports', () => {
  const slice = (extra: Record<string, unknown>): KubeObject => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'web-x', namespace: 'a' },
    ...extra,
  });
  assert.deepEqual(
    fields(slice({ addressType: 'IPv4', endpoints: [{ addresses: ['10.244.0.5'] }], ports: [{ name: 'http', port: 80, protocol: 'TCP' }] })),
    [],
  );
  assert.deepEqual(fields(slice({ endpoints: [] })), ['addressType']);
  assert.deepEqual(fields(slice({ addressType: 'IPv4', endpoints: [{ addresses: ['web'] }, { addresses: [] }] })), [
    'endpoints[0].addresses[0]',
    'endpoints[1].addresses',
  ]);
  assert.deepEqual(
    fields(
      slice({
        addressType: 'IPv4',
        endpoints: [],
        ports: [
          { name: 'a', port: 0 },
          { name: 'a', port: 80, protocol: 'ICMP' },
        ],
      }),
    ),
    ['ports[0].port', 'ports[1].name', 'ports[1].protocol'],
  );
  assert.deepEqual(fields(slice({ addressType: 'IPv6', endpoints: [] }), slice({ addressType: 'IPv4', endpoints: [] })), ['addressType']);
});

test('firstFree skips taken addresses, the network and the broadcast address, and wraps around', () => {
  const c = parseCidr('10.0.0.0/30')!; // hosts .1 and .2
  assert.equal(
    firstFree(c, () => false),
    parseIPv4('10.0.0.1'),
  );
  assert.equal(
    firstFree(c, (ip) => ip === parseIPv4('10.0.0.1')),
    parseIPv4('10.0.0.2'),
  );
  assert.equal(
    firstFree(c, (ip) => ip === parseIPv4('10.0.0.2'), parseIPv4('10.0.0.2')),
    parseIPv4('10.0.0.1'),
  );
  assert.equal(
    firstFree(c, () => true),
    undefined,
  );
});

test('a NetworkPolicy names the field of a bad policy type, port, ipBlock or selector', () => {
  const np = (spec: Record<string, unknown>): KubeObject => ({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'p', namespace: 'b' },
    spec,
  });
  assert.deepEqual(fields(np({ podSelector: {}, policyTypes: ['Ingress'] })), []);
  assert.deepEqual(
    fields(
      np({
        podSelector: { matchLabels: { app: 'web' } },
        policyTypes: ['Ingress', 'Egress'],
        ingress: [
          {
            from: [
              {
                namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'a' } },
                podSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['x'] }] },
              },
              { ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] } },
            ],
            ports: [{ protocol: 'TCP', port: 80 }, { port: 8000, endPort: 8080 }, { port: 'http' }],
          },
        ],
        egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }],
      }),
    ),
    [],
  );
  assert.deepEqual(fields(np({ podSelector: {}, policyTypes: ['Ingress', 'Sideways'] })), ['spec.policyTypes[1]']);
  assert.deepEqual(
    fields(
      np({
        podSelector: {},
        ingress: [{ ports: [{ protocol: 'ICMP', port: 80 }, { port: 70000 }, { port: 90, endPort: 80 }, { port: 'http', endPort: 90 }] }],
      }),
    ),
    ['spec.ingress[0].ports[0].protocol', 'spec.ingress[0].ports[1].port', 'spec.ingress[0].ports[2].endPort', 'spec.ingress[0].ports[3].port'],
  );
  assert.deepEqual(
    fields(
      np({
        podSelector: {},
        ingress: [
          {
            from: [
              { ipBlock: { cidr: '10.0.0.0/33' } },
              { ipBlock: { cidr: '10.0.0.0/8', except: ['11.0.0.0/16', '10.0.0.0/8', 'x'] } },
              {},
              { ipBlock: { cidr: '10.0.0.0/8' }, podSelector: {} },
            ],
          },
        ],
      }),
    ),
    [
      'spec.ingress[0].from[0].ipBlock.cidr',
      'spec.ingress[0].from[1].ipBlock.except[0]',
      'spec.ingress[0].from[1].ipBlock.except[1]',
      'spec.ingress[0].from[1].ipBlock.except[2]',
      'spec.ingress[0].from[2]',
      'spec.ingress[0].from[3]',
    ],
  );
  assert.deepEqual(
    fields(
      np({
        podSelector: {
          matchLabels: { 'bad key!': 'v', app: 'bad value!' },
          matchExpressions: [
            { key: 'a', operator: 'Near' },
            { key: 'b', operator: 'In' },
            { key: 'c', operator: 'Exists', values: ['x'] },
          ],
        },
      }),
    ),
    [
      'spec.podSelector.matchLabels',
      'spec.podSelector.matchLabels',
      'spec.podSelector.matchExpressions[0].operator',
      'spec.podSelector.matchExpressions[1].values',
      'spec.podSelector.matchExpressions[2].values',
    ],
  );
  assert.deepEqual(
    fields(np({ podSelector: {}, egress: [{ to: [{ namespaceSelector: { matchExpressions: [{ key: 'x', operator: 'NotIn', values: [] }] } }] }] })),
    ['spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values'],
  );
});
