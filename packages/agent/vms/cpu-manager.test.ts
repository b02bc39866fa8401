/** The CPU manager's pure parts: CPU lists, the pool, assignments and the shared pool, the annotations; and taskset on a thread of this process. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import {
  affinityOf,
  assignmentAnnotations,
  CpuManager,
  CpuManagerError,
  formatCpuList,
  hostCpus,
  parseCpuList,
  recordedAssignment,
  setAffinity,
} from './cpu-manager.ts';

test('CPU lists: Linux syntax in, short form out; malformed ones are refused', () => {
  assert.deepEqual(parseCpuList('0'), [0]);
  assert.deepEqual(parseCpuList('0-2,5, 7-8\n'), [0, 1, 2, 5, 7, 8]);
  assert.deepEqual(parseCpuList(''), []);
  assert.equal(formatCpuList([5, 0, 1, 2, 7, 8]), '0-2,5,7-8');
  assert.equal(formatCpuList([1]), '1');
  for (const bad of ['a', '1-', '3-1', '0,,1', '99999'])
    assert.throws(
      () => parseCpuList(bad),
      (e: unknown) => e instanceof CpuManagerError && e.code === 'InvalidCpuList',
    );
});

test('the pool is every CPU but the reserved ones; assignments take the lowest free CPUs, never a taken one', () => {
  const cm = new CpuManager([0, 1, 2, 3], [0]);
  assert.deepEqual(cm.pool, [1, 2, 3]);
  assert.deepEqual(cm.assign(1, false, []), { vcpus: [1], emulator: undefined });
  assert.deepEqual(cm.assign(1, true, [1]), { vcpus: [2], emulator: 3 });
  assert.throws(
    () => cm.assign(2, false, [1, 2]),
    (e: unknown) =>
      e instanceof CpuManagerError &&
      e.code === 'InsufficientDedicatedCpus' &&
      /needs 2 dedicated CPUs and this node's CPU manager has 1 free of 3 \(1-3\)/.test(e.message),
  );
  assert.deepEqual(cm.shared([2]), [0, 1, 3], 'the reserved CPUs and the unassigned pool');
  assert.throws(() => new CpuManager([0, 1], [4]), /--reserved-cpus 4: no such CPU/);
  assert.throws(() => new CpuManager([0, 1], []), /at least one CPU/);
});

test('an assignment round-trips through the VMI annotations', () => {
  const a = { vcpus: [2, 3], emulator: 5 };
  const ann = assignmentAnnotations(a);
  assert.deepEqual(ann, { 'vessel.io/dedicated-cpus': '2-3', 'vessel.io/emulator-cpus': '5' });
  assert.deepEqual(recordedAssignment(ann), a);
  assert.deepEqual(recordedAssignment({ 'vessel.io/dedicated-cpus': '1' }), { vcpus: [1], emulator: undefined });
  assert.equal(recordedAssignment({}), undefined);
  assert.equal(recordedAssignment({ 'vessel.io/dedicated-cpus': 'x' }), undefined);
});

test('setAffinity pins a process (all threads) and affinityOf reads it back', async (t) => {
  const all = await hostCpus();
  if (all.length < 2) return t.skip('one CPU');
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    const pid = child.pid!;
    await setAffinity(pid, [all[1]], true);
    assert.deepEqual(await affinityOf(pid), [all[1]]);
    await setAffinity(pid, all);
    assert.deepEqual(await affinityOf(pid), all);
  } finally {
    child.kill('SIGKILL');
  }
});
