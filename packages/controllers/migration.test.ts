/**
 * Migration controller unit tests over the in-memory client: the control plane's phases
 * (Pending → Scheduling → Scheduled, one write each), the phases mirrored from the agents'
 * migrationState, the refusals, and deletion as an abort request. The agents' writes are made
 * by hand, as vms/migration.ts makes them.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { refs } from '@vessel/api';
import { getCondition, setCondition, updateStatus, type KubeObject } from '@vessel/runtime';
import { migration } from '@vessel/api';
import { MIGRATION_TARGET_ANNOTATION, MigrationController } from './migration.ts';

type MigrationState = migration.MigrationState;
import { agentSets, createNode, InMemoryClient, NODES, until } from './testing/harness.ts';

const { VMIS, VMIMS } = refs;
type Obj = Record<string, unknown>;
const ns = 'default';

async function setup(nodes = ['node-a', 'node-b']) {
  const c = new InMemoryClient();
  await c.namespaces(ns);
  for (const n of nodes) await createNode(c, n);
  const ctrl = new MigrationController(c, process.env.MIG_LOG ? (l) => console.error(l) : undefined);
  await ctrl.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctrl.stop();
      c.close();
    },
  };
}

async function runningVmi(
  c: InMemoryClient,
  name: string,
  opts: { migratable?: boolean; node?: string; running?: boolean; dedicated?: boolean } = {},
): Promise<void> {
  await c.create(VMIS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: ns },
    spec: {
      domain: { cpu: { cores: 1, ...(opts.dedicated ? { dedicatedCpuPlacement: true } : {}) }, resources: { requests: { memory: '128Mi' } }, devices: {} },
    },
  });
  if (opts.running === false) return;
  await agentSets(c, name, 'Running', ns, opts.node ?? 'node-a');
  await updateStatus(c, VMIS, ns, name, (s) => {
    setCondition(
      s,
      opts.migratable === false
        ? { type: 'LiveMigratable', status: 'False', reason: 'DisksNotLiveMigratable', message: 'volume root is on the local pool of node-a' }
        : { type: 'LiveMigratable', status: 'True', reason: '', message: '' },
      false,
    );
  });
}

const migrate = (c: InMemoryClient, name: string, vmi: string, node?: string) =>
  c.create(VMIMS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstanceMigration',
    metadata: { name, namespace: ns, ...(node ? { annotations: { [MIGRATION_TARGET_ANNOTATION]: node } } : {}) },
    spec: { vmiName: vmi },
  });
const vmim = async (c: InMemoryClient, name: string) => {
  const st = ((await c.get(VMIMS, name, { namespace: ns })).status ?? {}) as {
    phase?: string;
    migrationState?: MigrationState;
    phaseTransitionTimestamps?: { phase: string }[];
  };
  return { ...st, reason: st.migrationState?.failureReason };
};
const stateOf = async (c: InMemoryClient, name: string) =>
  ((await c.get(VMIS, name, { namespace: ns })).status as Obj).migrationState as MigrationState | undefined;
const phaseIs = (c: InMemoryClient, name: string, phase: string) =>
  until(`${name} ${phase}`, async () => ((await vmim(c, name)).phase === phase ? true : undefined), 3000);
const migratingOf = async (c: InMemoryClient, name: string) => getCondition(await c.get(VMIS, name, { namespace: ns }), 'Migrating');
const pick = (cond: { status: string; reason?: string; message?: string } | undefined) =>
  cond && { status: cond.status, reason: cond.reason, message: cond.message };
const agentWrites = (c: InMemoryClient, vmi: string, change: Partial<MigrationState>) =>
  updateStatus(c, VMIS, ns, vmi, (s) => {
    s.migrationState = { ...(s.migrationState as Obj), ...change };
  });

test('a migration goes Pending → Scheduling → Scheduled (one phase per write), names its target on the VMI, then follows the agents to Succeeded', async () => {
  await using h = await setup();
  const { c } = h;
  await runningVmi(c, 'vm1');
  const m = (await migrate(c, 'mig1', 'vm1')) as KubeObject;
  await phaseIs(c, 'mig1', 'Scheduled');
  const ms = (await stateOf(c, 'vm1'))!;
  assert.deepEqual(
    { uid: ms.migrationUid, source: ms.sourceNode, target: ms.targetNode, mode: ms.mode },
    { uid: m.metadata.uid, source: 'node-a', target: 'node-b', mode: 'PreCopy' },
  );
  assert.deepEqual(
    (await vmim(c, 'mig1')).phaseTransitionTimestamps!.map((p) => p.phase),
    ['Pending', 'Scheduling', 'Scheduled'],
  );
  // The VMI's Migrating condition is written with the target, in the same write.
  assert.deepEqual(pick(await migratingOf(c, 'vm1')), { status: 'True', reason: 'MigrationInProgress', message: 'migration mig1 from node-a to node-b' });
  await agentWrites(c, 'vm1', { targetPod: 'vm1@node-b' });
  await phaseIs(c, 'mig1', 'PreparingTarget');
  await agentWrites(c, 'vm1', { targetNodeAddress: '10.233.0.12:49152' });
  await phaseIs(c, 'mig1', 'TargetReady');
  await agentWrites(c, 'vm1', { startTimestamp: new Date().toISOString() });
  await phaseIs(c, 'mig1', 'Running');
  await agentWrites(c, 'vm1', { completed: true, endTimestamp: new Date().toISOString() });
  await phaseIs(c, 'mig1', 'Succeeded');
  assert.deepEqual(
    (await vmim(c, 'mig1')).phaseTransitionTimestamps!.map((p) => p.phase),
    ['Pending', 'Scheduling', 'Scheduled', 'PreparingTarget', 'TargetReady', 'Running', 'Succeeded'],
  );
  await until('Migrating False', async () => ((await migratingOf(c, 'vm1'))?.status === 'False' ? true : undefined), 3000);
  assert.deepEqual(pick(await migratingOf(c, 'vm1')), {
    status: 'False',
    reason: 'MigrationSucceeded',
    message: 'migration mig1 from node-a to node-b: succeeded',
  });
  // A later migration of the same VMI starts afresh (the VMI now runs on node-b, as the source agent wrote).
  await updateStatus(c, VMIS, ns, 'vm1', (s) => {
    s.nodeName = 'node-b';
  });
  await migrate(c, 'mig2', 'vm1');
  await phaseIs(c, 'mig2', 'Scheduled');
  assert.equal((await stateOf(c, 'vm1'))!.targetNode, 'node-a');
});

test('refusals: not Running, not live-migratable (says why), no other node, a named node that is the source, a second migration while one runs', async () => {
  await using h = await setup(['node-a', 'node-b']);
  const { c } = h;
  await runningVmi(c, 'halted', { running: false });
  await migrate(c, 'm-halted', 'halted');
  await phaseIs(c, 'm-halted', 'Failed');
  assert.match((await vmim(c, 'm-halted')).reason!, /not Running/);

  await runningVmi(c, 'local', { migratable: false });
  await migrate(c, 'm-local', 'local');
  await phaseIs(c, 'm-local', 'Failed');
  assert.match((await vmim(c, 'm-local')).reason!, /not live-migratable: volume root is on the local pool/);
  assert.equal(await stateOf(c, 'local'), undefined);

  await migrate(c, 'm-missing', 'nosuch');
  await phaseIs(c, 'm-missing', 'Failed');

  await runningVmi(c, 'vm');
  await migrate(c, 'm-self', 'vm', 'node-a');
  await phaseIs(c, 'm-self', 'Failed');
  assert.match((await vmim(c, 'm-self')).reason!, /runs already/);

  await migrate(c, 'm-first', 'vm', 'node-b');
  await phaseIs(c, 'm-first', 'Scheduled');
  await migrate(c, 'm-second', 'vm');
  await phaseIs(c, 'm-second', 'Failed');
  assert.match((await vmim(c, 'm-second')).reason!, /another migration/);
  assert.equal((await vmim(c, 'm-first')).phase, 'Scheduled');
});

test('no node other than the source fits: Failed with the scheduler’s reason', async () => {
  await using h = await setup(['node-a']);
  const { c } = h;
  await runningVmi(c, 'vm');
  await migrate(c, 'm', 'vm');
  await phaseIs(c, 'm', 'Failed');
  assert.match((await vmim(c, 'm')).reason!, /no node other than node-a/);
});

test('dedicated-CPU VMIs migrating into a node count there: two at once never share its pool of one', async () => {
  await using h = await setup([]);
  const { c } = h;
  // node-a's CPU manager holds both guests (pool of 2); node-b and node-c have a pool of 1 each.
  for (const [n, pool] of [
    ['node-a', '2'],
    ['node-b', '1'],
    ['node-c', '1'],
  ] as const) {
    await createNode(c, n, { labels: { cpumanager: 'true' } });
    await updateStatus(c, NODES, undefined, n, (s) => {
      (s.allocatable as Obj)['vessel.io/dedicated-cpus'] = pool;
    });
  }
  await runningVmi(c, 'one', { dedicated: true });
  await runningVmi(c, 'two', { dedicated: true });
  await runningVmi(c, 'three', { dedicated: true, node: 'node-b' });
  // node-b is full (three); one and two ask at once: node-c fits only one of them.
  await migrate(c, 'm-one', 'one');
  await migrate(c, 'm-two', 'two');
  await until('both decided', async () => {
    const phases = [(await vmim(c, 'm-one')).phase, (await vmim(c, 'm-two')).phase];
    return phases.every((p) => p === 'Scheduled' || p === 'Failed') ? phases : undefined;
  });
  const decided = [await vmim(c, 'm-one'), await vmim(c, 'm-two')];
  const won = decided.filter((d) => d.phase === 'Scheduled');
  const lost = decided.filter((d) => d.phase === 'Failed');
  assert.equal(won.length, 1, JSON.stringify(decided.map((d) => [d.phase, d.reason])));
  assert.equal(lost.length, 1);
  assert.equal(won[0].migrationState?.targetNode, 'node-c');
  assert.match(lost[0].reason!, /0\/2 nodes are available: 2 Insufficient vessel.io\/dedicated-cpus/);

  // The target fails (the migration ended): its CPU on node-c is free again for the next.
  const winner = won[0] === decided[0] ? 'one' : 'two';
  const loser = winner === 'one' ? 'two' : 'one';
  await agentWrites(c, winner, { failed: true, failureReason: 'target node-c: gone' });
  await phaseIs(c, `m-${winner}`, 'Failed');
  await migrate(c, 'm-again', loser);
  await phaseIs(c, 'm-again', 'Scheduled');
  assert.equal((await stateOf(c, loser))?.targetNode, 'node-c');
  // Switched: the VMI's node is node-c, where it is counted as placed; node-c stays full.
  await agentWrites(c, loser, { completed: true });
  await updateStatus(c, VMIS, ns, loser, (s) => {
    s.nodeName = 'node-c';
  });
  await phaseIs(c, 'm-again', 'Succeeded');
  await migrate(c, 'm-last', winner);
  await phaseIs(c, 'm-last', 'Failed');
  assert.match((await vmim(c, 'm-last')).reason!, /2 Insufficient vessel.io\/dedicated-cpus/);
});

test('steps the agents made between two reconciles are recorded in order', async () => {
  await using h = await setup();
  const { c } = h;
  await runningVmi(c, 'vm');
  await migrate(c, 'm', 'vm');
  await phaseIs(c, 'm', 'Scheduled');
  // Target ready, transfer started and completed in one write, as a fast migration may look to the controller.
  await agentWrites(c, 'vm', { targetNodeAddress: '10.233.0.12:49152', startTimestamp: new Date().toISOString(), completed: true });
  await phaseIs(c, 'm', 'Succeeded');
  assert.deepEqual(
    (await vmim(c, 'm')).phaseTransitionTimestamps!.map((p) => p.phase),
    ['Pending', 'Scheduling', 'Scheduled', 'PreparingTarget', 'TargetReady', 'Running', 'Succeeded'],
  );
});

test('deleting a running migration asks the agents to abort; their failure ends it', async () => {
  await using h = await setup();
  const { c } = h;
  await runningVmi(c, 'vm');
  await migrate(c, 'm', 'vm');
  await phaseIs(c, 'm', 'Scheduled');
  await agentWrites(c, 'vm', { targetNodeAddress: '10.233.0.12:49152', startTimestamp: new Date().toISOString() });
  await phaseIs(c, 'm', 'Running');
  assert.equal((await migratingOf(c, 'vm'))?.status, 'True');
  await c.delete(VMIMS, 'm', { namespace: ns });
  await until('abortRequested', async () => ((await stateOf(c, 'vm'))?.abortRequested ? true : undefined), 3000);
  // The agents answer with failed: a new migration may then start.
  await agentWrites(c, 'vm', { failed: true, failureReason: 'aborted', endTimestamp: new Date().toISOString() });
  await until('Migrating False', async () => ((await migratingOf(c, 'vm'))?.status === 'False' ? true : undefined), 3000);
  assert.deepEqual(pick(await migratingOf(c, 'vm')), {
    status: 'False',
    reason: 'MigrationFailed',
    message: 'migration m from node-a to node-b: failed: aborted',
  });
  await migrate(c, 'm2', 'vm');
  await phaseIs(c, 'm2', 'Scheduled');
});
