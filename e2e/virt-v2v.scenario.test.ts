/**
 * Scenario (minutes; CI skips it): a debootstrapped Debian with GRUB (e2e/v2v-guest.sh, bookworm
 * from this machine's apt mirror, cached) in an OVA (streamOptimized VMDK, OVF, SHA256 manifest) goes
 * through a plan with the ImageConversion step: the node's agent runs virt-v2v-in-place on the
 * transferred volume (libguestfs' direct backend, TCG), then the VM boots on Vessel and its
 * guest prints its ready line on serial. virt-v2v, nbdkit and libnbd-bin are installed here on
 * demand (apt-get), not by scripts/setup.sh: only this scenario needs them.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject } from '@vessel/client';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { serialLog } from './tiny-vm.ts';
import { forkliftIn, FORKLIFT_REFS, manifest, ovf, planSpec, providerRefs as testProviderRefs } from '../packages/controllers/forklift/testdata.ts';

const { MIGRATIONS, NAMESPACES, NETMAPS, NODES, PLANS, PROVIDERS, PVCS, STORAGEMAPS, VMS } = FORKLIFT_REFS;
const NS = 'v2v-src';
const TARGET = 'v2v-target';
const NAME = 'Debian Bookworm';
const TARGET_NAME = 'debian-bookworm';
/** What the guest prints on serial once systemd reached multi-user (e2e/v2v-guest.sh). */
const MARKER = 'VESSEL-V2V-BOOTED';

let c: TestCluster;
let dir: string;
let disk: string;

const fk = forkliftIn(NS);
const providerRefs = testProviderRefs('ova', NS);
type Cond = { type: string; status: string; message?: string };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];
type Step = {
  name: string;
  phase: string;
  reason?: string;
  warning?: { reasons: string[] };
  started?: string;
  completed?: string;
  annotations?: Record<string, string>;
  error?: unknown;
};

const has = (cmd: string) => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

before(async () => {
  if (!has('virt-v2v-in-place') || !has('nbdkit') || !has('nbdinfo'))
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'virt-v2v', 'nbdkit', 'libnbd-bin'], {
      stdio: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
  dir = await mkdtemp(join(tmpdir(), 'virt-v2v-'));
  const root = join(dir, 'ova');
  const src = join(dir, 'src');
  await mkdir(root);
  await mkdir(src);
  const t0 = Date.now();
  disk = execFileSync('bash', [join(import.meta.dirname, 'v2v-guest.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    .trim()
    .split('\n')
    .pop()!;
  const file = 'debian-disk1.vmdk';
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', disk, join(src, file)]);
  const vmdk = readFileSync(join(src, file));
  const capacity = JSON.parse(execFileSync('qemu-img', ['info', '-f', 'raw', '--output=json', disk], { encoding: 'utf8' }))['virtual-size'] as number;
  const desc = ovf([{ name: NAME, cpus: 1, memoryMB: 512, networks: ['VM Network'], disks: [{ file, capacity }] }]);
  await writeFile(join(src, 'debian.ovf'), desc);
  await writeFile(join(src, 'debian.mf'), manifest({ 'debian.ovf': desc, [file]: vmdk }));
  execFileSync('tar', ['-cf', join(root, 'debian.ova'), '-C', src, 'debian.ovf', 'debian.mf', file]);
  console.log(`guest and OVA ready in ${Date.now() - t0} ms (VMDK ${(vmdk.length / 1e6).toFixed(1)} MB, ${capacity / 2 ** 20} MiB virtual)`);
  c = await startCluster({ nodes: 1, ovaRoots: [root] });
  for (const ns of [NS, TARGET]) await c.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  await c?.close();
  await rm(dir, { recursive: true, force: true });
});

test('a Debian guest from an OVA is converted by virt-v2v and boots on Vessel', async () => {
  const node = (await c.client.list(NODES)).items[0];
  assert.ok(node.metadata?.labels?.['vessel.io/virt-v2v'], 'the agent found virt-v2v');
  await c.client.create(PROVIDERS, fk('Provider', 'ova', { type: 'ova', url: join(dir, 'ova'), secret: {} }), { namespace: NS });
  await c.client.create(NETMAPS, fk('NetworkMap', 'net', { provider: providerRefs, map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  await c.client.create(
    STORAGEMAPS,
    fk('StorageMap', 'disks', { provider: providerRefs, map: [{ source: { name: 'debian.ova' }, destination: { storageClass: 'local' } }] }),
    { namespace: NS },
  );
  await c.client.create(
    PLANS,
    fk('Plan', 'deb', planSpec({ provider: providerRefs, targetNamespace: TARGET, vms: [{ name: NAME }] }, { targetPowerState: 'on' })),
    { namespace: NS },
  );
  const plan = await eventually(
    'plan Ready',
    async () => {
      const p = await c.client.get(PLANS, 'deb', { namespace: NS });
      return conds(p).some((x) => x.type === 'Ready') ? p : undefined;
    },
    120_000,
  );
  assert.ok(!conds(plan).some((x) => x.type === 'GuestConversionSkipped'), 'virt-v2v is there: no Warn');
  const t0 = Date.now();
  await c.client.create(MIGRATIONS, fk('Migration', 'deb-1', { plan: { name: 'deb' } }), { namespace: NS });
  const stages = new Set<string>();
  const m = await eventually(
    'migration completed',
    async () => {
      const o = await c.client.get(MIGRATIONS, 'deb-1', { namespace: NS });
      const st = (o.status ?? {}) as { completed?: string; vms?: { pipeline: Step[] }[] };
      const conv = st.vms?.[0]?.pipeline.find((p) => p.name === 'ImageConversion');
      if (conv?.reason) stages.add(conv.reason);
      return st.completed ? o : undefined;
    },
    40 * 60_000,
    500,
  );
  const total = Date.now() - t0;
  const vm = (m.status as { vms: { phase: string; error?: unknown; pipeline: Step[] }[] }).vms[0];
  assert.equal(vm.phase, 'Completed', JSON.stringify(vm.error ?? vm.pipeline));
  assert.deepEqual(
    vm.pipeline.map((p) => [p.name, p.phase]),
    [
      ['Initialize', 'Completed'],
      ['DiskTransfer', 'Completed'],
      ['ImageConversion', 'Completed'],
      ['VirtualMachineCreation', 'Completed'],
    ],
  );
  const span = (s: Step) => (Date.parse(s.completed ?? '') - Date.parse(s.started ?? '')) / 1000;
  const [, transfer, conversion] = vm.pipeline;
  console.log(
    `migration ${total} ms: transfer ${span(transfer)} s, conversion ${span(conversion)} s (virt-v2v ${conversion.annotations?.seconds} s); ` +
      `stages seen: ${[...stages].join(' | ')}${conversion.warning ? `; warnings: ${conversion.warning.reasons.join(' | ')}` : ''}`,
  );
  // virt-v2v changed the guest (its initramfs, firstboot scripts): the volume differs from the source (-U: the VM may already run).
  const pvc = await c.client.get(PVCS, `${TARGET_NAME}-disk0`, { namespace: TARGET });
  const volume = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  const cmp = await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', disk, volume]);
  assert.equal(cmp.code, 1, `the converted volume differs from the source: ${cmp.out}${cmp.err}`);
  // It boots: targetPowerState on started it.
  const tb = Date.now();
  const agent = c.nodes.agents[0];
  await eventually(
    'converted guest ready on serial',
    async () => ((await serialLog(agent.dataDir, TARGET, TARGET_NAME)).includes(MARKER) ? true : undefined),
    15 * 60_000,
    2000,
  );
  console.log(`boot to ${MARKER}: ${Date.now() - tb} ms`);
  await c.client.patch(VMS, TARGET_NAME, { spec: { runStrategy: 'Halted' } }, { namespace: TARGET });
});
