/**
 * Scenario (minutes; CI skips it): a plan of 5 VMs from 5 OVAs of the tiny guest's disk
 * (streamOptimized VMDKs, OVFs written here, SHA256 manifests) cold-migrates with at most 2 VMs
 * in flight; every volume equals the source disk (qemu-img compare); every migrated VM boots on a
 * dev-cluster node with the CPUs and memory of its OVF (its QEMU's -smp and -m) and gets an
 * address on the mapped network (its guest prints its ready line and its IP on serial). Names
 * such as "App Server 3" become RFC 1123 newNames.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureTinyGuest, TINY_SERIAL } from '@vessel/guest';
import type { KubeObject } from '@vessel/client';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { serialLog } from './tiny-vm.ts';
import { forkliftIn, FORKLIFT_REFS, manifest, ovf, planSpec, providerRefs as testProviderRefs } from '../packages/controllers/forklift/testdata.ts';

const { MIGRATIONS, NAMESPACES, NETMAPS, PLANS, PROVIDERS, PVCS, STORAGEMAPS, VMIS, VMS } = FORKLIFT_REFS;
const NS = 'fkp-src';
const TARGET = 'fkp-target';
const N = 5;
/** Each VM's OVF gives it its own CPUs and memory, so the check below can tell them apart. */
const cpusOf = (i: number) => 1 + (i % 2);
const memoryOf = (i: number) => 96 + 16 * i;

let c: TestCluster;
let dir: string;
let disk: string;

const fk = forkliftIn(NS);
const providerRefs = testProviderRefs('ova', NS);
type Cond = { type: string; status: string };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'forklift-plan-'));
  const root = join(dir, 'ova');
  const src = join(dir, 'src');
  await mkdir(root);
  await mkdir(src);
  disk = (await ensureTinyGuest()).disk;
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', disk, join(src, 'disk.vmdk')]);
  const vmdk = readFileSync(join(src, 'disk.vmdk'));
  const capacity = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', disk], { encoding: 'utf8' }))['virtual-size'] as number;
  for (let i = 1; i <= N; i++) {
    const d = join(src, `app${i}`);
    await mkdir(d);
    const file = `app${i}-disk1.vmdk`;
    execFileSync('cp', [join(src, 'disk.vmdk'), join(d, file)]);
    const desc = ovf([{ name: `App Server ${i}`, cpus: cpusOf(i), memoryMB: memoryOf(i), networks: ['VM Network'], disks: [{ file, capacity }] }]);
    await writeFile(join(d, `app${i}.ovf`), desc);
    await writeFile(join(d, `app${i}.mf`), manifest({ [`app${i}.ovf`]: desc, [file]: vmdk }));
    execFileSync('tar', ['-cf', join(root, `app${i}.ova`), '-C', d, `app${i}.ovf`, `app${i}.mf`, file]);
  }
  c = await startCluster({ nodes: 1, ovaRoots: [root] });
  for (const ns of [NS, TARGET]) await c.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  await c?.close();
  await rm(dir, { recursive: true, force: true });
});

test('5 VMs cold-migrate with at most 2 in flight, disks intact; each boots with its CPUs, memory and network', async () => {
  await c.client.create(PROVIDERS, fk('Provider', 'ova', { type: 'ova', url: join(dir, 'ova'), secret: {} }), { namespace: NS });
  await c.client.create(NETMAPS, fk('NetworkMap', 'net', { provider: providerRefs, map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  const storage = Array.from({ length: N }, (_, i) => ({ source: { name: `app${i + 1}.ova` }, destination: { storageClass: 'local' } }));
  await c.client.create(STORAGEMAPS, fk('StorageMap', 'disks', { provider: providerRefs, map: storage }), { namespace: NS });
  const vms = Array.from({ length: N }, (_, i) => ({ name: `App Server ${i + 1}` }));
  await c.client.create(
    PLANS,
    // The tiny guest is no distribution virt-v2v can inspect: not converted.
    fk('Plan', 'five', planSpec({ provider: providerRefs, targetNamespace: TARGET, vms }, { skipGuestConversion: true })),
    {
      namespace: NS,
    },
  );
  await eventually(
    'plan Ready',
    async () => (conds(await c.client.get(PLANS, 'five', { namespace: NS })).some((x) => x.type === 'Ready') ? true : undefined),
    120_000,
  );
  const t0 = Date.now();
  await c.client.create(MIGRATIONS, fk('Migration', 'five-1', { plan: { name: 'five' } }), { namespace: NS });
  let maxInFlight = 0;
  const m = await eventually(
    'migration completed',
    async () => {
      const o = await c.client.get(MIGRATIONS, 'five-1', { namespace: NS });
      const st = (o.status ?? {}) as { completed?: string; vms?: { phase: string }[] };
      const active = (st.vms ?? []).filter((v) => !['Pending', 'Completed', 'Failed'].includes(v.phase)).length;
      maxInFlight = Math.max(maxInFlight, active);
      return st.completed ? o : undefined;
    },
    900_000,
    100,
  );
  const total = Date.now() - t0;
  console.log(
    `5 VMs (${(readFileSync(join(dir, 'src', 'disk.vmdk')).length / 1e6).toFixed(1)} MB VMDK each): ${total} ms; most in flight seen: ${maxInFlight}`,
  );
  const st = m.status as { vms: { name: string; newName?: string; phase: string; error?: unknown }[] };
  assert.deepEqual(
    st.vms.map((v) => [v.newName, v.phase]),
    Array.from({ length: N }, (_, i) => [`app-server-${i + 1}`, 'Completed']),
    JSON.stringify(st.vms.map((v) => v.error)),
  );
  assert.ok(conds(m).some((x) => x.type === 'Succeeded'));
  // Never more than 2 at once; on a quiet host the 5 transfers may end between two polls (0 seen):
  // forklift-run.e2e paces its transfers to see them in flight.
  assert.ok(maxInFlight <= 2, `in flight: ${maxInFlight}`);
  for (let i = 1; i <= N; i++) {
    const pvc = await c.client.get(PVCS, `app-server-${i}-disk0`, { namespace: TARGET });
    const volume = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
    const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', disk, volume]);
    assert.equal(cmp.code, 0, `app-server-${i}: ${cmp.out}${cmp.err}`);
  }
  // Every one boots from its migrated disk, as its OVF describes it.
  const names = Array.from({ length: N }, (_, i) => `app-server-${i + 1}`);
  for (const n of names) await c.client.patch(VMS, n, { spec: { runStrategy: 'Always' } }, { namespace: TARGET });
  const node = c.nodes.agents[0];
  const tb = Date.now();
  for (const [k, n] of names.entries()) {
    const i = k + 1;
    const log = await eventually(
      `${n} ready on serial with an address`,
      async () => {
        const text = await serialLog(node.dataDir, TARGET, n);
        return text.includes(TINY_SERIAL.ready) && TINY_SERIAL.ip.test(text) ? text : undefined;
      },
      900_000,
      1000,
    );
    const vmi = await c.client.get(VMIS, n, { namespace: TARGET });
    const status = vmi.status as { phase: string; interfaces?: { ipAddress?: string }[] };
    assert.equal(status.phase, 'Running');
    assert.ok(status.interfaces?.[0]?.ipAddress, `${n} has an address on the mapped (pod) network: ${JSON.stringify(status.interfaces)}`);
    // Its QEMU: the OVF's CPUs and memory.
    const argv = qemuArgv(`guest=${TARGET}_${n},`);
    assert.ok(argv, `${n}: its QEMU`);
    assert.match(argv[argv.indexOf('-smp') + 1], new RegExp(`^${cpusOf(i)},`), `${n}: -smp`);
    assert.equal(argv[argv.indexOf('-m') + 1], `${memoryOf(i)}M`, `${n}: -m`);
    console.log(`${n}: ${cpusOf(i)} CPUs, ${memoryOf(i)} MiB, ${TINY_SERIAL.ip.exec(log)![1]} in the guest; ready ${Date.now() - tb} ms after the start`);
  }
  for (const n of names) await c.client.patch(VMS, n, { spec: { runStrategy: 'Halted' } }, { namespace: TARGET });
  await eventually('the VMIs gone', async () => ((await c.client.list(VMIS, { namespace: TARGET })).items.length === 0 ? true : undefined), 120_000);
});

/** The argv of the running QEMU whose command line holds `marker`. */
function qemuArgv(marker: string): string[] | undefined {
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    const argv = (() => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      } catch {
        return [];
      }
    })();
    if (/qemu-system/.test(argv[0] ?? '') && argv.some((a) => a.includes(marker))) return argv;
  }
  return undefined;
}
