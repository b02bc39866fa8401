/**
 * The API's real test: an unmodified kubectl against a Vessel server, doing what a KubeVirt
 * user does with a VirtualMachine (apply, get, watch, patch, explain, delete, api-resources).
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import YAML from 'yaml';
import { startVessel, type Vessel, kubectlFor, KUBECTL_SKIP } from './harness.ts';

function vmManifest(name: string, extra: Record<string, unknown> = {}): string {
  return YAML.stringify({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, labels: { app: 'web', ...((extra.labels as object) ?? {}) } },
    spec: {
      runStrategy: 'Halted',
      template: {
        metadata: { labels: { 'kubevirt.io/vm': name } },
        spec: {
          domain: {
            cpu: { cores: 1 },
            resources: { requests: { memory: '128Mi' } },
            devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] },
          },
          volumes: [{ name: 'root', containerDisk: { image: 'quay.io/containerdisks/debian:12' } }],
        },
      },
    },
  });
}

describe('kubectl against vessel', { skip: KUBECTL_SKIP }, () => {
  let v: Vessel;
  const { kubectl, ok } = kubectlFor(() => v);

  before(async () => {
    v = await startVessel();
  });
  after(async () => {
    await v?.close();
  });

  it('lists the KubeVirt resources in api-resources', async () => {
    const out = await ok(['api-resources']);
    assert.match(out, /virtualmachines\s+vm,vms\s+kubevirt\.io\/v1\s+true\s+VirtualMachine/);
    assert.match(out, /datavolumes\s+dv,dvs\s+cdi\.kubevirt\.io\/v1beta1\s+true\s+DataVolume/);
    assert.match(out, /namespaces\s+ns\s+v1\s+false\s+Namespace/);
  });

  it('applies a VirtualMachine and reads it back as YAML', async () => {
    assert.match(await ok(['apply', '-f', '-'], vmManifest('testvm')), /virtualmachine\.kubevirt\.io\/testvm created/);
    const vm = YAML.parse(await ok(['get', 'vm', 'testvm', '-o', 'yaml']));
    assert.equal(vm.kind, 'VirtualMachine');
    assert.equal(vm.spec.runStrategy, 'Halted');
    assert.equal(vm.spec.template.spec.domain.resources.requests.memory, '128Mi');
    assert.ok(vm.metadata.uid);
    assert.equal(vm.metadata.generation, 1);
    const table = await ok(['get', 'vms']);
    assert.match(table, /^NAME\s+AGE\s+STATUS\s+READY/m);
    assert.match(table, /^testvm\s/m);
  });

  it('shows a second apply to a running `get -w`', async () => {
    const watcher = spawn('kubectl', ['--kubeconfig', v.kubeconfig, 'get', 'vms', '-w']);
    let seen = '';
    watcher.stdout.on('data', (d) => {
      seen += d;
    });
    const rows = () => seen.split('\n').filter((l) => /^testvm\s/.test(l)).length;
    try {
      await waitFor(() => rows() === 1, 'the row of the initial list');
      assert.match(await ok(['apply', '-f', '-'], vmManifest('testvm', { labels: { tier: 'front' } })), /configured/);
      await waitFor(() => rows() === 2, 'a second row from the watch');
    } finally {
      watcher.kill();
    }
    const vm = YAML.parse(await ok(['get', 'vm', 'testvm', '-o', 'yaml']));
    assert.equal(vm.metadata.labels.tier, 'front');
  });

  it('merge-patches a VirtualMachine and bumps its generation', async () => {
    assert.match(await ok(['patch', 'vm', 'testvm', '--type', 'merge', '-p', '{"spec":{"runStrategy":"Always"}}']), /patched/);
    const vm = YAML.parse(await ok(['get', 'vm', 'testvm', '-o', 'yaml']));
    assert.equal(vm.spec.runStrategy, 'Always');
    assert.equal(vm.metadata.generation, 2);
  });

  it('explains virtualmachine.spec from the served OpenAPI', async () => {
    const out = await ok(['explain', 'virtualmachine.spec']);
    assert.match(out, /KIND:\s+VirtualMachine/);
    assert.match(out, /runStrategy/);
    assert.match(out, /dataVolumeTemplates/);
  });

  it('rejects an unknown field with its path and keeps the stored object', async () => {
    const bad = vmManifest('testvm').replace('runStrategy: Halted', 'runStrategy: Halted\n  bogusField: 1');
    const r = await kubectl(['apply', '-f', '-'], bad);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /bogusField/);
    const vm = YAML.parse(await ok(['get', 'vm', 'testvm', '-o', 'yaml']));
    assert.equal(vm.spec.runStrategy, 'Always');
  });

  it('deletes a VirtualMachine', async () => {
    assert.match(await ok(['delete', 'vm', 'testvm']), /virtualmachine\.kubevirt\.io "testvm" deleted/);
    const r = await kubectl(['get', 'vm', 'testvm']);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /NotFound|not found/);
  });

  it('creates and deletes a namespace with its contents', async () => {
    await ok(['create', 'namespace', 'tenant-a']);
    await ok(['apply', '-n', 'tenant-a', '-f', '-'], vmManifest('inner'));
    await ok(['create', 'configmap', 'settings', '-n', 'tenant-a', '--from-literal=a=b']);
    assert.match(await ok(['delete', 'namespace', 'tenant-a']), /deleted/);
    const r = await kubectl(['get', 'namespace', 'tenant-a']);
    assert.notEqual(r.code, 0);
    assert.equal((await kubectl(['get', 'vm', 'inner', '-n', 'tenant-a'])).code, 1);
  });
});

async function waitFor(cond: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
