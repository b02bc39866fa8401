/** The volume manager's pure decisions: when and where a claim is grown, and which QEMU block node. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubeObject } from '@vessel/runtime';
import { alignedSize, expansionRequested, planExpansion, topBlockNode, type BlockInfo } from './volumes.ts';

function pvc(request: string, capacity: string | undefined, opts: { phase?: string; node?: string; className?: string; deleting?: boolean } = {}): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: {
      name: 'data',
      namespace: 'ns',
      uid: 'u1',
      annotations: { 'vessel.io/volume-path': '/pools/local/ns/data-u1.qcow2', 'volume.kubernetes.io/selected-node': opts.node ?? 'node-a' },
      ...(opts.deleting ? { deletionTimestamp: '2024-01-01T00:00:00Z' } : {}),
    },
    spec: { accessModes: ['ReadWriteOnce'], storageClassName: opts.className ?? 'local', resources: { requests: { storage: request } } },
    status: { phase: opts.phase ?? 'Bound', ...(capacity ? { capacity: { storage: capacity } } : {}) },
  };
}

const sc = (allow: boolean | undefined, name = 'local'): KubeObject => ({
  apiVersion: 'storage.k8s.io/v1',
  kind: 'StorageClass',
  metadata: { name },
  provisioner: 'vessel.io/qcow2',
  ...(allow === undefined ? {} : { allowVolumeExpansion: allow }),
});

function vmi(name: string, phase: string, node: string | undefined, volumes: object[], namespace = 'ns'): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace },
    spec: { domain: {}, volumes },
    status: { phase, ...(node ? { nodeName: node } : {}) },
  };
}

test('expansionRequested: a Bound claim asking for more than its capacity', () => {
  assert.equal(expansionRequested(pvc('2Gi', '1Gi')), true);
  assert.equal(expansionRequested(pvc('1Gi', '1Gi')), false);
  assert.equal(expansionRequested(pvc('1073741824', '1Gi')), false, 'compared as values');
  assert.equal(expansionRequested(pvc('2Gi', '1Gi', { phase: 'Pending' })), false);
  assert.equal(expansionRequested(pvc('2Gi', '1Gi', { deleting: true })), false);
});

test('planExpansion: no VM uses the claim: its selected node grows it offline', () => {
  const plan = planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-a', storageClass: sc(true), vmis: [] });
  assert.deepEqual(plan, { action: 'expand', request: '2Gi', size: 2 * 2 ** 30, user: undefined });
  assert.equal(planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-b', storageClass: sc(true), vmis: [] }).action, 'none');
  assert.equal(planExpansion(pvc('1Gi', '1Gi'), { nodeName: 'node-a', storageClass: sc(true), vmis: [] }).action, 'none');
});

test('planExpansion: a VMI using the claim (by claimName or DataVolume name) decides the node and goes online', () => {
  const running = vmi('vm1', 'Running', 'node-b', [{ name: 'root', dataVolume: { name: 'data' } }]);
  const onB = planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-b', storageClass: sc(true), vmis: [running] });
  assert.deepEqual(onB, { action: 'expand', request: '2Gi', size: 2 * 2 ** 30, user: { vmi: 'vm1', volume: 'root', node: 'node-b', running: true } });
  assert.equal(
    planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-a', storageClass: sc(true), vmis: [running] }).action,
    'none',
    "not the selected node's job while the VM runs elsewhere",
  );
  const byClaim = vmi('vm2', 'Scheduled', 'node-a', [{ name: 'disk1', persistentVolumeClaim: { claimName: 'data' } }]);
  const plan = planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-a', storageClass: sc(true), vmis: [byClaim] });
  assert.deepEqual(plan.action === 'expand' && plan.user, { vmi: 'vm2', volume: 'disk1', node: 'node-a', running: false });
});

test('planExpansion: finished VMIs, other namespaces and other claims do not count', () => {
  const vmis = [
    vmi('done', 'Succeeded', 'node-b', [{ name: 'root', dataVolume: { name: 'data' } }]),
    vmi('elsewhere', 'Running', 'node-b', [{ name: 'root', dataVolume: { name: 'data' } }], 'other'),
    vmi('unrelated', 'Running', 'node-b', [{ name: 'root', persistentVolumeClaim: { claimName: 'another' } }]),
  ];
  const plan = planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-a', storageClass: sc(true), vmis });
  assert.equal(plan.action, 'expand');
  assert.equal(plan.action === 'expand' && plan.user, undefined);
});

test("planExpansion: a class without allowVolumeExpansion refuses, with Kubernetes' words", () => {
  for (const storageClass of [sc(false), sc(undefined), undefined, sc(true, 'other')]) {
    const plan = planExpansion(pvc('2Gi', '1Gi'), { nodeName: 'node-a', storageClass, vmis: [] });
    assert.equal(plan.action, 'refuse');
    assert.match(
      plan.action === 'refuse' ? plan.message : '',
      /only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize/,
    );
  }
});

test('sizes are whole 512-byte sectors', () => {
  assert.equal(alignedSize(2 ** 30), 2 ** 30);
  assert.equal(alignedSize(1_500_000_000), 1_500_000_000 + 256);
  const plan = planExpansion(pvc('1500M', '1G'), { nodeName: 'node-a', storageClass: sc(true), vmis: [] });
  assert.equal(plan.action === 'expand' && plan.size, 1_500_000_256);
});

test("topBlockNode: the disk's current top node from query-block, by qdev id or QOM path", () => {
  const blocks: BlockInfo[] = [
    { device: '', qdev: '/machine/peripheral/ua-cloudinit/virtio-backend', inserted: { 'node-name': 'disk-cloudinit', image: { 'virtual-size': 1 << 20 } } },
    { device: '', qdev: '/machine/peripheral/ua-root/virtio-backend', inserted: { 'node-name': 'snap-1', image: { 'virtual-size': 2 ** 30 } } },
    { device: '', qdev: 'ua-data', inserted: { 'node-name': 'disk-data', image: { 'virtual-size': 5 } } },
    { device: '', qdev: '/machine/peripheral/ua-rootfs/virtio-backend', inserted: { 'node-name': 'disk-rootfs' } },
    { device: 'ide1-cd0', qdev: 'ua-empty' },
  ];
  assert.deepEqual(topBlockNode(blocks, 'root'), { nodeName: 'snap-1', size: 2 ** 30 }, 'the node on top now (after a snapshot), not disk-root');
  assert.deepEqual(topBlockNode(blocks, 'data'), { nodeName: 'disk-data', size: 5 });
  assert.equal(topBlockNode(blocks, 'roo'), undefined, 'no prefix matches');
  assert.equal(topBlockNode(blocks, 'empty'), undefined, 'no medium');
  assert.equal(topBlockNode(blocks, 'missing'), undefined);
});
