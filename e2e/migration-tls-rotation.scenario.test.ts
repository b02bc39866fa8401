/**
 * Migration TLS certificate rotation under live migrations (docs/migration.md "TLS on the
 * migration stream"), on a two-node dev cluster whose agents have short lifetimes (CA 180 s,
 * leaf 30 s, overlap 10 s: each agent renews its leaf every 24 s and its CA once, at 144 s). A
 * tiny guest on the shared pool migrates back and forth without pause until both agents have
 * renewed a leaf, published a new CA beside the old one, switched their leaf to it and dropped
 * the old CA, and a migration has started after each of these on each node. Every migration
 * must succeed with TLS (the target QEMU's `query-migrate-parameters` says `tls-creds:
 * migration-tls`, its credentials are the target agent's leaf at the time, which the target's
 * published bundle verifies). Migrations under way when a rotation step happens are counted.
 * After the old CA left a node's bundle, its QEMUs that loaded an old-CA leaf earlier could only
 * migrate by loading the renewed files (object-del, object-add): the peer no longer trusts the
 * old CA. Last, the guest still prints its uptime on its last node. A scenario (CI skips it):
 * about 3 minutes.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const NODE: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const ns = 'default';
const NAME = 'rotating';
const USER_DATA = `#!/bin/sh\n(while true; do echo "VESSEL-UPTIME $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &\n`;
type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const LIFETIMES = { VESSEL_MIGRATION_CA_SECONDS: '180', VESSEL_MIGRATION_LEAF_SECONDS: '30', VESSEL_MIGRATION_CERT_OVERLAP_SECONDS: '10' };
/** The rotation steps an agent logs (@vessel/tls MigrationCa), by kind. */
const KINDS: [string, RegExp][] = [
  ['leaf', /migration-ca: a new leaf/],
  ['publish', /migration-ca: the bundle with the next CA is published/],
  ['switch', /migration-ca: the leaf is signed by the new CA/],
  ['drop', /migration-ca: the old CA left the bundle/],
];

const skip = process.getuid?.() !== 0 ? 'needs root (namespaces)' : false;
let c: TestCluster;
const events: { at: number; node: string; kind: string }[] = [];
const saved: Record<string, string | undefined> = {};

before(async () => {
  if (skip) return;
  for (const [k, v] of Object.entries(LIFETIMES)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  c = await startCluster({
    nodes: 2,
    nodeLog: (line) => {
      const node = /^\[([^\]]+)\]/.exec(line)?.[1] ?? '?';
      for (const [kind, re] of KINDS) if (re.test(line)) events.push({ at: Date.now(), node, kind });
    },
  });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});

after(async () => {
  for (const [k, v] of Object.entries(saved))
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  if (!c) return;
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await c.close();
});

const agentOf = (node: string) => c.nodes.agents.find((a) => a.nodeName === node)!;
const bundleOf = async (node: string) => ((await c.client.get(NODE, node)) as Obj).metadata.annotations['vessel.io/migration-ca'] as string;
const certs = (pem: string) => (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));

test('migrations before, during and after every rotation step succeed with TLS verified', { skip, timeout: 1_200_000 }, async () => {
  await c.client.create(VM, tinyVm(NAME, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }), {
    namespace: ns,
  });
  const running = await eventually(
    'the VMI Running and live-migratable',
    async () => {
      const o = (await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined)) as Obj | undefined;
      const lm = (o?.status?.conditions ?? []).find((x: Obj) => x.type === 'LiveMigratable');
      return o?.status?.phase === 'Running' && lm?.status === 'True' ? o : undefined;
    },
    300_000,
  );
  await eventually(
    'the guest printing its uptime',
    async () => ((await serialLog(agentOf(running.status.nodeName).dataDir, ns, NAME)).includes('VESSEL-UPTIME') ? true : undefined),
    600_000,
  );
  const nodes = c.nodes.agents.map((a) => a.nodeName);
  const firstCa = Object.fromEntries(await Promise.all(nodes.map(async (n) => [n, certs(await bundleOf(n))[0].fingerprint256] as const)));
  const runs: { i: number; start: number; end: number; source: string; target: string; leafIssuer: string }[] = [];
  // The loop must see a whole rotation (the guest's boot may have taken a CA cycle or more).
  const t1 = Date.now();
  /** Whether a migration started after a step of `kind` on `node` (so it used that step's result). */
  const covered = (kind: string, node: string) => {
    const e = events.find((x) => x.at > t1 && x.kind === kind && x.node === node);
    return !!e && runs.some((r) => r.start > e.at && (r.source === node || r.target === node));
  };
  const allCovered = () => KINDS.every(([kind]) => nodes.every((n) => covered(kind, n)));
  const deadline = Date.now() + 600_000;
  // The Nodes' bundles as the migrations run: a bundle of both CAs lasts the overlap or more.
  let maxBundle = 0;
  const sampler = setInterval(() => {
    for (const n of nodes)
      void bundleOf(n).then(
        (b) => void (maxBundle = Math.max(maxBundle, certs(b).length)),
        () => undefined,
      );
  }, 300);
  try {
    for (let i = 0; !allCovered(); i++) {
      assert.ok(Date.now() < deadline, `not every rotation step was followed by a migration in 10 min: ${JSON.stringify(events)}`);
      const start = Date.now();
      const name = `rot-${i}`;
      await c.client.create(
        VMIM,
        { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
        { namespace: ns },
      );
      const done = await eventually(
        `${name} Succeeded or Failed`,
        async () => {
          const s = ((await c.client.get(VMIM, name, { namespace: ns })).status ?? {}) as Obj;
          return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
        },
        300_000,
      );
      const end = Date.now();
      const steps = events.filter((e) => e.at >= start && e.at <= end).map((e) => `${e.node}:${e.kind}`);
      assert.equal(done.phase, 'Succeeded', `${name} failed (rotation steps meanwhile: ${steps.join(' ') || 'none'}): ${done.migrationState?.failureReason}`);
      const { sourceNode: source, targetNode: target } = done.migrationState as { sourceNode: string; targetNode: string };
      // TLS, with the target agent's leaf of the time, which the target's bundle (as published now) verifies.
      const qmp = await eventually('the target QMP', async () => agentOf(target).vms.qmpFor(ns, NAME), 30_000);
      const params = await qmp.execute<Record<string, unknown>>('query-migrate-parameters');
      assert.equal(params['tls-creds'], 'migration-tls', JSON.stringify(params));
      const dir = await qmp.execute<string>('qom-get', { path: '/objects/migration-tls', property: 'dir' });
      const leaf = new X509Certificate(await readFile(join(dir, 'server-cert.pem'), 'utf8'));
      const trusted = await readFile(join(dir, 'ca-cert.pem'), 'utf8');
      assert.ok(
        certs(trusted).some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey)),
        `${name}: the target's leaf is signed by a CA in its credentials' bundle`,
      );
      runs.push({ i, start, end, source, target, leafIssuer: leaf.issuer });
      console.log(
        `${name}: ${source} → ${target} Succeeded in ${end - start} ms; leaf of ${leaf.issuer.replace(/\n/g, ',')}; rotation steps meanwhile: ${steps.join(' ') || 'none'}`,
      );
    }
  } finally {
    clearInterval(sampler);
  }
  // Both nodes went through a whole CA rotation: a bundle of two CAs, then only the new one.
  assert.equal(maxBundle, 2, 'a bundle with the old and the new CA was seen');
  for (const n of nodes) {
    const now = certs(await bundleOf(n));
    assert.equal(now.length, 1, `${n}: the old CA left the bundle`);
    assert.notEqual(now[0].fingerprint256, firstCa[n], `${n}: a new CA`);
  }
  // The guest lives on where it ended: its uptime lines go on in the last target's serial log.
  const last = runs.at(-1)!.target;
  const lines = async () => ((await serialLog(agentOf(last).dataDir, ns, NAME)).match(/VESSEL-UPTIME/g) ?? []).length;
  const before = await lines();
  await eventually(`the guest printing its uptime on ${last}`, async () => ((await lines()) >= before + 2 ? true : undefined), 120_000);
  const during = runs.filter((r) => events.some((e) => e.at >= r.start && e.at <= r.end));
  const inLoop = events.filter((e) => e.at > t1);
  const durations = runs.map((r) => r.end - r.start).sort((a, b) => a - b);
  console.log(
    `figures: ${runs.length} migrations, all Succeeded with TLS; ${during.length} with a rotation step under way; ` +
      `${inLoop.length} rotation steps while they ran (${KINDS.map(([k]) => `${k} ${inLoop.filter((e) => e.kind === k).length}`).join(', ')}); ` +
      `create → Succeeded median ${durations[Math.floor(durations.length / 2)]} ms, max ${durations.at(-1)} ms`,
  );
  assert.ok(during.length > 0, 'at least one migration had a rotation step under way');
});
