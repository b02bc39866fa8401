/**
 * NetworkPolicy's table on a real bridge, without QEMU: a node namespace with vsl-br0 and two
 * "guests" (namespaces of their own whose veth ends are named and bridged as the agent's taps),
 * a listener on 80 and 8080 in one, connections from the other and from the node. Everything is
 * made inside namespaces this test creates and deletes.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { BRIDGE, ensureBridge, setBridgeAddress } from './bridge.ts';
import { inNs, ip, netnsPath } from './exec.ts';
import { bridgeConntrack, installPolicyRuleset, policyRuleset, removePolicyRuleset, type PolicyObject, type PolicyVm } from './policy.ts';
import { tapName } from './taps.ts';

const id = randomBytes(3).toString('hex');
const node = `vsl-${id}-pn`;
const guests = { a: `vsl-${id}-pa`, b: `vsl-${id}-pb` };
const client: PolicyVm = { namespace: 'a', name: 'client', labels: { app: 'client' }, ip: '10.244.1.1' };
const web: PolicyVm = { namespace: 'b', name: 'web', labels: { app: 'web' }, ip: '10.244.2.1' };
const GATEWAY = '10.244.0.1';
let server: ChildProcess | undefined;
let conntrack = false;

before(async () => {
  for (const ns of [node, guests.a, guests.b]) await ip(undefined, ['netns', 'add', ns]);
  await ensureBridge(node);
  await setBridgeAddress(node, `${GATEWAY}/16`);
  for (const [g, v] of [
    [guests.a, client],
    [guests.b, web],
  ] as const) {
    const tap = tapName(v.namespace, v.name);
    await ip(node, ['link', 'add', tap, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', g]);
    await ip(node, ['link', 'set', tap, 'master', BRIDGE, 'up']);
    await ip(g, ['addr', 'add', `${v.ip}/16`, 'dev', 'eth0']);
    await ip(g, ['link', 'set', 'eth0', 'up']);
    await ip(g, ['link', 'set', 'lo', 'up']);
  }
  // The "guest" b serves TCP on 80 and 8080, as the tiny guest does.
  server = spawn(
    'nsenter',
    [
      `--net=${netnsPath(guests.b)}`,
      '--',
      process.execPath,
      '-e',
      "const net=require('net');for(const p of [80,8080])net.createServer((s)=>{s.on('error',()=>{});s.end('ok\\n');}).listen(p,'0.0.0.0');",
    ],
    { stdio: 'ignore' },
  );
  conntrack = await bridgeConntrack(node);
  // The listener is up once a connection from the node succeeds.
  for (let i = 0; i < 50 && !(await reach(node, web.ip!, 80)); i++) await new Promise((r) => setTimeout(r, 100));
});

after(async () => {
  server?.kill();
  for (const ns of [node, guests.a, guests.b]) await ip(undefined, ['netns', 'del', ns], { okCodes: [1, 255] });
});

/** Whether a TCP connection from `ns` to ip:port completes within a second. */
async function reach(ns: string, host: string, port: number): Promise<boolean> {
  const r = await inNs(
    ns,
    [
      process.execPath,
      '-e',
      `const s=require('net').connect(${port},'${host}',()=>process.exit(0));s.on('error',()=>process.exit(1));setTimeout(()=>process.exit(2),1000);`,
    ],
    { okCodes: [1, 2] },
  );
  return r.code === 0;
}

async function apply(policies: PolicyObject[]): Promise<void> {
  await installPolicyRuleset(
    node,
    policyRuleset({
      local: [client, web],
      policiesIn: (ns) => policies.filter((p) => p.namespace === ns),
      vmsIn: (ns) => [client, web].filter((v) => v.namespace === ns),
      namespaces: () => [
        { name: 'a', labels: {} },
        { name: 'b', labels: {} },
      ],
      nodeAddress: GATEWAY,
      conntrack,
    }),
  );
}

test("without a policy everything reaches b's VM", async () => {
  await apply([]);
  assert.equal(await reach(guests.a, web.ip!, 80), true);
  assert.equal(await reach(guests.a, web.ip!, 8080), true);
});

test('default-deny ingress in b: a cannot reach b; b still reaches a (answers pass); the node still reaches b', async () => {
  await apply([{ namespace: 'b', name: 'deny', spec: { podSelector: {}, policyTypes: ['Ingress'] } }]);
  assert.equal(await reach(guests.a, web.ip!, 80), false);
  assert.equal(await reach(guests.a, web.ip!, 8080), false);
  assert.equal(await reach(node, web.ip!, 8080), true, 'the node is not isolated from its VMs');
  const serverA = spawn(
    'nsenter',
    [`--net=${netnsPath(guests.a)}`, '--', process.execPath, '-e', "require('net').createServer((s)=>{s.on('error',()=>{});s.end();}).listen(9000)"],
    { stdio: 'ignore' },
  );
  try {
    let ok = false;
    for (let i = 0; i < 30 && !ok; i++) {
      ok = await reach(guests.b, client.ip!, 9000);
      if (!ok) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(ok, true, "b opens a connection to a: its answers come back through b's isolated ingress");
  } finally {
    serverA.kill();
  }
});

test('an allow rule for TCP 80 from namespace a opens exactly that port', async () => {
  await apply([
    { namespace: 'b', name: 'deny', spec: { podSelector: {}, policyTypes: ['Ingress'] } },
    {
      namespace: 'b',
      name: 'web-from-a',
      spec: {
        podSelector: { matchLabels: { app: 'web' } },
        ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'a' } } }], ports: [{ protocol: 'TCP', port: 80 }] }],
      },
    },
  ]);
  assert.equal(await reach(guests.a, web.ip!, 80), true);
  assert.equal(await reach(guests.a, web.ip!, 8080), false);
});

test("egress isolation of a's VM: only the listed destination port; the table goes away whole", async () => {
  await apply([
    {
      namespace: 'a',
      name: 'out',
      spec: { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '10.244.2.0/24' } }], ports: [{ port: 8080 }] }] },
    },
  ]);
  assert.equal(await reach(guests.a, web.ip!, 8080), true);
  assert.equal(await reach(guests.a, web.ip!, 80), false);
  await removePolicyRuleset(node);
  assert.equal(await reach(guests.a, web.ip!, 80), true);
  const listed = await inNs(node, ['nft', 'list', 'tables']);
  assert.doesNotMatch(listed.stdout, /vessel_policy/);
});
