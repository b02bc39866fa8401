import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind, resolveName } from './kinds.ts';
import {
  bandwidthBytes,
  clusterMigrationConfiguration,
  defaultKubeVirt,
  effectiveMigrationConfiguration,
  evictionStrategyOf,
  matchMigrationPolicy,
  MIGRATION_DEFAULTS,
  nodeDrainTaintKey,
} from './migration-config.ts';
import type { KubeObject } from './types.ts';
import { validateObject } from './validate.ts';

const check = (o: KubeObject) => validateObject(findByKind(o.apiVersion as string, o.kind as string)!, o, 'create');
const fields = (o: KubeObject) => check(o).causes.map((c) => c.field);

const kv = (migrations: Record<string, unknown>, extra: Record<string, unknown> = {}): KubeObject => ({
  ...defaultKubeVirt(),
  spec: { configuration: { migrations, ...extra } },
});

const policy = (name: string, selectors: Record<string, unknown>, spec: Record<string, unknown> = {}): KubeObject => ({
  apiVersion: 'migrations.kubevirt.io/v1alpha1',
  kind: 'MigrationPolicy',
  metadata: { name },
  spec: { selectors, ...spec },
});

test('the KubeVirt and MigrationPolicy kinds are served under their kubectl names', () => {
  assert.equal(resolveName('kv')?.kind, 'KubeVirt');
  assert.equal(resolveName('kubevirt')?.namespaced, true);
  assert.equal(resolveName('migrationpolicies')?.namespaced, false);
  assert.deepEqual(check(defaultKubeVirt()).causes, []);
});

test('spec.configuration.migrations: a quantity, positive integers, booleans; 422 names the field', () => {
  const ok = check(
    kv(
      {
        bandwidthPerMigration: '64Mi',
        completionTimeoutPerGiB: 10,
        progressTimeout: 20,
        parallelMigrationsPerCluster: 3,
        parallelOutboundMigrationsPerNode: 1,
        allowAutoConverge: true,
        allowPostCopy: false,
        disableTLS: false,
      },
      { evictionStrategy: 'LiveMigrate' },
    ),
  );
  assert.deepEqual(ok.causes, []);
  assert.deepEqual(fields(kv({ bandwidthPerMigration: 'fast' })), ['spec.configuration.migrations.bandwidthPerMigration']);
  assert.deepEqual(fields(kv({ bandwidthPerMigration: '-1Mi' })), ['spec.configuration.migrations.bandwidthPerMigration']);
  for (const f of ['completionTimeoutPerGiB', 'progressTimeout', 'parallelMigrationsPerCluster', 'parallelOutboundMigrationsPerNode']) {
    assert.deepEqual(fields(kv({ [f]: 0 })), [`spec.configuration.migrations.${f}`], f);
    assert.deepEqual(fields(kv({ [f]: -5 })), [`spec.configuration.migrations.${f}`], f);
    assert.deepEqual(fields(kv({ [f]: '10' })), [`spec.configuration.migrations.${f}`], f);
    assert.deepEqual(fields(kv({ [f]: 1.5 })), [`spec.configuration.migrations.${f}`], f);
  }
  for (const f of ['allowAutoConverge', 'allowPostCopy', 'disableTLS']) {
    assert.deepEqual(fields(kv({ [f]: 'yes' })), [`spec.configuration.migrations.${f}`], f);
  }
  assert.deepEqual(fields(kv({}, { evictionStrategy: 'Sometimes' })), ['spec.configuration.evictionStrategy']);
});

test('a MigrationPolicy: selectors are label maps, the same value rules as KubeVirt', () => {
  assert.deepEqual(fields(policy('p', { virtualMachineInstanceSelector: { app: 'db' } }, { bandwidthPerMigration: '1Gi', allowAutoConverge: true })), []);
  assert.deepEqual(fields(policy('p', { namespaceSelector: { team: 'not a label' } })), ['spec.selectors.namespaceSelector.team']);
  assert.deepEqual(fields(policy('p', { namespaceSelector: { team: 1 } })), ['spec.selectors.namespaceSelector.team']);
  assert.deepEqual(fields(policy('p', {}, { completionTimeoutPerGiB: 0 })), ['spec.completionTimeoutPerGiB']);
  assert.deepEqual(fields(policy('p', {}, { bandwidthPerMigration: 'x' })), ['spec.bandwidthPerMigration']);
  assert.deepEqual(fields(policy('p', {}, { allowPostCopy: 'true' })), ['spec.allowPostCopy']);
});

test('the cluster configuration: the KubeVirt fields over KubeVirt defaults', () => {
  assert.deepEqual(clusterMigrationConfiguration(undefined), MIGRATION_DEFAULTS);
  assert.deepEqual(clusterMigrationConfiguration(kv({ bandwidthPerMigration: '1Mi', allowPostCopy: true, progressTimeout: 9 })), {
    ...MIGRATION_DEFAULTS,
    bandwidthPerMigration: '1Mi',
    allowPostCopy: true,
    progressTimeout: 9,
  });
  assert.equal(bandwidthBytes('1Mi'), 1048576);
  assert.equal(bandwidthBytes('0'), 0);
  assert.equal(bandwidthBytes('junk'), 0);
});

test('policy matching: all labels must match; the most matched labels win; ties by name', () => {
  const vmi = { app: 'db', tier: 'gold' };
  const ns = { team: 'a' };
  const ps = [
    policy('z-one', { virtualMachineInstanceSelector: { app: 'db' } }),
    policy('b-two', { virtualMachineInstanceSelector: { app: 'db' }, namespaceSelector: { team: 'a' } }),
    policy('a-two', { virtualMachineInstanceSelector: { app: 'db', tier: 'gold' } }),
    policy('c-miss', { virtualMachineInstanceSelector: { app: 'db', tier: 'gold' }, namespaceSelector: { team: 'b' } }),
    policy('0-none', {}),
  ];
  assert.equal(matchMigrationPolicy(ps, vmi, ns)?.metadata?.name, 'a-two');
  assert.equal(matchMigrationPolicy(ps, { app: 'db' }, {})?.metadata?.name, 'z-one');
  // Empty selectors match every VMI with score 0, so they lose to any label match.
  assert.equal(matchMigrationPolicy(ps, { app: 'web' }, {})?.metadata?.name, '0-none');
  assert.equal(matchMigrationPolicy(ps.slice(0, 4), { app: 'web' }, {}), undefined);
  assert.equal(
    matchMigrationPolicy(
      [policy('nosel', {})].map((p) => ({ ...p, spec: {} })),
      {},
      {},
    ),
    undefined,
  );
});

test('the effective configuration: the policy overrides only its own fields', () => {
  const cluster = kv({ bandwidthPerMigration: '1Ki', completionTimeoutPerGiB: 5, progressTimeout: 7, allowPostCopy: true });
  const ps = [policy('fast', { virtualMachineInstanceSelector: { app: 'db' } }, { bandwidthPerMigration: '0', allowAutoConverge: true })];
  assert.deepEqual(effectiveMigrationConfiguration(cluster, ps, { app: 'web' }, {}), { configuration: clusterMigrationConfiguration(cluster) });
  assert.deepEqual(effectiveMigrationConfiguration(cluster, ps, { app: 'db' }, {}), {
    configuration: { ...clusterMigrationConfiguration(cluster), bandwidthPerMigration: '0', allowAutoConverge: true },
    policyName: 'fast',
  });
});

test('eviction strategy: the VMI own, else the cluster default, else None', () => {
  const vmi = (s?: string) => ({ spec: s ? { evictionStrategy: s } : {} });
  const cluster = kv({}, { evictionStrategy: 'LiveMigrate' });
  assert.equal(evictionStrategyOf(vmi(), undefined), 'None');
  assert.equal(evictionStrategyOf(vmi(), cluster), 'LiveMigrate');
  assert.equal(evictionStrategyOf(vmi('None'), cluster), 'None');
});

test('the other KubeVirt migration fields: read (allowWorkloadDisruption, nodeDrainTaintKey), refused (network), ignored without a warning (unsafeMigrationOverride, matchSELinuxLevelOnMigration)', () => {
  const ok = check(
    kv({ allowWorkloadDisruption: true, nodeDrainTaintKey: 'example.com/maintenance', unsafeMigrationOverride: true, matchSELinuxLevelOnMigration: true }),
  );
  assert.deepEqual(ok.causes, []);
  assert.deepEqual(ok.warnings, []);
  assert.equal(clusterMigrationConfiguration(kv({ allowWorkloadDisruption: true })).allowWorkloadDisruption, true);
  assert.equal(MIGRATION_DEFAULTS.allowWorkloadDisruption, false);
  // A policy may allow it for its VMIs (KubeVirt's MigrationPolicy field).
  const p = policy('p', { virtualMachineInstanceSelector: { app: 'db' } }, { allowWorkloadDisruption: true });
  assert.deepEqual(fields(p), []);
  assert.equal(effectiveMigrationConfiguration(undefined, [p], { app: 'db' }, {}).configuration.allowWorkloadDisruption, true);
  assert.equal(nodeDrainTaintKey(undefined), 'kubevirt.io/drain');
  assert.equal(nodeDrainTaintKey(kv({ nodeDrainTaintKey: 'example.com/maintenance' })), 'example.com/maintenance');
  assert.deepEqual(fields(kv({ nodeDrainTaintKey: 'not a key!' })), ['spec.configuration.migrations.nodeDrainTaintKey']);
  assert.deepEqual(fields(kv({ allowWorkloadDisruption: 'yes' })), ['spec.configuration.migrations.allowWorkloadDisruption']);
  const net = check(kv({ network: 'migration-net' }));
  assert.deepEqual(
    net.causes.map((c) => c.field),
    ['spec.configuration.migrations.network'],
  );
  assert.match(net.causes[0].message, /not supported by Vessel/);
});
