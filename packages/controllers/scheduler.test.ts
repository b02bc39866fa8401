/**
 * Scheduler unit tests over the in-memory client (real Resources and SQLite :memory:): Nodes
 * and VMIs are plain objects written through the API, the scheduler binds or explains.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { getCondition, Informer, listWatchFor, updateStatus } from '@vessel/runtime';
import { refs } from '@vessel/api';
import { Scheduler } from './scheduler.ts';
import { BY_MIGRATION_TARGET, byMigrationTarget, type SchedulingSettings } from './scheduling/fit.ts';
import { agentSets, createNode, InMemoryClient, LaggingClient, settle, until } from './testing/harness.ts';
import type { KubeObject } from '@vessel/runtime';

const { VMIS } = refs;

const started = performance.now();
after(() => {
  console.log(`# scheduler.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

type Obj = Record<string, unknown>;

async function setup(settings?: SchedulingSettings) {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const sched = new Scheduler(c, undefined, settings);
  await sched.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await sched.stop();
      c.close();
    },
  };
}

function vmi(
  name: string,
  spec: { memory?: string; cores?: number; cpu?: string; nodeSelector?: Record<string, string>; tolerations?: Obj[] } = {},
): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'default' },
    spec: {
      domain: {
        cpu: { cores: spec.cores ?? 1 },
        resources: { requests: { memory: spec.memory ?? '1Gi', ...(spec.cpu ? { cpu: spec.cpu } : {}) } },
        devices: {},
      },
      ...(spec.nodeSelector ? { nodeSelector: spec.nodeSelector } : {}),
      ...(spec.tolerations ? { tolerations: spec.tolerations } : {}),
    },
  };
}

const statusOf = async (c: InMemoryClient, name: string) =>
  ((await c.get(VMIS, name, { namespace: 'default' })).status ?? {}) as { phase?: string; nodeName?: string };
const placed = (c: InMemoryClient, name: string) => until(`${name} scheduled`, async () => (await statusOf(c, name)).nodeName);
const unschedulable = (c: InMemoryClient, name: string) =>
  until(`${name} unschedulable`, async () => {
    const cond = getCondition({ status: (await c.get(VMIS, name, { namespace: 'default' })).status }, 'PodScheduled');
    return cond?.status === 'False' && cond.reason === 'Unschedulable' ? cond.message : undefined;
  });

test('binds a VMI to a Ready node in one write: phase Scheduled, nodeName, the node label, PodScheduled', async () => {
  await using h = await setup();
  await createNode(h.c, 'node-a');
  await settle(10);
  await h.c.create(VMIS, vmi('v'));
  assert.equal(await placed(h.c, 'v'), 'node-a');
  const o = await h.c.get(VMIS, 'v', { namespace: 'default' });
  assert.equal((o.status as { phase: string }).phase, 'Scheduled');
  assert.equal(o.metadata?.labels?.['kubevirt.io/nodeName'], 'node-a');
  assert.equal(getCondition({ status: o.status }, 'PodScheduled')?.status, 'True');
  assert.equal(
    h.c.count((w) => w.resource === 'virtualmachineinstances' && w.verb !== 'create'),
    1,
  );
});

test('memory: a VMI that fits on no node stays Pending with the reason; a bigger node takes it', async () => {
  await using h = await setup();
  await createNode(h.c, 'small', { memory: '2Gi' });
  await settle(10);
  await h.c.create(VMIS, vmi('big', { memory: '4Gi' }));
  assert.match(await unschedulable(h.c, 'big'), /0\/1 nodes are available: 1 Insufficient memory/);
  assert.equal((await statusOf(h.c, 'big')).phase, 'Pending');
  await createNode(h.c, 'large', { memory: '16Gi' });
  assert.equal(await placed(h.c, 'big'), 'large');
});

test('placed VMIs use up a node; a finished one frees it', async () => {
  await using h = await setup();
  await createNode(h.c, 'n', { memory: '3Gi' });
  await settle(10);
  await h.c.create(VMIS, vmi('one', { memory: '2Gi' }));
  await placed(h.c, 'one');
  await h.c.create(VMIS, vmi('two', { memory: '2Gi' }));
  assert.match(await unschedulable(h.c, 'two'), /Insufficient memory/);
  await agentSets(h.c, 'one', 'Succeeded', 'default', 'n');
  assert.equal(await placed(h.c, 'two'), 'n');
});

test('a VMI migrating into a node holds its room there until the migration ends', async () => {
  await using h = await setup();
  await createNode(h.c, 'src', { memory: '3Gi' });
  await createNode(h.c, 'dst', { memory: '3Gi' });
  await settle(10);
  await h.c.create(VMIS, vmi('mover', { memory: '2Gi', nodeSelector: { 'kubernetes.io/hostname': 'src' } }));
  assert.equal(await placed(h.c, 'mover'), 'src');
  // The migration controller named dst as its target (Scheduled), the switch not made yet.
  await updateStatus(h.c, VMIS, 'default', 'mover', (s) => {
    s.migrationState = { migrationUid: 'm1', sourceNode: 'src', targetNode: 'dst', mode: 'PreCopy' };
  });
  await settle(10);
  await h.c.create(VMIS, vmi('new', { memory: '2Gi' }));
  assert.match(await unschedulable(h.c, 'new'), /0\/2 nodes are available: 2 Insufficient memory/);
  // The migration failed: dst is free again.
  await updateStatus(h.c, VMIS, 'default', 'mover', (s) => {
    s.migrationState = { ...(s.migrationState as Obj), failed: true };
  });
  assert.equal(await placed(h.c, 'new'), 'dst');
});

test('the index of VMIs by migration target follows adds, updates and deletes', async () => {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const inf = new Informer(listWatchFor(c, VMIS)).addIndex(BY_MIGRATION_TARGET, byMigrationTarget);
  inf.start();
  await inf.waitForSync();
  const incoming = (node: string) =>
    inf
      .byIndex(BY_MIGRATION_TARGET, node)
      .map((v) => v.metadata.name)
      .sort();
  const migrate = (name: string, ms: Obj) =>
    updateStatus(c, VMIS, 'default', name, (s) => {
      s.phase = 'Running';
      s.nodeName = 'src';
      s.migrationState = { migrationUid: `m-${name}`, sourceNode: 'src', mode: 'PreCopy', ...ms };
    });
  try {
    // Added already migrating (as a relist finds it), and one added then named a target.
    await c.create(VMIS, { ...vmi('a'), status: { phase: 'Running', nodeName: 'src', migrationState: { migrationUid: 'm-a', targetNode: 'dst' } } });
    await c.create(VMIS, vmi('b'));
    await until('a under dst', () => incoming('dst').length === 1);
    assert.deepEqual(incoming('src'), []);
    await migrate('b', { targetNode: 'dst' });
    await until('a and b under dst', () => incoming('dst').length === 2);
    assert.deepEqual(incoming('dst'), ['a', 'b']);
    // b's migration fails and a new one targets other: it moves; a switches to dst (its node): no longer incoming.
    await migrate('b', { targetNode: 'dst', failed: true });
    await until('b off dst', () => incoming('dst').length === 1);
    await migrate('b', { migrationUid: 'm-b2', targetNode: 'other' });
    await until('b under other', () => incoming('other').length === 1);
    await updateStatus(c, VMIS, 'default', 'a', (s) => {
      s.nodeName = 'dst';
    });
    await until('a off dst', () => incoming('dst').length === 0);
    // Deleted while migrating: gone from the index.
    await c.delete(VMIS, 'b', { namespace: 'default' });
    await until('b gone', () => incoming('other').length === 0);
    assert.deepEqual([incoming('dst'), incoming('other'), incoming('src')], [[], [], []]);
  } finally {
    inf.stop();
    c.close();
  }
});

test('cpu overcommit: cpuAllocationRatio decides how many vCPUs a node takes', async () => {
  // 2 CPUs; 8 vCPUs request 8/ratio CPUs: fits with the default ratio 10, not with ratio 2.
  for (const [ratio, fits] of [
    [10, true],
    [2, false],
  ] as const) {
    await using h = await setup({ cpuAllocationRatio: ratio });
    await createNode(h.c, 'n', { cpu: '2' });
    await settle(10);
    await h.c.create(VMIS, vmi('c', { cores: 8 }));
    if (fits) assert.equal(await placed(h.c, 'c'), 'n');
    else assert.match(await unschedulable(h.c, 'c'), /Insufficient cpu/);
  }
});

test('nodeSelector: only a node with the labels', async () => {
  await using h = await setup();
  await createNode(h.c, 'plain');
  await createNode(h.c, 'gpu', { labels: { accel: 'gpu' } });
  await settle(10);
  await h.c.create(VMIS, vmi('s', { nodeSelector: { accel: 'gpu' } }));
  assert.equal(await placed(h.c, 's'), 'gpu');
  await h.c.create(VMIS, vmi('none', { nodeSelector: { accel: 'tpu' } }));
  assert.match(await unschedulable(h.c, 'none'), /node affinity\/selector/);
});

test('taints: NoSchedule keeps VMIs off unless tolerated; a not-Ready node takes none', async () => {
  await using h = await setup();
  await createNode(h.c, 'tainted', { taints: [{ key: 'dedicated', value: 'db', effect: 'NoSchedule' }] });
  await createNode(h.c, 'down', { ready: false });
  await settle(10);
  await h.c.create(VMIS, vmi('t'));
  const why = await unschedulable(h.c, 't');
  assert.match(why, /0\/2 nodes are available/);
  assert.match(why, /untolerated taint \{dedicated: db\}/);
  await h.c.create(VMIS, vmi('tol', { tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'db', effect: 'NoSchedule' }] }));
  assert.equal(await placed(h.c, 'tol'), 'tainted');
});

test('a VMI placed meanwhile keeps its status: the Unschedulable report is not written over it from a stale cache', async () => {
  const c = new LaggingClient({ virtualmachineinstances: 200 });
  await c.namespaces('default');
  const sched = new Scheduler(c);
  await sched.start();
  try {
    await c.create(VMIS, vmi('v'));
    // Placed by someone else before the scheduler's cache has even seen the VMI (no node fits it here).
    const o = await c.get(VMIS, 'v', { namespace: 'default' });
    await c.update(VMIS, { ...o, status: { phase: 'Scheduled', nodeName: 'elsewhere' } }, { namespace: 'default' });
    await settle(600);
    const s = (await c.get(VMIS, 'v', { namespace: 'default' })).status as { phase?: string; nodeName?: string; conditions?: unknown[] };
    assert.equal(s.phase, 'Scheduled');
    assert.equal(s.nodeName, 'elsewhere');
    assert.equal(getCondition({ status: s }, 'PodScheduled'), undefined);
  } finally {
    await sched.stop();
    c.close();
  }
});

/** A VMI of `memory` with the priority admission would have resolved. */
function prioritized(name: string, memory: string, prio: number, policy = 'PreemptLowerPriority'): KubeObject {
  const o = vmi(name, { memory });
  o.metadata = { ...o.metadata!, annotations: { 'vessel.io/priority': String(prio), 'vessel.io/preemption-policy': policy } };
  return o;
}

test('preemption: a higher-priority VMI evicts a lower one that fills the node; the victim made again waits Pending', async () => {
  await using h = await setup();
  await createNode(h.c, 'n', { memory: '3Gi' });
  await settle(10);
  await h.c.create(VMIS, prioritized('low', '2Gi', 1000));
  await placed(h.c, 'low');
  const lowUid = (await h.c.get(VMIS, 'low', { namespace: 'default' })).metadata?.uid;
  await h.c.create(VMIS, prioritized('never', '2Gi', 5000, 'Never'));
  assert.match(await unschedulable(h.c, 'never'), /preemption: not eligible due to preemptionPolicy=Never/);
  await h.c.create(VMIS, prioritized('high', '2Gi', 999999999));
  // The victim is deleted (no agent here, so at once): the high one takes the node.
  assert.equal(await placed(h.c, 'high'), 'n');
  const high = await h.c.get(VMIS, 'high', { namespace: 'default' });
  assert.equal(high.metadata?.annotations?.['vessel.io/nominated-node'], undefined);
  assert.ok(Number(high.metadata?.annotations?.['vessel.io/memory-overhead']) > 0);
  const gone = await h.c.get(VMIS, 'low', { namespace: 'default' }).catch(() => undefined);
  assert.ok(!gone || gone.metadata?.uid !== lowUid, 'the low VMI was stopped');
  // Its VM makes it again: it waits, and does not preempt the higher one.
  await h.c.create(VMIS, prioritized('low', '2Gi', 1000));
  assert.match(await unschedulable(h.c, 'low'), /Insufficient memory.*preemption: No preemption victims found/);
  assert.equal((await statusOf(h.c, 'high')).nodeName, 'n');
  assert.equal((await statusOf(h.c, 'never')).nodeName, undefined, 'Never does not preempt, not even after');
});

test('queue order: with one slot freeing, the higher-priority pending VMI gets it though created later', async () => {
  await using h = await setup();
  await createNode(h.c, 'n', { memory: '3Gi' });
  await settle(10);
  // The running VMI outranks both waiting ones: neither preempts it.
  await h.c.create(VMIS, prioritized('first', '2Gi', 5000));
  await placed(h.c, 'first');
  await h.c.create(VMIS, prioritized('early-low', '2Gi', 10));
  assert.match(await unschedulable(h.c, 'early-low'), /Insufficient memory/);
  await settle(1100); // a later creationTimestamp (seconds)
  await h.c.create(VMIS, prioritized('late-high', '2Gi', 100));
  assert.match(await unschedulable(h.c, 'late-high'), /Insufficient memory/);
  await agentSets(h.c, 'first', 'Succeeded', 'default', 'n');
  assert.equal(await placed(h.c, 'late-high'), 'n');
  await settle(200);
  assert.equal((await statusOf(h.c, 'early-low')).nodeName, undefined, 'the lower one keeps waiting');
  assert.match(await unschedulable(h.c, 'early-low'), /Insufficient memory/);
});

test('queue order: equal priority goes to the older VMI; a lower one still takes room the higher cannot use', async () => {
  await using h = await setup();
  await createNode(h.c, 'n', { memory: '3Gi' });
  await settle(10);
  await h.c.create(VMIS, prioritized('first', '2Gi', 5000));
  await placed(h.c, 'first');
  await h.c.create(VMIS, prioritized('older', '2Gi', 10));
  await unschedulable(h.c, 'older');
  await settle(1100);
  await h.c.create(VMIS, prioritized('younger', '2Gi', 10));
  // Too big for the node even when empty: it holds no room, so the small low one behind it is placed.
  await h.c.create(VMIS, prioritized('huge', '8Gi', 100));
  await unschedulable(h.c, 'younger');
  await agentSets(h.c, 'first', 'Succeeded', 'default', 'n');
  assert.equal(await placed(h.c, 'older'), 'n');
  await settle(200);
  assert.equal((await statusOf(h.c, 'younger')).nodeName, undefined);
});
