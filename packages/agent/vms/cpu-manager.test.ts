/** The CPU manager's pure parts: CPU lists, the pool, assignments and the shared pool, the annotations; and taskset on a thread of this process. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import {
  affinityOf,
  assignmentAnnotations,
  assignmentOn,
  DEDICATED_CPUS_ANNOTATION,
  EMULATOR_CPUS_ANNOTATION,
  handoverAnnotations,
  recordedTargetAssignment,
  TARGET_CPUS_ANNOTATION,
  targetAnnotation,
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

test('live migration: the target assigns its own CPUs, the switch hands them over, the source’s are free at once', () => {
  const uid = 'm-1';
  const src = { vcpus: [1] };
  const tgt = { vcpus: [0], emulator: 3 };
  // Before: the source node holds its CPUs; the target nothing.
  const base = { annotations: assignmentAnnotations(src), nodeName: 'a', migrationState: { migrationUid: uid, targetNode: 'b' } };
  assert.deepEqual(assignmentOn(base, 'a'), { a: { vcpus: [1], emulator: undefined }, incoming: false });
  assert.equal(assignmentOn(base, 'b'), undefined);
  // The target assigned CPUs from its own pool (recorded next to the source's).
  const annotations = { ...base.annotations, [TARGET_CPUS_ANNOTATION]: targetAnnotation(uid, 'b', tgt) };
  const running = { ...base, annotations };
  assert.deepEqual(assignmentOn(running, 'a')?.a.vcpus, [1], 'the source keeps its CPUs while the guest runs there');
  assert.deepEqual(assignmentOn(running, 'b'), { a: tgt, incoming: true });
  // A record of another migration, or for another node, is none.
  assert.equal(recordedTargetAssignment(annotations, 'm-2', 'b'), undefined);
  assert.equal(recordedTargetAssignment(annotations, uid, 'c'), undefined);
  assert.equal(recordedTargetAssignment({ [TARGET_CPUS_ANNOTATION]: '{junk' }, uid, 'b'), undefined);
  // The switch: the VMI is the target's; the source counts nothing (its CPUs back in its shared pool),
  // the target holds its own CPUs (not the source's numbers) until the handover.
  const switched = { annotations, nodeName: 'b', migrationState: { migrationUid: uid, targetNode: 'b', completed: true } };
  assert.equal(assignmentOn(switched, 'a'), undefined);
  assert.deepEqual(assignmentOn(switched, 'b'), { a: tgt, incoming: true });
  // The handover patch (JSON merge): the target's CPUs become the main annotations, the record goes.
  const patch = handoverAnnotations(tgt);
  assert.deepEqual(patch, { [DEDICATED_CPUS_ANNOTATION]: '0', [EMULATOR_CPUS_ANNOTATION]: '3', [TARGET_CPUS_ANNOTATION]: null });
  const merged = Object.fromEntries(Object.entries({ ...annotations, ...patch }).filter(([, v]) => v !== null)) as Record<string, string>;
  assert.deepEqual(assignmentOn({ ...switched, annotations: merged }, 'b'), { a: tgt, incoming: false });
  // Without an isolated emulator CPU the source's emulator annotation (if any) is removed.
  assert.equal(handoverAnnotations({ vcpus: [2] })[EMULATOR_CPUS_ANNOTATION], null);
  // A failed migration: the target's record no longer counts; the source still holds its CPUs.
  const failed = { ...running, migrationState: { migrationUid: uid, targetNode: 'b', failed: true } };
  assert.equal(assignmentOn(failed, 'b'), undefined);
  assert.deepEqual(assignmentOn(failed, 'a')?.a.vcpus, [1]);
});
