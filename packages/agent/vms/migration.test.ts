/**
 * The LiveMigratable rule (vms/migration.ts) and the plan of which disks move over NBD and how
 * (vms/block-migration.ts): shared-pool claims and cloud-init stay, node-local disks are
 * mirrored, what cannot move says why.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { Pool } from '../storage/pools.ts';
import {
  claimBytes,
  DIGESTS_ANNOTATION,
  pinMismatches,
  pinnedImage,
  planBlockMigration,
  recordedDigests,
  runDirDiskFiles,
  targetVolumes,
} from './block-migration.ts';
import { QmpClosedError, QmpTimeoutError } from '../qmp/errors.ts';
import {
  claimPool,
  followMigrate,
  liveMigratable,
  masqueradePod,
  postcopyStall,
  resumedSourceView,
  resumeSourceAfterFailure,
  staleCopyClaims,
  staleMigrateStatus,
} from './migration.ts';

const pools = new Map([
  ['shared', { name: 'shared', shared: true }],
  ['local', { name: 'local', shared: false }],
]);
const pvc = (pool?: string) => ({ metadata: { name: 'x', annotations: (pool ? { 'vessel.io/pool': pool } : {}) as Record<string, string> } });
const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
const spec = (volumes: unknown[]) => ({ domain: { devices: {} }, volumes }) as unknown as V1VirtualMachineInstanceSpec;

test('shared-pool claims and cloud-init are live-migratable and copy nothing', () => {
  const s = spec([
    { name: 'root', dataVolume: { name: 'root-dv' } },
    { name: 'data', persistentVolumeClaim: { claimName: 'data' } },
    { name: 'ci', cloudInitNoCloud: { userData: '#!/bin/sh' } },
  ]);
  const poolOf = () => claimPool(pvc('shared'), pools);
  assert.deepEqual(liveMigratable(s, poolOf), { type: 'LiveMigratable', status: 'True', reason: '', message: '' });
  assert.deepEqual(planBlockMigration(s, poolOf), { disks: [], refused: [] });
});

test('local-pool claims, containerDisk, emptyDisk and ephemeral over a shared claim move: full or top', () => {
  const s = spec([
    { name: 'root', dataVolume: { name: 'root-dv' } },
    { name: 'cd', containerDisk: { image: 'x' } },
    { name: 'scratch', emptyDisk: { capacity: '1Gi' } },
    { name: 'eph', ephemeral: { persistentVolumeClaim: { claimName: 'golden' } } },
    { name: 'ci', cloudInitNoCloud: { userData: '#!/bin/sh' } },
  ]);
  const poolOf = (claim: string) => claimPool(pvc(claim === 'golden' ? 'shared' : 'local'), pools);
  const digests = { cd: D1 };
  assert.equal(liveMigratable(s, poolOf, digests).status, 'True');
  assert.deepEqual(planBlockMigration(s, poolOf, digests).disks, [
    { volume: 'root', kind: 'claim', claim: 'root-dv', sync: 'full' },
    { volume: 'cd', kind: 'containerDisk', sync: 'top', image: `x@${D1}` },
    { volume: 'scratch', kind: 'emptyDisk', sync: 'full' },
    { volume: 'eph', kind: 'ephemeral', sync: 'top' },
  ]);
});

test('what cannot move: False, each volume named with why', () => {
  const c = liveMigratable(
    spec([
      { name: 'lost', persistentVolumeClaim: { claimName: 'lost' } },
      { name: 'ro', persistentVolumeClaim: { claimName: 'ro', readOnly: true } },
      { name: 'eph', ephemeral: { persistentVolumeClaim: { claimName: 'base' } } },
      { name: 'host', hostDisk: { path: '/x', type: 'Disk' } },
    ]),
    (claim) => (claim === 'lost' ? claimPool(pvc(), pools) : claimPool(pvc('local'), pools)),
  );
  assert.equal(c.status, 'False');
  assert.equal(c.reason, 'DisksNotLiveMigratable');
  assert.match(c.message, /volume lost: the pool of claim lost is not known/);
  assert.match(c.message, /volume ro is a read-only claim on the local pool/);
  assert.match(c.message, /volume eph is an ephemeral overlay of claim base, which is on the local pool/);
  assert.match(c.message, /volume host: its type is not live-migratable yet/);
});

test('target volumes: the path the node derives (pool, namespace, claim, uid) and the claim capacity as size', () => {
  const local = new Pool('local', '/var/lib/vessel/pools/local', false);
  const disks = planBlockMigration(
    spec([
      { name: 'root', dataVolume: { name: 'root-dv' } },
      { name: 'scratch', emptyDisk: { capacity: '1Gi' } },
    ]),
    () => claimPool(pvc('local'), pools),
  ).disks;
  const uid = '0b5c2a8e-1111-4222-8333-444455556666';
  const vols = targetVolumes(
    disks,
    (claim) => local.volumePath('t1', claim, uid),
    () => claimBytes({ status: { capacity: { storage: '1Gi' } } }),
  );
  assert.deepEqual(vols, [{ volume: 'root', claim: 'root-dv', path: `/var/lib/vessel/pools/local/t1/root-dv-${uid}.qcow2`, size: 1024 ** 3 }]);
  // Sizes round up to a sector; a claim without capacity, or without a pool here, is an error.
  assert.equal(claimBytes({ status: { capacity: { storage: '1000' } } }), 1024);
  assert.equal(claimBytes({ status: {} }), undefined);
  assert.equal(claimBytes({ status: { capacity: { storage: 'lots' } } }), undefined);
  assert.throws(
    () =>
      targetVolumes(
        disks,
        () => undefined,
        () => 1024,
      ),
    /no pool of that name on this node/,
  );
  assert.throws(
    () =>
      targetVolumes(
        disks,
        () => '/p',
        () => undefined,
      ),
    /no capacity/,
  );
});

test('masqueradePod: only a pod-network interface with the masquerade binding runs QEMU in a pod (migration relay)', () => {
  const with_ = (iface: object, networks: unknown[] = [{ name: 'default', pod: {} }]) =>
    ({ domain: { devices: { interfaces: [{ name: 'default', ...iface }] } }, networks }) as unknown as V1VirtualMachineInstanceSpec;
  assert.equal(masqueradePod(with_({ masquerade: {} })), true);
  assert.equal(masqueradePod(with_({ bridge: {} })), false);
  assert.equal(masqueradePod(with_({ masquerade: {} }, [{ name: 'default', multus: { networkName: 'x' } }])), false);
  assert.equal(masqueradePod(with_({ masquerade: {} }, [])), false);
  assert.equal(masqueradePod(undefined), false);
});

test("a resumed source tells its own migration's completion from an earlier incoming one's", () => {
  // Sent: the source QEMU is in postmigrate.
  assert.equal(staleMigrateStatus('completed', 'postmigrate'), false);
  // Arrived here by migration and never told to send: completed, the guest running (or paused by its user) here.
  assert.equal(staleMigrateStatus('completed', 'running'), true);
  assert.equal(staleMigrateStatus('completed', 'paused'), true);
  // Any other status is this migration's (or none at all), followed as before.
  for (const st of ['active', 'pre-switchover', 'device', 'failed', 'cancelled', undefined]) assert.equal(staleMigrateStatus(st, 'running'), false, String(st));
});

test('after a migration away, the moving claims recorded on another node are stale copies here; one still naming this node waits', () => {
  const claims: Record<string, { metadata: { annotations: Record<string, string> } }> = {
    moved: { metadata: { annotations: { 'volume.kubernetes.io/selected-node': 'node-2' } } },
    notYet: { metadata: { annotations: { 'volume.kubernetes.io/selected-node': 'node-1' } } },
    bare: { metadata: { annotations: {} } },
  };
  const disks = [
    { volume: 'a', kind: 'claim' as const, claim: 'moved', sync: 'full' as const },
    { volume: 'b', kind: 'claim' as const, claim: 'notYet', sync: 'full' as const },
    { volume: 'c', kind: 'claim' as const, claim: 'bare', sync: 'full' as const },
    { volume: 'd', kind: 'claim' as const, claim: 'gone', sync: 'full' as const },
    // Not a claim: no pool file of a claim, left out.
    { volume: 'e', kind: 'emptyDisk' as const, sync: 'full' as const },
  ];
  assert.deepEqual(
    staleCopyClaims(disks, (c) => claims[c], 'node-1'),
    { stale: ['moved'], waiting: ['notYet', 'bare', 'gone'] },
  );
  // Seen from the node the claim is recorded on: nothing there is stale.
  assert.deepEqual(
    staleCopyClaims(disks.slice(0, 1), (c) => claims[c], 'node-2'),
    { stale: [], waiting: ['moved'] },
  );
});

test('a containerDisk moves pinned to the digest the source pulled; by tag alone it is not live-migratable', () => {
  const s = spec([
    { name: 'tagged', containerDisk: { image: 'registry.example:5000/disks/tiny:v1' } },
    { name: 'bydigest', containerDisk: { image: `registry.example:5000/disks/tiny@${D2}` } },
  ]);
  const poolOf = () => undefined;
  // The source recorded what it pulled: the target pulls that digest (the tag stays for the reader).
  assert.deepEqual(planBlockMigration(s, poolOf, { tagged: D1 }), {
    disks: [
      { volume: 'tagged', kind: 'containerDisk', sync: 'top', image: `registry.example:5000/disks/tiny:v1@${D1}` },
      // An image named by digest is pinned already; a digest recorded for it does not change it.
      { volume: 'bydigest', kind: 'containerDisk', sync: 'top', image: `registry.example:5000/disks/tiny@${D2}` },
    ],
    refused: [],
  });
  // Nothing recorded (a VMI started by an older agent): the tag could have moved, so no migration.
  const c = liveMigratable(s, poolOf, {});
  assert.equal(c.status, 'False');
  assert.equal(c.reason, 'DisksNotLiveMigratable');
  assert.match(c.message, /^volume tagged: the digest of containerDisk image registry.example:5000\/disks\/tiny:v1 is not recorded/);
  assert.doesNotMatch(c.message, /bydigest/);
  // What is read from the annotation: only digests.
  assert.deepEqual(recordedDigests({ [DIGESTS_ANNOTATION]: JSON.stringify({ tagged: D1, bad: 'latest', worse: 7 }) }), { tagged: D1 });
  assert.deepEqual(recordedDigests({ [DIGESTS_ANNOTATION]: '{not json' }), {});
  assert.deepEqual(recordedDigests(undefined), {});
  assert.equal(pinnedImage('x:v1', 'sha256:short'), undefined);
  assert.equal(pinnedImage('x@sha256:short', D1), undefined);
});

test('the run-directory files of moving disks that are not claims (removed from the source after the move)', () => {
  assert.deepEqual(
    runDirDiskFiles([
      { volume: 'root', kind: 'claim', claim: 'r', sync: 'full' },
      { volume: 'scratch', kind: 'emptyDisk', sync: 'full' },
      { volume: 'cd', kind: 'containerDisk', sync: 'top', image: `x@${D1}` },
      { volume: 'eph', kind: 'ephemeral', sync: 'top' },
    ]),
    ['scratch.empty.qcow2', 'cd.overlay.qcow2', 'cd.containerdisk.qcow2', 'cd.containerdisk.digest', 'eph.overlay.qcow2'],
  );
});

test("the source refuses to send when the VMI's recorded digest is not the one its base came from", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-pin-'));
  try {
    await writeFile(join(dir, 'cd.containerdisk.digest'), `${D1}\n`);
    const disk = (digest: string) => ({ volume: 'cd', kind: 'containerDisk' as const, sync: 'top' as const, image: `x:v1@${digest}` });
    assert.deepEqual(await pinMismatches([disk(D1)], dir), []);
    // The record changed since the start (its tenant may write it): the target would pull other bytes.
    assert.deepEqual(await pinMismatches([disk(D2)], dir), [`volume cd: the target would pull containerDisk digest ${D2}, this node runs ${D1}`]);
    // A base without its digest file (an older agent pulled it by the image's own digest) and other kinds: nothing to compare.
    assert.deepEqual(
      await pinMismatches(
        [
          { ...disk(D2), volume: 'old' },
          { volume: 's', kind: 'emptyDisk', sync: 'full' },
        ],
        dir,
      ),
      [],
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a restarted source: a post-copy start with local disks is switched only once migrate-continue was issued', () => {
  // Without local disks migrate-start-postcopy switches at once: mode PostCopy is enough.
  assert.deepEqual(resumedSourceView('PostCopy', false, false), { switched: true, continued: false });
  // With them QEMU waits in pre-switchover: not switched until the agent before recorded migrate-continue.
  assert.deepEqual(resumedSourceView('PostCopy', true, false), { switched: false, continued: false });
  assert.deepEqual(resumedSourceView('PostCopy', true, true), { switched: true, continued: true });
  // Precopy is never switched before completed.
  assert.deepEqual(resumedSourceView(undefined, true, true), { switched: false, continued: true });
  assert.deepEqual(resumedSourceView('Paused', false, false), { switched: false, continued: false });
});

test('a failed migration resumes a guest it stopped, also after an agent restart; never one its user paused', () => {
  assert.equal(resumeSourceAfterFailure('running', false, false), true);
  assert.equal(resumeSourceAfterFailure('paused', false, true), false);
  // Restarted in pre-switchover (finish-migrate) or after a cancelled post-copy start (postmigrate): resumed.
  assert.equal(resumeSourceAfterFailure('finish-migrate', true, false), true);
  assert.equal(resumeSourceAfterFailure('postmigrate', true, false), true);
  // Those states in one agent's life come from its own start, which saw `running` or not.
  assert.equal(resumeSourceAfterFailure('finish-migrate', false, false), false);
  // Its user had paused it: stays paused.
  assert.equal(resumeSourceAfterFailure('finish-migrate', true, true), false);
  assert.equal(resumeSourceAfterFailure('paused', true, true), false);
  // Paused by the source to complete (mode Paused): resumed.
  assert.equal(resumeSourceAfterFailure('paused', true, true, 'Paused'), true);
  assert.equal(resumeSourceAfterFailure('paused', true, false), false);
  // Paused for a post-copy from the paused source that failed before the switch-over (mode PostCopy); not a user's pause.
  assert.equal(resumeSourceAfterFailure('paused', true, false, 'PostCopy'), true);
  assert.equal(resumeSourceAfterFailure('paused', true, true, 'PostCopy'), false);
});

test('the source rides out query-migrate answers that time out while its QEMU migrates on; other errors and a QEMU silent past the patience throw', async () => {
  const answers: (Error | { status: string })[] = [
    new QmpTimeoutError('query-migrate', 5000),
    new QmpTimeoutError('query-migrate', 5000),
    { status: 'completed' },
  ];
  const logged: string[] = [];
  const qmp = {
    execute: () => {
      const a = answers.shift()!;
      return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
    },
  };
  assert.deepEqual(await followMigrate(qmp as never, (m) => logged.push(m)), { status: 'completed' });
  assert.equal(logged.length, 2);
  const broken = { execute: () => Promise.reject(new QmpClosedError('query-migrate', '/x/qmp.sock', 'QEMU exited')) };
  await assert.rejects(
    followMigrate(broken as never, () => undefined),
    QmpClosedError,
  );
  const silent = { execute: () => Promise.reject(new QmpTimeoutError('query-migrate', 5000)) };
  await assert.rejects(
    followMigrate(silent as never, () => undefined, 0),
    QmpTimeoutError,
  );
});

test('postcopyStall: a post-copy whose sent bytes stand still for the whole wait is stalled; any growth starts the wait again', () => {
  let p = { sent: -1, since: 0 };
  const look = (sent: number, now: number) => {
    const r = postcopyStall(p, sent, now, 15_000);
    p = r.progress;
    return r.stalled;
  };
  assert.equal(look(100, 1000), false, 'the first look');
  assert.equal(look(100, 15_999), false, 'standing for 14.999 s');
  assert.equal(look(200, 16_000), false, 'grew: the wait starts again');
  assert.equal(look(200, 30_999), false);
  assert.equal(look(200, 31_000), true, 'standing for 15 s');
});
