import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migration, migrationConfig } from '@vessel/api';
import type { QmpClient } from '../qmp/client.ts';
import {
  ANNOUNCE,
  applySourceSettings,
  applyTargetSettings,
  configurationOf,
  migrationDataBytes,
  MigrationWatch,
  stopAndCopy,
  transferStart,
  verdictWhenStopped,
} from './migration-settings.ts';

const GIB = 2 ** 30;
const conf = (c: Partial<migrationConfig.MigrationConfiguration> = {}) => ({ ...migrationConfig.MIGRATION_DEFAULTS, ...c });
const active = (remaining: number) => ({ status: 'active', ram: { remaining } });

test('the configuration: the controller’s, else KubeVirt’s defaults; the data size is the guest memory plus copied disks', () => {
  assert.deepEqual(configurationOf(undefined), migrationConfig.MIGRATION_DEFAULTS);
  assert.equal(configurationOf({ migrationConfiguration: conf({ allowPostCopy: true }) }).allowPostCopy, true);
  assert.equal(migrationDataBytes({ domain: { resources: { requests: { memory: '128Mi' } } } }), 128 * 2 ** 20);
  assert.equal(migrationDataBytes({ domain: { memory: { guest: '1Gi' }, resources: { requests: { memory: '2Gi' } } } }, GIB), 2 * GIB);
});

test('completion timeout: completionTimeoutPerGiB × GiB moved, then cancel (or post-copy when allowed), said once', () => {
  // Rounded up to whole GiB (KubeVirt): half a GiB counts as one, one and a half as two.
  assert.equal(new MigrationWatch(conf({ completionTimeoutPerGiB: 8 }), 1.5 * GIB, 0).completionTimeoutMs, 16_000);
  const w = new MigrationWatch(conf({ completionTimeoutPerGiB: 4 }), GIB / 2, 0);
  assert.equal(w.completionTimeoutMs, 4000);
  assert.equal(w.check(active(100), 3999), undefined);
  assert.equal(w.check({ status: 'setup' }, 5000), undefined, 'only a running precopy is judged');
  const v = w.check(active(50), 4000)!;
  assert.equal(v.action, 'cancel');
  assert.match(v.reason, /^completion timeout: not done within 4\.0 s .*cancelled$/);
  assert.equal(w.check(active(50), 9000), undefined);
  const p = new MigrationWatch(conf({ completionTimeoutPerGiB: 4, allowPostCopy: true }), GIB / 2, 0);
  assert.equal(p.check(active(1), 4000)?.action, 'postcopy');
  // allowWorkloadDisruption: post-copy when allowed too, else the guest paused (never a cancel).
  const both = new MigrationWatch(conf({ completionTimeoutPerGiB: 4, allowPostCopy: true, allowWorkloadDisruption: true }), GIB / 2, 0);
  assert.equal(both.check(active(1), 4000)?.action, 'postcopy');
  const d = new MigrationWatch(conf({ completionTimeoutPerGiB: 4, allowWorkloadDisruption: true }), GIB / 2, 0);
  const dv = d.check(active(1), 4000)!;
  assert.equal(dv.action, 'pause');
  assert.match(dv.reason, /^completion timeout: .*paused to complete \(allowWorkloadDisruption\)$/);
  const dp = new MigrationWatch(conf({ progressTimeout: 2, completionTimeoutPerGiB: 1000, allowWorkloadDisruption: true }), GIB, 0);
  assert.equal(dp.check(active(5), 0), undefined);
  assert.equal(dp.check(active(5), 2000)?.action, 'pause');
});

test('progress timeout: the remaining bytes not below their lowest for progressTimeout s', () => {
  const w = new MigrationWatch(conf({ progressTimeout: 5, completionTimeoutPerGiB: 1000 }), GIB, 0);
  assert.equal(w.check(active(100), 1000), undefined);
  assert.equal(w.check(active(90), 4000), undefined, 'progress at 4 s');
  assert.equal(w.check(active(95), 8999), undefined, 'a rise is no progress, but 5 s have not passed');
  const v = w.check(active(91), 9000)!;
  assert.equal(v.action, 'cancel');
  assert.match(v.reason, /^progress timeout: .* 5 s/);
});

test('the target: post-copy as configured and the self-announce parameters set explicitly', async () => {
  const calls: [string, unknown][] = [];
  const qmp = { execute: async (cmd: string, args?: unknown) => void calls.push([cmd, args]) } as unknown as QmpClient;
  await applyTargetSettings(qmp, conf({ allowPostCopy: true }));
  assert.deepEqual(calls[0], [
    'migrate-set-capabilities',
    {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'postcopy-ram', state: true },
      ],
    },
  ]);
  assert.deepEqual(calls[1], ['migrate-set-parameters', { 'announce-initial': 50, 'announce-max': 550, 'announce-rounds': 5, 'announce-step': 100 }]);
  assert.ok(ANNOUNCE['announce-rounds'] > 0);
});

test('the source: post-copy reaches QEMU as allowed, with node-local disks too, which add the pause before the switch-over', async () => {
  const caps = async (c: Partial<migrationConfig.MigrationConfiguration>, localDisks: number) => {
    const calls: [string, { capabilities?: { capability: string; state: boolean }[]; 'max-bandwidth'?: number }][] = [];
    const qmp = { execute: async (cmd: string, args?: unknown) => void calls.push([cmd, args as (typeof calls)[number][1]]) } as unknown as QmpClient;
    await applySourceSettings(qmp, conf(c), { localDisks });
    assert.equal(calls[0][0], 'migrate-set-capabilities');
    assert.equal(calls[1][0], 'migrate-set-parameters');
    return Object.fromEntries(calls[0][1].capabilities!.map((x) => [x.capability, x.state]));
  };
  // Local disks: the mirrors end in pre-switchover, which post-copy passes too (QEMU 7.2): both on.
  assert.deepEqual(await caps({ allowPostCopy: true }, 2), { events: true, 'pause-before-switchover': true, 'auto-converge': false, 'postcopy-ram': true });
  assert.deepEqual(await caps({ allowPostCopy: true }, 0), { events: true, 'pause-before-switchover': false, 'auto-converge': false, 'postcopy-ram': true });
  assert.deepEqual(await caps({ allowPostCopy: false, allowAutoConverge: true }, 1), {
    events: true,
    'pause-before-switchover': true,
    'auto-converge': true,
    'postcopy-ram': false,
  });
});

test('under TCG a running guest pauses for its transfer unless its VMI asks for live; under KVM it stays live', () => {
  assert.equal(stopAndCopy('tcg', undefined, true), true);
  assert.equal(stopAndCopy('tcg', { [migration.TCG_LIVE_ANNOTATION]: 'false' }, true), true);
  assert.equal(stopAndCopy('tcg', { [migration.TCG_LIVE_ANNOTATION]: 'true' }, true), false);
  assert.equal(stopAndCopy('kvm', undefined, true), false);
  // A guest already paused (by its user) is not paused again, nor resumed by the migration.
  assert.equal(stopAndCopy('tcg', undefined, false), false);
});

test('under TCG with post-copy allowed the paused guest goes to post-copy at once; a stopped guest never goes to post-copy', () => {
  const post = { allowPostCopy: true };
  const pre = { allowPostCopy: false };
  assert.equal(transferStart('tcg', undefined, true, post), 'postcopy');
  assert.equal(transferStart('tcg', undefined, true, pre), 'stop-and-copy');
  // Live stays live (the annotation, KVM), post-copy then only as a timeout's verdict.
  assert.equal(transferStart('tcg', { [migration.TCG_LIVE_ANNOTATION]: 'true' }, true, post), 'live');
  assert.equal(transferStart('kvm', undefined, true, post), 'live');
  // A guest its user paused: QEMU 7.2's target would start it at post-copy's switch-over.
  assert.equal(transferStart('tcg', undefined, false, post), 'live');

  const w = new MigrationWatch(conf({ completionTimeoutPerGiB: 4, allowPostCopy: true }), GIB / 2, 0);
  const v = w.check(active(1), 4000)!;
  assert.equal(verdictWhenStopped(v, true), v);
  const c = verdictWhenStopped(v, false)!;
  assert.equal(c.action, 'cancel');
  assert.match(c.reason, /^completion timeout: not done within 4\.0 s .*: cancelled \(the guest is paused: post-copy would not bring it over sooner\)$/);
  assert.equal(verdictWhenStopped(undefined, false), undefined);
  const pause = { action: 'pause' as const, reason: 'x' };
  assert.equal(verdictWhenStopped(pause, false), pause);
});
