/**
 * NodeNetworkConfigurationPolicy on a two-node dev cluster (no guests): a vlan on fab0 and a
 * bridge with it on both nodes whose addresses reach each other across the fabric, a policy for
 * one node only, a port that does not exist (reported, nothing changed), a policy that cuts a
 * node off (probe fails, rolled back), `state: absent`, and refusals at admission. Everything
 * happens inside the cluster's own namespaces, which close() deletes.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { refs } from '@vessel/api';
import { runInNode } from '@vessel/agent';
import type { KubeObject } from '@vessel/client';
import { eventually, kubectlFor, KUBECTL_SKIP, rejects, startCluster, type TestCluster } from './harness.ts';

type Cond = { type: string; status: string; reason: string; message: string };
const trueCond = (o: KubeObject | undefined): Cond | undefined =>
  ((o?.status as { conditions?: Cond[] } | undefined)?.conditions ?? []).find((c) => c.status === 'True');

const policy = (name: string, interfaces: unknown[], nodeSelector?: Record<string, string>): KubeObject => ({
  apiVersion: 'nmstate.io/v1',
  kind: 'NodeNetworkConfigurationPolicy',
  metadata: { name },
  spec: { ...(nodeSelector ? { nodeSelector } : {}), desiredState: { interfaces } },
});

describe('NodeNetworkConfigurationPolicy', () => {
  let c: TestCluster;
  const { ok } = kubectlFor(() => c);
  const node = (i: number) => c.nodes.cluster.nodes[i];
  const inNode = (i: number, argv: string[]) => runInNode(node(i), argv).catch((e: Error) => ({ code: 1, stdout: '', stderr: e.message }));
  const hasLink = async (i: number, name: string) => (await inNode(i, ['ip', 'link', 'show', 'dev', name])).code === 0;
  const get = (res: typeof refs.NNCPS, name: string) => c.client.get(res, name).catch(() => undefined);
  /** Waits until the object's True condition is `type` (and for a policy, of its current generation's enactments). */
  const settled = (res: typeof refs.NNCPS, name: string, type: string, timeoutMs = 90_000) =>
    eventually(
      `${res.plural}/${name} ${type}`,
      async () => {
        const o = await get(res, name);
        const cond = trueCond(o);
        return cond?.type === type ? cond : undefined;
      },
      timeoutMs,
      300,
    );

  before(async () => {
    c = await startCluster({ nodes: 2, nncpProbeTimeoutMs: 4000 });
  });
  after(async () => {
    await c?.close();
  });

  it('refuses bad policies with 422 naming the field, and stores nothing', async () => {
    const cases: [unknown[], RegExp][] = [
      [[{ name: 'x0', type: 'bond' }], /spec\.desiredState\.interfaces\[0\]\.type/],
      [[{ name: 'v', type: 'vlan', vlan: { 'base-iface': 'fab0', id: 5000 } }], /spec\.desiredState\.interfaces\[0\]\.vlan\.id/],
      [[{ name: 'v', type: 'vlan', vlan: { id: 5 } }], /spec\.desiredState\.interfaces\[0\]\.vlan\.base-iface/],
      [[{ name: 'b', type: 'linux-bridge', ipv4: { enabled: true, address: [{ ip: '10.0.0.1', 'prefix-length': 40 }] } }], /ipv4\.address\[0\]\.prefix-length/],
      [[{ name: 'bad/name', type: 'linux-bridge' }], /spec\.desiredState\.interfaces\[0\]\.name/],
    ];
    for (const [ifaces, field] of cases) {
      const e = await rejects(c.client.create(refs.NNCPS, policy('bad', ifaces)), 422, field);
      assert.ok(
        e.causes.some((x) => field.test(x.field ?? '')),
        'the cause names the field',
      );
    }
    await rejects(c.client.get(refs.NNCPS, 'bad'), 404);
  });

  it('vlan 100 on fab0 and bridge br-v100 on both nodes; per-node addresses reach each other over it', async () => {
    await c.client.create(
      refs.NNCPS,
      policy('br-v100', [
        { name: 'fab0.100', type: 'vlan', state: 'up', vlan: { 'base-iface': 'fab0', id: 100 } },
        { name: 'br-v100', type: 'linux-bridge', state: 'up', bridge: { options: { stp: { enabled: false } }, port: [{ name: 'fab0.100' }] } },
      ]),
    );
    const avail = await settled(refs.NNCPS, 'br-v100', 'Available');
    assert.equal(avail.reason, 'SuccessfullyConfigured');
    assert.equal(avail.message, '2/2 nodes successfully configured');
    for (const n of ['node-0', 'node-1']) assert.equal(trueCond(await get(refs.NNCES, `${n}.br-v100`))?.reason, 'SuccessfullyConfigured');
    // One address per node: a policy per node, selected by its hostname label.
    for (const i of [0, 1]) {
      const addr = {
        name: 'br-v100',
        type: 'linux-bridge',
        ipv4: { enabled: true, dhcp: false, address: [{ ip: `192.168.100.${i + 1}`, 'prefix-length': 24 }] },
      };
      await c.client.create(refs.NNCPS, policy(`br-v100-ip-${i}`, [addr], { 'kubernetes.io/hostname': `node-${i}` }));
    }
    for (const i of [0, 1]) {
      const cond = await settled(refs.NNCPS, `br-v100-ip-${i}`, 'Available');
      assert.equal(cond.message, '1/1 nodes successfully configured');
      // Only the selected node has an enactment (and the address).
      assert.equal(await get(refs.NNCES, `node-${1 - i}.br-v100-ip-${i}`), undefined);
    }
    const shown = (await inNode(0, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'br-v100'])).stdout;
    assert.match(shown, /192\.168\.100\.1\/24/);
    assert.doesNotMatch(shown, /192\.168\.100\.2/);
    const ping = await inNode(0, ['busybox', 'ping', '-c', '2', '-W', '3', '192.168.100.2']);
    assert.equal(ping.code, 0, `node-0's bridge pings node-1's over vlan 100: ${ping.stdout}${ping.stderr}`);
    assert.match((await inNode(0, ['ip', 'route', 'get', '192.168.100.2'])).stdout, /dev br-v100/);
    // NodeNetworkState lists the bridge with its port and address.
    const nns = await eventually('NNS with br-v100 and its address', async () => {
      const s = await get(refs.NNSS, 'node-0');
      const ifaces = ((s?.status as { currentState?: { interfaces?: Record<string, unknown>[] } } | undefined)?.currentState?.interfaces ?? []) as {
        name: string;
        type: string;
        ipv4: { address: { ip: string }[] };
        bridge?: { port: { name: string }[] };
        vlan?: { 'base-iface': string; id: number };
      }[];
      const br = ifaces.find((x) => x.name === 'br-v100');
      return br?.ipv4.address.some((a) => a.ip === '192.168.100.1') ? { ifaces, br, s } : undefined;
    });
    assert.equal(nns.br.type, 'linux-bridge');
    assert.deepEqual(nns.br.bridge?.port, [{ name: 'fab0.100' }]);
    assert.deepEqual(nns.ifaces.find((x) => x.name === 'fab0.100')?.vlan, { 'base-iface': 'fab0', id: 100 });
    assert.ok((nns.s?.status as { lastSuccessfulUpdateTime?: string }).lastSuccessfulUpdateTime);
    // `ip` changes do not persist: a node that lost them (a reboot; here, deleted by hand) gets
    // them back when its agent starts.
    await inNode(1, ['ip', 'link', 'del', 'br-v100']);
    await c.nodes.restartAgent(1);
    const back = await eventually('node-1 reaches node-0 over br-v100 again', async () => {
      const r = await inNode(1, ['busybox', 'ping', '-c', '1', '-W', '2', '192.168.100.1']);
      return r.code === 0 ? r : undefined;
    });
    assert.equal(back.code, 0);
    if (!KUBECTL_SKIP) {
      assert.match(await ok(['get', 'nncp', 'br-v100']), /^br-v100\s+Available\s+SuccessfullyConfigured/m);
      assert.match(await ok(['get', 'nnce', 'node-0.br-v100']), /^node-0\.br-v100\s+Available\s+\S+\s+SuccessfullyConfigured/m);
    }
  });

  it('a port that does not exist on the node: Failing naming it, nothing changed', async () => {
    const before = (await inNode(0, ['ip', '-o', 'link', 'show'])).stdout;
    await c.client.create(
      refs.NNCPS,
      policy('missing-port', [{ name: 'br-x', type: 'linux-bridge', bridge: { port: [{ name: 'nope0' }] } }], { 'kubernetes.io/hostname': 'node-0' }),
    );
    const cond = await settled(refs.NNCES, 'node-0.missing-port', 'Failing');
    assert.equal(cond.reason, 'FailedToConfigure');
    assert.match(cond.message, /spec\.desiredState\.interfaces\[0\]\.bridge\.port\[0\]\.name: port nope0 does not exist/);
    assert.match(cond.message, /nothing was changed/);
    assert.equal(await hasLink(0, 'br-x'), false);
    assert.equal((await inNode(0, ['ip', '-o', 'link', 'show'])).stdout, before);
    const p = await settled(refs.NNCPS, 'missing-port', 'Degraded');
    assert.equal(p.message, '1/1 nodes failed to configure');
    await c.client.delete(refs.NNCPS, 'missing-port');
    await eventually('the enactment of a deleted policy goes', async () => ((await get(refs.NNCES, 'node-0.missing-port')) ? undefined : true));
  });

  it('a policy that cuts the node off (fab0 down) is rolled back after the probe fails', async () => {
    await c.client.create(refs.NNCPS, policy('cut-off', [{ name: 'fab0', type: 'ethernet', state: 'down' }], { 'kubernetes.io/hostname': 'node-0' }));
    const cond = await settled(refs.NNCES, 'node-0.cut-off', 'Failing');
    assert.equal(cond.reason, 'FailedToConfigure');
    assert.match(cond.message, /connectivity probe failed \(node fabric address 10\.233\.0\.11 does not answer ping for 4s\); rolled back/);
    assert.match((await inNode(0, ['ip', '-o', 'link', 'show', 'dev', 'fab0'])).stdout, /<[^>]*\bUP\b/);
    assert.match((await inNode(0, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'fab0'])).stdout, /10\.233\.0\.10\/24/);
    const ping = await inNode(0, ['busybox', 'ping', '-c', '1', '-W', '3', node(1).fabricIp]);
    assert.equal(ping.code, 0, 'node-0 reaches node-1 again');
    await c.client.delete(refs.NNCPS, 'cut-off');
  });

  it('deleting a policy keeps what it made (as nmstate); state: absent removes the bridge and the vlan on both nodes', async () => {
    await c.client.delete(refs.NNCPS, 'br-v100');
    await eventually('the enactments of a deleted policy go', async () => ((await get(refs.NNCES, 'node-0.br-v100')) ? undefined : true));
    for (const i of [0, 1]) assert.equal(await hasLink(i, 'br-v100'), true);
    await c.client.create(
      refs.NNCPS,
      policy('no-br-v100', [
        { name: 'br-v100', state: 'absent' },
        { name: 'fab0.100', state: 'absent' },
      ]),
    );
    assert.equal((await settled(refs.NNCPS, 'no-br-v100', 'Available')).message, '2/2 nodes successfully configured');
    for (const i of [0, 1]) {
      assert.equal(await hasLink(i, 'br-v100'), false);
      assert.equal(await hasLink(i, 'fab0.100'), false);
      assert.equal(await hasLink(i, 'fab0'), true);
    }
  });
});
