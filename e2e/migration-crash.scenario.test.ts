/**
 * Crash safety of live migration (issue 13), the whole matrix (CI skips scenarios; the
 * representative cases are e2e/migration-crash.e2e.test.ts): the target agent, the source agent
 * and the API server each killed by SIGKILL at each step of a migration (1 Scheduled: the target
 * being prepared; 2 TargetReady: the source not started; 3 Running: the transfer, slowed down;
 * 4 the transfer completed, the switch not recorded), then started again; and a source agent
 * that stays down after the transfer completed (the target records the switch). After each:
 * exactly one QEMU, on the VMI's node, the migration Succeeded or Failed, the guest's uptime
 * going on. Also the source killed after writing startTimestamp, before QEMU was told to migrate:
 * Failed, the guest on the source (its QEMU's earlier incoming migration, still reported as
 * completed, is not taken for this one). One two-node cluster, one guest, which moves back and forth.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startCrashCluster, type CaseResult, type CrashCluster, type Side, type Step } from './migration-crash.ts';

let c: CrashCluster;
const results: string[] = [];
before(async () => {
  c = await startCrashCluster();
  await c.bootGuest();
});
after(async () => {
  console.log(`# matrix:\n${results.map((r) => `#   ${r}`).join('\n')}`);
  await c?.close();
});

const report = (what: string, r: CaseResult) =>
  results.push(
    `${what}: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms, transfer ${r.transferMs ?? '-'} ms, TLS setup ${r.tlsSetupMs.join('/') || '-'} ms${r.failureReason ? ` (${r.failureReason})` : ''}`,
  );

for (const kill of ['target', 'source', 'server'] as Side[]) {
  for (const step of [1, 2, 3, 4] as Step[]) {
    test(`${kill} killed at step ${step}: one QEMU, on the VMI's node, the migration finished, no reboot`, { timeout: 600_000 }, async () => {
      try {
        report(`${kill} step ${step}`, await c.crashCase(kill, step));
      } catch (e) {
        results.push(`${kill} step ${step}: FAILED ${e instanceof Error ? e.message.split('\n')[0] : e}`);
        throw e;
      }
    });
  }
}

test('the source agent killed after startTimestamp, before migrate: Failed, the guest stays where it was', { timeout: 600_000 }, async () => {
  // The guest arrived here by an earlier case's migration: its QEMU still reports that one as completed.
  try {
    const r = await c.crashCase('source', 'started');
    report('source step started', r);
    assert.equal(r.phase, 'Failed');
    assert.equal(r.node, r.from, 'the guest stays on the source');
    assert.match(r.failureReason ?? '', /restarted before the transfer began/);
  } catch (e) {
    results.push(`source step started: FAILED ${e instanceof Error ? e.message.split('\n')[0] : e}`);
    throw e;
  }
});

test('the source agent stays down after the transfer completed: the target records the switch', { timeout: 600_000 }, async () => {
  try {
    report('source down 40 s after completion', await c.crashCase('source', 4, { stayDownMs: 40_000 }));
  } catch (e) {
    results.push(`source down after completion: FAILED ${e instanceof Error ? e.message.split('\n')[0] : e}`);
    throw e;
  }
});
