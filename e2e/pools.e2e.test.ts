/**
 * VirtualMachinePools, VirtualMachineInstanceReplicaSets and VirtualMachineInstancePresets end
 * to end with kubectl (real server, agent, QEMU under TCG, the tiny guest): a pool scaled to
 * three by `kubectl scale vmpool` runs three guests, each on its own disk, and scaling it to one
 * deletes two VMs with their DataVolumes; a replica set scales with `kubectl scale vmirs`; a
 * preset is merged into a VMI, and kubectl prints the deprecation warning. Only the pool boots
 * guests: the replica set's and the preset's VMIs select a node that does not exist.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, KUBECTL_SKIP, kubectlFor, startVessel, type Vessel } from './harness.ts';
import { tinyVm } from './tiny-vm.ts';

const NS = 'pools';
const VMS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMIS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const DVS: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const PVCS: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
type Obj = Record<string, unknown>;

let v: Vessel;
const { kubectl, ok } = kubectlFor(() => v);
const started = performance.now();

before(async () => {
  if (KUBECTL_SKIP) return;
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
  await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
});
after(async () => {
  if (!v) return;
  await v.client.delete(NAMESPACES, NS).catch(() => undefined);
  await eventually('namespace gone', async () => ((await v.client.list(VMIS, { namespace: NS })).items.length === 0 ? true : undefined), 180_000).catch(
    () => undefined,
  );
  await v.close();
  console.log(`# pools.e2e.test.ts: ${((performance.now() - started) / 1000).toFixed(1)} s`);
});

/** A pool of the tiny guest: each replica's root disk a linked clone of the `tiny` image. */
function poolYaml(replicas: number): string {
  const vm = tinyVm('web', { namespace: NS, labels: { app: 'web' } }) as { spec: { dataVolumeTemplates: { metadata: { name: string } }[]; template: Obj } };
  vm.spec.dataVolumeTemplates[0].metadata.name = 'root';
  ((vm.spec.template.spec as { volumes: { dataVolume?: { name: string } }[] }).volumes[0].dataVolume as { name: string }).name = 'root';
  return JSON.stringify({
    apiVersion: 'pool.kubevirt.io/v1alpha1',
    kind: 'VirtualMachinePool',
    metadata: { name: 'web', namespace: NS },
    spec: { replicas, selector: { matchLabels: { app: 'web' } }, virtualMachineTemplate: { metadata: { labels: { app: 'web' } }, spec: vm.spec } },
  });
}

const names = async (res: ResourceRef) =>
  (await v.client.list(res, { namespace: NS })).items
    .filter((o) => !o.metadata?.deletionTimestamp)
    .map((o) => o.metadata!.name!)
    .sort();

test('kubectl scale vmpool: three running replicas on their own disks, then one', { skip: KUBECTL_SKIP, timeout: 600_000 }, async () => {
  await ok(['apply', '-f', '-'], poolYaml(1));
  await ok(['scale', 'vmpool', 'web', '-n', NS, '--replicas', '3']);
  const t0 = performance.now();
  const running = await eventually(
    'three Running VMIs',
    async () => {
      const vmis = (await v.client.list(VMIS, { namespace: NS })).items;
      const up = vmis.filter((o) => (o.status as { phase?: string } | undefined)?.phase === 'Running').map((o) => o.metadata!.name!);
      return up.length === 3 ? up.sort() : undefined;
    },
    420_000,
    500,
  );
  console.log(`# three pool replicas Running ${((performance.now() - t0) / 1000).toFixed(1)} s after kubectl scale`);
  assert.deepEqual(running, ['web-0', 'web-1', 'web-2']);
  // Each replica has its own claim and volume file.
  const claims = (await v.client.list(PVCS, { namespace: NS })).items;
  assert.deepEqual(claims.map((c) => c.metadata!.name).sort(), ['root-0', 'root-1', 'root-2']);
  const paths = claims.map((c) => c.metadata?.annotations?.['vessel.io/volume-path']);
  assert.equal(new Set(paths).size, 3, `distinct volume paths: ${paths.join(' ')}`);
  for (const i of [0, 1, 2]) {
    const vmi = await v.client.get(VMIS, `web-${i}`, { namespace: NS });
    const vol = ((vmi.spec as { volumes: { dataVolume?: { name: string } }[] }).volumes[0].dataVolume ?? { name: '' }).name;
    assert.equal(vol, `root-${i}`);
  }
  await eventually(
    'kubectl shows 3 desired, 3 current, 3 ready',
    async () => (/web\s+3\s+3\s+3\s+/.test((await kubectl(['get', 'vmpool', '-n', NS])).out) ? true : undefined),
    120_000,
    500,
  );
  const scale = JSON.parse(await ok(['get', '--raw', `/apis/pool.kubevirt.io/v1alpha1/namespaces/${NS}/virtualmachinepools/web/scale`])) as Obj;
  assert.deepEqual(scale.spec, { replicas: 3 });
  assert.deepEqual(scale.status, { replicas: 3, selector: 'app=web' });

  await ok(['scale', 'vmpool', 'web', '-n', NS, '--replicas', '1']);
  await eventually(
    'two VMs and their DataVolumes gone',
    async () => {
      const [vms, dvs] = [await names(VMS), await names(DVS)];
      return vms.length === 1 && dvs.length === 1 ? { vms, dvs } : undefined;
    },
    180_000,
    500,
  ).then(({ vms, dvs }) => {
    assert.equal(vms.length, 1);
    assert.equal(dvs[0], `root-${vms[0].slice('web-'.length)}`, 'the remaining VM keeps its own disk');
  });
  // Negative replicas through the scale subresource: a 422 naming the field, nothing changed.
  const bad = await kubectl(['patch', 'vmpool', 'web', '-n', NS, '--subresource=scale', '--type=merge', '-p', '{"spec":{"replicas":-1}}']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /spec\.replicas/);
  assert.equal(((await ok(['get', 'vmpool', 'web', '-n', NS, '-o', 'jsonpath={.spec.replicas}'])) as string).trim(), '1');
  const discovery = JSON.parse(await ok(['get', '--raw', '/apis/pool.kubevirt.io/v1alpha1'])) as { resources: { name: string; kind: string }[] };
  assert.ok(discovery.resources.some((r) => r.name === 'virtualmachinepools/scale' && r.kind === 'Scale'));
  await ok(['delete', 'vmpool', 'web', '-n', NS, '--wait=false']);
});

const nowhere = { 'kubernetes.io/hostname': 'no-such-node' };

test('kubectl scale vmirs; a preset merged into a VMI, with the deprecation warning', { skip: KUBECTL_SKIP, timeout: 300_000 }, async () => {
  const domain = { resources: { requests: { memory: '64Mi' } }, devices: {} };
  await ok(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceReplicaSet',
      metadata: { name: 'rs', namespace: NS },
      spec: {
        replicas: 1,
        selector: { matchLabels: { app: 'rs' } },
        template: { metadata: { labels: { app: 'rs' } }, spec: { nodeSelector: nowhere, domain } },
      },
    }),
  );
  const rsVmis = async () => (await names(VMIS)).filter((n) => n.startsWith('rs'));
  await eventually('one VMI', async () => ((await rsVmis()).length === 1 ? true : undefined), 60_000);
  await ok(['scale', 'vmirs', 'rs', '-n', NS, '--replicas', '3']);
  await eventually('three VMIs', async () => ((await rsVmis()).length === 3 ? true : undefined), 60_000);
  assert.match(await ok(['get', 'vmirs', 'rs', '-n', NS]), /rs\s+3\s+3\s+0\s+/);
  await ok(['scale', 'vmirs', 'rs', '-n', NS, '--replicas', '0']);
  await eventually('no VMIs', async () => ((await rsVmis()).length === 0 ? true : undefined), 60_000);

  const applied = await kubectl(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstancePreset',
      metadata: { name: 'two-cores', namespace: NS },
      spec: { selector: { matchLabels: { size: 'small' } }, domain: { cpu: { cores: 2 }, resources: { requests: { memory: '96Mi' } }, devices: {} } },
    }),
  );
  assert.equal(applied.code, 0, applied.err);
  assert.match(applied.err, /Warning: kubevirt\.io\/v1 VirtualMachineInstancePresets is now deprecated/);
  await ok(
    ['create', '-f', '-'],
    JSON.stringify({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'small', namespace: NS, labels: { size: 'small' } },
      spec: { nodeSelector: nowhere, domain },
    }),
  );
  const vmi = JSON.parse(await ok(['get', 'vmi', 'small', '-n', NS, '-o', 'json'])) as { metadata: { annotations: Record<string, string> }; spec: Obj };
  assert.deepEqual((vmi.spec.domain as { cpu: unknown }).cpu, { cores: 2 }, 'the preset value was merged');
  assert.equal((vmi.spec.domain as { resources: { requests: { memory: string } } }).resources.requests.memory, '64Mi', "the VMI's own value wins");
  assert.equal(vmi.metadata.annotations['virtualmachinepreset.kubevirt.io/two-cores'], 'kubevirt.io/v1');
  const events = await ok(['get', 'events', '-n', NS, '--field-selector', 'involvedObject.name=small']);
  assert.match(events, /PresetFailed/);
});
