/** The pure parts of the Services data plane: models from Services and slices, the ruleset, DNS lines. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KubeObject } from '@vessel/runtime';
import { dnsHosts, serviceModels, servicesRuleset } from './services.ts';

const svc = (name: string, spec: Record<string, unknown>, ns = 'default'): KubeObject =>
  ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns }, spec }) as KubeObject;
const slice = (
  service: string,
  endpoints: { ip: string; ready?: boolean; hostname?: string }[],
  ports: { name?: string; port: number; protocol?: string }[],
  ns = 'default',
): KubeObject =>
  ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `${service}-abc`, namespace: ns, labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true }, ...(e.hostname ? { hostname: e.hostname } : {}) })),
    ports: ports.map((p) => ({ name: p.name ?? '', port: p.port, protocol: p.protocol ?? 'TCP' })),
  }) as unknown as KubeObject;

const services = [
  svc('web', { type: 'NodePort', clusterIP: '10.96.0.20', ports: [{ port: 80, targetPort: 8080, nodePort: 30080, protocol: 'TCP' }] }),
  svc('empty', {
    clusterIP: '10.96.0.21',
    ports: [
      { name: 'dns', port: 53, protocol: 'UDP' },
      { name: 'http', port: 80 },
    ],
  }),
  svc('db', { clusterIP: 'None', ports: [{ port: 5432 }] }),
  svc('ext', { type: 'ExternalName', externalName: 'example.com' }),
  svc('pending', { ports: [{ port: 80 }] }), // no ClusterIP yet
  svc('evil', { clusterIP: '10.96.0.22; flush ruleset', ports: [{ port: 80 }] }),
];
const slices = [
  slice('web', [{ ip: '10.244.1.7' }, { ip: '10.244.0.200' }, { ip: '10.244.1.9', ready: false }], [{ port: 8080 }]),
  slice('empty', [], [{ name: 'dns', port: 53, protocol: 'UDP' }]),
  slice('db', [{ ip: '10.244.2.1', hostname: 'db-0' }, { ip: '10.244.2.2' }, { ip: '10.244.2.3', ready: false, hostname: 'db-2' }], [{ port: 5432 }]),
];

test('models: ready endpoints only, sorted; headless has no ClusterIP; ExternalName, unallocated and malformed Services are left out', () => {
  const m = serviceModels(services, slices);
  assert.deepEqual(
    m.map((s) => s.name),
    ['db', 'empty', 'web'],
  );
  const web = m.find((s) => s.name === 'web')!;
  assert.deepEqual(web.ports, [
    {
      name: '',
      protocol: 'TCP',
      port: 80,
      nodePort: 30080,
      endpoints: [
        { ip: '10.244.0.200', port: 8080 },
        { ip: '10.244.1.7', port: 8080 },
      ],
    },
  ]);
  assert.equal(m.find((s) => s.name === 'db')!.clusterIP, undefined);
  assert.deepEqual(m.find((s) => s.name === 'db')!.ready, [{ ip: '10.244.2.1', hostname: 'db-0' }, { ip: '10.244.2.2' }]);
});

test('ruleset: ClusterIP and NodePort DNAT spread at random, masquerade on the VM bridge, reject without endpoints (golden)', () => {
  assert.equal(
    servicesRuleset(serviceModels(services, slices)),
    `table ip vessel-services
delete table ip vessel-services
table ip vessel-services {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }
  chain output {
    type nat hook output priority -100; policy accept;
    jump services
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x4000 == 0x4000 oifname "vsl-br0" masquerade
  }
  chain filter-input {
    type filter hook input priority filter - 10; policy accept;
    ct state new jump no-endpoints
  }
  chain filter-forward {
    type filter hook forward priority filter - 10; policy accept;
    ct state new jump no-endpoints
  }
  chain filter-output {
    type filter hook output priority filter - 10; policy accept;
    ct state new jump no-endpoints
  }
  chain no-endpoints {
    ip daddr 10.96.0.21 udp dport 53 reject with icmp type port-unreachable comment "default/empty:53/UDP"
    ip daddr 10.96.0.21 tcp dport 80 reject with tcp reset comment "default/empty:80/TCP"
  }
  chain services {
    ip daddr 10.96.0.20 tcp dport 80 goto svc-0 comment "default/web:80/TCP"
    fib daddr type local tcp dport 30080 goto svc-0 comment "default/web:80/TCP"
  }
  chain svc-0 {
    meta mark set meta mark | 0x4000
    meta l4proto tcp dnat to numgen random mod 2 map { 0 : 10.244.0.200, 1 : 10.244.1.7 }:8080
  }
}
`,
  );
  // One endpoint: no map; nothing at all: an empty but valid table.
  const one = servicesRuleset(serviceModels([services[0]], [slice('web', [{ ip: '10.244.1.7' }], [{ port: 8080 }])]));
  assert.match(one, /meta l4proto tcp dnat to 10\.244\.1\.7:8080\n/);
  assert.match(servicesRuleset([]), /chain services \{\n {2}\}/);
});

test('DNS: a Service name gives its ClusterIP, a headless one its ready endpoints and their hostnames', () => {
  assert.equal(
    dnsHosts(serviceModels(services, slices)),
    [
      '10.244.2.1 db.default.svc.cluster.local db.default.svc',
      '10.244.2.2 db.default.svc.cluster.local db.default.svc',
      '10.244.2.1 db-0.db.default.svc.cluster.local db-0.db.default.svc',
      '10.96.0.21 empty.default.svc.cluster.local empty.default.svc',
      '10.96.0.20 web.default.svc.cluster.local web.default.svc',
      '',
    ].join('\n'),
  );
  assert.equal(dnsHosts([]), '');
});
