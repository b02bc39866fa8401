/**
 * VirtualMachineExport end to end (real server, controllers and agent; no guest boots): a
 * DataVolume uploaded from a small qcow2 made here, a stopped VM using it, an export of the VM
 * made with kubectl: Ready with KubeVirt's links; `vessel vmexport download` of raw and gzip
 * equal the image's bytes (sha256); a missing or wrong token is a 401 and one export's token
 * opens no other namespace's export; a tenant cannot export another namespace's VM; the VM
 * stays Stopped while the export is Ready; a short ttl deletes the export; an export of a VM
 * whose VMI exists stays Pending and says why; an export of an (offline) snapshot serves its volume.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { get as httpsGet } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { after, before, test } from 'node:test';
import { Client, type KubeObject } from '@vessel/client';
import { refs } from '@vessel/api';
import { eventually, run, startVessel, type Vessel } from './harness.ts';

const { NAMESPACES, SECRETS, VMEXPORTS, VMIS, VMS } = refs;
const A = 'export-a';
const B = 'export-b';
const MiB = 1 << 20;
const SIZE = 32 * MiB;
let v: Vessel;
let dir: string;
let expected: Buffer;

const started = performance.now();
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 180_000 });
const kubectl = (args: string[], input?: string) => run('kubectl', ['--kubeconfig', v.kubeconfig, ...args], { input, timeoutMs: 60_000 });
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
type Obj = Record<string, unknown>;
type Status = {
  phase?: string;
  tokenSecretRef?: string;
  conditions?: { type: string; reason?: string; message?: string }[];
  links?: { external?: { cert: string; volumes: { name: string; formats: { format: string; url: string }[] }[]; manifests: { type: string; url: string }[] } };
};
const statusOf = async (ns: string, name: string) => ((await v.client.get(VMEXPORTS, name, { namespace: ns })).status ?? {}) as Status;
const waitPhase = (ns: string, name: string, phase: string, reason?: string) =>
  eventually(
    `${ns}/${name} ${phase}${reason ? ` (${reason})` : ''}`,
    async () => {
      const s = await statusOf(ns, name).catch(() => ({}) as Status);
      return s.phase === phase && (!reason || s.conditions?.find((c) => c.type === 'Ready')?.reason === reason) ? s : undefined;
    },
    60_000,
  );

function exportYaml(ns: string, name: string, kind: string, source: string, extra = ''): string {
  const group = kind === 'VirtualMachine' ? 'kubevirt.io' : '""';
  return `apiVersion: export.kubevirt.io/v1beta1
kind: VirtualMachineExport
metadata:
  name: ${name}
  namespace: ${ns}
spec:
  source:
    apiGroup: ${group}
    kind: ${kind}
    name: ${source}
${extra}`;
}

const stoppedVm = (name: string, extra: Obj = {}, template: Obj = {}): KubeObject => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachine',
  metadata: { name },
  spec: {
    runStrategy: 'Halted',
    ...extra,
    template: {
      spec: {
        ...template,
        domain: { devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] }, resources: { requests: { memory: '64Mi' } } },
        volumes: [{ name: 'root', dataVolume: { name: 'disk' } }],
      },
    },
  },
});

/** GET with `headers`; resolves with the status code and the body (at most a few bytes read). */
function fetchCode(url: string, cert: string, headers: Record<string, string> = {}): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsGet(url, { ca: cert, headers }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        if (body.length < 4096) body += c.toString('utf8');
        if (res.statusCode === 200) res.destroy(); // a disk: its first bytes are enough
      });
      res.on('close', () => resolve({ code: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

const tokenOf = async (ns: string, secret: string) =>
  Buffer.from(String(((await v.client.get(SECRETS, secret, { namespace: ns })).data as Record<string, string>).token), 'base64').toString('utf8');

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  dir = await mkdtemp(join(tmpdir(), 'vessel-export-'));
  for (const ns of [A, B]) await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  // An image with data in two places and holes between: the raw export must give them back, zeros included.
  const img = join(dir, 'disk.qcow2');
  assert.equal((await run('qemu-img', ['create', '-f', 'qcow2', img, String(SIZE)])).code, 0);
  const io = await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0x5c 20M 512k', img]);
  assert.equal(io.code, 0, io.err);
  expected = Buffer.alloc(SIZE);
  expected.fill(0xab, 0, MiB);
  expected.fill(0x5c, 20 * MiB, 20 * MiB + 512 * 1024);
  const up = await vessel('-n', A, 'image-upload', 'dv', 'disk', '--image-path', img, '--size', '32Mi');
  assert.equal(up.code, 0, up.err + up.out);
  await v.client.create(VMS, stoppedVm('vm1'), { namespace: A });
});

after(async () => {
  for (const ns of [A, B]) await v.client.delete(NAMESPACES, ns).catch(() => undefined);
  await eventually(
    'namespaces gone',
    async () => ((await v.client.list(NAMESPACES)).items.some((n) => [A, B].includes(n.metadata!.name!)) ? undefined : true),
    60_000,
  ).catch(() => undefined);
  await v.close();
  await rm(dir, { recursive: true, force: true });
  console.log(`# vmexport.e2e.test.ts: ${((performance.now() - started) / 1000).toFixed(1)} s`);
});

test('an export of a stopped VM is Ready; raw and gzip downloads equal the volume; the VM cannot start meanwhile', async () => {
  const r = await kubectl(['apply', '-f', '-'], exportYaml(A, 'ex1', 'VirtualMachine', 'vm1'));
  assert.equal(r.code, 0, r.err);
  const s = await waitPhase(A, 'ex1', 'Ready');
  const ext = s.links!.external!;
  assert.deepEqual(
    ext.volumes.map((vol) => [vol.name, vol.formats.map((f) => f.format)]),
    [['disk', ['raw', 'gzip']]],
  );
  assert.match(ext.volumes[0].formats[0].url, /\/api\/export\.kubevirt\.io\/v1beta1\/namespaces\/export-a\/ex1\/volumes\/disk\/disk\.img$/);
  assert.match(ext.cert, /BEGIN CERTIFICATE/);
  const got = await kubectl(['get', 'vmexport', '-n', A]);
  assert.match(got.out, /ex1\s+VirtualMachine\s+vm1\s+Ready/);

  const t0 = performance.now();
  const raw = join(dir, 'raw.img');
  const d1 = await vessel('-n', A, 'vmexport', 'download', 'ex1', '--output', raw, '--format', 'raw');
  assert.equal(d1.code, 0, d1.err + d1.out);
  const rawMs = performance.now() - t0;
  const rawBytes = await readFile(raw);
  assert.equal(rawBytes.length, SIZE);
  assert.equal(sha(rawBytes), sha(expected), 'the raw export is the volume, byte for byte');

  const t1 = performance.now();
  const gz = join(dir, 'disk.img.gz');
  const d2 = await vessel('-n', A, 'vmexport', 'download', 'ex1', '--output', gz, '--volume', 'disk');
  assert.equal(d2.code, 0, d2.err + d2.out);
  const gzMs = performance.now() - t1;
  const gzBytes = await readFile(gz);
  assert.equal(sha(gunzipSync(gzBytes)), sha(expected), 'the gzip export unpacks to the volume');
  console.log(`# vmexport: 32 MiB volume: raw download ${rawMs.toFixed(0)} ms, gzip ${gzMs.toFixed(0)} ms (${gzBytes.length} bytes)`);

  // The manifests: the VM and a DataVolume importing the gzip URL; the header Secret.
  const token = await tokenOf(A, s.tokenSecretRef!);
  const all = await fetchCode(ext.manifests.find((m) => m.type === 'all')!.url, ext.cert, { 'x-kubevirt-export-token': token });
  assert.equal(all.code, 200);
  assert.match(all.body, /kind: VirtualMachine\n/);
  assert.match(all.body, /kind: DataVolume[\s\S]*url: .*\/volumes\/disk\/disk\.img\.gz/);
  const secret = await fetchCode(ext.manifests.find((m) => m.type === 'auth-header-secret')!.url, ext.cert, { 'x-kubevirt-export-token': token });
  assert.match(secret.body, new RegExp(`token: x-kubevirt-export-token:${token}`));

  // Asked to run while the export is Ready, the VM stays Stopped and says why.
  await v.client.patch(VMS, 'vm1', { spec: { runStrategy: 'Always' } }, { namespace: A });
  await eventually(
    'vm1 held by the export',
    async () => {
      const vm = await v.client.get(VMS, 'vm1', { namespace: A });
      const st = vm.status as { printableStatus?: string; conditions?: { type: string; reason?: string }[] } | undefined;
      return st?.printableStatus === 'Stopped' && st.conditions?.some((c) => c.reason === 'VMExportInProgress') ? true : undefined;
    },
    30_000,
  );
  assert.equal(await v.client.get(VMIS, 'vm1', { namespace: A }).catch(() => undefined), undefined);
  await v.client.patch(VMS, 'vm1', { spec: { runStrategy: 'Halted' } }, { namespace: A });
});

test("a missing or wrong token is a 401; one export's token opens no other; a tenant cannot export another namespace's VM", async () => {
  const s = await statusOf(A, 'ex1');
  const ext = s.links!.external!;
  const url = ext.volumes[0].formats[0].url;
  const token = await tokenOf(A, s.tokenSecretRef!);
  assert.equal((await fetchCode(url, ext.cert)).code, 401, 'no token');
  assert.equal((await fetchCode(url, ext.cert, { 'x-kubevirt-export-token': 'wrong' })).code, 401, 'wrong token');
  assert.equal((await fetchCode(`${url}?x-kubevirt-export-token=${token.slice(1)}`, ext.cert)).code, 401, 'a near miss in the query');
  assert.equal((await fetchCode(`${url}?x-kubevirt-export-token=${encodeURIComponent(token)}`, ext.cert)).code, 200, 'the token as query parameter');

  // Tenant B: an export in B names B's objects only, so A's VM is not found; B may not create one in A.
  const tb = await v.client.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user: 'bob', groups: [`vessel:tenant:${B}`] } });
  const bob = new Client({ ...v.client.config, token: tb.token });
  try {
    const mk = (ns: string) =>
      bob.create(
        VMEXPORTS,
        {
          apiVersion: 'export.kubevirt.io/v1beta1',
          kind: 'VirtualMachineExport',
          metadata: { name: 'ex1' },
          spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm1' } },
        },
        { namespace: ns },
      );
    await assert.rejects(mk(A), (e: Error & { code?: number }) => e.code === 403);
    await mk(B);
    const sb = await waitPhase(B, 'ex1', 'Pending', 'VMNotFound');
    assert.equal(sb.links, undefined);
    // A's token on B's export of the same name: refused.
    const bUrl = url.replace(`/namespaces/${A}/`, `/namespaces/${B}/`);
    assert.equal((await fetchCode(bUrl, ext.cert, { 'x-kubevirt-export-token': token })).code, 401, "A's token on B's export");
  } finally {
    bob.close();
  }
});

test('a short ttl deletes the export and its token Secret', async () => {
  assert.equal((await kubectl(['apply', '-f', '-'], exportYaml(A, 'short', 'PersistentVolumeClaim', 'disk', '  ttlDuration: 3s\n'))).code, 0);
  const s = await waitPhase(A, 'short', 'Ready');
  const t0 = performance.now();
  await eventually('short deleted', async () => ((await v.client.get(VMEXPORTS, 'short', { namespace: A }).catch(() => undefined)) ? undefined : true), 30_000);
  console.log(`# vmexport: ttl 3s export gone ${((performance.now() - t0) / 1000).toFixed(1)} s after it was seen Ready`);
  await eventually(
    'token Secret collected',
    async () => ((await v.client.get(SECRETS, s.tokenSecretRef!, { namespace: A }).catch(() => undefined)) ? undefined : true),
    30_000,
  );
});

test('an export of a VM whose VMI exists stays Pending with the reason', async () => {
  await kubectl(['delete', 'vmexport', 'ex1', '-n', A]);
  // Never placed (no node matches), so no guest boots; its VMI holds the disk all the same.
  await v.client.create(VMS, stoppedVm('vm2', { runStrategy: 'Always' }, { nodeSelector: { 'example.com/nowhere': 'true' } }), { namespace: A });
  await eventually('vm2 VMI', async () => v.client.get(VMIS, 'vm2', { namespace: A }).catch(() => undefined), 30_000);
  assert.equal((await kubectl(['apply', '-f', '-'], exportYaml(A, 'ex2', 'VirtualMachine', 'vm2'))).code, 0);
  const s = await waitPhase(A, 'ex2', 'Pending', 'InUse');
  assert.match(s.conditions!.find((c) => c.type === 'Ready')!.message!, /VirtualMachine vm2 is running: the export waits until it is stopped/);
  const d = await vessel('-n', A, 'vmexport', 'download', 'ex2', '--output', join(dir, 'never.img'), '--timeout', '2');
  assert.notEqual(d.code, 0);
  assert.match(d.err + d.out, /not Ready after 2 s: Pending \(InUse/);
  await v.client.delete(VMS, 'vm2', { namespace: A });
});

test("an export of a VirtualMachineSnapshot serves the snapshot's volumes", async () => {
  const snap = await vessel('-n', A, 'snapshot', 'vm1', 'snap1');
  assert.equal(snap.code, 0, snap.err + snap.out);
  assert.equal(
    (await kubectl(['apply', '-f', '-'], exportYaml(A, 'ex3', 'VirtualMachineSnapshot', 'snap1').replace('apiGroup: ""', 'apiGroup: snapshot.kubevirt.io')))
      .code,
    0,
  );
  const s = await waitPhase(A, 'ex3', 'Ready');
  assert.deepEqual(
    s.links!.external!.volumes.map((vol) => vol.name),
    ['disk'],
  );
  const raw = join(dir, 'snap.img');
  const d = await vessel('-n', A, 'vmexport', 'download', 'ex3', '--output', raw, '--format', 'raw');
  assert.equal(d.code, 0, d.err + d.out);
  assert.equal(sha(await readFile(raw)), sha(expected), "the snapshot's volume, byte for byte");
  const leftovers = (await readdir(v.dataDir, { recursive: true })).filter((f) => String(f).includes('.export-'));
  assert.deepEqual(leftovers, [], 'no temporary raw file stays in the pools');
});
