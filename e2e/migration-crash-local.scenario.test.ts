/**
 * Crash safety of live migration with node-local disks (issue 13; CI skips scenarios): one tiny
 * guest whose root DataVolume and 64 MiB data claim are on the local pool, so a migration first
 * mirrors both over NBD (TLS on). One cluster and one guest for every case, each a migration of
 * the guest from the node it is on with one process SIGKILLed at a step, then started again:
 * the target agent, the source agent and the API server 1.5 s into the mirror (slowed down); the
 * target agent once its volume files and NBD exports are up, before the source mirrors; the
 * source agent with the mirrors READY before `migrate`, and at pre-switchover (guest paused, the
 * mirrors not ended); either agent and the server after the transfer completed, before the switch
 * is recorded; the target agent after the switch, before it records the claims (its restart
 * repairs them); the source agent down 30 s after completion (the target records the switch; the
 * source, back, removes its stale copies). After each: exactly one QEMU, on the VMI's node, the migration
 * Succeeded or Failed, the guest's uptime going on, the data disk intact on the VMI's node (every
 * record the guest wrote up to a checksum it printed afterwards is on the claim's file, with the
 * guest's md5), both claims naming that node and an existing file there, and no file of either
 * claim left on the other node. Then a second cluster whose guest has the masquerade binding (its
 * QEMU in a pod namespace: the stream and the NBD mirror go through the relays) for the three
 * kills during the mirror, with the same checks. VESSEL_TEST_CRASH_ONLY=bridge|masquerade runs
 * one of the two.
 */
import { after, before, describe, test } from 'node:test';
import { startCrashCluster, type CrashCluster, type Side, type Step } from './migration-crash.ts';

type Case = { kill: Side; step: Step; label: string; stayDownMs?: number };
const bridgeCases: Case[] = [
  { kill: 'target', step: 'mirror', label: 'during the mirror' },
  { kill: 'source', step: 'mirror', label: 'during the mirror' },
  { kill: 'server', step: 'mirror', label: 'during the mirror' },
  { kill: 'target', step: 2, label: 'with its volumes and NBD exports up, before the mirror' },
  { kill: 'source', step: 'mirrored', label: 'with the mirrors READY, before migrate' },
  { kill: 'source', step: 'switchover', label: 'at pre-switchover (guest paused, mirrors not ended)' },
  { kill: 'source', step: 4, label: 'after the transfer completed, before the switch is recorded' },
  { kill: 'target', step: 4, label: 'after the transfer completed, before the switch is recorded' },
  { kill: 'server', step: 4, label: 'after the transfer completed, before the switch is recorded' },
  { kill: 'target', step: 'claims', label: 'after the switch, before it records the claims' },
  { kill: 'source', step: 4, label: 'after the transfer completed, down 30 s (the target takes the switch)', stayDownMs: 30_000 },
];
/** Through the relays: the steps where a relay holds the mirror's connection when its side dies. */
const masqueradeCases: Case[] = bridgeCases.filter((k) => k.step === 'mirror');

const only = process.env.VESSEL_TEST_CRASH_ONLY;
for (const [binding, cases] of [
  ['bridge', bridgeCases],
  ['masquerade', masqueradeCases],
] as const) {
  // One cluster per binding, one after the other (each boots its guest once).
  describe(`${binding} binding`, { skip: only && only !== binding ? `VESSEL_TEST_CRASH_ONLY=${only}` : false }, () => {
    let c: CrashCluster;
    const results: string[] = [];
    before(async () => {
      c = await startCrashCluster({ localDisks: true, binding });
      await c.bootGuest();
    });
    after(async () => {
      console.log(`# matrix (local disks, ${binding}):\n${results.map((r) => `#   ${r}`).join('\n')}`);
      await c?.close();
    });
    for (const { kill, step, label, stayDownMs } of cases) {
      test(
        `${binding}: ${kill} killed ${label}: one QEMU, on the VMI's node, no reboot, the disk intact, the claims there, nothing left on the other node`,
        { timeout: 900_000 },
        async () => {
          try {
            const r = await c.crashCase(kill, step, { stayDownMs });
            results.push(
              `${kill} ${label}: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms, transfer ${r.transferMs ?? '-'} ms, ` +
                `${r.recordsChecked} records checked, no leftovers at ${r.leftoversGoneMs} ms${r.failureReason ? ` (${r.failureReason})` : ''}`,
            );
          } catch (e) {
            results.push(`${kill} ${label}: FAILED ${e instanceof Error ? e.message.split('\n')[0] : e}`);
            throw e;
          }
        },
      );
    }
  });
}
