/**
 * Migration settings in the migration controller, over the in-memory client: the effective
 * configuration written into the VMI's migrationState, and the parallel limits
 * (parallelMigrationsPerCluster, parallelOutboundMigrationsPerNode) keeping migrations Pending,
 * then starting them in creation order as slots free, with one MigrationPending Event per reason
 * while they wait. The pure slot rule is tested first.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migration, migrationConfig, refs } from '@vessel/api';
import { setCondition, updateStatus } from '@vessel/runtime';
import { mayStart, slotWait } from './migration-limits.ts';
import { MIGRATION_PENDING_REASON, MigrationController } from './migration.ts';
import { agentSets, createNode, InMemoryClient, settle, until } from './testing/harness.ts';

const { EVENTS, VMIS, VMIMS, KUBEVIRTS, MIGRATION_POLICIES } = refs;
type Obj = Record<string, unknown>;
const ns = 'default';

test('slots: the cluster and per-node limits, older waiting migrations first', () => {
  const limits = { perCluster: 2, perNode: 1 };
  const w = (uid: string, source: string, order: string) => ({ uid, source, order });
  assert.equal(mayStart('a', [], [w('a', 'n1', '1')], limits), true);
  assert.equal(mayStart('a', [{ uid: 'x', source: 'n1' }], [w('a', 'n1', '1')], limits), false, 'n1 has its one outbound migration');
  assert.equal(mayStart('b', [{ uid: 'x', source: 'n1' }], [w('a', 'n1', '1'), w('b', 'n2', '2')], limits), true, 'a waits on its node, not b');
  assert.equal(mayStart('c', [], [w('a', 'n1', '1'), w('b', 'n2', '2'), w('c', 'n3', '3')], limits), false, 'a and b take both cluster slots');
  assert.equal(mayStart('b', [], [w('a', 'n1', '1'), w('b', 'n2', '2'), w('c', 'n3', '3')], limits), true);
  assert.equal(
    mayStart(
      'b',
      [
        { uid: 'x', source: 'n9' },
        { uid: 'y', source: 'n8' },
      ],
      [w('b', 'n2', '2')],
      limits,
    ),
    false,
    'cluster full',
  );
});

test('slots: the limit a waiting migration waits for', () => {
  const limits = { perCluster: 2, perNode: 1 };
  const w = (uid: string, source: string, order: string) => ({ uid, source, order });
  assert.equal(slotWait('a', [], [w('a', 'n1', '1')], limits), undefined);
  assert.deepEqual(slotWait('a', [{ uid: 'x', source: 'n1' }], [w('a', 'n1', '1')], limits), { limit: 'perNode', max: 1, node: 'n1' });
  assert.deepEqual(slotWait('c', [], [w('a', 'n1', '1'), w('b', 'n2', '2'), w('c', 'n3', '3')], limits), { limit: 'perCluster', max: 2 });
  assert.deepEqual(slotWait('z', [], [w('a', 'n1', '1')], limits), { limit: 'notListed' }, 'not among the waiting: no limit to name');
});

async function setup(kvMigrations: Obj, nodes = ['node-a', 'node-b', 'node-c']) {
  const c = new InMemoryClient();
  await c.namespaces(ns, migrationConfig.KUBEVIRT_NAMESPACE);
  for (const n of nodes) await createNode(c, n);
  await c.create(KUBEVIRTS, { ...migrationConfig.defaultKubeVirt(), spec: { configuration: { migrations: kvMigrations } } });
  const ctrl = new MigrationController(c);
  await ctrl.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctrl.stop();
      c.close();
    },
  };
}

async function runningVmi(c: InMemoryClient, name: string, node: string, labels: Record<string, string> = {}): Promise<void> {
  await c.create(VMIS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: ns, labels },
    spec: { domain: { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: {} } },
  });
  await agentSets(c, name, 'Running', ns, node);
  await updateStatus(c, VMIS, ns, name, (s) => {
    setCondition(s, { type: 'LiveMigratable', status: 'True', reason: '', message: '' }, false);
  });
}

const migrate = (c: InMemoryClient, name: string, vmi: string) =>
  c.create(VMIMS, { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: vmi } });
const phase = async (c: InMemoryClient, name: string) => String(((await c.get(VMIMS, name, { namespace: ns })).status as Obj | undefined)?.phase ?? '');
const phaseIs = (c: InMemoryClient, name: string, want: string) =>
  until(`${name} ${want}`, async () => ((await phase(c, name)) === want ? true : undefined), 3000);
const stateOf = async (c: InMemoryClient, vmi: string) =>
  ((await c.get(VMIS, vmi, { namespace: ns })).status as Obj).migrationState as migration.MigrationState;
const agentEnds = (c: InMemoryClient, vmi: string, change: Partial<migration.MigrationState>) =>
  updateStatus(c, VMIS, ns, vmi, (s) => {
    s.migrationState = { ...(s.migrationState as Obj), startTimestamp: new Date().toISOString(), endTimestamp: new Date().toISOString(), ...change };
  });

test('the VMI’s migrationState carries the effective configuration and the matching policy’s name', async () => {
  await using h = await setup({ bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 3 }, ['node-a', 'node-b']);
  const { c } = h;
  await c.create(MIGRATION_POLICIES, {
    apiVersion: 'migrations.kubevirt.io/v1alpha1',
    kind: 'MigrationPolicy',
    metadata: { name: 'busy' },
    spec: { selectors: { virtualMachineInstanceSelector: { workload: 'busy' } }, allowAutoConverge: true, bandwidthPerMigration: '0' },
  });
  await runningVmi(c, 'plain', 'node-a');
  await runningVmi(c, 'busy', 'node-a', { workload: 'busy' });
  await migrate(c, 'm-plain', 'plain');
  await phaseIs(c, 'm-plain', 'Scheduled');
  const plain = await stateOf(c, 'plain');
  assert.deepEqual(plain.migrationConfiguration, { ...migrationConfig.MIGRATION_DEFAULTS, bandwidthPerMigration: '1Mi', completionTimeoutPerGiB: 3 });
  assert.equal(plain.migrationPolicyName, undefined);
  await migrate(c, 'm-busy', 'busy');
  await phaseIs(c, 'm-busy', 'Scheduled');
  const busy = await stateOf(c, 'busy');
  assert.deepEqual(busy.migrationConfiguration, {
    ...migrationConfig.MIGRATION_DEFAULTS,
    bandwidthPerMigration: '0',
    completionTimeoutPerGiB: 3,
    allowAutoConverge: true,
  });
  assert.equal(busy.migrationPolicyName, 'busy');
  // The VMIM mirrors it (KubeVirt's VMIM status.migrationState has the same fields).
  await until('mirrored', async () => ((await c.get(VMIMS, 'm-busy', { namespace: ns })).status as Obj).migrationState, 3000);
});

test('parallelMigrationsPerCluster: the next migration stays Pending, then starts when one ends, in creation order', async () => {
  await using h = await setup({ parallelMigrationsPerCluster: 1 });
  const { c } = h;
  for (const [vm, node] of [
    ['v1', 'node-a'],
    ['v2', 'node-b'],
    ['v3', 'node-c'],
  ])
    await runningVmi(c, vm, node);
  await migrate(c, 'm1', 'v1');
  await phaseIs(c, 'm1', 'Scheduled');
  await migrate(c, 'm2', 'v2');
  await migrate(c, 'm3', 'v3');
  await settle(300);
  assert.deepEqual([await phase(c, 'm2'), await phase(c, 'm3')], ['Pending', 'Pending']);
  await agentEnds(c, 'v1', { completed: true });
  await phaseIs(c, 'm1', 'Succeeded');
  await phaseIs(c, 'm2', 'Scheduled');
  await settle(300);
  assert.equal(await phase(c, 'm3'), 'Pending', 'one slot: m3 waits for m2');
  await agentEnds(c, 'v2', { failed: true, failureReason: 'x' });
  await phaseIs(c, 'm3', 'Scheduled');
});

test('a migration kept Pending by a limit gets one MigrationPending Event per distinct reason, not one per reconcile', async () => {
  await using h = await setup({ parallelOutboundMigrationsPerNode: 1 });
  const { c } = h;
  const pendingEvents = async (name: string) =>
    (await c.list(EVENTS, { namespace: ns })).items.filter(
      (e) => (e as { involvedObject?: { name?: string } }).involvedObject?.name === name && (e as { reason?: string }).reason === MIGRATION_PENDING_REASON,
    ) as { message: string; count: number; type: string; involvedObject: { kind: string } }[];
  await runningVmi(c, 'a1', 'node-a');
  await runningVmi(c, 'a2', 'node-a');
  await runningVmi(c, 'b1', 'node-b');
  await migrate(c, 'ma1', 'a1');
  await phaseIs(c, 'ma1', 'Scheduled');
  await migrate(c, 'ma2', 'a2');
  const first = await until('the per-node Event', async () => ((await pendingEvents('ma2')).length ? await pendingEvents('ma2') : undefined), 3000);
  assert.equal(first[0].type, 'Normal');
  assert.equal(first[0].involvedObject.kind, 'VirtualMachineInstanceMigration');
  assert.equal(
    first[0].message,
    `Waiting to schedule target for VMI ${ns}/a2 migration: the outbound migrations from node node-a have reached parallelOutboundMigrationsPerNode (1)`,
  );
  // Other migrations and VMI writes reconcile ma2 again and again: still one Event, count 1.
  await migrate(c, 'mb1', 'b1');
  await phaseIs(c, 'mb1', 'Scheduled');
  for (let i = 0; i < 3; i++) await c.patch(VMIS, 'b1', { metadata: { labels: { touched: String(i) } } }, { namespace: ns });
  await settle(300);
  assert.equal(await phase(c, 'ma2'), 'Pending');
  assert.deepEqual(
    (await pendingEvents('ma2')).map((e) => e.count),
    [1],
  );
  assert.equal((await pendingEvents('mb1')).length + (await pendingEvents('ma1')).length, 0, 'no Event for migrations that never waited');
  // Another reason (the cluster's limit now holds it): a second Event.
  await c.patch(
    KUBEVIRTS,
    migrationConfig.KUBEVIRT_NAME,
    { spec: { configuration: { migrations: { parallelOutboundMigrationsPerNode: 2, parallelMigrationsPerCluster: 2 } } } },
    { namespace: migrationConfig.KUBEVIRT_NAMESPACE },
  );
  await until('the cluster-limit Event', async () => ((await pendingEvents('ma2')).length === 2 ? true : undefined), 3000);
  assert.match((await pendingEvents('ma2'))[1].message, /the running migrations have reached parallelMigrationsPerCluster \(2\)$/);
  await agentEnds(c, 'b1', { completed: true });
  await phaseIs(c, 'ma2', 'Scheduled');
  assert.equal((await pendingEvents('ma2')).length, 2);
});

test('parallelOutboundMigrationsPerNode: a second migration from the same node waits, others go', async () => {
  await using h = await setup({ parallelOutboundMigrationsPerNode: 1 });
  const { c } = h;
  await runningVmi(c, 'a1', 'node-a');
  await runningVmi(c, 'a2', 'node-a');
  await runningVmi(c, 'b1', 'node-b');
  await migrate(c, 'ma1', 'a1');
  await phaseIs(c, 'ma1', 'Scheduled');
  await migrate(c, 'ma2', 'a2');
  await migrate(c, 'mb1', 'b1');
  await phaseIs(c, 'mb1', 'Scheduled');
  assert.equal(await phase(c, 'ma2'), 'Pending');
  // Raising the limit in the KubeVirt object lets it go.
  await c.patch(
    KUBEVIRTS,
    migrationConfig.KUBEVIRT_NAME,
    { spec: { configuration: { migrations: { parallelOutboundMigrationsPerNode: 2 } } } },
    { namespace: migrationConfig.KUBEVIRT_NAMESPACE },
  );
  await phaseIs(c, 'ma2', 'Scheduled');
});
