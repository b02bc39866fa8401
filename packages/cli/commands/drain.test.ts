/** planDrain: which VMIs on a node `vessel drain` live-migrates and which it must stop (or refuse over). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planDrain, retryDue, RETRY_AFTER_MS } from './drain.ts';

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

test('a VMI whose drain migration failed is migrated again 5 s after the failure was seen, once per failure; one under way or succeeded is not', () => {
  const vmim = (name: string, vmi: string, phase: string, created: string) => ({
    metadata: { name, uid: `uid-${name}`, namespace: 'ns', creationTimestamp: created },
    spec: { vmiName: vmi },
    status: { phase, migrationState: phase === 'Failed' ? { failureReason: `why ${name}` } : {} },
  });
  const migrations = [
    vmim('a-1', 'a', 'Failed', '2026-01-01T00:00:01Z'),
    vmim('b-1', 'b', 'Failed', '2026-01-01T00:00:01Z'),
    vmim('b-2', 'b', 'Running', '2026-01-01T00:00:02Z'),
    vmim('c-1', 'c', 'Failed', '2026-01-01T00:00:01Z'),
    vmim('c-2', 'c', 'Succeeded', '2026-01-01T00:00:02Z'),
    // Another namespace's VMI of the same name: not a's.
    {
      ...vmim('x-1', 'a', 'Running', '2026-01-01T00:00:03Z'),
      metadata: { name: 'x-1', uid: 'uid-x-1', namespace: 'other', creationTimestamp: '2026-01-01T00:00:03Z' },
    },
  ];
  const keys = ['ns/a', 'ns/b', 'ns/c', 'ns/d'];
  const seen = new Map<string, number>();
  assert.deepEqual(retryDue(keys, migrations, seen, 1000), [], 'a failure is first only seen');
  assert.deepEqual(retryDue(keys, migrations, seen, 1000 + RETRY_AFTER_MS - 1), []);
  assert.deepEqual(retryDue(keys, migrations, seen, 1000 + RETRY_AFTER_MS), [{ key: 'ns/a', failed: 'a-1', reason: 'why a-1' }]);
  assert.deepEqual(retryDue(keys, migrations, seen, 1000 + 10 * RETRY_AFTER_MS), [], 'one retry per failed migration');
  // The retry failed too: a new failure, retried in its turn.
  const again = [...migrations, vmim('a-2', 'a', 'Failed', '2026-01-01T00:00:09Z')];
  assert.deepEqual(retryDue(keys, again, seen, 100_000), []);
  assert.deepEqual(retryDue(keys, again, seen, 100_000 + RETRY_AFTER_MS), [{ key: 'ns/a', failed: 'a-2', reason: 'why a-2' }]);
});
