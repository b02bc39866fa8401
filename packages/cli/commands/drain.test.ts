/** planDrain: which VMIs on a node `vessel drain` live-migrates and which it must stop (or refuse over). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planDrain } from './drain.ts';

const vmi = (name: string, evictionStrategy: string | undefined, node = 'node-a', phase = 'Running', migratable = true) => ({
  metadata: { name, namespace: 'default' },
  spec: evictionStrategy ? { evictionStrategy } : {},
  status: { phase, nodeName: node, conditions: [{ type: 'LiveMigratable', status: migratable ? 'True' : 'False', message: 'volume root is local' }] },
});

test('LiveMigrate and migratable LiveMigrateIfPossible move; None, missing and unmigratable stop; other nodes and stopped VMIs are ignored', () => {
  const plan = planDrain(
    [
      vmi('live', 'LiveMigrate'),
      vmi('maybe', 'LiveMigrateIfPossible'),
      vmi('maybe-not', 'LiveMigrateIfPossible', 'node-a', 'Running', false),
      vmi('none', 'None'),
      vmi('unset', undefined),
      vmi('elsewhere', 'None', 'node-b'),
      vmi('done', 'None', 'node-a', 'Succeeded'),
    ],
    'node-a',
  );
  assert.deepEqual(plan.migrate, ['default/live', 'default/maybe']);
  assert.deepEqual(plan.stop, [
    { key: 'default/maybe-not', why: 'not live-migratable: volume root is local' },
    { key: 'default/none', why: 'evictionStrategy None' },
    { key: 'default/unset', why: 'evictionStrategy None' },
  ]);
});

test('the KubeVirt object’s evictionStrategy is the default of VMIs without their own', () => {
  const plan = planDrain([vmi('unset', undefined), vmi('none', 'None')], 'node-a', 'LiveMigrate');
  assert.deepEqual(plan.migrate, ['default/unset']);
  assert.deepEqual(plan.stop, [{ key: 'default/none', why: 'evictionStrategy None' }]);
});
