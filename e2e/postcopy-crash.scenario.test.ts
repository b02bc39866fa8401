/**
 * Agents SIGKILLed during post-copy (a scenario: CI skips it). The post-copy cases of
 * e2e/migration-settings.scenario.test.ts run their agents in the test process, which cannot be
 * SIGKILLed; these use the crash cluster of e2e/migration-crash.ts (server and agents in child
 * processes) with a guest live under TCG that prints its uptime every second. Each case: post-copy
 * after 5 s of precopy at 1 MiB/s, slowed to 512 KiB/s; once the guest prints on the target (past
 * the switch-over) one agent is SIGKILLed and started again. Then: the migration Succeeded, exactly
 * one QEMU, on the target, the guest's uptime going on (no reboot), and the source's guest never
 * printed after the switch-over (never two running copies; never none).
 *
 * Twice: with a guest live under TCG (`tcgLive`: precopy, post-copy after the completion timeout),
 * and as under TCG by default with post-copy allowed: the source pauses the guest and starts
 * post-copy at once (post-copy from the paused source, docs/migration.md), one cluster each. The
 * second also kills before the switch-over: the source agent after writing the mode, and after
 * `migrate` but before `migrate-start-postcopy`; the target agent with its QEMU ready; and each
 * agent during a post-copy recovery (the stream cut, the target listening again, the source's
 * `migrate resume` under way, the link back after the kill), and the source agent between its
 * resume's record and QEMU (the next agent finds no connect under way and resumes again).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startCrashCluster, type CrashCluster, type Side } from './migration-crash.ts';

const results: string[] = [];
after(() => console.log(`# post-copy kills:\n${results.map((r) => `#   ${r}`).join('\n')}`));

// VESSEL_TEST_CRASH_ONLY=live|paused: one of the two clusters.
const only = process.env.VESSEL_TEST_CRASH_ONLY;
for (const tcgLive of [true, false]) {
  const kind = tcgLive ? 'live, then post-copy' : 'post-copy from the paused source';
  const which = tcgLive ? 'live' : 'paused';
  describe(kind, { skip: only && only !== which ? `VESSEL_TEST_CRASH_ONLY=${only}` : false }, () => {
    let c: CrashCluster;
    before(async () => {
      c = await startCrashCluster({ tcgLive });
      await c.bootGuest();
    });
    after(async () => {
      await c?.close();
    });

    for (const kill of ['source', 'target'] as Side[]) {
      test(`the ${kill} agent SIGKILLed during post-copy: Succeeded, one QEMU on the target, no reboot`, { timeout: 900_000 }, async () => {
        const r = await c.crashCase(kill, 'postcopy');
        results.push(`${kind}, ${kill}: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms after the kill, transfer ${r.transferMs ?? '-'} ms`);
        assert.equal(r.phase, 'Succeeded', r.failureReason);
        assert.notEqual(r.node, r.from, 'the guest runs on the target');
      });
    }
    if (tcgLive) return;

    // Before the switch-over: the source agent dies with the mode written (the guest still runs
    // there), or with the guest paused and precopy under way (the restarted agent asks for the
    // post-copy it had not yet asked for); the target agent dies with its QEMU ready.
    test(
      'the source agent SIGKILLed with the mode written, the guest not yet paused: Failed, the guest runs on at the source',
      { timeout: 900_000 },
      async () => {
        const r = await c.crashCase('source', 'postcopy-mode');
        results.push(`${kind}, source before stop: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms (${r.failureReason})`);
        assert.equal(r.phase, 'Failed');
        assert.equal(r.node, r.from, 'the guest stays on the source');
      },
    );
    test('the source agent SIGKILLed with the guest paused, before migrate-start-postcopy: Succeeded on the target', { timeout: 900_000 }, async () => {
      const r = await c.crashCase('source', 'postcopy-start');
      results.push(
        `${kind}, source before migrate-start-postcopy: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms, transfer ${r.transferMs ?? '-'} ms`,
      );
      assert.equal(r.phase, 'Succeeded', r.failureReason);
      assert.notEqual(r.node, r.from, 'the guest runs on the target');
    });
    // During a post-copy recovery: the stream cut, the source saw it stall and asked, the target
    // listens again; one agent dies with the source's `migrate resume` under way, the link comes back.
    for (const kill of ['source', 'target'] as Side[]) {
      test(`the ${kill} agent SIGKILLed during a post-copy recovery: Succeeded, one QEMU on the target, no reboot`, { timeout: 900_000 }, async () => {
        const r = await c.crashCase(kill, 'recovery');
        results.push(
          `${kind}, ${kill} during a recovery: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms after the kill, transfer ${r.transferMs ?? '-'} ms`,
        );
        assert.equal(r.phase, 'Succeeded', r.failureReason);
        assert.notEqual(r.node, r.from, 'the guest runs on the target');
      });
    }
    test(
      'the source agent SIGKILLed after it recorded its post-copy resume, before QEMU got it: the next agent resumes, Succeeded',
      { timeout: 900_000 },
      async () => {
        const r = await c.crashCase('source', 'resume-recorded');
        results.push(`${kind}, source between its resume's record and QEMU: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms after the kill`);
        assert.equal(r.phase, 'Succeeded', r.failureReason);
        assert.notEqual(r.node, r.from, 'the guest runs on the target');
      },
    );
    test('the target agent SIGKILLed with its QEMU ready: one QEMU, the guest going on', { timeout: 900_000 }, async () => {
      const r = await c.crashCase('target', 2, { postcopy: true });
      results.push(
        `${kind}, target at TargetReady: ${r.phase} ${r.from} → ${r.node}, settled ${r.settledMs} ms${r.failureReason ? ` (${r.failureReason})` : ''}`,
      );
    });
  });
}
