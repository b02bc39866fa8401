/**
 * Crash safety of live migration with node-local disks (issue 13; CI skips scenarios): one tiny
 * guest whose root DataVolume and 64 MiB data claim are on the local pool, so a migration first
 * mirrors both over NBD (TLS on, the mirror slowed down); the target agent, the source agent and
 * the API server are each killed by SIGKILL 1.5 s into the mirror, then started again. After each:
 * exactly one QEMU, on the VMI's node, the migration Succeeded or Failed, the guest's uptime going
 * on, and the data disk intact on the VMI's node (every record the guest wrote up to a checksum it
 * printed afterwards is on the claim's file, with the guest's md5).
 */
import { after, before, test } from 'node:test';
import { startCrashCluster, type CrashCluster, type Side } from './migration-crash.ts';

let c: CrashCluster;
const results: string[] = [];
before(async () => {
  c = await startCrashCluster({ localDisks: true });
  await c.bootGuest();
});
after(async () => {
  console.log(`# matrix (local disks):\n${results.map((r) => `#   ${r}`).join('\n')}`);
  await c?.close();
});

for (const kill of ['target', 'source', 'server'] as Side[]) {
  test(
    `${kill} killed during the disk mirror: one QEMU, on the VMI's node, the migration finished, no reboot, the disk intact`,
    { timeout: 900_000 },
    async () => {
      try {
        const r = await c.crashCase(kill, 'mirror');
        results.push(
          `${kill} during the mirror: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms, transfer ${r.transferMs ?? '-'} ms, ` +
            `${r.recordsChecked} records checked${r.failureReason ? ` (${r.failureReason})` : ''}`,
        );
      } catch (e) {
        results.push(`${kill} during the mirror: FAILED ${e instanceof Error ? e.message.split('\n')[0] : e}`);
        throw e;
      }
    },
  );
}
