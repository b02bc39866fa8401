/**
 * Disks and images end to end: a real server, controllers and node agent in this process,
 * real qemu-img, a loopback HTTP server and Debian's docker-registry. Every import is checked
 * the way a user would: the DataVolume says Succeeded, the claim is Bound with its capacity,
 * and the volume's guest-visible content equals the source (`qemu-img compare`).
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { backingFile, qemuImg } from '@vessel/agent';
import { Client, StatusError, type KubeObject, type ResourceRef } from '@vessel/client';
import { gzipFile, makeRawDisk, MiB, sh, startServer, type TestServer } from '../packages/agent/storage/testing.ts';
import { pushDiskImage, startRegistry } from '../packages/agent/storage/testing-registry.ts';
import { uploadImage } from '../packages/cli/upload.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';

const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const DS: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datasources', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const NS: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };

type Obj = Record<string, unknown>;
const status = (o: KubeObject) =>
  (o.status ?? {}) as { phase?: string; progress?: string; conditions?: { type: string; status: string; reason?: string; message?: string }[]; capacity?: Obj };
const path = (o: KubeObject) => (o.metadata?.annotations as Record<string, string> | undefined)?.['vessel.io/volume-path'];

let v: Vessel;
let http: TestServer;
let dir: string;
let raw: string;

function dataVolume(name: string, source: Obj, size = '128Mi', extra: Obj = {}): KubeObject {
  return {
    apiVersion: 'cdi.kubevirt.io/v1beta1',
    kind: 'DataVolume',
    metadata: { name, ...extra },
    spec: { source, storage: { resources: { requests: { storage: size } } } },
  };
}

async function waitDv(name: string, phases: string[], namespace = 'default', client: Client = v.client, timeoutMs = 60_000): Promise<KubeObject> {
  return eventually(
    `DataVolume ${namespace}/${name} to be ${phases.join(' or ')}`,
    async () => {
      const dv = await client.get(DV, name, { namespace });
      return phases.includes(status(dv).phase ?? '') ? dv : undefined;
    },
    timeoutMs,
  );
}

async function boundClaim(name: string, namespace = 'default'): Promise<KubeObject> {
  return eventually(`claim ${namespace}/${name} Bound`, async () => {
    const pvc = await v.client.get(PVC, name, { namespace });
    return status(pvc).phase === 'Bound' && path(pvc) ? pvc : undefined;
  });
}

async function assertSameDisk(pvc: KubeObject, original = raw): Promise<void> {
  const r = await qemuImg.compare(original, path(pvc)!, { formatA: 'raw', formatB: 'qcow2' });
  assert.ok(r.identical, `volume ${path(pvc)} differs from ${original}: ${r.message}`);
}

/** Files in the pools other than published volumes: temporaries, parts, uploads. */
async function leftovers(): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else if (!e.name.endsWith('.qcow2')) found.push(e.name);
    }
  };
  await walk(join(v.dataDir, 'pools'));
  return found;
}

const ROTATION_ENV = { VESSEL_MIGRATION_CA_SECONDS: '12', VESSEL_MIGRATION_LEAF_SECONDS: '4', VESSEL_MIGRATION_CERT_OVERLAP_SECONDS: '1' };
/** The agent's Node's migration CA bundle and its leaf on disk, each time either changed (the last test reads them). */
const rotationSeen: { bundle: X509Certificate[]; leaf?: X509Certificate }[] = [];
let rotationTimer: NodeJS.Timeout | undefined;
const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const caKey = (b: X509Certificate[]) => b.map((c) => c.fingerprint256).join(' ');
async function recordRotation(): Promise<void> {
  const node = (await v.client.get({ group: '', version: 'v1', plural: 'nodes', namespaced: false }, 'node-a')) as KubeObject;
  const bundle = (node.metadata?.annotations?.['vessel.io/migration-ca']?.match(PEM_CERT) ?? []).map((p) => new X509Certificate(p));
  const leafPem = (await readFile(join(v.agent!.dataDir, 'migration-ca', 'node.pem'), 'utf8').catch(() => '')).match(PEM_CERT)?.[0];
  const leaf = leafPem ? new X509Certificate(leafPem) : undefined;
  const last = rotationSeen.at(-1);
  if (!last || caKey(last.bundle) !== caKey(bundle) || last.leaf?.fingerprint256 !== leaf?.fingerprint256) rotationSeen.push({ bundle, leaf });
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-storage-'));
  raw = join(dir, 'disk.raw');
  await makeRawDisk(raw, 64 * MiB);
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'disk.qcow2')]);
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, join(dir, 'disk.vmdk')]);
  await gzipFile(raw, join(dir, 'disk.raw.gz'));
  // Hostile and broken images.
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd', join(dir, 'backing.qcow2'), '64M']);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'huge.qcow2'), '10G']);
  // A qcow2 whose L1 table (header offset 40) points past the end of the file.
  const corrupt = await readFile(join(dir, 'disk.qcow2'));
  corrupt.writeBigUInt64BE(0x7fff0000n, 40);
  await writeFile(join(dir, 'corrupt.qcow2'), corrupt);
  http = await startServer(dir);
  // The test's http server and registry are on loopback: the administrator's override allows them.
  // Migration certificates of seconds (this file migrates nothing): the last test sees a whole CA rotation.
  Object.assign(process.env, ROTATION_ENV);
  v = await startVessel({ agent: { nodeName: 'node-a', allowLoopbackImports: true } });
  rotationTimer = setInterval(() => void recordRotation().catch(() => undefined), 200);
});

after(async () => {
  clearInterval(rotationTimer);
  for (const k of Object.keys(ROTATION_ENV)) delete process.env[k];
  // The test server closed whatever else fails: its listener would keep this file's process alive.
  try {
    await v?.close();
  } finally {
    await http?.close();
    await rm(dir, { recursive: true, force: true });
  }
});

describe('http import', () => {
  for (const file of ['disk.qcow2', 'disk.vmdk', 'disk.raw.gz']) {
    test(`${file}: Succeeded, Bound with capacity, same content, with Events`, async () => {
      const name = `http-${file.replace(/\W/g, '-')}`;
      await v.client.create(DV, dataVolume(name, { http: { url: http.file(file) } }));
      const dv = await waitDv(name, ['Succeeded', 'Failed']);
      assert.equal(status(dv).phase, 'Succeeded', JSON.stringify(status(dv).conditions));
      assert.equal(status(dv).progress, '100.0%');
      const pvc = await boundClaim(name);
      assert.equal(status(pvc).capacity?.storage, '128Mi');
      assert.equal((await qemuImg.info(path(pvc)!, { format: 'qcow2' })).virtualSize, 128 * MiB, 'the volume fills the claim');
      await assertSameDisk(pvc);
      const events = (await v.client.list(EVENTS, { namespace: 'default' })).items.filter((e) => (e.involvedObject as Obj).name === name).map((e) => e.reason);
      for (const r of ['ImportScheduled', 'ImportInProgress', 'ImportSucceeded']) assert.ok(events.includes(r), `Event ${r} in ${events.join(',')}`);
    });
  }

  test('a blank DataVolume and a plain claim get empty volumes of their size', async () => {
    await v.client.create(DV, dataVolume('blank', { blank: {} }, '256Mi'));
    await waitDv('blank', ['Succeeded']);
    await v.client.create(PVC, {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: 'plain', annotations: { 'cdi.kubevirt.io/storage.bind.immediate.requested': 'true' } },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '32Mi' } } },
    });
    for (const [name, size] of [
      ['blank', 256 * MiB],
      ['plain', 32 * MiB],
    ] as const) {
      const pvc = await boundClaim(name);
      assert.equal((await qemuImg.info(path(pvc)!, { format: 'qcow2' })).virtualSize, size);
      assert.equal((pvc.spec as Obj).storageClassName, 'local', 'the default class was filled in');
    }
  });
});

describe('hostile and broken images are refused and leave nothing behind', () => {
  const cases: [string, Obj, string, Obj?][] = [
    ['backing-file', { http: { url: '' } }, 'BackingFileRefused'],
    ['too-large', { http: { url: '' } }, 'TooLarge'],
    ['corrupt', { http: { url: '' } }, 'Corrupt'],
    ['bad-checksum', { http: { url: '' } }, 'ChecksumMismatch', { annotations: { 'cdi.vessel.io/checksum': `sha256:${'0'.repeat(64)}` } }],
  ];
  const files: Record<string, string> = { 'backing-file': 'backing.qcow2', 'too-large': 'huge.qcow2', corrupt: 'corrupt.qcow2', 'bad-checksum': 'disk.qcow2' };
  for (const [name, , reason, extra] of cases) {
    test(`${name}: Failed with reason ${reason}`, async () => {
      await v.client.create(DV, dataVolume(name, { http: { url: http.file(files[name]) } }, '128Mi', extra));
      const dv = await waitDv(name, ['Failed', 'Succeeded']);
      assert.equal(status(dv).phase, 'Failed');
      const ready = status(dv).conditions?.find((c) => c.type === 'Ready');
      assert.equal(ready?.reason, reason, ready?.message);
      assert.ok(ready?.message && ready.message.length > 10, 'a message that says why');
      const pvc = await v.client.get(PVC, name, { namespace: 'default' });
      assert.notEqual(status(pvc).phase, 'Bound');
      assert.equal(path(pvc), undefined, 'no volume recorded');
      const pool = join(v.dataDir, 'pools', 'local', 'default');
      assert.deepEqual(
        (await readdir(pool)).filter((f) => f.startsWith(`${name}-`)),
        [],
        'nothing in the pool',
      );
    });
  }

  test('a truncated download is retried, then shows the restarts', async () => {
    await v.client.create(DV, dataVolume('truncated', { http: { url: http.file('disk.qcow2', 'truncate') } }));
    const dv = await eventually('a restart', async () => {
      const d = await v.client.get(DV, 'truncated', { namespace: 'default' });
      return Number((d.status as Obj | undefined)?.restartCount ?? 0) >= 1 ? d : undefined;
    });
    assert.equal(status(dv).conditions?.find((c) => c.type === 'Running')?.reason, 'Truncated');
    await v.client.delete(DV, 'truncated', { namespace: 'default' });
  });
});

describe('upload', () => {
  test('`vessel image-upload` creates the DataVolume, shows progress, and the volume equals the file', async () => {
    const r = await run(
      'bin/vessel',
      ['--kubeconfig', v.kubeconfig, 'image-upload', 'dv', 'uploaded', '--image-path', join(dir, 'disk.vmdk'), '--size', '128Mi'],
      { timeoutMs: 120_000 },
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /100\.0% 64\.\d MiB|100\.0%/);
    assert.match(r.err, /completed successfully/);
    assert.equal(status(await v.client.get(DV, 'uploaded', { namespace: 'default' })).phase, 'Succeeded');
    await assertSameDisk(await boundClaim('uploaded'));
  });

  test('a dropped upload resumes from the bytes already received', async () => {
    await v.client.create(DV, dataVolume('resumed', { upload: {} }));
    await waitDv('resumed', ['UploadReady']);
    const file = join(dir, 'disk.qcow2');
    // First try: send half the bytes, then drop the connection.
    const { requestUploadToken } = await import('../packages/cli/upload.ts');
    const token = await requestUploadToken(v.client, 'default', 'resumed');
    const size = (await qemuImg.info(file, { format: 'qcow2' })).actualSize ?? 0;
    void size;
    const { createReadStream, statSync } = await import('node:fs');
    const total = statSync(file).size;
    const half = createReadStream(file, { end: Math.floor(total / 2) - 1 });
    const aborter = new AbortController();
    const res = v.client.stream('POST', '/v1beta1/upload', {
      bearer: token,
      body: half,
      signal: aborter.signal,
      headers: { 'Upload-Length': String(total), 'Transfer-Encoding': 'chunked' },
    });
    half.on('end', () => setTimeout(() => aborter.abort(), 300));
    await res.then(
      () => undefined,
      () => undefined,
    );
    const offset = await eventually('the agent to keep the first half', async () => {
      const head = await v.client.stream('HEAD', '/v1beta1/upload', { bearer: token });
      head.resume();
      const o = Number(head.headers['upload-offset']);
      return o > 0 ? o : undefined;
    });
    assert.ok(offset > 0 && offset < total, `offset ${offset} of ${total}`);
    let resumedFrom = -1;
    await uploadImage(v.client, {
      namespace: 'default',
      pvcName: 'resumed',
      file,
      onProgress: (sent) => {
        if (resumedFrom < 0) resumedFrom = sent;
      },
    });
    assert.equal(resumedFrom, offset, 'the second try started where the first stopped');
    await waitDv('resumed', ['Succeeded']);
    await assertSameDisk(await boundClaim('resumed'));
  });

  test("no token for a claim that is no upload target; the agent's refusals reach the client as Status", async () => {
    const { requestUploadToken } = await import('../packages/cli/upload.ts');
    await v.client.create(DV, dataVolume('blank-target', { blank: {} }));
    await eventually("the blank DataVolume's claim", () =>
      v.client.get(PVC, 'blank-target', { namespace: 'default' }).then(
        (p) => p,
        () => undefined,
      ),
    );
    for (const claim of ['blank-target', 'no-such-claim']) {
      const err = await requestUploadToken(v.client, 'default', claim).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof StatusError, `a token for ${claim} is refused: ${err}`);
      if (claim === 'no-such-claim') {
        assert.equal(err.code, 404);
        continue;
      }
      assert.equal(err.code, 422, err.message);
      assert.equal(err.causes[0]?.field, 'spec.pvcName');
      assert.match(err.message, /not an upload target.*blank/);
    }
    // A real upload target, but a resume from bytes the agent never received: its 409 comes back as a Status.
    await v.client.create(DV, dataVolume('wrong-offset', { upload: {} }));
    await waitDv('wrong-offset', ['UploadReady']);
    const token = await requestUploadToken(v.client, 'default', 'wrong-offset');
    const { Readable } = await import('node:stream');
    const res = await v.client.stream('POST', '/v1beta1/upload', {
      bearer: token,
      body: Readable.from([Buffer.from('xxxx')]),
      headers: { 'Upload-Offset': '4096', 'Upload-Length': '8192', 'Content-Length': '4' },
    });
    let text = '';
    for await (const chunk of res) text += chunk;
    assert.equal(res.statusCode, 409, text);
    assert.match(String(res.headers['content-type']), /application\/json/);
    const status = JSON.parse(text) as { kind?: string; code?: number; reason?: string; message?: string };
    assert.equal(status.kind, 'Status', text);
    assert.equal(status.code, 409);
    assert.equal(status.reason, 'Conflict');
    assert.match(status.message ?? '', /resume from 0/);
  });

  test('an upload with a wrong token is refused', async () => {
    const res = await v.client.stream('POST', '/v1beta1/upload', {
      bearer: 'ZGVmYXVsdC9yZXN1bWVk.wrong',
      body: (await import('node:stream')).Readable.from([Buffer.from('x')]),
    });
    const body = await new Response(res as unknown as ReadableStream).text().catch(() => '');
    assert.equal(res.statusCode, 401, body);
  });
});

describe('registry import (docker-registry on loopback)', () => {
  let registry: Awaited<ReturnType<typeof startRegistry>>;
  before(async () => {
    registry = await startRegistry();
  });
  after(async () => {
    await registry?.stop();
  });

  test('a containerDisk image pulled over the OCI API equals the source', async () => {
    await pushDiskImage(registry.url, 'disks/tiny', 'v1', [[{ path: 'disk/disk.qcow2', file: join(dir, 'disk.qcow2') }]]);
    await v.client.create(DV, dataVolume('from-registry', { registry: { url: `docker://${registry.url}/disks/tiny:v1` } }));
    const dv = await waitDv('from-registry', ['Succeeded', 'Failed']);
    assert.equal(status(dv).phase, 'Succeeded', JSON.stringify(status(dv).conditions));
    await assertSameDisk(await boundClaim('from-registry'));
  });
});

describe('golden images and clones', () => {
  test('sourceRef to a DataSource in vessel-images makes a linked clone in O(1); source.pvc a full copy', async () => {
    await v.client.create(DV, dataVolume('golden', { http: { url: http.file('disk.qcow2') } }), { namespace: 'vessel-images' });
    await waitDv('golden', ['Succeeded'], 'vessel-images');
    await v.client.create(
      DS,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataSource',
        metadata: { name: 'golden' },
        spec: { source: { pvc: { name: 'golden', namespace: 'vessel-images' } } },
      },
      { namespace: 'vessel-images' },
    );
    await eventually('DataSource Ready', async () => {
      const ds = await v.client.get(DS, 'golden', { namespace: 'vessel-images' });
      return status(ds).conditions?.find((c) => c.type === 'Ready' && c.status === 'True');
    });
    await v.client.create(DV, {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'vm-disk' },
      spec: { sourceRef: { kind: 'DataSource', name: 'golden', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
    });
    await waitDv('vm-disk', ['Succeeded']);
    const golden = await boundClaim('golden', 'vessel-images');
    const clone = await boundClaim('vm-disk');
    assert.equal(await backingFile(path(clone)!), path(golden), 'a linked clone reads the golden image');
    assert.equal(status(clone).capacity?.storage, '1Gi');
    await assertSameDisk(clone);

    await v.client.create(DV, dataVolume('full-copy', { pvc: { name: 'vm-disk', namespace: 'default' } }, '1Gi'));
    await waitDv('full-copy', ['Succeeded']);
    const full = await boundClaim('full-copy');
    assert.equal(await backingFile(path(full)!), undefined, 'a full clone stands alone');
    await assertSameDisk(full);
  });

  test('a golden image deleted while clones use it stays on disk until the last clone goes', async () => {
    const golden = await boundClaim('golden', 'vessel-images');
    await v.client.delete(DV, 'golden', { namespace: 'vessel-images' });
    await eventually('golden claim gone', async () =>
      v.client.get(PVC, 'golden', { namespace: 'vessel-images' }).then(
        () => undefined,
        () => true,
      ),
    );
    assert.ok(existsSync(path(golden)!), 'kept for its clone');
    assert.ok(existsSync(`${path(golden)}.deleted`), 'marked deleted');
    await assertSameDisk(await boundClaim('vm-disk'));
    await v.client.delete(DV, 'vm-disk', { namespace: 'default' });
    await eventually('golden file collected', async () => (existsSync(path(golden)!) ? undefined : true));
  });

  test('a claim a VMI uses is deleted only when the VMI is gone', async () => {
    await v.client.create(DV, dataVolume('in-use', { blank: {} }, '16Mi'));
    const pvc = await boundClaim('in-use');
    await v.client.create(VMI, {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'user' },
      spec: {
        terminationGracePeriodSeconds: 1,
        domain: { devices: { disks: [{ name: 'd', disk: {} }] }, resources: { requests: { memory: '64Mi' } } },
        volumes: [{ name: 'd', dataVolume: { name: 'in-use' } }],
      },
    });
    await v.client.delete(DV, 'in-use', { namespace: 'default' });
    await eventually('VolumeInUse event', async () => (await v.client.list(EVENTS, { namespace: 'default' })).items.find((e) => e.reason === 'VolumeInUse'));
    const held = await v.client.get(PVC, 'in-use', { namespace: 'default' });
    assert.ok(held.metadata?.deletionTimestamp, 'terminating');
    assert.ok(existsSync(path(pvc)!), 'volume still there');
    await v.client.delete(VMI, 'user', { namespace: 'default' });
    await eventually('claim gone', async () =>
      v.client.get(PVC, 'in-use', { namespace: 'default' }).then(
        () => undefined,
        () => true,
      ),
    );
    assert.ok(!existsSync(path(pvc)!), 'volume removed');
  });
});

describe('tenants', () => {
  test("tenant A cannot read or clone tenant B's golden image, and can use vessel-images", async () => {
    for (const ns of ['tenant-a', 'tenant-b']) await v.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
    const clientFor = async (ns: string) => {
      const r = await v.client.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user: `user-${ns}`, groups: [`vessel:tenant:${ns}`] } });
      const text = (await import('node:fs')).readFileSync(v.kubeconfig, 'utf8').replace(/token: .*/, `token: ${r.token}`);
      const file = join(dir, `kubeconfig-${ns}`);
      await writeFile(file, text);
      return Client.fromKubeconfig({ explicit: file });
    };
    const a = await clientFor('tenant-a');
    const b = await clientFor('tenant-b');
    await b.create(DV, dataVolume('secret-image', { blank: {} }, '16Mi'), { namespace: 'tenant-b' });
    await b.create(
      DS,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataSource',
        metadata: { name: 'secret-image' },
        spec: { source: { pvc: { name: 'secret-image', namespace: 'tenant-b' } } },
      },
      { namespace: 'tenant-b' },
    );
    await assert.rejects(a.get(DS, 'secret-image', { namespace: 'tenant-b' }), /forbidden/);
    await assert.rejects(a.list(PVC, { namespace: 'tenant-b' }), /forbidden/);
    await assert.rejects(
      a.create(
        DV,
        {
          apiVersion: 'cdi.kubevirt.io/v1beta1',
          kind: 'DataVolume',
          metadata: { name: 'stolen' },
          spec: { sourceRef: { kind: 'DataSource', name: 'secret-image', namespace: 'tenant-b' }, storage: {} },
        },
        { namespace: 'tenant-a' },
      ),
      (e: Error & { code?: number }) => /spec\.sourceRef: cannot clone from tenant-b\/secret-image/.test(e.message),
    );
    await assert.rejects(
      a.create(DV, dataVolume('stolen2', { pvc: { name: 'secret-image', namespace: 'tenant-b' } }), { namespace: 'tenant-a' }),
      /spec\.source\.pvc: cannot clone from tenant-b\/secret-image/,
    );
    // A DataSource of A's pointing at B's claim is refused too.
    await assert.rejects(
      a.create(
        DS,
        {
          apiVersion: 'cdi.kubevirt.io/v1beta1',
          kind: 'DataSource',
          metadata: { name: 'alias' },
          spec: { source: { pvc: { name: 'secret-image', namespace: 'tenant-b' } } },
        },
        { namespace: 'tenant-a' },
      ),
      /forbidden/,
    );
    // The shared library is readable and clonable.
    assert.ok((await a.list(DS, { namespace: 'vessel-images' })).items.length >= 0);
    await a.create(DV, dataVolume('mine', { blank: {} }, '16Mi'), { namespace: 'tenant-a' });
    await waitDv('mine', ['Succeeded'], 'tenant-a', a);
    a.close();
    b.close();
  });
});

test('nothing but published volumes is left in the pools', async () => {
  assert.deepEqual(
    (await leftovers()).filter((f) => !f.endsWith('.deleted')),
    [],
  );
});

test("the agent's migration CA rotates by itself: its Node's bundle gets the new CA beside the old one, then only the new one, which signs its leaf", async () => {
  // Seen while the file ran (CA 12 s: a rotation about every 10 s), or waited for here.
  const found = () => {
    const seen = rotationSeen;
    // Where the bundle changed (the leaf changes more often).
    const starts = seen.flatMap((x, i) => (i === 0 || caKey(x.bundle) !== caKey(seen[i - 1].bundle) ? [i] : []));
    for (let k = 2; k < starts.length; k++) {
      const [a, both, only] = starts.slice(k - 2, k + 1).map((i) => seen[i].bundle);
      if (a.length !== 1 || both.length !== 2 || only.length !== 1 || caKey(both) !== caKey([a[0], only[0]])) continue;
      // The leaf was the new CA's while the bundle was [A, B] (after the switch) or [B].
      if (seen.slice(starts[k - 1]).some((x) => x.bundle.some((c) => c.fingerprint256 === only[0].fingerprint256) && x.leaf?.verify(only[0].publicKey)))
        return true;
    }
    return undefined;
  };
  await eventually(
    'a bundle [A], then [A, B], then [B], and the leaf signed by B',
    async () => {
      await recordRotation();
      return found();
    },
    40_000,
    100,
  );
});
