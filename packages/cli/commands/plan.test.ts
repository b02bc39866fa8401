/** `vessel plan`'s pure parts: the Plan written, the progress lines, the outcome, describe, the cancel list; golden strings. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildPlan, describePlan, mergeCancel, outcome, PlanProgress, progressLines, taskLine, vmRef, type VmStatus } from './plan.ts';

const vm = (phase: string, transfer: [number, number], opts: Partial<VmStatus> = {}): VmStatus => ({
  id: '0123456789abcdef',
  name: 'web',
  phase,
  pipeline: [
    { name: 'Initialize', phase: 'Completed', progress: { total: 1, completed: 1 } },
    {
      name: 'DiskTransfer',
      phase: phase === 'DiskTransfer' ? 'Running' : phase === 'Completed' ? 'Completed' : 'Pending',
      progress: { total: transfer[1], completed: transfer[0] },
      annotations: { unit: 'MB' },
      tasks: [{ name: 'web-disk0', phase: 'Running', progress: { total: transfer[1], completed: transfer[0] }, annotations: { unit: 'MB' } }],
    },
    {
      name: 'VirtualMachineCreation',
      phase: phase === 'Completed' ? 'Completed' : 'Pending',
      progress: { total: 1, completed: phase === 'Completed' ? 1 : 0 },
    },
  ],
  ...opts,
});

test('buildPlan: provider, maps, VMs by name or id, type and power state; bad flags are usage errors', () => {
  const p = buildPlan('p1', 'src', {
    provider: 'ova',
    targetNamespace: 'dst',
    networkMap: 'net',
    storageMap: 'disks',
    vms: ['web', '0123456789abcdef', 'id:x', 'name:DB_Server.prod'],
    type: 'cold',
    targetPowerState: 'off',
  });
  assert.deepEqual(p, {
    apiVersion: 'forklift.konveyor.io/v1beta1',
    kind: 'Plan',
    metadata: { name: 'p1', namespace: 'src' },
    spec: {
      provider: { source: { name: 'ova', namespace: 'src' }, destination: { name: 'host', namespace: 'src' } },
      targetNamespace: 'dst',
      map: { network: { name: 'net', namespace: 'src' }, storage: { name: 'disks', namespace: 'src' } },
      vms: [{ name: 'web' }, { id: '0123456789abcdef' }, { id: 'x' }, { name: 'DB_Server.prod' }],
      type: 'cold',
      targetPowerState: 'off',
    },
  });
  assert.equal((buildPlan('p', 'n', { provider: 'ova', vms: ['a'] }).spec as { targetNamespace: string }).targetNamespace, 'n');
  assert.throws(() => buildPlan('p', 'n', { provider: 'ova', vms: ['a'], type: 'live' }), /--type must be cold or warm/);
  assert.throws(() => buildPlan('p', 'n', { provider: 'ova', vms: ['a'], targetPowerState: 'up' }), /--target-power-state/);
  assert.throws(() => buildPlan('p', 'n', { provider: 'ova', vms: [] }), /--vm/);
  assert.deepEqual(vmRef('App Server 1'), { name: 'App Server 1' });
});

test('progress lines: the current step, a bar per disk with MB and percent; completed and failed VMs', () => {
  assert.equal(
    taskLine({ name: 'web-disk0', phase: 'Running', progress: { total: 68, completed: 34 }, annotations: { unit: 'MB' } }),
    '  web-disk0 [##########··········] 34/68 MB 50%',
  );
  assert.deepEqual(
    progressLines([vm('DiskTransfer', [17, 68])]).map((l) => l.line),
    ['web: DiskTransfer (step 2/3)', '  web-disk0 [#####···············] 17/68 MB 25%'],
  );
  assert.deepEqual(
    progressLines([vm('Completed', [68, 68], { newName: 'web-1' })]).map((l) => l.line),
    ['web (as web-1): Completed', '  web-disk0 [####################] 68/68 MB 100%'],
  );
  const failed = vm('Failed', [3, 68], { error: { phase: 'DiskTransfer', reasons: ['upload refused (413)'] } });
  assert.deepEqual(
    progressLines([failed]).map((l) => l.line),
    ['web: Failed at DiskTransfer: upload refused (413)', '  web-disk0 [#···················] 3/68 MB 4%'],
  );
  assert.deepEqual(
    progressLines([{ id: 'x', name: 'db', phase: 'Pending', pipeline: [] }]).map((l) => l.line),
    ['db: Pending'],
  );
});

test('PlanProgress: one line per change without a TTY; the block redrawn in place on one', () => {
  let text = '';
  const plain = new PlanProgress({ isTTY: false, write: (s: string) => ((text += s), true) } as never);
  plain.update([vm('DiskTransfer', [0, 68])]);
  plain.update([vm('DiskTransfer', [34, 68])]);
  plain.update([vm('DiskTransfer', [34, 68])]);
  plain.update([vm('Completed', [68, 68])]);
  assert.equal(
    text,
    [
      'web: DiskTransfer (step 2/3)',
      '  web-disk0 [····················] 0/68 MB 0%',
      '  web-disk0 [##########··········] 34/68 MB 50%',
      'web: Completed',
      '  web-disk0 [####################] 68/68 MB 100%',
      '',
    ].join('\n'),
  );
  let tty = '';
  const term = new PlanProgress({ isTTY: true, write: (s: string) => ((tty += s), true) } as never);
  term.update([vm('DiskTransfer', [0, 68])]);
  term.update([vm('DiskTransfer', [0, 68])]);
  term.update([vm('DiskTransfer', [68, 68])]);
  assert.equal(
    tty,
    '\rweb: DiskTransfer (step 2/3)\x1b[K\n\r  web-disk0 [····················] 0/68 MB 0%\x1b[K\n' +
      '\x1b[2A\rweb: DiskTransfer (step 2/3)\x1b[K\n\r  web-disk0 [####################] 68/68 MB 100%\x1b[K\n',
  );
});

test('outcome: running, succeeded, failed with per-VM reasons, the plan not Ready', () => {
  const m = (conditions: object[], vms: VmStatus[] = []) => ({ status: { conditions, vms } });
  assert.deepEqual(outcome(m([{ type: 'Running', status: 'True' }])), { done: false, failed: false, errors: [] });
  assert.deepEqual(outcome(m([{ type: 'Succeeded', status: 'True' }], [vm('Completed', [68, 68])])), { done: true, failed: false, errors: [] });
  assert.deepEqual(
    outcome(
      m([{ type: 'Failed', status: 'True' }], [vm('Failed', [3, 68], { error: { phase: 'DiskTransfer', reasons: ['disk gone'] } }), vm('Completed', [1, 1])]),
    ),
    { done: true, failed: true, errors: ['VM web: DiskTransfer: disk gone'] },
  );
  assert.deepEqual(outcome(m([{ type: 'PlanNotReady', status: 'True', category: 'Critical', message: 'Plan src/p is not Ready.' }])), {
    done: true,
    failed: true,
    errors: ['Plan src/p is not Ready.'],
  });
});

test('describePlan: settings, concerns with category and items, VMs, the latest migration per step and disk', () => {
  const plan = {
    metadata: { name: 'p1', namespace: 'src' },
    spec: {
      provider: { source: { name: 'ova' } },
      targetNamespace: 'dst',
      map: { network: { name: 'net' }, storage: { name: 'disks' } },
      vms: [{ name: 'web' }, { id: 'abc' }],
      targetPowerState: 'off',
    },
    status: {
      conditions: [
        {
          type: 'TargetNameNotValid',
          status: 'True',
          category: 'Warn',
          reason: 'NotValid',
          message: 'Target VM name does not comply with DNS1123.',
          items: ["id:x name:'DB' newName:'db'"],
        },
        { type: 'Ready', status: 'True', category: 'Required', message: 'The migration plan is ready.' },
      ],
    },
  };
  const mig = {
    metadata: { name: 'p1-abcde' },
    status: { started: '2026-12-06T20:00:00Z', conditions: [{ type: 'Running', status: 'True' }], vms: [vm('DiskTransfer', [34, 68])] },
  };
  assert.equal(
    describePlan(plan, mig),
    [
      'Name:              p1',
      'Namespace:         src',
      'Provider:          ova',
      'Target namespace:  dst',
      'Type:              cold',
      'Target power:      off',
      'Network map:       net',
      'Storage map:       disks',
      'Conditions:',
      '  TargetNameNotValid (Warn, NotValid): Target VM name does not comply with DNS1123.',
      "    - id:x name:'DB' newName:'db'",
      '  Ready (Required): The migration plan is ready.',
      'VMs:',
      '  - name:web',
      '  - id:abc',
      'Migration:         p1-abcde (Running)',
      '  Started:         2026-12-06T20:00:00Z',
      '  VM web (id 0123456789abcdef): DiskTransfer',
      '    Initialize              Completed  1/1',
      '    DiskTransfer            Running    34/68 MB',
      '      web-disk0 [##########··········] 34/68 MB 50%',
      '    VirtualMachineCreation  Pending    0/1',
      '',
    ].join('\n'),
  );
  const waiting = { metadata: { name: 'p-x' }, status: { conditions: [{ type: 'PlanNotReady', status: 'True', category: 'Critical' }] } };
  assert.match(describePlan({ metadata: { name: 'p' }, spec: {} }, waiting), /\nMigration: {9}p-x \(waiting: PlanNotReady\)\n$/);
  assert.match(describePlan({ metadata: { name: 'p' }, spec: {} }), /Conditions:\n {2}<none: not validated yet>\nVMs:\nMigration: {9}<none>\n$/);
});

test('mergeCancel: adds refs once (by id, or by name when no id)', () => {
  assert.deepEqual(mergeCancel([{ id: 'a', name: 'web' }], [{ id: 'a' }, { name: 'db' }, { name: 'db' }, { id: 'b', name: 'x' }]), [
    { id: 'a', name: 'web' },
    { name: 'db' },
    { id: 'b', name: 'x' },
  ]);
});

test('a canceled VM shows Canceled; a migration whose VMs were all canceled is done and failed', () => {
  const canceled = vm('Completed', [3, 68], { conditions: [{ type: 'Canceled', status: 'True', reason: 'UserRequested' }] });
  assert.equal(progressLines([canceled])[0].line, 'web: Canceled');
  assert.deepEqual(outcome({ status: { conditions: [{ type: 'Canceled', status: 'True' }], vms: [canceled] } }), {
    done: true,
    failed: true,
    errors: ['the migration was canceled: every VM was canceled'],
  });
});
