/**
 * Crashes mid-operation: the control plane and node agent run in a child process that the
 * test kills with SIGKILL in the middle of an import and of an upload. After a restart on
 * the same data directory the import starts again and the upload resumes; the claim never
 * shows a half-written disk, and nothing is left behind in the pool.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { qemuImg } from '@vessel/agent';
import type { Client, KubeObject, ResourceRef } from '@vessel/client';
import { MiB, sh, startServer, type TestServer } from '../packages/agent/storage/testing.ts';
import { requestUploadToken, uploadImage } from '../packages/cli/upload.ts';
import { eventually, startChildControlPlane, type ChildControlPlane } from './harness.ts';

const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
type Obj = Record<string, unknown>;
const phase = (o: KubeObject) => String((o.status as Obj | undefined)?.phase ?? '');

let dir: string;
let dataDir: string;
let raw: string;
let qcow2: string;
let http: TestServer;
let cp: ChildControlPlane | undefined;
let client: Client;

/** Starts the control plane + agent child and a client for it. */
async function startChild(): Promise<void> {
  cp = await startChildControlPlane(dataDir);
  client = cp.client;
}

const killChild = () => cp!.kill();

async function poolFiles(): Promise<string[]> {
  return (await readdir(join(dataDir, 'pools', 'local', 'default')).catch(() => [])).sort();
}

async function dv(name: string): Promise<KubeObject> {
  return client.get(DV, name, { namespace: 'default' });
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-crash-'));
  dataDir = join(dir, 'data');
  raw = join(dir, 'disk.raw');
  // Incompressible data, so the qcow2 is as big as its content and the slow route takes a while.
  const fh = await open(raw, 'w');
  const block = Buffer.alloc(MiB);
  for (let i = 0; i < 24; i++) {
    randomFillSync(block);
    await fh.write(block);
  }
  await fh.close();
  qcow2 = join(dir, 'disk.qcow2');
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  http = await startServer(dir);
  await startChild();
});

after(async () => {
  await cp?.kill();
  await http?.close();
  await rm(dir, { recursive: true, force: true });
});

test('SIGKILL in the middle of an import: after restart it starts again and succeeds, nothing leaks', async () => {
  await client.create(
    DV,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'slow' },
      spec: { source: { http: { url: http.file('disk.qcow2', 'slow') } }, storage: { resources: { requests: { storage: '64Mi' } } } },
    },
    { namespace: 'default' },
  );
  await eventually('the import to be under way', async () => {
    const d = await dv('slow');
    return phase(d) === 'ImportInProgress' && (await poolFiles()).some((f) => /\.part-/.test(f)) ? d : undefined;
  });
  await killChild();
  const during = await poolFiles();
  assert.ok(
    during.every((f) => !f.endsWith('.qcow2')),
    `no published volume after the crash: ${during.join(', ')}`,
  );

  await startChild();
  const claim = await client.get(PVC, 'slow', { namespace: 'default' });
  assert.notEqual(phase(claim), 'Bound', 'the claim does not show a half-written disk');
  const done = await eventually(
    'the import to finish after the restart',
    async () => {
      const d = await dv('slow');
      return phase(d) === 'Succeeded' || phase(d) === 'Failed' ? d : undefined;
    },
    120_000,
  );
  assert.equal(phase(done), 'Succeeded', JSON.stringify(done.status));
  const pvc = await client.get(PVC, 'slow', { namespace: 'default' });
  assert.equal(phase(pvc), 'Bound');
  const path = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  assert.ok((await qemuImg.compare(raw, path, { formatA: 'raw', formatB: 'qcow2' })).identical, 'same content as the source');
  assert.deepEqual(
    (await poolFiles()).filter((f) => !f.endsWith('.qcow2')),
    [],
    'no temporary files left',
  );
});

test('SIGKILL in the middle of an upload: after restart the upload resumes from the bytes received', async () => {
  await client.create(
    DV,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'upload' },
      spec: { source: { upload: {} }, storage: { resources: { requests: { storage: '64Mi' } } } },
    },
    { namespace: 'default' },
  );
  await eventually('UploadReady', async () => (phase(await dv('upload')) === 'UploadReady' ? true : undefined));
  const total = statSync(qcow2).size;
  const token = await requestUploadToken(client, 'default', 'upload');
  // Send the first half and keep the connection open, as a client does mid-transfer.
  const half = createReadStream(qcow2, { end: Math.floor(total / 2) - 1 });
  const { PassThrough } = await import('node:stream');
  const body = new PassThrough();
  half.pipe(body, { end: false });
  client
    .stream('POST', '/v1beta1/upload', { bearer: token, body, headers: { 'Upload-Length': String(total), 'Transfer-Encoding': 'chunked' } })
    .catch(() => undefined);
  const partial = join(dataDir, 'pools', 'local', 'default');
  await eventually('half the bytes on the node', async () => {
    const f = (await poolFiles()).find((n) => n.endsWith('.upload'));
    return f && statSync(join(partial, f)).size >= Math.floor(total / 2) ? true : undefined;
  });
  await killChild();
  body.destroy();

  await startChild();
  assert.equal(phase(await dv('upload')), 'UploadReady');
  let resumedFrom = -1;
  await uploadImage(client, {
    namespace: 'default',
    pvcName: 'upload',
    file: qcow2,
    onProgress: (sent) => {
      if (resumedFrom < 0) resumedFrom = sent;
    },
  });
  assert.ok(resumedFrom > 0, `resumed from byte ${resumedFrom}, not from the start`);
  const d = await eventually('Succeeded', async () => (phase(await dv('upload')) === 'Succeeded' ? await dv('upload') : undefined));
  assert.equal(phase(d), 'Succeeded');
  const pvc = await client.get(PVC, 'upload', { namespace: 'default' });
  const path = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
  assert.ok((await qemuImg.compare(raw, path, { formatA: 'raw', formatB: 'qcow2' })).identical);
  assert.deepEqual(
    (await poolFiles()).filter((f) => !f.endsWith('.qcow2')),
    [],
  );
  await killChild();
});
