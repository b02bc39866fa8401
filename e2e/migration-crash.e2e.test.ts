/**
 * Crash safety of live migration (issue 13), the representative cases (the whole matrix is
 * e2e/migration-crash.scenario.test.ts): on one two-node cluster whose server and agents run in
 * child processes, one guest migrates while the source agent dies during the transfer, the
 * target agent dies with its target ready, and the API server dies during the transfer. After
 * each: exactly one QEMU, on the VMI's node, the migration Succeeded or Failed, no reboot.
 */
import { after, before, test } from 'node:test';
import { startCrashCluster, type CrashCluster } from './migration-crash.ts';

let c: CrashCluster;
before(async () => {
  c = await startCrashCluster();
  await c.bootGuest();
});
after(async () => {
  await c?.close();
});

for (const [kill, step, what] of [
  ['source', 3, 'the source agent killed during the transfer'],
  ['target', 2, 'the target agent killed with its target ready'],
  ['server', 3, 'the API server killed during the transfer'],
] as const) {
  test(`${what}: one QEMU, on the VMI's node, the migration finished, no reboot`, { timeout: 600_000 }, async () => {
    const r = await c.crashCase(kill, step);
    console.log(
      `# ${kill} step ${step}: ${r.name} ${r.phase} ${r.from} → ${r.node} settled ${r.settledMs} ms, transfer ${r.transferMs ?? '-'} ms, TLS setup ${r.tlsSetupMs.join('/') || '-'} ms${r.failureReason ? ` (${r.failureReason})` : ''}`,
    );
  });
}
