/**
 * `vessel plan` against a real server (docs/forklift.md, "CLI"): an OVA made here (a qcow2 →
 * streamOptimized VMDK, OVF, SHA256 manifest, tar, with the helpers forklift.e2e uses), maps,
 * then `plan create` (dry run and real), `plan start` following the migration to 100% of the
 * disk and exit 0, `plan describe` with the pipeline, and cancel/cutover without a running
 * migration refused. `targetPowerState: off`: no guest boots.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { forkliftObject, manifest, ovf, providerRefs as testProviderRefs } from '../packages/controllers/forklift/testdata.ts';

const ref = (plural: string, group = 'forklift.konveyor.io', version = 'v1beta1'): ResourceRef => ({ group, version, plural, namespaced: true });
const PROVIDERS = ref('providers');
const NETMAPS = ref('networkmaps');
const STORAGEMAPS = ref('storagemaps');
const PLANS = ref('plans');
const MIGRATIONS = ref('migrations');
const VMS = ref('virtualmachines', 'kubevirt.io', 'v1');
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const NS = 'plan-src';
const TARGET = 'plan-target';
const MiB = 1024 * 1024;

let v: Vessel;
let dir: string;

const isReady = (o: KubeObject) =>
  ((o.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
const fk = (kind: string, name: string, spec: unknown): KubeObject => forkliftObject(kind, name, NS, spec);
const providerRefs = testProviderRefs('ova', NS);
const cli = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', NS, 'plan', ...args], { timeoutMs: 120_000 });

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'plan-cli-e2e-'));
  const root = join(dir, 'ova-root');
  const src = join(dir, 'src');
  await mkdir(root, { recursive: true });
  await mkdir(src);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(src, 'app.qcow2'), '16M']);
  execFileSync('qemu-io', ['-c', 'write -P 0x5a 0 1M', join(src, 'app.qcow2')], { stdio: 'ignore' });
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(src, 'app.qcow2'), join(src, 'app-disk1.vmdk')]);
  const desc = ovf([{ name: 'app', cpus: 1, memoryMB: 128, networks: ['VM Network'], disks: [{ file: 'app-disk1.vmdk', capacity: 16 * MiB }] }]);
  await writeFile(join(src, 'app.ovf'), desc);
  await writeFile(join(src, 'app.mf'), manifest({ 'app.ovf': desc, 'app-disk1.vmdk': readFileSync(join(src, 'app-disk1.vmdk')) }));
  execFileSync('tar', ['-cf', join(root, 'app.ova'), '-C', src, 'app.ovf', 'app.mf', 'app-disk1.vmdk']);
  v = await startVessel({ ovaRoots: [root], agent: { nodeName: 'plan-node' } });
  for (const ns of [NS, TARGET]) await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  await v.client.create(PROVIDERS, fk('Provider', 'ova', { type: 'ova', url: `ova://${root}`, secret: {} }), { namespace: NS });
  await v.client.create(NETMAPS, fk('NetworkMap', 'net', { provider: providerRefs, map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  await v.client.create(
    STORAGEMAPS,
    fk('StorageMap', 'disks', { provider: providerRefs, map: [{ source: { name: 'app.ova' }, destination: { storageClass: 'local' } }] }),
    { namespace: NS },
  );
  for (const res of [NETMAPS, STORAGEMAPS])
    await eventually(
      'map Ready',
      async () => (isReady(await v.client.get(res, res === NETMAPS ? 'net' : 'disks', { namespace: NS })) ? true : undefined),
      60_000,
    );
});

after(async () => {
  await v?.close();
  await rm(dir, { recursive: true, force: true });
});

test('plan create, start (progress to 100%, exit 0), describe; cancel and cutover need a running migration', async () => {
  const flags = [
    // Its disk holds no guest: nothing for virt-v2v to convert.
    '--skip-guest-conversion',
    '--provider',
    'ova',
    '--target-namespace',
    TARGET,
    '--network-map',
    'net',
    '--storage-map',
    'disks',
    '--vm',
    'app',
    '--target-power-state',
    'off',
  ];
  const dry = await cli('create', 'p1', ...flags, '--dry-run');
  assert.equal(dry.code, 0, dry.err);
  assert.match(dry.out, /kind: Plan/);
  assert.match(dry.out, /targetPowerState: off/);
  await assert.rejects(v.client.get(PLANS, 'p1', { namespace: NS }), 'a dry run writes nothing');

  const made = await cli('create', 'p1', ...flags);
  assert.equal(made.code, 0, made.err);
  assert.equal(made.out, 'plan.forklift.konveyor.io/p1 created\n');

  const t0 = Date.now();
  const started = await cli('start', 'p1');
  console.log(`plan start → exit: ${Date.now() - t0} ms`);
  assert.equal(started.code, 0, started.out + started.err);
  assert.match(started.out, /^migration\.forklift\.konveyor\.io\/p1-[a-z0-9]{5} created\n/);
  assert.match(started.out, /migration p1-[a-z0-9]{5} succeeded: 1 VM in [\d.]+ s\n$/);
  // Not a TTY: one line per change; the disk's last line is at 100%.
  assert.match(started.err, /^ {2}app-disk0 \[#{20}\] 17\/17 MB 100%$/m);
  assert.match(started.err, /^app: Completed$/m);

  const desc = await cli('describe', 'p1');
  assert.equal(desc.code, 0, desc.err);
  assert.match(desc.out, /\n {2}Ready \(Required\)/);
  assert.match(desc.out, /\nMigration: +p1-[a-z0-9]{5} \(Succeeded\)\n/);
  assert.match(
    desc.out,
    /\n {2}VM app \(id [0-9a-f]{16}\): Completed\n {4}Initialize +Completed +1\/1\n {4}DiskTransfer +Completed +17\/17 MB\n {6}app-disk0 \[#{20}\] 17\/17 MB 100%\n {4}VirtualMachineCreation +Completed/,
  );
  const made2 = await v.client.get(VMS, 'app', { namespace: TARGET });
  assert.equal((made2.spec as { runStrategy: string }).runStrategy, 'Halted');

  for (const verb of ['cancel', 'cutover']) {
    const r = await cli(verb, 'p1');
    assert.equal(r.code, 1);
    assert.match(r.err, /plan plan-src\/p1 has no running migration/);
  }
  // A plan that is not Ready: start refuses, naming the concern, and creates no Migration.
  assert.equal((await cli('create', 'p2', ...flags.slice(0, -4), '--vm', 'ghost')).code, 0);
  const bad = await cli('start', 'p2');
  assert.equal(bad.code, 1);
  assert.match(bad.err, /plan plan-src\/p2 is not Ready:\n.*VMNotFound/);
  // cancel and cutover write Migration.spec on a migration not finished (one waiting for p2 here): accepted by the server.
  await v.client.create(MIGRATIONS, fk('Migration', 'p2-wait', { plan: { name: 'p2', namespace: NS } }), { namespace: NS });
  const one = await cli('cancel', 'p2', '--vm', 'ghost');
  assert.equal(one.code, 0, one.err);
  assert.match(one.out, /cancel ghost/);
  const all = await cli('cancel', 'p2');
  assert.equal(all.code, 0, all.err);
  const cut = await cli('cutover', 'p2', '--time', '2030-01-01T00:00:00Z');
  assert.equal(cut.code, 0, cut.err);
  assert.match(cut.out, /cutover set to 2030-01-01T00:00:00Z/);
  const spec = (await v.client.get(MIGRATIONS, 'p2-wait', { namespace: NS })).spec as { cancel?: unknown; cutover?: string };
  assert.deepEqual(spec.cancel, [{ name: 'ghost' }], 'the whole-migration cancel adds the plan VMs once');
  assert.equal(spec.cutover, '2030-01-01T00:00:00Z');
  assert.equal((await cli('cutover', 'p2', '--time', 'soon')).code, 1, 'a bad time is a usage error');
  assert.equal((await cli('create', 'p3', '--provider', 'ova', '--vm', 'x', '--type', 'live')).code, 1, 'a bad --type is a usage error');
});
