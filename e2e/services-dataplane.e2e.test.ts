/**
 * Services' data plane end to end on a three-node dev cluster (real QEMU, nftables, dnsmasq),
 * issue 12's acceptance: a NodePort Service over two tiny guests on nodes A and B answers on its
 * ClusterIP from a third node's guest (and namespace), spread over both; its NodePort answers on
 * every node's fabric address; its name (and a VM's hostname.subdomain) resolves, from a node and
 * from a guest; a Service without endpoints refuses at once; when one VM stops its endpoint
 * leaves the slice within 2 s (measured) and the Service keeps answering, also in the guest.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { IPADDRESSES, runInNode, type DevNode } from '@vessel/agent';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const SVC: ResourceRef = { group: '', version: 'v1', plural: 'services', namespaced: true };
const SLICES: ResourceRef = { group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', namespaced: true };
const ns = 'default';
type Obj = Record<string, unknown>;

let c: TestCluster;
let nodeA: DevNode;
let nodeB: DevNode;
let nodeC: DevNode;
let clusterIP = '';
let nodePort = 0;
const vmIp: Record<string, string> = {};

function webVm(name: string, node: string, userData: string, labels: Record<string, string> = { app: 'web' }): Obj {
  return tinyVm(name, {
    namespace: ns,
    node,
    binding: 'bridge',
    userData,
    labels,
    hostname: name,
    subdomain: 'web-h',
    storageClass: 'shared',
    terminationGracePeriodSeconds: 5,
  });
}

const curl = (n: DevNode, url: string) => runInNode(n, ['curl', '-sS', '--max-time', '3', url]);
const hostOf = (page: string) => /hostname=(\S+)/.exec(page)?.[1];
const readyIps = async (svc: string) =>
  (await c.client.list(SLICES, { namespace: ns, labelSelector: `kubernetes.io/service-name=${svc}` })).items
    .flatMap((s) => ((s as Obj).endpoints as { addresses: string[]; conditions?: { ready?: boolean } }[] | undefined) ?? [])
    .filter((e) => e.conditions?.ready !== false)
    .map((e) => e.addresses[0])
    .sort();
const gatewayOf = async (n: DevNode) =>
  (await c.client.list(IPADDRESSES)).items.find((o) => {
    const p = (o.spec as { parentRef?: Obj }).parentRef ?? {};
    return p.resource === 'nodes' && p.name === n.name;
  })!.metadata!.name!;

before(async () => {
  c = await startCluster({ nodes: 3 });
  [nodeA, nodeB, nodeC] = c.nodes.cluster.nodes;
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  if (!c) return;
  for (const s of ['web', 'web-h', 'nobody']) await c.client.delete(SVC, s, { namespace: ns }).catch(() => undefined);
  for (const vm of (await c.client.list(VM, { namespace: ns }).catch(() => ({ items: [] as KubeObject[] }))).items)
    await c.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

const clientSerial = () => serialLog(c.nodes.agents[2].dataDir, ns, 'client');
/** Who answered the client guest's requests, in order (its `VESSEL-SVC <hostname>` lines). */
const clientAnswers = async () => [...(await clientSerial()).matchAll(/^VESSEL-SVC (\S+)/gm)].map((m) => m[1]);

test('a ClusterIP/NodePort Service over two VMs on nodes A and B answers from a VM on node C, spread over both; NodePort on every node', async () => {
  // The Service first: its ClusterIP is in the create reply, and the client's user data polls it.
  const svc = await c.client.create(
    SVC,
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web', namespace: ns },
      spec: { type: 'NodePort', selector: { app: 'web' }, ports: [{ port: 8080, targetPort: 80, protocol: 'TCP' }] },
    },
    { namespace: ns },
  );
  const spec = svc.spec as { clusterIP: string; ports: { nodePort: number }[] };
  clusterIP = spec.clusterIP;
  nodePort = spec.ports[0].nodePort;
  await c.client.create(
    SVC,
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web-h', namespace: ns },
      spec: { clusterIP: 'None', selector: { app: 'web' }, ports: [{ port: 80 }] },
    },
    { namespace: ns },
  );
  // The client guest on node C (not selected by the Service) asks the Service once a second and
  // prints who answered (busybox nc: the guest's static busybox wget crashes).
  const poll =
    `#!/bin/sh\n(while true; do h=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${clusterIP} 8080 | sed -n 's/.*hostname=\\([^ ]*\\).*/\\1/p'); [ -n "$h" ] && echo "VESSEL-SVC $h"; sleep 1; done) &\n` +
    // And the resolver DHCP gave it (dnsmasq on its node's gateway, in /etc/resolv.conf)
    // answers the names: it prints what nslookup got, for a minute or three.
    `(i=0; while [ $i -lt 60 ]; do for n in web.default.svc.cluster.local web-b.web-h.default.svc.cluster.local; do echo "VESSEL-DNS $n $(nslookup $n 2>/dev/null | sed -n 's/^Address:[[:space:]]*//p' | grep -v ':53$' | tr '\\n' ' ')"; done; i=$((i+1)); sleep 3; done) &\n`;
  const vms = [
    { name: 'web-a', node: nodeA, userData: '#!/bin/sh\ntrue\n', labels: { app: 'web' } },
    { name: 'web-b', node: nodeB, userData: '#!/bin/sh\ntrue\n', labels: { app: 'web' } },
    { name: 'client', node: nodeC, userData: poll, labels: { app: 'client' } },
  ];
  for (const v of vms) await c.client.create(VM, webVm(v.name, v.node.name, v.userData, v.labels), { namespace: ns });
  for (const v of vms) {
    vmIp[v.name] = await eventually(
      `${v.name} Running with its IP`,
      async () => {
        const st = ((await c.client.get(VMI, v.name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as {
          phase?: string;
          interfaces?: { ipAddress?: string }[];
        };
        return st.phase === 'Running' ? st.interfaces?.[0]?.ipAddress : undefined;
      },
      300_000,
    );
  }
  for (const v of vms.slice(0, 2))
    await eventually(
      `${v.name} serving HTTP at ${vmIp[v.name]}`,
      async () => ((await curl(nodeC, `http://${vmIp[v.name]}/`)).stdout.includes('counter=') ? true : undefined),
      300_000,
    );
  await eventually('both endpoints ready in the slice', async () => ((await readyIps('web')).length === 2 ? true : undefined), 30_000);

  // The acceptance: the client guest on node C sees both backends through the ClusterIP.
  const answers = await eventually(
    'the client VM on node C answered by both web-a and web-b through the ClusterIP',
    async () => {
      const a = await clientAnswers();
      return a.includes('web-a') && a.includes('web-b') ? a : undefined;
    },
    300_000,
    500,
  ).catch(async (e: Error) => {
    throw new Error(`${e.message}\n--- client's serial console (tail)\n${(await clientSerial()).slice(-2000)}`);
  });
  console.log(
    `figures: the client VM on node C: ${answers.length} answers so far, web-a ${answers.filter((h) => h === 'web-a').length}, web-b ${answers.filter((h) => h === 'web-b').length}`,
  );

  // Through the ClusterIP from node C's namespace too: both backends answer over a few requests.
  const seen = new Set<string>();
  await eventually(
    `both VMs answering through ${clusterIP}:8080 from node C`,
    async () => {
      const r = await curl(nodeC, `http://${clusterIP}:8080/`);
      const h = hostOf(r.stdout);
      if (h) seen.add(h);
      return seen.size === 2 ? true : undefined;
    },
    30_000,
    50,
  );
  assert.deepEqual([...seen].sort(), ['web-a', 'web-b']);
  // The NodePort on each of the three nodes' fabric addresses, asked from the next node (node C
  // has no endpoint: its NodePort forwards to both others).
  const nodes = [nodeA, nodeB, nodeC];
  for (const [i, target] of nodes.entries()) {
    const from = nodes[(i + 1) % nodes.length];
    const r = await curl(from, `http://${target.fabricIp}:${nodePort}/`);
    assert.match(r.stdout, /counter=/, `NodePort ${nodePort} on ${target.name} (${target.fabricIp}) from ${from.name}: ${r.stderr}`);
  }

  // Latency: curls through the ClusterIP, and straight to the two VMs alternately (the same mix
  // of backends as the random spread: both remote from node C), from node C; medians.
  const timing = async (urls: string[], n = 15) => {
    const t: number[] = [];
    for (let i = 0; i < n; i++)
      t.push(
        Number((await runInNode(nodeC, ['curl', '-sS', '-o', '/dev/null', '-w', '%{time_total}', '--max-time', '3', urls[i % urls.length]])).stdout) * 1000,
      );
    return t.sort((x, y) => x - y)[Math.floor(n / 2)];
  };
  const viaSvc = await timing([`http://${clusterIP}:8080/`]);
  const direct = await timing([`http://${vmIp['web-a']}/`, `http://${vmIp['web-b']}/`]);
  console.log(
    `figures: HTTP via ClusterIP ${viaSvc.toFixed(2)} ms / direct to the VMs ${direct.toFixed(2)} ms (medians of 15, TCG guests) = ${(viaSvc / direct).toFixed(2)}`,
  );
});

test('DNS at the node and from a guest: the Service name gives its ClusterIP, a VM hostname.subdomain its address', async () => {
  const gw = await gatewayOf(nodeA);
  const lookup = async (name: string) => (await runInNode(nodeA, ['busybox', 'nslookup', name, gw])).stdout;
  for (const name of ['web.default.svc.cluster.local', 'web.default.svc']) {
    const out = await eventually(
      `${name} resolving`,
      async () => {
        const o = await lookup(name);
        return o.includes(clusterIP) ? o : undefined;
      },
      10_000,
    );
    assert.match(out, new RegExp(`Address: ${clusterIP.replace(/\./g, '\\.')}`));
  }
  const a = await eventually(
    'web-a.web-h.default.svc.cluster.local resolving',
    async () => {
      const o = await lookup('web-a.web-h.default.svc.cluster.local');
      return o.includes(vmIp['web-a']) ? o : undefined;
    },
    10_000,
  );
  assert.doesNotMatch(a, new RegExp(vmIp['web-b'].replace(/\./g, '\\.')));
  // From inside a guest (the client on node C), through the resolver DHCP gave it.
  const serial = clientSerial;
  for (const [name, want] of [
    ['web.default.svc.cluster.local', clusterIP],
    ['web-b.web-h.default.svc.cluster.local', vmIp['web-b']],
  ]) {
    await eventually(
      `the client VM resolving ${name} to ${want}`,
      async () => ((await serial()).split('\n').some((l) => l.startsWith(`VESSEL-DNS ${name} `) && l.split(' ').includes(want)) ? true : undefined),
      60_000,
    ).catch(async (e: Error) => {
      throw new Error(
        `${e.message}\n${(await serial())
          .split('\n')
          .filter((l) => l.includes('VESSEL-DNS'))
          .slice(-4)
          .join('\n')}`,
      );
    });
  }
  const headless = await lookup('web-h.default.svc.cluster.local');
  for (const ip of [vmIp['web-a'], vmIp['web-b']]) assert.ok(headless.includes(ip), `the headless Service lists ${ip}: ${headless}`);
});

test('a Service without ready endpoints refuses at once rather than hanging', async () => {
  const svc = await c.client.create(
    SVC,
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'nobody', namespace: ns }, spec: { selector: { app: 'nobody' }, ports: [{ port: 80 }] } },
    { namespace: ns },
  );
  const ip = (svc.spec as { clusterIP: string }).clusterIP;
  const r = await eventually(
    'connection refused',
    async () => {
      const t0 = Date.now();
      const o = await curl(nodeA, `http://${ip}/`);
      return o.code === 7 ? { ms: Date.now() - t0, o } : undefined;
    },
    15_000,
  );
  assert.equal(r.o.code, 7, r.o.stderr);
  assert.ok(r.ms < 1500, `refused within ${r.ms} ms`);
});

test('when one VM stops, its endpoint leaves the slice within 2 s and the Service keeps answering', async () => {
  const t0 = Date.now();
  await c.client.patch(VM, 'web-b', { spec: { runStrategy: 'Halted' } }, { namespace: ns });
  await eventually('web-b out of the ready endpoints', async () => ((await readyIps('web')).includes(vmIp['web-b']) ? undefined : true), 30_000, 20);
  const sliceMs = Date.now() - t0;
  // And out of node B's table (nft lists the rules the node applies).
  await eventually(
    "node B's table without web-b",
    async () => ((await runInNode(nodeB, ['nft', 'list', 'table', 'ip', 'vessel-services'])).stdout.includes(vmIp['web-b']) ? undefined : true),
    10_000,
    20,
  );
  const ruleMs = Date.now() - t0;
  console.log(`figures: VM stop requested → endpoint out of the slice ${sliceMs} ms, out of node B's nftables ${ruleMs} ms`);
  assert.ok(sliceMs < 2000, `the endpoint left in ${sliceMs} ms`);
  for (let i = 0; i < 6; i++) {
    const r = await curl(nodeB, `http://${clusterIP}:8080/`);
    assert.equal(hostOf(r.stdout), 'web-a', `request ${i} answered by web-a: ${r.stderr}`);
  }
  // The client guest on node C keeps being answered, by web-a alone, once node C's table has it.
  await eventually(
    "node C's table without web-b",
    async () => ((await runInNode(nodeC, ['nft', 'list', 'table', 'ip', 'vessel-services'])).stdout.includes(vmIp['web-b']) ? undefined : true),
    10_000,
    20,
  );
  // The first answer after this point may come from a request that was already on its way to web-b.
  const seenBefore = (await clientAnswers()).length + 1;
  const later = await eventually(
    'three more answers to the client VM',
    async () => {
      const a = (await clientAnswers()).slice(seenBefore);
      return a.length >= 3 ? a : undefined;
    },
    60_000,
    500,
  );
  assert.deepEqual(
    later,
    later.map(() => 'web-a'),
    `answers to the client after web-b stopped: ${later.join(' ')}`,
  );
});
