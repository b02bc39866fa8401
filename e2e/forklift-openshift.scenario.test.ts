/**
 * Scenario (minutes: two TCG boots; CI skips it): a *running* VM of the tiny guest cold-migrates
 * through an `openshift` provider (url = this cluster's API server, a token Secret): the
 * Migration stops the source (Forklift leaves it stopped), exports it, streams the disk, and
 * creates the target from the source's spec; `targetPowerState` unset (auto) starts the target,
 * since the source ran; the target's guest prints its ready line on serial; the source stays
 * Halted, the export is gone.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { ensureTinyGuest, TINY_SERIAL } from '@vessel/guest';
import type { KubeObject } from '@vessel/client';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';
import { forkliftIn, FORKLIFT_REFS, planSpec } from '../packages/controllers/forklift/testdata.ts';

const { MIGRATIONS, NAMESPACES, NETMAPS, PLANS, PROVIDERS, SECRETS, STORAGEMAPS, VMEXPORTS, VMIS, VMS } = FORKLIFT_REFS;
const SRC = 'fkosc-src';
const NS = 'fkosc';
const TARGET = 'fkosc-target';

let c: TestCluster;
const fk = forkliftIn(NS);
type Cond = { type: string; status: string };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];

before(async () => {
  c = await startCluster({ nodes: 1 });
  for (const ns of [SRC, NS, TARGET]) await c.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  if (!c) return;
  for (const [ns, name] of [
    [TARGET, 'src-vm'],
    [SRC, 'src-vm'],
  ])
    await c?.client.patch(VMS, name, { spec: { runStrategy: 'Halted' } }, { namespace: ns }).catch(() => undefined);
  // The agents leave running guests alive when they stop: the VMIs go first.
  for (const ns of [TARGET, SRC])
    await eventually(
      `the VMIs of ${ns} gone`,
      async () => ((await c.client.list(VMIS, { namespace: ns })).items.length === 0 ? true : undefined),
      120_000,
    ).catch(() => undefined);
  await c?.close();
});

test('a running VM cold-migrates through the openshift provider: source stopped, target boots', async () => {
  const disk = (await ensureTinyGuest()).disk;
  const size = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', disk], { encoding: 'utf8' }))['virtual-size'] as number;
  const up = await run(
    'bin/vessel',
    ['--kubeconfig', c.kubeconfig, '-n', SRC, 'image-upload', 'dv', 'src-root', '--image-path', disk, '--size', `${Math.ceil(size / 2 ** 20)}Mi`],
    { timeoutMs: 300_000 },
  );
  assert.equal(up.code, 0, up.err + up.out);
  await c.client.create(VMS, tinyVm('src-vm', { namespace: SRC, dataVolume: 'src-root', runStrategy: 'Always' }), { namespace: SRC });
  const node = c.nodes.agents[0];
  const t0 = Date.now();
  await eventually(
    'source ready on serial',
    async () => ((await serialLog(node.dataDir, SRC, 'src-vm')).includes(TINY_SERIAL.ready) ? true : undefined),
    600_000,
    1000,
  );
  console.log(`# source booted in ${Date.now() - t0} ms`);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  await c.client.create(
    SECRETS,
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'tok', namespace: NS },
      data: { token: b64(c.client.config.token ?? ''), cacert: b64(c.client.config.caPem ?? '') },
    },
    { namespace: NS },
  );
  const refs = { source: { name: 'src', namespace: NS }, destination: { name: 'host', namespace: NS } };
  await c.client.create(PROVIDERS, fk('Provider', 'src', { type: 'openshift', url: c.client.config.server, secret: { name: 'tok', namespace: NS } }), {
    namespace: NS,
  });
  await c.client.create(NETMAPS, fk('NetworkMap', 'net', { provider: refs, map: [{ source: { type: 'pod' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  await c.client.create(
    STORAGEMAPS,
    fk('StorageMap', 'disks', { provider: refs, map: [{ source: { name: 'local' }, destination: { storageClass: 'local' } }] }),
    {
      namespace: NS,
    },
  );
  await c.client.create(PLANS, fk('Plan', 'p', planSpec({ provider: refs, targetNamespace: TARGET, vms: [{ name: 'src-vm', namespace: SRC }] })), {
    namespace: NS,
  });
  const plan = await eventually(
    'plan Ready',
    async () => {
      const p = await c.client.get(PLANS, 'p', { namespace: NS });
      return conds(p).some((x) => x.type === 'Ready') ? p : undefined;
    },
    120_000,
  );
  // The running source is a Warn: the cold migration stops it.
  assert.ok(conds(plan).some((x) => x.type === 'VMPowerStateNotValid'));
  const t1 = Date.now();
  await c.client.create(MIGRATIONS, fk('Migration', 'm', { plan: { name: 'p', namespace: NS } }), { namespace: NS });
  const m = await eventually(
    'migration finished',
    async () => {
      const o = await c.client.get(MIGRATIONS, 'm', { namespace: NS });
      return (o.status as { completed?: string } | undefined)?.completed ? o : undefined;
    },
    600_000,
    500,
  );
  console.log(`# running VM migrated (stop, export, transfer, create) in ${Date.now() - t1} ms`);
  assert.ok(
    conds(m).some((x) => x.type === 'Succeeded'),
    JSON.stringify((m.status as { vms?: unknown[] }).vms),
  );
  const src = await c.client.get(VMS, 'src-vm', { namespace: SRC });
  assert.equal((src.spec as { runStrategy: string }).runStrategy, 'Halted');
  assert.deepEqual((await c.client.list(VMEXPORTS, { namespace: SRC })).items, []);
  const target = await c.client.get(VMS, 'src-vm', { namespace: TARGET });
  assert.equal((target.spec as { runStrategy: string }).runStrategy, 'Always');
  const t2 = Date.now();
  await eventually(
    'target ready on serial',
    async () => ((await serialLog(node.dataDir, TARGET, 'src-vm')).includes(TINY_SERIAL.ready) ? true : undefined),
    600_000,
    1000,
  );
  console.log(`# target booted in ${Date.now() - t2} ms`);
  const vmi = await c.client.get(VMIS, 'src-vm', { namespace: TARGET });
  assert.equal((vmi.status as { phase: string }).phase, 'Running');
});
