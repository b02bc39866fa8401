/**
 * The migration toolkit's first increment against a real server (docs/forklift.md): an OVA made
 * here (a qcow2 converted to a streamOptimized VMDK, an OVF written by the test, a SHA256
 * manifest, packed by tar) in an allowed directory gives a Ready `ova` Provider with the right
 * inventory (status counts, the inventory ConfigMap, `vessel inventory`); maps are Ready; a plan
 * reports the expected concerns; a provider outside the allowed roots and a hostile OVA are
 * refused; a cold migration of the plan streams the VMDK from inside the OVA into an upload
 * DataVolume (contents compared with qemu-img) and creates the VM. No guest boots.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { eventually, KUBECTL_SKIP, kubectlFor, rejects, run, startVessel, vm, type Vessel } from './harness.ts';
import { forkliftObject, manifest, ovf, planSpec, providerRefs as testProviderRefs, tar } from '../packages/controllers/forklift/testdata.ts';

const ref = (plural: string, group = 'forklift.konveyor.io', version = 'v1beta1'): ResourceRef => ({ group, version, plural, namespaced: true });
const PROVIDERS = ref('providers');
const NETMAPS = ref('networkmaps');
const STORAGEMAPS = ref('storagemaps');
const PLANS = ref('plans');
const NADS = ref('network-attachment-definitions', 'k8s.cni.cncf.io', 'v1');
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const SCS: ResourceRef = { group: 'storage.k8s.io', version: 'v1', plural: 'storageclasses', namespaced: false };
const VMS = ref('virtualmachines', 'kubevirt.io', 'v1');
const CMS = ref('configmaps', '', 'v1');
const MIGRATIONS = ref('migrations');
const DVS = ref('datavolumes', 'cdi.kubevirt.io', 'v1beta1');
const PVCS = ref('persistentvolumeclaims', '', 'v1');
const EVENTS = ref('events', '', 'v1');
const NS = 'fk-src';
const TARGET = 'fk-target';
const MiB = 1024 * 1024;

let v: Vessel;
let dir: string;
let root: string;

type Cond = { type: string; status: string; category?: string; reason?: string; items?: string[]; message?: string };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];
const isReady = (o: KubeObject) => conds(o).some((c) => c.type === 'Ready' && c.status === 'True');
const fk = (kind: string, name: string, spec: unknown): KubeObject => forkliftObject(kind, name, NS, spec);
const providerRefs = testProviderRefs('ova', NS);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'forklift-e2e-'));
  root = join(dir, 'ova-root');
  const src = join(dir, 'src');
  await mkdir(join(root, 'lab'), { recursive: true });
  await mkdir(src);
  // web: a 64 MiB disk with known bytes, two NICs, EFI; "DB_Server.prod": a BIOS VM whose name is not RFC 1123.
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(src, 'web.qcow2'), '64M']);
  execFileSync('qemu-io', ['-c', 'write -P 0x5a 0 1M', join(src, 'web.qcow2')], { stdio: 'ignore' });
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(src, 'web.qcow2'), join(src, 'web-disk1.vmdk')]);
  const desc = ovf([
    { name: 'web', cpus: 2, memoryMB: 512, firmware: 'efi', networks: ['VM Network', 'Lab Net'], disks: [{ file: 'web-disk1.vmdk', capacity: 64 * MiB }] },
  ]);
  await writeFile(join(src, 'web.ovf'), desc);
  await writeFile(join(src, 'web.mf'), manifest({ 'web.ovf': desc, 'web-disk1.vmdk': readFileSync(join(src, 'web-disk1.vmdk')) }));
  execFileSync('tar', ['-cf', join(root, 'web.ova'), '-C', src, 'web.ovf', 'web.mf', 'web-disk1.vmdk']);
  execFileSync('cp', [join(src, 'web-disk1.vmdk'), join(src, 'db-disk1.vmdk')]);
  const db = ovf([{ name: 'DB_Server.prod', cpus: 1, memoryMB: 256, networks: ['VM Network'], disks: [{ file: 'db-disk1.vmdk', capacity: 64 * MiB }] }]);
  await writeFile(join(src, 'db.ovf'), db);
  execFileSync('tar', ['-cf', join(root, 'lab', 'db.ova'), '-C', src, 'db.ovf', 'db-disk1.vmdk']);
  // A hostile package beside them: a tar entry climbing out of the directory.
  await writeFile(join(dir, 'decoy.txt'), 'decoy\n');
  await writeFile(
    join(root, 'evil.ova'),
    tar([
      { name: 'e.ovf', data: ovf([{ name: 'evil' }]) },
      { name: '../decoy.txt', data: 'overwritten?' },
    ]),
  );
  v = await startVessel({ ovaRoots: [root], agent: { nodeName: 'fk-node' } });
  for (const ns of [NS, TARGET]) await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  await v?.close();
  await rm(dir, { recursive: true, force: true });
});

test('an ova provider: Ready with the inventory of its OVAs; the hostile one refused and listed', async () => {
  await v.client.create(PROVIDERS, fk('Provider', 'ova', { type: 'ova', url: `ova://${root}`, secret: {} }), { namespace: NS });
  const p = await eventually('provider Ready', async () => {
    const o = await v.client.get(PROVIDERS, 'ova', { namespace: NS });
    return (o.status as { phase?: string } | undefined)?.phase === 'Ready' ? o : undefined;
  });
  assert.deepEqual((p.status as { inventory?: unknown }).inventory, { vms: 2, networks: 2, datastores: 2, hosts: 0 });
  const types = conds(p).map((c) => c.type);
  for (const t of ['Validated', 'ConnectionTestSucceeded', 'InventoryCreated', 'Ready', 'PackagesRefused']) assert.ok(types.includes(t), t);
  const refusedItems = conds(p).find((c) => c.type === 'PackagesRefused')!.items!;
  assert.equal(refusedItems.length, 1);
  assert.match(refusedItems[0], /^evil\.ova: PathTraversal/);
  assert.equal(readFileSync(join(dir, 'decoy.txt'), 'utf8'), 'decoy\n');
  assert.deepEqual((await readdir(root)).sort(), ['evil.ova', 'lab', 'web.ova']);

  const cm = await v.client.get(CMS, 'ova-inventory', { namespace: NS });
  const inv = JSON.parse((cm.data as Record<string, string>)['inventory.json']) as {
    vms: { name: string; cpus: number; memoryMB: number; firmware: string; disks: { capacity: number; file: string }[] }[];
  };
  const web = inv.vms.find((x) => x.name === 'web')!;
  assert.deepEqual([web.cpus, web.memoryMB, web.firmware, web.disks[0].capacity, web.disks[0].file], [2, 512, 'efi', 64 * MiB, 'web-disk1.vmdk']);

  const cli = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', NS, 'inventory', 'ova', ...args], { timeoutMs: 60_000 });
  const vmsOut = await cli();
  assert.equal(vmsOut.code, 0, vmsOut.err);
  assert.match(vmsOut.out, /^NAME\s+ID\s+CPUS\s+MEMORY\s+FIRMWARE\s+DISKS\s+NETWORKS/);
  assert.match(vmsOut.out, /\nweb\s+[0-9a-f]{16}\s+2\s+512Mi\s+efi\s+0\.06Gi\s+VM Network,Lab Net/);
  assert.match(vmsOut.out, /DB_Server\.prod/);
  const nets = await cli('networks', '-o', 'json');
  assert.deepEqual(
    (JSON.parse(nets.out) as { name: string }[]).map((n) => n.name),
    ['Lab Net', 'VM Network'],
  );
  assert.equal((await cli('disks')).code, 1, 'an unknown collection is a usage error');

  // Outside the allowed roots: ValidationFailed, nothing read.
  await v.client.create(PROVIDERS, fk('Provider', 'outside', { type: 'ova', url: dir, secret: {} }), { namespace: NS });
  const out = await eventually('provider refused', async () => {
    const o = await v.client.get(PROVIDERS, 'outside', { namespace: NS });
    return (o.status as { phase?: string } | undefined)?.phase ? o : undefined;
  });
  assert.equal((out.status as { phase: string }).phase, 'ValidationFailed');
  assert.ok(conds(out).some((c) => c.type === 'UrlNotValid' && c.category === 'Critical'));
  // Bad input: 422 naming the field, nothing stored.
  const e = await rejects(v.client.create(PROVIDERS, fk('Provider', 'bad', { type: 'ova', secret: {} }), { namespace: NS }), 422);
  assert.match(e.message, /spec\.url/);
});

test('maps Ready when their sources exist; a plan validated with the expected concerns', async () => {
  await v.client.create(SCS, {
    apiVersion: 'storage.k8s.io/v1',
    kind: 'StorageClass',
    metadata: { name: 'fk-small' },
    provisioner: 'vessel.io/local',
    parameters: { maxVolumeSize: '32Mi' },
  });
  await v.client.create(SCS, { apiVersion: 'storage.k8s.io/v1', kind: 'StorageClass', metadata: { name: 'fk-big' }, provisioner: 'vessel.io/local' });
  const nadConfig = JSON.stringify({ cniVersion: '0.3.1', name: 'lab', type: 'bridge', bridge: 'br-fklab' });
  await v.client.create(
    NADS,
    { apiVersion: 'k8s.cni.cncf.io/v1', kind: 'NetworkAttachmentDefinition', metadata: { name: 'lab' }, spec: { config: nadConfig } },
    { namespace: NS },
  );
  await v.client.create(
    NETMAPS,
    fk('NetworkMap', 'net', {
      provider: providerRefs,
      map: [
        { source: { name: 'VM Network' }, destination: { type: 'pod' } },
        { source: { name: 'Lab Net' }, destination: { type: 'multus', name: 'lab', namespace: NS } },
      ],
    }),
    { namespace: NS },
  );
  await v.client.create(
    STORAGEMAPS,
    fk('StorageMap', 'disks', {
      provider: providerRefs,
      map: [
        { source: { name: 'web.ova' }, destination: { storageClass: 'fk-big' } },
        { source: { name: 'lab/db.ova' }, destination: { storageClass: 'fk-small', accessMode: 'ReadWriteOnce', volumeMode: 'Filesystem' } },
      ],
    }),
    { namespace: NS },
  );
  // A map naming what the inventory lacks is not Ready.
  await v.client.create(NETMAPS, fk('NetworkMap', 'wrong', { provider: providerRefs, map: [{ source: { name: 'DMZ' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  for (const [res, name] of [
    [NETMAPS, 'net'],
    [STORAGEMAPS, 'disks'],
  ] as const)
    await eventually(
      `${name} Ready`,
      async () =>
        (((await v.client.get(res, name, { namespace: NS })) as KubeObject).status && isReady(await v.client.get(res, name, { namespace: NS }))) || undefined,
    );
  const wrong = await eventually('wrong map validated', async () => {
    const o = await v.client.get(NETMAPS, 'wrong', { namespace: NS });
    return conds(o).length ? o : undefined;
  });
  assert.ok(!isReady(wrong));
  assert.deepEqual(
    conds(wrong).map((c) => [c.type, c.reason, c.category]),
    [['SourceNetworkNotValid', 'NotFound', 'Critical']],
  );

  // "web" already exists in the target namespace; DB_Server.prod gets a newName and its disk is larger than fk-small allows.
  await v.client.create(VMS, vm('web'), { namespace: TARGET });
  const plan = (name: string, vms: object[]) => fk('Plan', name, planSpec({ provider: providerRefs, targetNamespace: TARGET, vms }));
  await v.client.create(PLANS, plan('all', [{ name: 'web' }, { name: 'DB_Server.prod' }, { name: 'ghost' }]), { namespace: NS });
  const all = await eventually('plan validated', async () => {
    const o = await v.client.get(PLANS, 'all', { namespace: NS });
    return conds(o).some((c) => c.type === 'VMAlreadyExists') ? o : undefined;
  });
  const by = Object.fromEntries(conds(all).map((c) => [c.type, c]));
  assert.equal(by.VMAlreadyExists.category, 'Critical');
  assert.match(by.VMAlreadyExists.items![0], /name:'web'/);
  assert.equal(by.TargetNameNotValid.category, 'Warn');
  assert.match(by.TargetNameNotValid.items![0], /newName:'db-server-prod'/);
  assert.equal(by.InvalidDiskSizes.category, 'Critical');
  assert.match(by.InvalidDiskSizes.items![0], /DB_Server\.prod/);
  assert.deepEqual(by.VMNotFound.items, ['name:ghost']);
  assert.ok(!isReady(all));

  // Without the conflicts: Ready (the name Warn stays, it does not block).
  await v.client.delete(VMS, 'web', { namespace: TARGET });
  await v.client.create(PLANS, plan('web-only', [{ name: 'web' }]), { namespace: NS });
  const ok = await eventually('plan Ready', async () => {
    const o = await v.client.get(PLANS, 'web-only', { namespace: NS });
    return isReady(o) ? o : undefined;
  });
  assert.ok(!conds(ok).some((c) => c.category === 'Critical'));
  // ImageConversion (a Debian guest): a node without virt-v2v makes it a Warn, the plan stays Ready.
  const nodes = await v.client.list({ group: '', version: 'v1', plural: 'nodes', namespaced: false });
  const v2v = nodes.items.some((n) => n.metadata?.labels?.['vessel.io/virt-v2v']);
  const skipped = conds(ok).find((c) => c.type === 'GuestConversionSkipped');
  if (v2v) assert.equal(skipped, undefined);
  else assert.deepEqual([skipped?.category, skipped?.message, skipped?.items?.length], ['Warn', 'guest conversion skipped: virt-v2v is not installed', 1]);
  // A map that stops being Ready (its StorageClass deleted) takes its plans with it.
  await v.client.delete(SCS, 'fk-big');
  await eventually('plan not Ready with its map', async () => {
    const o = await v.client.get(PLANS, 'web-only', { namespace: NS });
    return conds(o).some((c) => c.type === 'StorageMapNotReady') && !isReady(o) ? o : undefined;
  });
  // The first plan is revalidated when the VM goes away: no VMAlreadyExists any more.
  await eventually('plan revalidated', async () => {
    const o = await v.client.get(PLANS, 'all', { namespace: NS });
    return conds(o).some((c) => c.type === 'VMAlreadyExists') ? undefined : o;
  });
});

test('kubectl sees the kinds (discovery, columns, OpenAPI)', { skip: KUBECTL_SKIP }, async () => {
  const { kubectl, ok } = kubectlFor(() => v);
  const table = await ok(['get', 'providers.forklift.konveyor.io', '-n', NS]);
  assert.match(table, /^NAME\s+TYPE\s+STATUS\s+READY\s+CONNECTED\s+INVENTORY\s+URL\s+AGE/);
  assert.match(table, /\nova\s+ova\s+Ready\s+True\s+True\s+True\s+ova:\/\//);
  assert.match(await ok(['explain', 'plan.spec.vms']), /targetName/);
  const bad = await kubectl(
    ['apply', '-n', NS, '-f', '-'],
    JSON.stringify(fk('StorageMap', 'bad', { provider: providerRefs, map: [{ source: {}, destination: { storageClass: 'x' } }] })),
  );
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /spec\.map\[0\]\.source/);
});

test('a cold migration: the disk streamed from inside the OVA into a DataVolume, the VM created; per-disk progress', async () => {
  const nadConfig = JSON.stringify({ cniVersion: '0.3.1', name: 'lab', type: 'bridge', bridge: 'br-fklab' });
  await v.client.create(
    NADS,
    { apiVersion: 'k8s.cni.cncf.io/v1', kind: 'NetworkAttachmentDefinition', metadata: { name: 'lab' }, spec: { config: nadConfig } },
    { namespace: TARGET },
  );
  const mapping = [
    { source: { name: 'VM Network' }, destination: { type: 'pod' } },
    { source: { name: 'Lab Net' }, destination: { type: 'multus', name: 'lab', namespace: TARGET } },
  ];
  await v.client.create(NETMAPS, fk('NetworkMap', 'run-net', { provider: providerRefs, map: mapping }), { namespace: NS });
  await v.client.create(
    STORAGEMAPS,
    fk('StorageMap', 'run-disks', { provider: providerRefs, map: [{ source: { name: 'web.ova' }, destination: { storageClass: 'local' } }] }),
    {
      namespace: NS,
    },
  );
  await v.client.create(
    PLANS,
    fk(
      'Plan',
      'run',
      // Its disk is a test pattern, no guest: nothing for virt-v2v to convert.
      planSpec(
        { provider: providerRefs, targetNamespace: TARGET, maps: { network: 'run-net', storage: 'run-disks' }, vms: [{ name: 'web' }] },
        { skipGuestConversion: true },
      ),
    ),
    { namespace: NS },
  );
  await eventually('plan run Ready', async () => (isReady(await v.client.get(PLANS, 'run', { namespace: NS })) ? true : undefined), 60_000);
  const t0 = Date.now();
  await v.client.create(MIGRATIONS, fk('Migration', 'run-1', { plan: { name: 'run', namespace: NS } }), { namespace: NS });
  const m = await eventually(
    'migration finished',
    async () => {
      const o = await v.client.get(MIGRATIONS, 'run-1', { namespace: NS });
      return (o.status as { completed?: string } | undefined)?.completed ? o : undefined;
    },
    180_000,
    500,
  );
  console.log(`cold migration of one 64 MiB disk: ${Date.now() - t0} ms`);
  type VmS = {
    phase: string;
    error?: unknown;
    pipeline: {
      name: string;
      phase: string;
      progress: { total: number; completed: number };
      tasks?: { name: string; phase: string; progress: { total: number; completed: number } }[];
    }[];
  };
  const st = m.status as { vms: VmS[] };
  assert.ok(
    conds(m).some((c) => c.type === 'Succeeded' && c.status === 'True'),
    JSON.stringify(m.status),
  );
  const vmStatus = st.vms[0];
  assert.equal(vmStatus.phase, 'Completed', JSON.stringify(vmStatus.error));
  assert.deepEqual(
    vmStatus.pipeline.map((p) => [p.name, p.phase]),
    [
      ['Initialize', 'Completed'],
      ['DiskTransfer', 'Completed'],
      ['VirtualMachineCreation', 'Completed'],
    ],
  );
  const task = vmStatus.pipeline[1].tasks![0];
  assert.deepEqual([task.name, task.phase, task.progress], ['web-disk0', 'Completed', { total: 68, completed: 68 }]);
  const plan = await v.client.get(PLANS, 'run', { namespace: NS });
  assert.equal(((plan.status as { migration?: { vms?: VmS[] } }).migration?.vms ?? [])[0]?.phase, 'Completed');
  assert.ok(isReady(plan), 'the VM the plan made is not a conflict');
  // The disk holds the source's bytes.
  const pvc = await v.client.get(PVCS, 'web-disk0', { namespace: TARGET });
  const volume = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', join(dir, 'src', 'web.qcow2'), volume]);
  assert.equal(cmp.code, 0, cmp.out + cmp.err);
  // Read in place from the package by the agent (its OVA root is the server's), not uploaded (issue 14).
  const dvEvents = (await v.client.list(EVENTS, { namespace: TARGET })).items.filter(
    (e) => (e as { involvedObject?: { kind?: string; name?: string } }).involvedObject?.name === 'web-disk0',
  ) as { reason?: string; message?: string }[];
  assert.ok(
    dvEvents.some((e) => e.reason === 'ImportInProgress' && /OVA package in place/.test(e.message ?? '')),
    JSON.stringify(dvEvents.map((e) => [e.reason, e.message])),
  );
  // The VM: the OVF's CPUs, memory, firmware, NICs with their MACs on the mapped networks, the disk.
  const made = await v.client.get(VMS, 'web', { namespace: TARGET });
  const spec = (made.spec as { runStrategy: string; template: { spec: Record<string, unknown> } }).template.spec as {
    domain: { cpu: unknown; resources: unknown; firmware: unknown; devices: { interfaces: { name: string; macAddress?: string }[] } };
    networks: unknown[];
    volumes: unknown[];
  };
  assert.equal((made.spec as { runStrategy: string }).runStrategy, 'Halted');
  assert.deepEqual(spec.domain.cpu, { cores: 2 });
  assert.deepEqual(spec.domain.resources, { requests: { memory: '512Mi' } });
  assert.deepEqual((spec.domain.firmware as { bootloader: unknown }).bootloader, { efi: { secureBoot: false } });
  assert.deepEqual(
    spec.domain.devices.interfaces.map((i) => i.macAddress),
    ['00:50:56:00:00:00', '00:50:56:00:00:01'],
  );
  assert.deepEqual(spec.networks, [
    { name: 'net0', pod: {} },
    { name: 'net1', multus: { networkName: `${TARGET}/lab` } },
  ]);
  assert.deepEqual(spec.volumes, [{ name: 'disk0', dataVolume: { name: 'web-disk0' } }]);
  assert.equal(((await v.client.get(DVS, 'web-disk0', { namespace: TARGET })).status as { phase: string }).phase, 'Succeeded');
});
