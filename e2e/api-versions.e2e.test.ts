/**
 * A kind served at two versions, through an unmodified kubectl (real server, no agent, no guest):
 * KubeVirt's vm-pool-cirros.yaml (pool.kubevirt.io/v1beta1) applied, read and watched at
 * v1beta1 and v1alpha1 (`virtualmachinepools.v1alpha1.pool.kubevirt.io`), while the pool
 * controller writes it at v1alpha1; one object whatever the version (docs/api-versions.md).
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { eventually, KUBECTL_SKIP, kubectlFor, startVessel, type Vessel } from './harness.ts';

const NS = 'api-versions';
const EXAMPLE = join(import.meta.dirname, 'testdata', 'kubevirt-examples', 'vm-pool-cirros.yaml');
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const ALPHA = 'virtualmachinepools.v1alpha1.pool.kubevirt.io';
const BETA = 'virtualmachinepools.v1beta1.pool.kubevirt.io';

let v: Vessel;
const { ok } = kubectlFor(() => v);
const watchers: ChildProcess[] = [];
const started = performance.now();

before(async () => {
  if (KUBECTL_SKIP) return;
  v = await startVessel();
  await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
});
after(async () => {
  for (const w of watchers) w.kill();
  if (!v) return;
  await v.client.delete(NAMESPACES, NS).catch(() => undefined);
  await v.close();
  console.log(`# api-versions.e2e.test.ts: ${((performance.now() - started) / 1000).toFixed(1)} s`);
});

/** `kubectl get RESOURCE -w` printing apiVersion and spec.replicas per event. */
function watch(resource: string): { lines: () => string[] } {
  const p = spawn('kubectl', ['--kubeconfig', v.kubeconfig, 'get', resource, '-n', NS, '-w', '-o', 'jsonpath={.apiVersion} {.spec.replicas}{"\\n"}']);
  watchers.push(p);
  let out = '';
  p.stdout.on('data', (d) => {
    out += d;
  });
  return { lines: () => out.split('\n').filter((l) => l.trim()) };
}

test('vm-pool-cirros.yaml at v1beta1: get, list and watch at both versions, one object', { skip: KUBECTL_SKIP, timeout: 120_000 }, async () => {
  assert.match(await ok(['apply', '-n', NS, '-f', EXAMPLE]), /virtualmachinepool.pool.kubevirt.io\/vm-pool-cirros created/);
  // Discovery: both versions, v1beta1 preferred (what `kubectl get vmpool` uses).
  const versions = (await ok(['api-versions'])).split('\n').filter((l) => l.startsWith('pool.kubevirt.io/'));
  assert.deepEqual(versions.sort(), ['pool.kubevirt.io/v1alpha1', 'pool.kubevirt.io/v1beta1']);
  const get = async (resource: string, path: string) => (await ok(['get', resource, 'vm-pool-cirros', '-n', NS, '-o', `jsonpath=${path}`])).trim();
  assert.equal(await get('vmpool', '{.apiVersion}'), 'pool.kubevirt.io/v1beta1');
  assert.equal(await get(ALPHA, '{.apiVersion}'), 'pool.kubevirt.io/v1alpha1');
  assert.equal(await get(BETA, '{.apiVersion}'), 'pool.kubevirt.io/v1beta1');
  assert.equal(await get(ALPHA, '{.metadata.resourceVersion}'), await get(BETA, '{.metadata.resourceVersion}'));
  assert.equal(await get(ALPHA, '{.metadata.uid}'), await get(BETA, '{.metadata.uid}'));
  // The pool controller writes status at v1alpha1; both versions show it, with KubeVirt's columns.
  await eventually('3 current replicas at v1beta1', async () => ((await get(BETA, '{.status.replicas}')) === '3' ? true : undefined), 60_000, 300);
  for (const r of [ALPHA, BETA]) assert.match(await ok(['get', r, '-n', NS]), /^vm-pool-cirros\s+3\s+3\s+/m);
  // Watches at both versions see a change made through the other version's scale subresource.
  const a = watch(ALPHA);
  const b = watch(BETA);
  await eventually('initial watch rows', async () => (a.lines().length && b.lines().length ? true : undefined), 30_000, 200);
  await ok(['scale', ALPHA, 'vm-pool-cirros', '-n', NS, '--replicas', '0']);
  await ok(['patch', BETA, 'vm-pool-cirros', '-n', NS, '--type', 'merge', '-p', '{"spec":{"replicas":1}}']);
  for (const [w, version] of [
    [a, 'v1alpha1'],
    [b, 'v1beta1'],
  ] as const) {
    await eventually(
      `the ${version} watch shows replicas 0 then 1`,
      async () => {
        const mine = w.lines().filter((l) => l.startsWith(`pool.kubevirt.io/${version} `));
        return mine.some((l) => l.endsWith(' 0')) && mine.some((l) => l.endsWith(' 1')) ? true : undefined;
      },
      30_000,
      200,
    );
    assert.deepEqual(
      w.lines().filter((l) => !l.startsWith(`pool.kubevirt.io/${version} `)),
      [],
      `every ${version} event is at ${version}`,
    );
  }
  // managedFields name the version each manager wrote at.
  const managed = JSON.parse(await ok(['get', BETA, 'vm-pool-cirros', '-n', NS, '-o', 'json', '--show-managed-fields'])) as {
    metadata: { managedFields: { manager: string; apiVersion: string; subresource?: string }[] };
  };
  const entries = managed.metadata.managedFields.map((m) => `${m.manager}${m.subresource ? `/${m.subresource}` : ''} ${m.apiVersion}`);
  assert.ok(entries.includes('kubectl-client-side-apply pool.kubevirt.io/v1beta1'), entries.join(', '));
  assert.ok(
    entries.some((e) => e.endsWith('pool.kubevirt.io/v1alpha1')),
    entries.join(', '),
  );
  // Applying the example again at v1beta1 sets replicas back: client-side apply across versions.
  assert.match(await ok(['apply', '-n', NS, '-f', EXAMPLE]), /configured/);
  assert.equal(await get(ALPHA, '{.spec.replicas}'), '3');
  await ok(['delete', ALPHA, 'vm-pool-cirros', '-n', NS, '--wait=false']);
});
