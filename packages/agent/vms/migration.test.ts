/**
 * The LiveMigratable rule of this increment (vms/migration.ts): shared-pool claims and
 * cloud-init move; local-pool claims and per-node overlays say why not.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { claimPool, liveMigratable } from './migration.ts';

const pools = new Map([
  ['shared', { name: 'shared', shared: true }],
  ['local', { name: 'local', shared: false }],
]);
const pvc = (pool?: string) => ({ metadata: { name: 'x', annotations: (pool ? { 'vessel.io/pool': pool } : {}) as Record<string, string> } });
const spec = (volumes: unknown[]) => ({ domain: { devices: {} }, volumes }) as unknown as V1VirtualMachineInstanceSpec;

test('shared-pool claims and cloud-init are live-migratable', () => {
  const c = liveMigratable(
    spec([
      { name: 'root', dataVolume: { name: 'root-dv' } },
      { name: 'data', persistentVolumeClaim: { claimName: 'data' } },
      { name: 'ci', cloudInitNoCloud: { userData: '#!/bin/sh' } },
    ]),
    () => claimPool(pvc('shared'), pools),
  );
  assert.deepEqual(c, { type: 'LiveMigratable', status: 'True', reason: '', message: '' });
});

test('a local-pool claim, a containerDisk, an emptyDisk or an unknown pool: False, each volume named', () => {
  const c = liveMigratable(
    spec([
      { name: 'root', dataVolume: { name: 'root-dv' } },
      { name: 'cd', containerDisk: { image: 'x' } },
      { name: 'scratch', emptyDisk: { capacity: '1Gi' } },
      { name: 'lost', persistentVolumeClaim: { claimName: 'lost' } },
    ]),
    (claim) => (claim === 'lost' ? claimPool(pvc(), pools) : claimPool(pvc('local'), pools)),
  );
  assert.equal(c.status, 'False');
  assert.equal(c.reason, 'DisksNotLiveMigratable');
  assert.match(c.message, /volume root is on the local pool/);
  assert.match(c.message, /volume cd is a containerDisk/);
  assert.match(c.message, /volume scratch is an emptyDisk/);
  assert.match(c.message, /volume lost: the pool of claim lost is not known/);
});
