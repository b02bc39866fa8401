/**
 * The `vsphere` provider against govmomi's simulator (e2e/vcsim): vcsim's VM DC0_H0_VM0 gets a
 * real disk (the tiny guest's, converted by qemu-img into a flat VMDK: descriptor + `-flat.vmdk`,
 * vSphere's own layout) in its datastore directory. A provider with the simulator's certificate
 * is Ready with its inventory and fingerprint; one with a wrong CA is ConnectionFailed; one with
 * insecureSkipVerify is Ready. Maps, a plan (and a warm plan with the warm-only concerns on a VM
 * given a snapshot), then a cold Migration: the source is powered off in vcsim, the disk streams
 * from the datastore's /folder interface into a DataVolume (contents equal), the VM is created
 * with the source's CPUs, memory and MAC, and since the source was on, it starts and the guest
 * prints its ready line. One guest boot. And a warm Migration (no guest boot) of DC0_C0_RP0_VM0
 * with CBT on: rounds of QueryChangedDiskAreas (served by our double, e2e/vcsim/cbt.go) read only
 * the blocks the test changed between rounds; at the cutover the source is powered off, its
 * snapshots are gone and the target volume equals the source's flat file.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyGuest, TINY_SERIAL } from '@vessel/guest';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { runDirOf, serialLog } from './tiny-vm.ts';
import { startVcsim, type Vcsim } from './vcsim/vcsim.ts';
import { VsphereClient } from '../packages/controllers/forklift/vsphere/soap.ts';
import { setChangeTracking } from '../packages/controllers/forklift/vsphere/cbt.ts';
import { forkliftObject, planSpec, providerRefs as testProviderRefs } from '../packages/controllers/forklift/testdata.ts';

const ref = (plural: string, group = 'forklift.konveyor.io', version = 'v1beta1'): ResourceRef => ({ group, version, plural, namespaced: true });
const PROVIDERS = ref('providers');
const PLANS = ref('plans');
const MIGRATIONS = ref('migrations');
const SECRETS = ref('secrets', '', 'v1');
const CMS = ref('configmaps', '', 'v1');
const PVCS = ref('persistentvolumeclaims', '', 'v1');
const VMS = ref('virtualmachines', 'kubevirt.io', 'v1');
const VMIS = ref('virtualmachineinstances', 'kubevirt.io', 'v1');
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const NS = 'vs-src';
const TARGET = 'vs-target';
const SOURCE_VM = 'DC0_H0_VM0';
/** The warm migration's source: CBT on, a 16 MiB flat disk the test changes between rounds. */
const WARM_VM = 'DC0_C0_RP0_VM0';
const WARM_SIZE = 16 * 1024 * 1024;

let v: Vessel;
let sim: Vcsim;
let dir: string;
let disk: string;

type Cond = { type: string; status: string; category?: string; reason?: string; message?: string; items?: string[] };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];
const fk = (kind: string, name: string, spec: unknown): KubeObject => forkliftObject(kind, name, NS, spec);
const providerRefs = testProviderRefs('vcenter', NS);
const b64 = (s: string) => Buffer.from(s).toString('base64');
const secret = (name: string, extra: Record<string, string>): KubeObject => ({
  apiVersion: 'v1',
  kind: 'Secret',
  metadata: { name, namespace: NS },
  data: Object.fromEntries(Object.entries({ user: sim.user, password: sim.password, ...extra }).map(([k, x]) => [k, b64(x)])),
});
const phaseOf = async (name: string): Promise<KubeObject | undefined> => {
  const p = await v.client.get(PROVIDERS, name, { namespace: NS });
  return (p.status as { phase?: string } | undefined)?.phase ? p : undefined;
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'forklift-vsphere-'));
  disk = (await ensureTinyGuest()).disk;
  const capacity = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', disk], { encoding: 'utf8' }))['virtual-size'] as number;
  sim = await startVcsim({ memory: { [SOURCE_VM]: 128 }, disk: { [SOURCE_VM]: capacity, [WARM_VM]: WARM_SIZE } });
  // The warm VM's disk: flat, two written areas (the rest unallocated zeros).
  const warmDisk = join(sim.datastores.LocalDS_0, WARM_VM, 'disk1.vmdk');
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', warmDisk, String(WARM_SIZE)]);
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -q -P 0x11 0 1M', '-c', 'write -q -P 0x22 9M 512k', warmDisk]);
  // The VM's disk, as vSphere stores it: disk1.vmdk (a text descriptor) + disk1-flat.vmdk (raw).
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', disk, join(sim.datastores.LocalDS_0, SOURCE_VM, 'disk1.vmdk')]);
  // A snapshot on another VM, through Vessel's SOAP client, for the warm plan's concerns.
  const c = new VsphereClient(sim.url, { cacert: sim.cert });
  try {
    await c.login(sim.user, sim.password);
    const vm1 = (await c.retrieveAll({ VirtualMachine: ['name'] })).find((o) => o.props.get('name')?.text === 'DC0_H0_VM1')!;
    await c.runTask('CreateSnapshot_Task', vm1.obj, '<name>before-move</name><memory>false</memory><quiesce>false</quiesce>');
    // CBT on for the warm VM, as Forklift asks its users to do (before the provider reads the inventory).
    const warmVm = (await c.retrieveAll({ VirtualMachine: ['name'] })).find((o) => o.props.get('name')?.text === WARM_VM)!;
    await setChangeTracking(c, warmVm.obj.value, true);
    await c.logout();
  } finally {
    c.close();
  }
  v = await startVessel({ agent: { nodeName: 'vs-node' }, forkliftPrecopyIntervalMs: 3000 });
  for (const ns of [NS, TARGET]) await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  // The migrated VM runs (daemonized QEMU): halt it and make sure its QEMU is gone before the server goes.
  if (v) {
    const target = SOURCE_VM.toLowerCase().replace(/_/g, '-');
    const dirOf = await runDirOf(v.dataDir, TARGET, target);
    await v.client.patch(VMS, target, { spec: { runStrategy: 'Halted' } }, { namespace: TARGET }).catch(() => undefined);
    await eventually(
      'VMI gone',
      async () =>
        v.client.get(VMIS, target, { namespace: TARGET }).then(
          () => undefined,
          () => true,
        ),
      60_000,
    ).catch(() => undefined);
    const pid = dirOf ? Number(await readFile(join(dirOf, 'qemu.pid'), 'utf8').catch(() => '')) : 0;
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  await v?.close();
  await sim?.stop();
  await rm(dir, { recursive: true, force: true });
});

test('vsphere providers: Ready with the inventory and fingerprint; a wrong CA refused; insecureSkipVerify accepted', async () => {
  await v.client.create(SECRETS, secret('vcenter-creds', { cacert: sim.cert }), { namespace: NS });
  await v.client.create(SECRETS, secret('wrong-ca', { cacert: sim.otherCert }), { namespace: NS });
  await v.client.create(SECRETS, secret('insecure', { insecureSkipVerify: 'true' }), { namespace: NS });
  const spec = (s: string) => ({ type: 'vsphere', url: sim.url, secret: { name: s, namespace: NS } });
  await v.client.create(PROVIDERS, fk('Provider', 'vcenter', spec('vcenter-creds')), { namespace: NS });
  await v.client.create(PROVIDERS, fk('Provider', 'wrong-ca', spec('wrong-ca')), { namespace: NS });
  await v.client.create(PROVIDERS, fk('Provider', 'insecure', spec('insecure')), { namespace: NS });

  const p = await eventually('vcenter provider', () => phaseOf('vcenter'), 60_000);
  const st = p.status as { phase: string; inventory: unknown; fingerprint?: string };
  assert.equal(st.phase, 'Ready', JSON.stringify(conds(p)));
  // vcsim's VPX model: 4 VMs, 3 networks (a standard one, a DVS port group and its uplinks), 1 datastore, 4 hosts.
  assert.deepEqual(st.inventory, { vms: 4, networks: 3, datastores: 1, hosts: 4 });
  const expectFp = execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha1'], { input: sim.cert, encoding: 'utf8' }).trim().split('=')[1];
  assert.equal(st.fingerprint, expectFp);

  const bad = await eventually('wrong-ca provider', () => phaseOf('wrong-ca'), 60_000);
  assert.equal((bad.status as { phase: string }).phase, 'ConnectionFailed');
  const failed = conds(bad).find((c) => c.type === 'ConnectionTestFailed');
  assert.equal(failed?.category, 'Critical');
  assert.match(failed?.message ?? '', /certificate/i);
  const insecure = await eventually('insecure provider', () => phaseOf('insecure'), 60_000);
  assert.equal((insecure.status as { phase: string }).phase, 'Ready');

  const cm = await v.client.get(CMS, 'vcenter-inventory', { namespace: NS });
  type InvVm = { id: string; name: string; cpus: number; memoryMB: number; powerState: string; uuid: string; datacenter: string };
  const inv = JSON.parse((cm.data as Record<string, string>)['inventory.json']) as {
    vms: (InvVm & { disks: { capacity: number; datastore: string; file: string }[]; nics: { mac: string; network: string }[] })[];
    datacenters: { name: string }[];
    clusters: { name: string }[];
  };
  const src = inv.vms.find((x) => x.name === SOURCE_VM)!;
  assert.equal(src.memoryMB, 128);
  assert.equal(src.powerState, 'poweredOn');
  assert.equal(src.datacenter, 'DC0');
  assert.match(src.uuid, /^[0-9a-f-]{36}$/);
  assert.equal(src.disks[0].file, `[LocalDS_0] ${SOURCE_VM}/disk1.vmdk`);
  assert.match(src.nics[0].mac, /^00:0c:29:/);
  assert.deepEqual(
    inv.datacenters.map((d) => d.name),
    ['DC0'],
  );
  assert.deepEqual(
    inv.clusters.map((c) => c.name),
    ['DC0_C0'],
  );
  const out = await run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', NS, 'inventory', 'vcenter'], { timeoutMs: 60_000 });
  assert.equal(out.code, 0, out.err);
  assert.match(out.out, new RegExp(`\\n${SOURCE_VM}\\s+vm-\\d+\\s+1\\s+128Mi\\s+bios\\s+0\\.13Gi`));
});

test('a warm migration from vcsim: CBT rounds copy only the changed bytes; cutover powers off, the target equals the source', async () => {
  const inv = JSON.parse(((await v.client.get(CMS, 'vcenter-inventory', { namespace: NS })).data as Record<string, string>)['inventory.json']) as {
    vms: { id: string; name: string; changeTrackingEnabled: boolean; nics: { network: string }[] }[];
    networks: { id: string; name: string }[];
  };
  const src = inv.vms.find((x) => x.name === WARM_VM)!;
  assert.equal(src.changeTrackingEnabled, true);
  const nets = [...new Set(src.nics.map((n) => inv.networks.find((x) => x.id === n.network)!.name))];
  await v.client.create(
    ref('networkmaps'),
    fk('NetworkMap', 'net-warm', {
      provider: providerRefs,
      map: nets.map((name, i) => ({ source: { name }, destination: { type: i === 0 ? 'pod' : 'ignored' } })),
    }),
    { namespace: NS },
  );
  await v.client.create(
    ref('storagemaps'),
    fk('StorageMap', 'disks-warm', { provider: providerRefs, map: [{ source: { name: 'LocalDS_0' }, destination: { storageClass: 'local' } }] }),
    { namespace: NS },
  );
  // targetPowerState off: no guest boots (the disk is not a bootable image).
  await v.client.create(
    PLANS,
    fk(
      'Plan',
      'warm-cbt',
      planSpec(
        { provider: providerRefs, targetNamespace: TARGET, maps: { network: 'net-warm', storage: 'disks-warm' }, vms: [{ name: WARM_VM }] },
        { warm: true, targetPowerState: 'off' },
      ),
    ),
    { namespace: NS },
  );
  const planConds = await eventually(
    'warm plan Ready',
    async () => {
      const cs = conds(await v.client.get(PLANS, 'warm-cbt', { namespace: NS }));
      return cs.some((x) => x.type === 'Ready' || x.category === 'Critical') ? cs : undefined;
    },
    120_000,
  );
  assert.deepEqual(
    planConds.filter((x) => x.category === 'Critical'),
    [],
  );

  const flat = join(sim.datastores.LocalDS_0, WARM_VM, 'disk1-flat.vmdk');
  const readPath = `/folder/${WARM_VM}/disk1-flat.vmdk`;
  const readSoFar = async () => (await sim.reads())[readPath] ?? 0;
  type Warm = { successes: number; failures: number; precopies?: { deltas?: { disk: string; deltaId: string }[] }[] };
  const migration = async () =>
    (await v.client.get(MIGRATIONS, 'warm-cbt-1', { namespace: NS })).status as
      { completed?: string; vms?: { phase: string; warm?: Warm; error?: unknown; pipeline: { name: string; phase: string }[] }[] } | undefined;
  const successes = async (n: number) =>
    eventually(
      `${n} precopies`,
      async () => {
        const w = (await migration())?.vms?.[0]?.warm;
        assert.equal(w?.failures ?? 0, 0, JSON.stringify(await migration()));
        return (w?.successes ?? 0) >= n ? w : undefined;
      },
      120_000,
      200,
    );
  const t0 = Date.now();
  await v.client.create(MIGRATIONS, fk('Migration', 'warm-cbt-1', { plan: { name: 'warm-cbt' } }), { namespace: NS });
  await successes(1);
  // The full round: only the allocated areas (1 MiB + 512 KiB of the 16 MiB disk).
  const full = await readSoFar();
  assert.equal(full, 1.5 * 1024 * 1024);
  console.log(`vsphere warm: full round ${full} bytes read (disk ${WARM_SIZE}), ${Date.now() - t0} ms after the Migration`);

  // The guest "writes" between rounds: 2 blocks of 64 KiB change (one inside an area, one in zeros).
  execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -q -P 0x33 256k 64k', '-c', 'write -q -P 0x44 14M 64k', flat]);
  const before = (await successes(1))!.successes;
  await successes(before + 2);
  const delta = (await readSoFar()) - full;
  assert.equal(delta, 128 * 1024, 'the rounds after the change read the two changed blocks, nothing else');
  console.log(`vsphere warm: incremental rounds read ${delta} bytes in all`);

  // One more change, then the cutover: the source is powered off and the last round carries it.
  execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -q -P 0x55 15M 4k', flat]);
  const beforeCutover = await readSoFar();
  const tc = Date.now();
  await v.client.patch(MIGRATIONS, 'warm-cbt-1', { spec: { cutover: new Date().toISOString() } }, { namespace: NS });
  const st = await eventually(
    'warm migration completed',
    async () => {
      const m = await migration();
      return m?.completed ? m : undefined;
    },
    180_000,
    200,
  );
  console.log(`vsphere warm: cutover → completed ${Date.now() - tc} ms; last round read ${(await readSoFar()) - beforeCutover} bytes`);
  const vm0 = st.vms![0];
  assert.equal(vm0.phase, 'Completed', JSON.stringify(vm0.error));
  assert.deepEqual(
    vm0.pipeline.map((p) => [p.name, p.phase]),
    ['Initialize', 'DiskAllocation', 'DiskTransfer', 'Cutover', 'VirtualMachineCreation'].map((n) => [n, 'Completed']),
  );
  // The cutover round read the 4 KiB change's 64 KiB block.
  assert.equal((await readSoFar()) - beforeCutover, 64 * 1024);
  // Each precopy names its snapshot as the delta.
  assert.match(vm0.warm?.precopies?.at(-1)?.deltas?.[0]?.deltaId ?? '', /^snapshot-\d+$/);

  // vcsim: the source is off and has no snapshot left.
  const c = new VsphereClient(sim.url, { cacert: sim.cert });
  await c.login(sim.user, sim.password);
  const props = await c.retrieve({ type: 'VirtualMachine', value: src.id }, ['runtime.powerState', 'snapshot']);
  await c.logout();
  c.close();
  assert.equal(props?.props.get('runtime.powerState')?.text, 'poweredOff');
  assert.equal(props?.props.get('snapshot'), undefined);

  // The target volume is the source disk, byte for byte; the VM is there, Halted.
  const target = WARM_VM.toLowerCase().replace(/_/g, '-');
  const pvc = await v.client.get(PVCS, `${target}-disk0`, { namespace: TARGET });
  const volume = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  const cmp = await run('qemu-img', ['compare', '-U', '-f', 'raw', flat, volume]);
  assert.equal(cmp.code, 0, cmp.out + cmp.err);
  const vm = await v.client.get(VMS, target, { namespace: TARGET });
  assert.equal((vm.spec as { runStrategy: string }).runStrategy, 'Halted');
});

test('a cold migration from vcsim: source powered off, disk transferred intact, the VM boots', async () => {
  const inv = JSON.parse(((await v.client.get(CMS, 'vcenter-inventory', { namespace: NS })).data as Record<string, string>)['inventory.json']) as {
    vms: { id: string; name: string; nics: { network: string; mac: string }[] }[];
    networks: { id: string; name: string }[];
  };
  const src = inv.vms.find((x) => x.name === SOURCE_VM)!;
  const other = inv.vms.find((x) => x.name === 'DC0_H0_VM1')!;
  // Map every network the two VMs use, by name (the VMs name them by id).
  const nets = [...new Set([...src.nics, ...other.nics].map((n) => inv.networks.find((x) => x.id === n.network)!.name))];
  await v.client.create(
    ref('networkmaps'),
    fk('NetworkMap', 'net', { provider: providerRefs, map: nets.map((name) => ({ source: { name }, destination: { type: 'pod' } })) }),
    { namespace: NS },
  );
  await v.client.create(
    ref('storagemaps'),
    fk('StorageMap', 'disks', { provider: providerRefs, map: [{ source: { name: 'LocalDS_0' }, destination: { storageClass: 'local' } }] }),
    { namespace: NS },
  );
  const plan = (name: string, vms: unknown[], extra: Record<string, unknown> = {}) =>
    fk('Plan', name, planSpec({ provider: providerRefs, targetNamespace: TARGET, vms }, extra));
  await v.client.create(PLANS, plan('warm', [{ name: 'DC0_H0_VM1' }], { warm: true }), { namespace: NS });
  await v.client.create(PLANS, plan('cold', [{ name: SOURCE_VM }]), { namespace: NS });
  const warm = await eventually(
    'warm plan concerns',
    async () => {
      const cs = conds(await v.client.get(PLANS, 'warm', { namespace: NS }));
      return cs.some((x) => x.type === 'VMHasSnapshots') ? cs : undefined;
    },
    120_000,
  );
  const byType = new Map(warm.map((x) => [x.type, x]));
  // Warm is allowed from vSphere, but this VM has no CBT.
  assert.ok(!byType.has('MigrationTypeNotValid'));
  assert.equal(byType.get('ChangeTrackingNotEnabled')?.category, 'Critical');
  assert.match(byType.get('VMHasSnapshots')?.items?.[0] ?? '', /snapshots:1/);
  assert.ok(!byType.has('Ready'));
  const cold = await eventually(
    'cold plan Ready',
    async () => {
      const cs = conds(await v.client.get(PLANS, 'cold', { namespace: NS }));
      return cs.some((x) => x.type === 'Ready') ? cs : undefined;
    },
    120_000,
  );
  assert.deepEqual(
    cold.filter((x) => x.category === 'Critical'),
    [],
  );

  const t0 = Date.now();
  await v.client.create(MIGRATIONS, fk('Migration', 'cold-1', { plan: { name: 'cold' } }), { namespace: NS });
  const m = await eventually(
    'migration completed',
    async () => {
      const o = await v.client.get(MIGRATIONS, 'cold-1', { namespace: NS });
      return (o.status as { completed?: string } | undefined)?.completed ? o : undefined;
    },
    300_000,
    250,
  );
  const took = Date.now() - t0;
  const st = m.status as { vms: { phase: string; error?: unknown; pipeline: { name: string; phase: string }[] }[] };
  assert.equal(st.vms[0].phase, 'Completed', JSON.stringify(st.vms[0].error));
  assert.deepEqual(
    st.vms[0].pipeline.map((s) => [s.name, s.phase]),
    [
      ['Initialize', 'Completed'],
      ['DiskTransfer', 'Completed'],
      ['VirtualMachineCreation', 'Completed'],
    ],
  );
  console.log(`vsphere cold migration of ${SOURCE_VM} (128 MiB raw flat extent): ${took} ms`);

  // The source is off in vcsim.
  const c2 = new VsphereClient(sim.url, { cacert: sim.cert });
  await c2.login(sim.user, sim.password);
  const power = (await c2.retrieve({ type: 'VirtualMachine', value: src.id }, ['runtime.powerState']))?.props.get('runtime.powerState')?.text;
  await c2.logout();
  c2.close();
  assert.equal(power, 'poweredOff');

  // The disk is the source's, byte for byte.
  const target = SOURCE_VM.toLowerCase().replace(/_/g, '-');
  const pvc = await v.client.get(PVCS, `${target}-disk0`, { namespace: TARGET });
  const volume = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  // -U: the VM already runs from it (read-only look, no lock).
  const cmp = await run('qemu-img', ['compare', '-U', '-f', 'qcow2', disk, volume]);
  assert.equal(cmp.code, 0, cmp.out + cmp.err);

  // The VM: the source's shape; the source was on, so it runs (targetPowerState auto).
  const vm = await v.client.get(VMS, target, { namespace: TARGET });
  const spec = vm.spec as {
    runStrategy: string;
    template: { spec: { domain: { cpu: { cores: number }; resources: { requests: { memory: string } }; devices: { interfaces: { macAddress?: string }[] } } } };
  };
  assert.equal(spec.runStrategy, 'Always');
  assert.equal(spec.template.spec.domain.cpu.cores, 1);
  assert.equal(spec.template.spec.domain.resources.requests.memory, '128Mi');
  assert.equal(spec.template.spec.domain.devices.interfaces[0].macAddress, src.nics[0].mac);
  await eventually(
    `${target} ready on serial`,
    async () => ((await serialLog(v.dataDir, TARGET, target)).includes(TINY_SERIAL.ready) ? true : undefined),
    600_000,
    1000,
  ).catch(async (e: unknown) => {
    console.log('serial so far:', (await serialLog(v.dataDir, TARGET, target)).slice(-1500));
    throw e;
  });
  const vmi = await v.client.get(VMIS, target, { namespace: TARGET });
  assert.equal((vmi.status as { phase: string }).phase, 'Running');
  await v.client.patch(VMS, target, { spec: { runStrategy: 'Halted' } }, { namespace: TARGET });
});
