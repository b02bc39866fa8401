/**
 * VirtualMachinePool and VirtualMachineInstanceReplicaSet controllers over the in-memory client
 * (real Resources, so validation and the scale rules apply): pool naming at the lowest free
 * index, per-replica DataVolume names, scale-in order, status, paused; the replica set's
 * generated names, scale-in order (not Running first, then newest) and replacement of finished VMIs.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { refs } from '@vessel/api';
import { updateStatus } from '@vessel/runtime';
import { VirtualMachinePoolController, freeIndices, indexOf, replicaVmSpec, scaleInOrder, selectorString } from './vmpool.ts';
import { VirtualMachineInstanceReplicaSetController, vmiScaleInOrder } from './vmirs.ts';
import { agentSets, InMemoryClient, settle, until } from './testing/harness.ts';
import type { KubeObject } from '@vessel/runtime';

const { VMPOOLS, VMS, VMIRS, VMIS } = refs;
const NS = { namespace: 'default' };
type Obj = Record<string, unknown>;

const started = performance.now();
after(() => {
  console.log(`# vmpool.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

const domain = { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } };

function pool(name: string, replicas: number, extra: Obj = {}): KubeObject {
  return {
    apiVersion: 'pool.kubevirt.io/v1alpha1',
    kind: 'VirtualMachinePool',
    metadata: { name, namespace: 'default' },
    spec: {
      replicas,
      selector: { matchLabels: { app: name } },
      virtualMachineTemplate: {
        metadata: { labels: { app: name } },
        spec: {
          runStrategy: 'Halted',
          dataVolumeTemplates: [{ metadata: { name: 'root' }, spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '64Mi' } } } } }],
          template: { metadata: { labels: { app: name } }, spec: { domain, volumes: [{ name: 'root', dataVolume: { name: 'root' } }] } },
        },
      },
      ...extra,
    },
  };
}

function replicaSet(name: string, replicas: number): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstanceReplicaSet',
    metadata: { name, namespace: 'default' },
    spec: {
      replicas,
      selector: { matchLabels: { app: name } },
      template: { metadata: { labels: { app: name } }, spec: { domain: { ...domain, devices: {} } } },
    },
  };
}

async function setup() {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const ctls = [new VirtualMachinePoolController(c), new VirtualMachineInstanceReplicaSetController(c)];
  for (const ctl of ctls) await ctl.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      for (const ctl of ctls) await ctl.stop();
      c.close();
    },
  };
}

const vmNames = async (c: InMemoryClient) =>
  ((await c.list(VMS, NS)).items as KubeObject[])
    .filter((v) => !v.metadata.deletionTimestamp)
    .map((v) => v.metadata.name)
    .sort();
const scaleTo = (c: InMemoryClient, res: typeof VMPOOLS, name: string, n: number) => c.patch(res, name, { spec: { replicas: n } }, NS);

test('pure helpers: index parsing, lowest free indices, per-replica DV names, selector text', () => {
  assert.equal(indexOf('web', 'web-3'), 3);
  assert.equal(indexOf('web', 'web-03'), undefined);
  assert.equal(indexOf('web', 'webby-1'), undefined);
  assert.deepEqual(
    freeIndices((i) => [0, 2].includes(i), 3),
    [1, 3, 4],
  );
  const spec = replicaVmSpec(
    {
      dataVolumeTemplates: [{ metadata: { name: 'root' } }, { metadata: { name: 'data' } }],
      template: {
        spec: {
          volumes: [
            { name: 'a', dataVolume: { name: 'root' } },
            { name: 'b', persistentVolumeClaim: { claimName: 'data' } },
            { name: 'c', dataVolume: { name: 'shared' } },
          ],
        },
      },
    },
    2,
  );
  assert.deepEqual(
    (spec.dataVolumeTemplates as { metadata: { name: string } }[]).map((d) => d.metadata.name),
    ['root-2', 'data-2'],
  );
  assert.deepEqual((spec.template as { spec: { volumes: Obj[] } }).spec.volumes, [
    { name: 'a', dataVolume: { name: 'root-2' } },
    { name: 'b', persistentVolumeClaim: { claimName: 'data-2' } },
    { name: 'c', dataVolume: { name: 'shared' } },
  ]);
  assert.equal(selectorString({ matchLabels: { b: '2', a: '1' } }), 'a=1,b=2');
  assert.equal(selectorString({}), '');
});

test('scale-in order: not-ready VMs first, then the highest index; VMIs: not Running first, then newest', () => {
  const vm = (name: string, ready: boolean): KubeObject => ({ metadata: { name }, status: { ready } });
  const vms = [vm('p-0', true), vm('p-1', false), vm('p-2', true), vm('p-3', true)];
  assert.deepEqual(
    scaleInOrder('p', vms, 2).map((v) => v.metadata.name),
    ['p-1', 'p-3'],
  );
  const vmi = (name: string, phase: string, at: string): KubeObject => ({ metadata: { name, creationTimestamp: at }, status: { phase } });
  const vmis = [vmi('a', 'Running', '2026-01-01T00:00:01Z'), vmi('b', 'Running', '2026-01-01T00:00:03Z'), vmi('c', 'Scheduling', '2026-01-01T00:00:00Z')];
  assert.deepEqual(
    vmiScaleInOrder(vmis, 2).map((v) => v.metadata.name),
    ['c', 'b'],
  );
});

test('a pool makes <pool>-<index> VMs with their own DataVolumes, owned by the pool, and reports status', async () => {
  await using h = await setup();
  const { c } = h;
  await c.create(VMPOOLS, pool('web', 3), NS);
  await until('three VMs', async () => (await vmNames(c)).length === 3 || undefined);
  assert.deepEqual(await vmNames(c), ['web-0', 'web-1', 'web-2']);
  const uid = (await c.get(VMPOOLS, 'web', NS)).metadata?.uid;
  for (const i of [0, 1, 2]) {
    const vm = await c.get(VMS, `web-${i}`, NS);
    const spec = vm.spec as { dataVolumeTemplates: { metadata: { name: string } }[]; template: { spec: { volumes: { dataVolume: { name: string } }[] } } };
    assert.equal(spec.dataVolumeTemplates[0].metadata.name, `root-${i}`);
    assert.equal(spec.template.spec.volumes[0].dataVolume.name, `root-${i}`);
    assert.equal(vm.metadata?.labels?.app, 'web');
    assert.deepEqual(
      vm.metadata?.ownerReferences?.map((r) => [r.kind, r.uid, r.controller]),
      [['VirtualMachinePool', uid, true]],
    );
  }
  // web-1 ready: status counts it.
  await updateStatus(c, VMS, 'default', 'web-1', (s) => {
    s.ready = true;
  });
  await until('status', async () => {
    const s = (await c.get(VMPOOLS, 'web', NS)).status as Obj | undefined;
    return (s?.replicas === 3 && s.readyReplicas === 1 && s.labelSelector === 'app=web') || undefined;
  });
});

test('scaling a pool in deletes not-ready, then highest-index VMs; scaling out reuses the lowest free index', async () => {
  await using h = await setup();
  const { c } = h;
  await c.create(VMPOOLS, pool('db', 4), NS);
  await until('four VMs', async () => (await vmNames(c)).length === 4 || undefined);
  for (const n of ['db-0', 'db-1', 'db-3'])
    await updateStatus(c, VMS, 'default', n, (s) => {
      s.ready = true;
    });
  await until('ready', async () => ((await c.get(VMPOOLS, 'db', NS)).status as Obj | undefined)?.readyReplicas === 3 || undefined);
  await scaleTo(c, VMPOOLS, 'db', 2);
  // db-2 is not ready, so it goes first, then db-3 (the highest index).
  await until('two VMs', async () => (await vmNames(c)).length === 2 || undefined);
  assert.deepEqual(await vmNames(c), ['db-0', 'db-1']);
  await scaleTo(c, VMPOOLS, 'db', 3);
  await until('three VMs', async () => (await vmNames(c)).length === 3 || undefined);
  assert.deepEqual(await vmNames(c), ['db-0', 'db-1', 'db-2']);
  await until('status replicas 3', async () => ((await c.get(VMPOOLS, 'db', NS)).status as Obj | undefined)?.replicas === 3 || undefined);
});

test('a paused pool neither creates nor deletes', async () => {
  await using h = await setup();
  const { c } = h;
  await c.create(VMPOOLS, pool('p', 2, { paused: true }), NS);
  await settle(100);
  assert.deepEqual(await vmNames(c), []);
  await c.patch(VMPOOLS, 'p', { spec: { paused: false } }, NS);
  await until('two VMs', async () => (await vmNames(c)).length === 2 || undefined);
  await c.patch(VMPOOLS, 'p', { spec: { paused: true, replicas: 0 } }, NS);
  await settle(100);
  assert.equal((await vmNames(c)).length, 2);
});

test('a replica set keeps replicas VMIs with generated names, scales in not-Running then newest, replaces finished ones', async () => {
  await using h = await setup();
  const { c } = h;
  await c.create(VMIRS, replicaSet('rs', 3), NS);
  const vmis = async () => ((await c.list(VMIS, NS)).items as KubeObject[]).filter((v) => !v.metadata.deletionTimestamp);
  await until('three VMIs', async () => (await vmis()).length === 3 || undefined);
  await settle(100);
  const first = await vmis();
  assert.equal(first.length, 3, 'no extra VMIs from a stale cache');
  for (const v of first) {
    assert.match(v.metadata.name, /^rs[a-z0-9]{5}$/);
    assert.equal(v.metadata.ownerReferences?.[0]?.kind, 'VirtualMachineInstanceReplicaSet');
  }
  const [a, b] = first.map((v) => v.metadata.name);
  await agentSets(c, a, 'Running');
  await agentSets(c, b, 'Running');
  await until('ready 2', async () => {
    const s = (await c.get(VMIRS, 'rs', NS)).status as Obj | undefined;
    return (s?.readyReplicas === 2 && s.replicas === 3 && s.labelSelector === 'app=rs') || undefined;
  });
  await scaleTo(c, VMIRS, 'rs', 2);
  await until('two VMIs', async () => (await vmis()).length === 2 || undefined);
  assert.deepEqual((await vmis()).map((v) => v.metadata.name).sort(), [a, b].sort(), 'the one not Running went');
  // A finished VMI is deleted and replaced.
  await agentSets(c, a, 'Succeeded');
  await until('replacement', async () => {
    const names = (await vmis()).map((v) => v.metadata.name);
    return (names.length === 2 && !names.includes(a)) || undefined;
  });
});
