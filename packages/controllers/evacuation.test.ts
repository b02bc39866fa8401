/**
 * Evacuation controller unit tests over the in-memory client: the drain taint makes one
 * migration per VMI whose evictionStrategy asks for it (with an EvictionTriggered event), none
 * for the others or while a migration runs, and nothing without the taint.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migrationConfig, refs } from '@vessel/api';
import { setCondition, updateStatus } from '@vessel/runtime';
import { DRAIN_TAINT, EVACUATION_LABEL, EvacuationController } from './evacuation.ts';
import { agentSets, createNode, InMemoryClient, settle, until } from './testing/harness.ts';

const { NODES, VMIS, VMIMS, EVENTS } = refs;
const ns = 'default';

async function vmi(c: InMemoryClient, name: string, strategy: string | undefined, opts: { node?: string; migratable?: boolean } = {}) {
  await c.create(VMIS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: ns },
    spec: { ...(strategy ? { evictionStrategy: strategy } : {}), domain: { resources: { requests: { memory: '128Mi' } }, devices: {} } },
  });
  await agentSets(c, name, 'Running', ns, opts.node ?? 'node-a');
  await updateStatus(c, VMIS, ns, name, (s) => {
    setCondition(s, { type: 'LiveMigratable', status: opts.migratable === false ? 'False' : 'True', reason: '', message: '' }, false);
  });
}

const migrations = async (c: InMemoryClient) =>
  (await c.list(VMIMS, { namespace: ns })).items.map((m) => ({
    name: m.metadata!.name!,
    vmi: (m.spec as { vmiName: string }).vmiName,
    label: m.metadata!.labels?.[EVACUATION_LABEL],
  }));

const taint = (c: InMemoryClient, node: string) => c.patch(NODES, node, { spec: { taints: [{ key: DRAIN_TAINT, effect: 'NoSchedule' }] } });

test('the drain taint migrates VMIs that ask for it (LiveMigrate; LiveMigrateIfPossible when migratable), once each, with an event', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns);
  await createNode(c, 'node-a');
  await createNode(c, 'node-b');
  const ctrl = new EvacuationController(c);
  await ctrl.start();
  try {
    await vmi(c, 'live', 'LiveMigrate');
    await vmi(c, 'ifpossible', 'LiveMigrateIfPossible');
    await vmi(c, 'ifpossible-local', 'LiveMigrateIfPossible', { migratable: false });
    await vmi(c, 'none', undefined);
    await vmi(c, 'elsewhere', 'LiveMigrate', { node: 'node-b' });
    await settle();
    assert.deepEqual(await migrations(c), [], 'nothing without the taint');

    await taint(c, 'node-a');
    await until('two migrations', async () => ((await migrations(c)).length === 2 ? true : undefined));
    await settle(100);
    assert.deepEqual(
      (await migrations(c)).sort((a, b) => a.name.localeCompare(b.name)),
      [
        { name: 'ifpossible-evacuation-0', vmi: 'ifpossible', label: 'node-a' },
        { name: 'live-evacuation-0', vmi: 'live', label: 'node-a' },
      ],
    );
    const events = (await c.list(EVENTS, { namespace: ns })).items as {
      reason?: string;
      involvedObject?: { name?: string };
    }[];
    assert.deepEqual(
      events
        .filter((e) => e.reason === 'EvictionTriggered')
        .map((e) => e.involvedObject?.name)
        .sort(),
      ['ifpossible', 'live'],
    );

    // A VMI whose migration is under way gets no second one; once it failed, a retry waits.
    await updateStatus(c, VMIMS, ns, 'live-evacuation-0', (s) => {
      s.phase = 'Failed';
    });
    await settle(100);
    assert.equal((await migrations(c)).length, 2, 'a failed evacuation is retried only after a pause');
  } finally {
    await ctrl.stop();
    c.close();
  }
});

test('a VMI without its own strategy follows the KubeVirt object’s evictionStrategy', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns, migrationConfig.KUBEVIRT_NAMESPACE);
  await createNode(c, 'node-a');
  await createNode(c, 'node-b');
  const ctrl = new EvacuationController(c);
  await ctrl.start();
  try {
    await c.create(refs.KUBEVIRTS, migrationConfig.defaultKubeVirt());
    await vmi(c, 'unset', undefined);
    await vmi(c, 'none', 'None');
    await taint(c, 'node-a');
    await settle(200);
    assert.deepEqual(await migrations(c), [], 'no cluster default: None');
    await c.patch(
      refs.KUBEVIRTS,
      migrationConfig.KUBEVIRT_NAME,
      { spec: { configuration: { evictionStrategy: 'LiveMigrate' } } },
      { namespace: migrationConfig.KUBEVIRT_NAMESPACE },
    );
    await until('one migration', async () => ((await migrations(c)).length === 1 ? true : undefined));
    assert.equal((await migrations(c))[0].vmi, 'unset');
  } finally {
    await ctrl.stop();
    c.close();
  }
});

test('the KubeVirt object’s nodeDrainTaintKey replaces kubevirt.io/drain', async () => {
  const c = new InMemoryClient();
  await c.namespaces(ns, migrationConfig.KUBEVIRT_NAMESPACE);
  await createNode(c, 'node-a');
  await createNode(c, 'node-b');
  const ctrl = new EvacuationController(c);
  await ctrl.start();
  try {
    await c.create(refs.KUBEVIRTS, {
      ...migrationConfig.defaultKubeVirt(),
      spec: { configuration: { migrations: { nodeDrainTaintKey: 'example.com/maintenance' } } },
    });
    await settle(200);
    await vmi(c, 'vm1', 'LiveMigrate');
    await taint(c, 'node-a');
    await settle(200);
    assert.deepEqual(await migrations(c), [], 'kubevirt.io/drain is not the key any more');
    await c.patch(NODES, 'node-a', { spec: { taints: [{ key: 'example.com/maintenance', effect: 'NoSchedule' }] } });
    await until('one migration', async () => ((await migrations(c)).length === 1 ? true : undefined));
    assert.equal((await migrations(c))[0].vmi, 'vm1');
    const events = (await c.list(EVENTS, { namespace: ns })).items.map((e) => String((e as { message?: string }).message));
    assert.ok(
      events.some((m) => m.includes('taint example.com/maintenance')),
      events.join('\n'),
    );
  } finally {
    await ctrl.stop();
    c.close();
  }
});
