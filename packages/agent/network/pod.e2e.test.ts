/**
 * The masquerade pod with the real tools, no QEMU: made in a one-node dev cluster, its veth,
 * addresses, nftables table and dnsmasq are there; made again it keeps its dnsmasq; listed,
 * removed; and one left behind goes with the dev cluster's destroy.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureBridge, setBridgeAddress } from './bridge.ts';
import { createDevCluster, type DevCluster } from './devcluster.ts';
import { inNs, ip } from './exec.ts';
import { ensurePod, listPods, podNetnsName, podStateDir, removePod } from './pod.ts';
import { tapName } from './taps.ts';

let cluster: DevCluster;
let stateDir: string;
const spec = { ip: '10.244.3.7', prefix: 16, mac: '0a:58:0a:f4:03:07', dns: '10.244.0.1', namespace: 'default', hostname: 'web' };

before(async () => {
  cluster = await createDevCluster({ nodes: 1 });
  stateDir = await mkdtemp(join(tmpdir(), 'vessel-pod-'));
  await ensureBridge(cluster.nodes[0].netns);
  await setBridgeAddress(cluster.nodes[0].netns, '10.244.0.1/16');
});
after(async () => {
  await cluster?.destroy();
  await rm(stateDir, { recursive: true, force: true });
});

test('a pod: veth on vsl-br0, eth0 with the cluster IP, k6t-eth0 + tap0, nftables, dnsmasq; made again it keeps its dnsmasq; removed', async () => {
  const node = cluster.nodes[0].netns;
  const pod = await ensurePod(node, stateDir, 'default', 'web', spec);
  assert.equal(pod, podNetnsName(node, 'default', 'web'));
  assert.deepEqual(await listPods(node), [pod]);
  assert.match((await ip(node, ['-d', 'link', 'show', 'dev', tapName('default', 'web')])).stdout, /master vsl-br0[\s\S]*veth/);
  assert.match((await ip(pod, ['-4', '-o', 'addr', 'show', 'dev', 'eth0'])).stdout, /inet 10\.244\.3\.7\/16/);
  assert.match((await ip(pod, ['link', 'show', 'dev', 'eth0'])).stdout, /link\/ether 0a:58:0a:f4:03:07/);
  assert.match((await ip(pod, ['route'])).stdout, /default via 10\.244\.0\.1 dev eth0/);
  assert.match((await ip(pod, ['-4', '-o', 'addr', 'show', 'dev', 'k6t-eth0'])).stdout, /inet 10\.0\.2\.1\/24/);
  assert.match((await ip(pod, ['-d', 'link', 'show', 'dev', 'tap0'])).stdout, /master k6t-eth0/);
  assert.match((await inNs(pod, ['nft', 'list', 'table', 'ip', 'vessel-masq'])).stdout, /dnat to 10\.0\.2\.2/);
  // The node finds the pod's eth0 over vsl-br0 (the echo itself is DNATed to a guest that is not there).
  await inNs(node, ['busybox', 'ping', '-c', '1', '-W', '1', spec.ip], { okCodes: [0, 1] });
  assert.match((await ip(node, ['neigh', 'show', spec.ip])).stdout, /lladdr 0a:58:0a:f4:03:07/);
  const pidFile = join(podStateDir(stateDir, pod), 'dnsmasq.pid');
  const pid = (await readFile(pidFile, 'utf8')).trim();
  await ensurePod(node, stateDir, 'default', 'web', spec);
  assert.equal((await readFile(pidFile, 'utf8')).trim(), pid, 'the same dnsmasq');
  await removePod(node, stateDir, pod);
  assert.deepEqual(await listPods(node), []);
  assert.equal((await ip(node, ['link', 'show', 'dev', tapName('default', 'web')], { okCodes: [1, 255] })).code !== 0, true, 'the veth is gone');
  assert.equal(await readFile(pidFile, 'utf8').catch(() => 'gone'), 'gone');
});

test("a pod left behind goes with the dev cluster's destroy", async () => {
  const other = await createDevCluster({ nodes: 1 });
  try {
    await ensureBridge(other.nodes[0].netns);
    const pod = await ensurePod(other.nodes[0].netns, stateDir, 'default', 'left', { ...spec, ip: '10.244.3.8', mac: '0a:58:0a:f4:03:08' });
    assert.ok(pod.startsWith(`${other.nodes[0].netns}-p`));
  } finally {
    await other.destroy();
  }
  assert.ok(!(await ip(undefined, ['netns', 'list'])).stdout.includes(`${other.nodes[0].netns}-p`), 'destroy removes the pods');
});
