/**
 * The official JavaScript client (@kubernetes/client-node 1.4) works against Vessel: an
 * informer over VirtualMachines sees adds, updates and deletes, and carries on after the
 * server restarts (its documented pattern: restart the informer on error).
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { findByResource } from '@vessel/api';
import { startVessel, vm, type Vessel } from './harness.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;

async function eventually(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('@kubernetes/client-node against vessel', () => {
  let v: Vessel;
  before(async () => {
    v = await startVessel();
  });
  after(async () => {
    await v?.close();
  });

  it('runs an informer over VirtualMachines across a server restart', async () => {
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(v.kubeconfig);
    const custom = kc.makeApiClient(k8s.CustomObjectsApi);
    const list = () =>
      custom.listNamespacedCustomObject({ group: 'kubevirt.io', version: 'v1', namespace: 'default', plural: 'virtualmachines' }) as Promise<
        k8s.KubernetesListObject<k8s.KubernetesObject>
      >;
    const informer = k8s.makeInformer(kc, '/apis/kubevirt.io/v1/namespaces/default/virtualmachines', list);
    const seen: string[] = [];
    let errors = 0;
    let stopped = false;
    informer.on('add', (o) => seen.push(`add ${o.metadata?.name}`));
    informer.on('update', (o) => seen.push(`update ${o.metadata?.name} ${o.metadata?.labels?.step ?? ''}`.trim()));
    informer.on('delete', (o) => seen.push(`delete ${o.metadata?.name}`));
    informer.on('error', () => {
      errors++;
      if (!stopped)
        setTimeout(() => {
          if (!stopped) void informer.start().catch(() => {});
        }, 200);
    });
    await informer.start();
    try {
      await v.client.create(VM, vm('inf1'));
      await eventually(() => seen.includes('add inf1'), 'add inf1');
      await v.client.patch(VM, 'inf1', { metadata: { labels: { step: 'one' } } });
      await eventually(() => seen.includes('update inf1 one'), 'update inf1');

      // Restart the server on the same port and data directory.
      const port = v.server.port;
      await v.stop();
      v = await startVessel({ dataDir: v.dataDir, listen: `127.0.0.1:${port}` });
      await v.client.create(VM, vm('inf2'));
      await v.client.patch(VM, 'inf1', { metadata: { labels: { step: 'two' } } });
      await v.client.delete(VM, 'inf1');
      await eventually(() => seen.includes('add inf2') && seen.includes('delete inf1'), 'events after the restart');
      assert.ok(errors >= 1, 'the informer noticed the restart');
      assert.deepEqual(
        informer
          .list()
          .map((o) => o.metadata?.name)
          .sort(),
        ['inf2'],
      );
    } finally {
      stopped = true;
      await informer.stop();
    }
  });
});
