/**
 * The Services data plane with real nftables, routes and dnsmasq on a two-node dev cluster,
 * without QEMU: two "endpoints" are namespaces on the nodes' bridges (one per node) serving
 * HTTP with busybox httpd. Everything lives in namespaces this test creates and deletes.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject } from '@vessel/runtime';
import { addBridgePort, enableForwarding, ensureBridge, setBridgeAddress } from './bridge.ts';
import { createDevCluster, deleteNetns, runInNode, type DevCluster } from './devcluster.ts';
import { Dnsmasq } from './dnsmasq.ts';
import { inNs, ip, runCmd } from './exec.ts';
import { disableRedirects, dnsHosts, installServicesRuleset, serviceModels, servicesRuleset, syncServiceRoutes, SERVICES_TABLE } from './services.ts';
import { ensureVxlan, syncFdb } from './vxlan.ts';

let cluster: DevCluster;
let dir: string;
const eps = [
  { name: 'ep0', ip: '10.244.1.1', node: 0 },
  { name: 'ep1', ip: '10.244.1.2', node: 1 },
];
const epNs = (i: number) => `${cluster.nodes[0].netns.replace(/-n0$/, '')}-ep${i}`;

const svc = (name: string, spec: Record<string, unknown>): KubeObject =>
  ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default' }, spec }) as KubeObject;
const slice = (service: string, ips: string[]): KubeObject =>
  ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `${service}-x`, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    endpoints: ips.map((a) => ({ addresses: [a], conditions: { ready: true } })),
    ports: [{ name: '', port: 80, protocol: 'TCP' }],
  }) as unknown as KubeObject;
const SERVICES = [
  svc('web', { type: 'NodePort', clusterIP: '10.96.0.20', ports: [{ port: 8080, targetPort: 80, nodePort: 30080 }] }),
  svc('nobody', { clusterIP: '10.96.0.21', ports: [{ port: 80 }] }),
];
const apply = async (slices: KubeObject[]) => {
  const models = serviceModels(SERVICES, slices);
  for (const n of cluster.nodes) {
    await syncServiceRoutes(
      n.netns,
      models.flatMap((m) => (m.clusterIP ? [m.clusterIP] : [])),
    );
    await installServicesRuleset(n.netns, servicesRuleset(models));
  }
  return models;
};
/** curl from inside endpoint i's namespace (a VM as the client); never throws. */
const fromEp = (i: number, url: string) => runCmd(['ip', 'netns', 'exec', epNs(i), 'curl', '-sS', '--max-time', '3', url], { okCodes: [...Array(256).keys()] });
const curl = (n: number, url: string) => runInNode(cluster.nodes[n], ['curl', '-sS', '--max-time', '5', url]);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-svc-'));
  cluster = await createDevCluster({ nodes: 2 });
  const [a, b] = cluster.nodes;
  for (const [i, n] of [a, b].entries()) {
    await ensureBridge(n.netns);
    await ensureVxlan(n.netns, n.fabricIp);
    await enableForwarding(n.netns);
    await setBridgeAddress(n.netns, `10.244.0.${i + 1}/16`);
  }
  await syncFdb(a.netns, [b.fabricIp]);
  await syncFdb(b.netns, [a.fabricIp]);
  for (const n of [a, b]) await disableRedirects(n.netns);
  // An endpoint: a namespace on its node's bridge, default route via that node, httpd on 80.
  for (const [i, e] of eps.entries()) {
    const ns = epNs(i);
    const node = cluster.nodes[e.node];
    await ip(undefined, ['netns', 'add', ns]);
    await ip(node.netns, ['link', 'add', `v${e.name}`, 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await addBridgePort(node.netns, `v${e.name}`); // as the agent attaches a VM's tap (hairpin mode)
    await ip(ns, ['link', 'set', 'lo', 'up']);
    await ip(ns, ['addr', 'add', `${e.ip}/16`, 'dev', 'eth0']);
    await ip(ns, ['link', 'set', 'eth0', 'up']);
    await ip(ns, ['route', 'add', 'default', 'via', `10.244.0.${e.node + 1}`]);
    const www = join(dir, e.name);
    await mkdir(www);
    await writeFile(join(www, 'index.html'), `hostname=${e.name}\n`);
    await inNs(ns, ['busybox', 'httpd', '-p', '80', '-h', www]); // daemonizes
  }
});
after(async () => {
  if (cluster) for (let i = 0; i < eps.length; i++) await deleteNetns(epNs(i));
  await cluster?.destroy();
  await rm(dir, { recursive: true, force: true });
});

test('ClusterIP: spread over endpoints on both nodes (the remote one answers through masquerade); NodePort on each fabric address', async () => {
  await apply([
    slice(
      'web',
      eps.map((e) => e.ip),
    ),
  ]);
  const seen = new Map<string, number>();
  for (let i = 0; i < 30; i++) {
    const r = await curl(0, 'http://10.96.0.20:8080/');
    const h = /hostname=(\S+)/.exec(r.stdout)?.[1] ?? `error: ${r.stderr}`;
    seen.set(h, (seen.get(h) ?? 0) + 1);
  }
  assert.deepEqual([...seen.keys()].sort(), ['ep0', 'ep1'], JSON.stringify([...seen]));
  // From the endpoint's view the client is the node's gateway: that is what brings replies back.
  for (const [target, from] of [
    [0, 1],
    [1, 0],
  ]) {
    const r = await curl(from, `http://${cluster.nodes[target].fabricIp}:30080/`);
    assert.match(r.stdout, /hostname=ep[01]/, `NodePort on node ${target} from node ${from}: ${r.stderr}`);
  }
  // A VM as the client (ep0, to the endpoint on the other node), again and again: no ICMP
  // redirect sends it past the node.
  await apply([slice('web', [eps[1].ip])]);
  for (let i = 0; i < 8; i++) {
    const r = await fromEp(0, 'http://10.96.0.20:8080/');
    assert.match(r.stdout, /hostname=ep1/, r.stderr);
  }
});

test('hairpin: a VM whose Service connection is DNATed to itself is answered (by itself, through the node)', async () => {
  // ep0 is the only endpoint: every connection goes out to the node and back in by the same
  // bridge port. Without hairpin mode on that port the bridge drops it and curl times out.
  await apply([slice('web', [eps[0].ip])]);
  for (let i = 0; i < 4; i++) {
    const r = await fromEp(0, 'http://10.96.0.20:8080/');
    assert.match(r.stdout, /hostname=ep0/, `request ${i}: ${r.stderr}`);
  }
  // Both endpoints: ep0 as the client is answered every time, by both over the tries.
  await apply([
    slice(
      'web',
      eps.map((e) => e.ip),
    ),
  ]);
  const seen = new Map<string, number>();
  for (let i = 0; i < 16; i++) {
    const h = /hostname=(\S+)/.exec((await fromEp(0, 'http://10.96.0.20:8080/')).stdout)?.[1] ?? 'timeout';
    seen.set(h, (seen.get(h) ?? 0) + 1);
  }
  assert.deepEqual([...seen.keys()].sort(), ['ep0', 'ep1'], JSON.stringify([...seen]));
});

test('no ready endpoints: refused at once; a slice change is applied by replacing the table whole', async () => {
  const t0 = Date.now();
  const r = await curl(0, 'http://10.96.0.21/');
  assert.equal(r.code, 7, r.stderr); // could not connect: the reset came back, no timeout
  assert.ok(Date.now() - t0 < 1500);
  await apply([slice('web', [eps[0].ip])]);
  await apply([slice('web', [eps[0].ip])]);
  const table = (await inNs(cluster.nodes[0].netns, ['nft', 'list', 'table', 'ip', SERVICES_TABLE])).stdout;
  assert.equal(table.split('dnat to').length - 1, 1, table);
  assert.doesNotMatch(table, /10\.244\.1\.2/);
  for (let i = 0; i < 5; i++) assert.match((await curl(0, 'http://10.96.0.20:8080/')).stdout, /hostname=ep0/);
  // The routes follow the ClusterIPs.
  assert.deepEqual(await syncServiceRoutes(cluster.nodes[0].netns, ['10.96.0.20']), { added: [], removed: ['10.96.0.21'] });
  const routes = (await ip(cluster.nodes[0].netns, ['-4', 'route', 'show', 'proto', '77'])).stdout;
  assert.match(routes, /^10\.96\.0\.20 dev vsl-br0/m);
  assert.doesNotMatch(routes, /10\.96\.0\.21/);
});

test('DNS: dnsmasq answers Service names from its hosts file and re-reads it on change', async () => {
  const d = new Dnsmasq(cluster.nodes[0].netns, join(dir, 'dnsmasq'));
  await d.ensure({ gateway: '10.244.0.1', cidr: '10.244.0.0/16' });
  try {
    // dnsmasq re-reads on SIGHUP in its own time: ask until the answer is the expected one.
    const lookup = async (name: string, expect: RegExp, present = true) => {
      let out = '';
      for (let i = 0; i < 50; i++) {
        out = (await runInNode(cluster.nodes[0], ['busybox', 'nslookup', name, '10.244.0.1'])).stdout;
        if (expect.test(out) === present) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      return out;
    };
    await d.setDnsHosts(dnsHosts(serviceModels(SERVICES, [])));
    assert.match(await lookup('web.default.svc.cluster.local', /Address: 10\.96\.0\.20/), /Address: 10\.96\.0\.20/);
    assert.match(await lookup('web.default.svc', /Address: 10\.96\.0\.20/), /Address: 10\.96\.0\.20/);
    await d.setDnsHosts(dnsHosts(serviceModels([SERVICES[1]], [])));
    assert.doesNotMatch(await lookup('web.default.svc.cluster.local', /10\.96\.0\.20/, false), /10\.96\.0\.20/);
    assert.match(await lookup('nobody.default.svc.cluster.local', /Address: 10\.96\.0\.21/), /Address: 10\.96\.0\.21/);
    // The search list every guest gets (DHCP option 119).
    assert.ok(d.args({ gateway: '10.244.0.1', cidr: '10.244.0.0/16' }).includes('--dhcp-option=option:domain-search,svc.cluster.local,cluster.local'));
  } finally {
    await d.stop();
  }
});
