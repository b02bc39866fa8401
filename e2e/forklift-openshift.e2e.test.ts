/**
 * Forklift's `openshift` provider, cold, against a real server (docs/forklift.md, "The openshift
 * provider"); no guest boots. A source namespace holds a stopped VM (2 cores, 96Mi, a NIC on
 * the pod network with a MAC) whose DataVolume holds a small qcow2 made here. A Provider of type
 * openshift with `url` = this server and a token Secret (so the remote code path runs), the host
 * provider (empty url) and one with a wrong token (ConnectionFailed, Unauthorized); the
 * inventory through `vessel inventory`; a NetworkMap `{type: pod}` and StorageMap `{name:
 * local}`; a cold plan into another namespace and its Migration: Succeeded with a DiskTransfer
 * task per disk, the target VM with the source's CPUs and memory (its MAC dropped: the source
 * VM, in this same cluster, has it), the volume's contents equal to the source's (sha256 of the
 * raw bytes), the export deleted, the source VM left stopped.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject } from '@vessel/client';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { forkliftIn, FORKLIFT_REFS, planSpec } from '../packages/controllers/forklift/testdata.ts';

const { DVS, MIGRATIONS, NAMESPACES, NETMAPS, PLANS, PROVIDERS, PVCS, SECRETS, STORAGEMAPS, VMEXPORTS, VMS } = FORKLIFT_REFS;
const SRC = 'fkos-src';
const NS = 'fkos';
const TARGET = 'fkos-target';
const MAC = '02:00:00:0a:0b:0c';

let v: Vessel;
let dir: string;
/** A TCP forwarder to the API server: the "other cluster's" address (the importer may not fetch from the API server's own). */
let forwarder: Server;
let sourceSum = '';
const started = performance.now();

type Cond = { type: string; status: string; reason?: string; category?: string; message?: string };
type Task = { name: string; phase: string; progress: { total: number; completed: number } };
type VmS = { name: string; phase: string; conditions?: Cond[]; error?: unknown; pipeline: { name: string; phase: string; tasks?: Task[] }[] };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];
const isReady = (o: KubeObject) => conds(o).some((c) => c.type === 'Ready' && c.status === 'True');
const fk = forkliftIn(NS);
const b64 = (s: string) => Buffer.from(s).toString('base64');

/** sha256 of a qcow2's guest-visible bytes. */
async function rawSum(qcow2: string, name: string): Promise<string> {
  const out = join(dir, `${name}.raw`);
  const r = await run('qemu-img', ['convert', '-U', '-O', 'raw', qcow2, out]);
  assert.equal(r.code, 0, r.err);
  const sum = createHash('sha256')
    .update(await readFile(out))
    .digest('hex');
  await rm(out, { force: true });
  return sum;
}

before(async () => {
  // The importer fetches from the forwarder on loopback (a remote cluster in production).
  v = await startVessel({ agent: { nodeName: 'node-a', allowLoopbackImports: true } });
  const api = new URL(v.client.config.server);
  forwarder = createServer((c) => {
    const up = connect(Number(api.port), api.hostname);
    c.pipe(up).pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => forwarder.listen(0, '127.0.0.1', r));
  dir = await mkdtemp(join(tmpdir(), 'fkos-e2e-'));
  for (const ns of [SRC, NS, TARGET]) await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  // A 32 MiB image with data in two places and holes between.
  const img = join(dir, 'disk.qcow2');
  assert.equal((await run('qemu-img', ['create', '-f', 'qcow2', img, '32M'])).code, 0);
  const io = await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0x5c 20M 512k', img]);
  assert.equal(io.code, 0, io.err);
  sourceSum = await rawSum(img, 'src');
  const up = await run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', SRC, 'image-upload', 'dv', 'src-disk', '--image-path', img, '--size', '32Mi'], {
    timeoutMs: 180_000,
  });
  assert.equal(up.code, 0, up.err + up.out);
  await v.client.create(
    VMS,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      metadata: { name: 'src-vm', namespace: SRC },
      spec: {
        runStrategy: 'Halted',
        template: {
          spec: {
            domain: {
              cpu: { cores: 2 },
              resources: { requests: { memory: '96Mi' } },
              devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }], interfaces: [{ name: 'default', masquerade: {}, macAddress: MAC }] },
            },
            networks: [{ name: 'default', pod: {} }],
            volumes: [{ name: 'root', dataVolume: { name: 'src-disk' } }],
          },
        },
      },
    },
    { namespace: SRC },
  );
  const secret = (name: string, token: string) => ({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace: NS },
    data: { token: b64(token), cacert: b64(v.client.config.caPem ?? '') },
  });
  await v.client.create(SECRETS, secret('src-token', v.client.config.token ?? ''), { namespace: NS });
  await v.client.create(SECRETS, secret('bad-token', 'not-a-token'), { namespace: NS });
  const server = v.client.config.server;
  const fwd = `https://127.0.0.1:${(forwarder.address() as { port: number }).port}`;
  const tok = { name: 'src-token', namespace: NS };
  await v.client.create(PROVIDERS, fk('Provider', 'remote', { type: 'openshift', url: fwd, secret: tok }), { namespace: NS });
  await v.client.create(PROVIDERS, fk('Provider', 'local', { type: 'openshift', url: server, secret: tok }), { namespace: NS });
  await v.client.create(PROVIDERS, fk('Provider', 'host', { type: 'openshift', url: '', secret: {} }), { namespace: NS });
  await v.client.create(PROVIDERS, fk('Provider', 'bad', { type: 'openshift', url: server, secret: { name: 'bad-token', namespace: NS } }), { namespace: NS });
});

after(async () => {
  for (const ns of [SRC, NS, TARGET]) await v.client.delete(NAMESPACES, ns).catch(() => undefined);
  await eventually(
    'namespaces gone',
    async () => ((await v.client.list(NAMESPACES)).items.some((n) => [SRC, NS, TARGET].includes(n.metadata!.name!)) ? undefined : true),
    60_000,
  ).catch(() => undefined);
  await v.close();
  forwarder?.close();
  await rm(dir, { recursive: true, force: true });
  console.log(`# forklift-openshift.e2e.test.ts: ${((performance.now() - started) / 1000).toFixed(1)} s`);
});

test('openshift providers: remote Ready with fingerprint and inventory, host Ready, wrong token ConnectionFailed', async () => {
  const t0 = Date.now();
  const remote = await eventually(
    'remote Ready',
    async () => {
      const p = await v.client.get(PROVIDERS, 'remote', { namespace: NS });
      return (p.status as { phase?: string } | undefined)?.phase === 'Ready' ? p : undefined;
    },
    60_000,
  );
  console.log(`# remote provider Ready in ${Date.now() - t0} ms`);
  const st = remote.status as { fingerprint?: string; inventory?: Record<string, number> };
  assert.match(st.fingerprint ?? '', /^([0-9A-F]{2}:){19}[0-9A-F]{2}$/);
  assert.equal(st.inventory?.vms, 1, JSON.stringify(st.inventory));
  const host = await eventually('host Ready', async () => {
    const p = await v.client.get(PROVIDERS, 'host', { namespace: NS });
    return (p.status as { phase?: string } | undefined)?.phase === 'Ready' ? p : undefined;
  });
  // The host provider reads its own namespace only (none of the source's VMs).
  assert.equal((host.status as { inventory?: { vms: number } }).inventory?.vms, 0);
  const bad = await eventually('bad ConnectionFailed', async () => {
    const p = await v.client.get(PROVIDERS, 'bad', { namespace: NS });
    return (p.status as { phase?: string } | undefined)?.phase === 'ConnectionFailed' ? p : undefined;
  });
  assert.ok(
    conds(bad).some((c) => c.type === 'ConnectionTestFailed' && c.category === 'Critical' && c.reason === 'Unauthorized'),
    JSON.stringify(conds(bad)),
  );
  const inv = await run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', NS, 'inventory', 'remote', 'vms'], { timeoutMs: 60_000 });
  assert.equal(inv.code, 0, inv.err);
  assert.match(inv.out, /src-vm\s+\S+\s+2\s+96Mi\s+bios\s+0\.03Gi\s+pod/);
  const storage = await run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', NS, 'inventory', 'remote', 'storage'], { timeoutMs: 60_000 });
  assert.equal(storage.code, 0, storage.err);
  assert.match(storage.out, /local/);
});

/** Runs a cold plan of the source VM from `provider` as `target`; asserts what a migration must give. */
async function migrate(provider: string, plan: string, target: string): Promise<VmS> {
  const refs = { source: { name: provider, namespace: NS }, destination: { name: 'host', namespace: NS } };
  await v.client.create(NETMAPS, fk('NetworkMap', `net-${plan}`, { provider: refs, map: [{ source: { type: 'pod' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  await v.client.create(
    STORAGEMAPS,
    fk('StorageMap', `disks-${plan}`, { provider: refs, map: [{ source: { name: 'local' }, destination: { storageClass: 'local' } }] }),
    { namespace: NS },
  );
  await v.client.create(
    PLANS,
    fk(
      'Plan',
      plan,
      planSpec({
        provider: refs,
        targetNamespace: TARGET,
        maps: { network: `net-${plan}`, storage: `disks-${plan}`, namespace: NS },
        vms: [{ name: 'src-vm', namespace: SRC, targetName: target }],
      }),
    ),
    { namespace: NS },
  );
  await eventually(`plan ${plan} Ready`, async () => (isReady(await v.client.get(PLANS, plan, { namespace: NS })) ? true : undefined), 60_000).catch(
    async (e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(conds(await v.client.get(PLANS, plan, { namespace: NS })))}`);
    },
  );
  const t0 = Date.now();
  await v.client.create(MIGRATIONS, fk('Migration', `${plan}-1`, { plan: { name: plan, namespace: NS } }), { namespace: NS });
  let exportSeen = false;
  const m = await eventually(
    `migration ${plan} finished`,
    async () => {
      exportSeen ||= (await v.client.list(VMEXPORTS, { namespace: SRC })).items.length > 0;
      const o = await v.client.get(MIGRATIONS, `${plan}-1`, { namespace: NS });
      return (o.status as { completed?: string } | undefined)?.completed ? o : undefined;
    },
    120_000,
    250,
  );
  console.log(`# openshift cold migration (${provider}) of a 32 MiB disk: ${Date.now() - t0} ms`);
  const vms = (m.status as { vms: VmS[] }).vms;
  assert.ok(
    conds(m).some((c) => c.type === 'Succeeded' && c.status === 'True'),
    JSON.stringify(vms.map((x) => x.error ?? x.phase)),
  );
  assert.ok(exportSeen, 'a VirtualMachineExport was made');
  assert.deepEqual(
    vms[0].pipeline.map((p) => [p.name, p.phase]),
    [
      ['Initialize', 'Completed'],
      ['DiskTransfer', 'Completed'],
      ['VirtualMachineCreation', 'Completed'],
    ],
  );
  const tasks = vms[0].pipeline.find((p) => p.name === 'DiskTransfer')!.tasks!;
  assert.deepEqual(
    tasks.map((t) => [t.name, t.phase, t.progress.completed === t.progress.total && t.progress.total > 0]),
    [[`${target}-disk0`, 'Completed', true]],
  );
  // The target: the source's CPUs and memory, its disk on the transferred DataVolume; the MAC
  // dropped (the source VM here has it); Halted (targetPowerState auto, the source was stopped).
  const vm = await v.client.get(VMS, target, { namespace: TARGET });
  const spec = vm.spec as {
    runStrategy: string;
    template: {
      spec: {
        domain: { cpu: { cores: number }; resources: { requests: { memory: string } }; devices: { interfaces: Record<string, unknown>[] } };
        volumes: unknown[];
        networks: unknown[];
      };
    };
  };
  assert.equal(spec.runStrategy, 'Halted');
  assert.equal(spec.template.spec.domain.cpu.cores, 2);
  assert.equal(spec.template.spec.domain.resources.requests.memory, '96Mi');
  assert.deepEqual(spec.template.spec.volumes, [{ name: 'root', dataVolume: { name: `${target}-disk0` } }]);
  assert.deepEqual(spec.template.spec.networks, [{ name: 'default', pod: {} }]);
  assert.deepEqual(spec.template.spec.domain.devices.interfaces, [{ name: 'default', masquerade: {} }]);
  assert.equal(vm.metadata?.labels?.['forklift.konveyor.io/plan'], plan);
  // The bytes: the target volume's guest-visible content equals the source image's.
  const pvc = await v.client.get(PVCS, `${target}-disk0`, { namespace: TARGET });
  const path = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  assert.equal(await rawSum(path, target), sourceSum);
  // The export is gone (and the header Secret and CA ConfigMap of an import); the source VM stays stopped.
  assert.deepEqual((await v.client.list(VMEXPORTS, { namespace: SRC })).items, []);
  assert.deepEqual(
    (await v.client.list(SECRETS, { namespace: TARGET })).items.filter((s) => s.metadata?.name?.endsWith('-hdr')),
    [],
  );
  const src = await v.client.get(VMS, 'src-vm', { namespace: SRC });
  assert.equal((src.spec as { runStrategy?: string }).runStrategy, 'Halted');
  return vms[0];
}

test('cold from another cluster: the node imports each disk from the export link (token header, export CA); the VM from the source spec', async () => {
  const dv = await migrate('remote', 'os', 'src-vm');
  assert.equal(dv.phase, 'Completed');
  const d = await v.client.get(DVS, 'src-vm-disk0', { namespace: TARGET });
  const http = (d.spec as { source: { http?: { url: string; secretExtraHeaders?: string[]; certConfigMap?: string } } }).source.http;
  assert.ok(http?.url.includes('/api/export.kubevirt.io/v1beta1/namespaces/fkos-src/'), JSON.stringify(d.spec));
  assert.equal(http?.secretExtraHeaders?.length, 1);
  assert.ok(http?.certConfigMap);
});

test('cold from this cluster through its URL: the export streamed into an upload DataVolume', async () => {
  await migrate('local', 'os2', 'copy2');
  const d = await v.client.get(DVS, 'copy2-disk0', { namespace: TARGET });
  assert.deepEqual((d.spec as { source: unknown }).source, { upload: {} });
});
