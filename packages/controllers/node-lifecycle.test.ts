/**
 * Node lifecycle unit tests over the in-memory client (HA): a node silent past grace + its
 * agent's fencing timeout + margin has its restartable shared-disk VMIs failed (finalizer
 * dropped, NodeFenced) and the others told why; a node without peers, or a silence every node
 * shares, fails nothing over.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { refs, storage } from '@vessel/api';
import { getCondition, setCondition, updateStatus, type KubeObject } from '@vessel/runtime';
import { NODE_FAILOVER, NODE_FENCED, NodeLifecycleController } from './node-lifecycle.ts';
import { agentSets, createNode, InMemoryClient, settle, tryGet, until, vmObject } from './testing/harness.ts';

const { NODES, PVCS, VMIS, VMS } = refs;
const ns = 'default';
const opts = { gracePeriodMs: 150, fencingMarginMs: 50 };

async function node(c: InMemoryClient, name: string) {
  await createNode(c, name);
  const pools = { local: { dir: '/l', shared: false }, shared: { dir: '/s', shared: true } };
  await c.patch(NODES, name, { metadata: { annotations: { 'vessel.io/fencing-timeout-seconds': '0.2', [storage.NODE_POOLS]: JSON.stringify(pools) } } });
  await beat(c, name);
}

const beat = (c: InMemoryClient, name: string) =>
  updateStatus(c, NODES, undefined, name, (s) => {
    setCondition(s, { type: 'Ready', status: 'True', reason: 'AgentReady', message: '' });
    for (const cond of s.conditions as Record<string, unknown>[]) cond.lastHeartbeatTime = new Date().toISOString() + Math.random();
  });

/** A VM and its Running VMI with one claim on `pool` (the nodes have a node-local `local` and a `shared` pool). */
async function vmWithVmi(c: InMemoryClient, name: string, strategy: string, pool: 'shared' | 'local', nodeName = 'node-a') {
  const vm = await c.create(VMS, vmObject(name, { runStrategy: strategy }));
  await c.create(PVCS, {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name: `${name}-root`, namespace: ns, annotations: { [storage.VOLUME_POOL]: pool } },
    spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
  });
  await c.create(VMIS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: {
      name,
      namespace: ns,
      finalizers: ['vessel.io/qemu'],
      ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name, uid: vm.metadata!.uid!, controller: true }],
    },
    spec: {
      domain: { resources: { requests: { memory: '128Mi' } }, devices: {} },
      volumes: [
        { name: 'root', persistentVolumeClaim: { claimName: `${name}-root` } },
        { name: 'scratch', emptyDisk: { capacity: '1Gi' } },
      ],
    },
  });
  await agentSets(c, name, 'Running', ns, nodeName);
}

const vmi = async (c: InMemoryClient, name: string) => (await tryGet(c, VMIS, name)) as KubeObject | undefined;
const phase = async (c: InMemoryClient, name: string) => ((await vmi(c, name))?.status as { phase?: string } | undefined)?.phase;

test('a dead node past its fencing deadline: restartable shared-disk VMIs fail over, the others stay and say why', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns);
  await node(c, 'node-a');
  await node(c, 'node-b');
  await vmWithVmi(c, 'shared', 'Always', 'shared');
  await vmWithVmi(c, 'rerun', 'RerunOnFailure', 'shared');
  await vmWithVmi(c, 'local', 'Always', 'local');
  await vmWithVmi(c, 'manual', 'Manual', 'shared');
  await vmWithVmi(c, 'on-b', 'Always', 'shared', 'node-b');
  const ctrl = new NodeLifecycleController(c, undefined, opts);
  await ctrl.start();
  const b = setInterval(() => void beat(c, 'node-b'), 40);
  try {
    const started = Date.now();
    await until('shared failed', async () => ((await phase(c, 'shared')) === 'Failed' ? true : undefined), 3000);
    // grace 150 + fencing 200 + margin 50: not before 400 ms of silence.
    assert.ok(Date.now() - started >= 350, `failed over after ${Date.now() - started} ms`);
    const shared = (await vmi(c, 'shared'))!;
    assert.equal((shared.status as { reason?: string }).reason, NODE_FENCED);
    assert.deepEqual(shared.metadata.finalizers ?? [], [], "the dead agent's finalizer is dropped");
    await until('rerun failed', async () => ((await phase(c, 'rerun')) === 'Failed' ? true : undefined));
    await until('local says why', async () => getCondition((await vmi(c, 'local'))!, NODE_FAILOVER));
    assert.equal(getCondition((await vmi(c, 'local'))!, NODE_FAILOVER)!.reason, 'NodeLocalDisks');
    assert.match(getCondition((await vmi(c, 'local'))!, NODE_FAILOVER)!.message ?? '', /volume root: claim local-root on the node-local pool local/);
    assert.equal(await phase(c, 'local'), 'Running');
    await until('manual says why', async () => getCondition((await vmi(c, 'manual'))!, NODE_FAILOVER));
    assert.equal(getCondition((await vmi(c, 'manual'))!, NODE_FAILOVER)!.reason, 'RunStrategy');
    assert.equal(await phase(c, 'manual'), 'Running');
    assert.equal(await phase(c, 'on-b'), 'Running', 'the live node keeps its VMs');
  } finally {
    clearInterval(b);
    await ctrl.stop();
  }
});

test('a node without peers, or without a fencing timeout, is never failed over', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns);
  await node(c, 'node-a');
  await createNode(c, 'node-b'); // no fencing timeout published: not a peer
  await vmWithVmi(c, 'shared', 'Always', 'shared');
  const ctrl = new NodeLifecycleController(c, undefined, opts);
  await ctrl.start();
  try {
    await settle(900);
    assert.equal(await phase(c, 'shared'), 'Running');
  } finally {
    await ctrl.stop();
  }
});

test('a silence every node shares (the control plane was away) restarts the clocks: nothing fails over', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns);
  await node(c, 'node-a');
  await node(c, 'node-b');
  await vmWithVmi(c, 'shared', 'Always', 'shared');
  const ctrl = new NodeLifecycleController(c, undefined, opts);
  await ctrl.start();
  try {
    await settle(300); // both silent past grace
    await beat(c, 'node-b'); // the control plane is back: node-b posts first
    const b = setInterval(() => void beat(c, 'node-b'), 40);
    await settle(250); // node-a's next heartbeat is on its way (its 400 ms since the outage have not passed)
    assert.equal(await phase(c, 'shared'), 'Running');
    await beat(c, 'node-a');
    clearInterval(b);
  } finally {
    await ctrl.stop();
  }
});

test('fewer than half the nodes posting (a partition, or the control plane cut from most nodes): nothing fails over', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns);
  await node(c, 'node-a');
  await node(c, 'node-b');
  await node(c, 'node-c');
  await vmWithVmi(c, 'shared', 'Always', 'shared');
  const ctrl = new NodeLifecycleController(c, undefined, opts);
  await ctrl.start();
  const cBeats = setInterval(() => void beat(c, 'node-c'), 40);
  try {
    await settle(900); // node-a and node-b silent past the deadline, node-c alone posts: 1 of 3
    assert.equal(await phase(c, 'shared'), 'Running');
    const bBeats = setInterval(() => void beat(c, 'node-b'), 40); // 2 of 3: node-a's VMs go
    try {
      await until('shared failed', async () => ((await phase(c, 'shared')) === 'Failed' ? true : undefined), 3000);
    } finally {
      clearInterval(bBeats);
    }
  } finally {
    clearInterval(cBeats);
    await ctrl.stop();
  }
});
