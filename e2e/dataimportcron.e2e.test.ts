/**
 * The golden-image pipeline end to end: Debian's docker-registry on loopback, a real server,
 * controllers and agent in this process. A DataImportCron on `* * * * *` imports tag v1 at
 * once and points its DataSource at it; a new image pushed under the same tag is imported
 * within one tick, the DataSource moves, and with importsToKeep 1 the old import goes.
 * Also: bad input is refused naming the field, and the http poll's digests.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { StatusError, type KubeObject, type ResourceRef } from '@vessel/client';
import { makeRawDisk, MiB, sh } from '../packages/agent/storage/testing.ts';
import { pushDiskImage, startRegistry, type TestRegistry } from '../packages/agent/storage/testing-registry.ts';
import { httpDigest, registryDigest } from '../packages/controllers/dataimportcron-poll.ts';
import { eventually, startVessel, type Vessel } from './harness.ts';

const DIC: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'dataimportcrons', namespaced: true };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const DS: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datasources', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const NSREF: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const NS = 'dic-e2e';
const at = { namespace: NS };

type Obj = Record<string, unknown>;
let v: Vessel;
let registry: TestRegistry;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-dic-'));
  for (const n of ['v1', 'v2']) {
    await makeRawDisk(join(dir, `${n}.raw`), 16 * MiB);
    // Different content per version, so the two images differ.
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', `compat=${n === 'v1' ? '1.1' : '0.10'}`, join(dir, `${n}.raw`), join(dir, `${n}.qcow2`)]);
  }
  registry = await startRegistry();
  v = await startVessel({ agent: { nodeName: 'dic-node', allowLoopbackImports: true } });
  await v.client.create(NSREF, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
});

after(async () => {
  await v?.client.delete(NSREF, NS).catch(() => {});
  await v?.close();
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
});

function cron(name: string, spec: Obj): KubeObject {
  return {
    apiVersion: 'cdi.kubevirt.io/v1beta1',
    kind: 'DataImportCron',
    metadata: { name },
    spec: {
      schedule: '* * * * *',
      managedDataSource: 'tiny',
      template: {
        spec: { source: { registry: { url: `docker://${registry.url}/golden/tiny:latest` } }, storage: { resources: { requests: { storage: '64Mi' } } } },
      },
      ...spec,
    },
  };
}

const dsClaim = async () => ((await v.client.get(DS, 'tiny', at)).spec as { source?: { pvc?: { name?: string } } }).source?.pvc?.name;
const dvPhase = async (name: string) => ((await v.client.get(DV, name, at).catch(() => undefined))?.status as { phase?: string } | undefined)?.phase;
const importName = (digest: string) => `tiny-${digest.slice('sha256:'.length, 'sha256:'.length + 12)}`;

test('bad input is refused with 422 naming the field, and nothing is stored', async () => {
  for (const [spec, field] of [
    [{ schedule: 'every minute' }, 'spec.schedule'],
    [{ managedDataSource: 'Not_OK' }, 'spec.managedDataSource'],
    [{ garbageCollect: 'Sometimes' }, 'spec.garbageCollect'],
  ] as const) {
    await assert.rejects(v.client.create(DIC, cron('bad', spec), at), (e: unknown) => {
      assert.ok(e instanceof StatusError && e.code === 422, String(e));
      assert.ok(JSON.stringify(e.status.details?.causes ?? []).includes(field), JSON.stringify(e.status.details));
      return true;
    });
  }
  assert.equal((await v.client.list(DIC, at)).items.length, 0);
});

test('v1 is imported at once; a new image under the same tag is imported within one tick, the DataSource moves, the old import is collected', async () => {
  const t0 = Date.now();
  const v1 = await pushDiskImage(registry.url, 'golden/tiny', 'latest', [[{ path: 'disk/disk.qcow2', file: join(dir, 'v1.qcow2') }]]);
  await v.client.create(DIC, cron('tiny-cron', { importsToKeep: 1 }), at);
  const first = importName(v1.digest);
  await eventually(`import ${first} Succeeded`, async () => ((await dvPhase(first)) === 'Succeeded' ? true : undefined), 60_000);
  const dv1 = await v.client.get(DV, first, at);
  assert.equal((dv1.spec as { source: { registry: { url: string } } }).source.registry.url, `docker://${registry.url}/golden/tiny@${v1.digest}`);
  assert.equal((dv1.metadata?.labels as Record<string, string>)['cdi.kubevirt.io/dataImportCron'], 'tiny-cron');
  await eventually('DataSource at v1', async () => ((await dsClaim()) === first ? true : undefined), 30_000);
  const ds = await v.client.get(DS, 'tiny', at);
  assert.equal((ds.metadata?.labels as Record<string, string>)['cdi.kubevirt.io/dataImportCron'], 'tiny-cron');
  await eventually('DataSource Ready', async () =>
    ((ds.status ?? {}) as { conditions?: { type: string; status: string }[] }).conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ||
    (((await v.client.get(DS, 'tiny', at)).status ?? {}) as { conditions?: { type: string; status: string }[] }).conditions?.some(
      (c) => c.type === 'Ready' && c.status === 'True',
    )
      ? true
      : undefined,
  );
  const s1 = (await v.client.get(DIC, 'tiny-cron', at)).status as Obj & { conditions: { type: string; status: string; reason: string }[] };
  assert.deepEqual(s1.lastImportedPVC, { namespace: NS, name: first });
  assert.deepEqual(s1.currentImports, [{ DataVolumeName: first, Digest: v1.digest }]);
  assert.ok(s1.lastImportTimestamp && s1.lastExecutionTimestamp);
  console.log(`# v1 imported and published in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const t1 = Date.now();
  const v2 = await pushDiskImage(registry.url, 'golden/tiny', 'latest', [[{ path: 'disk/disk.qcow2', file: join(dir, 'v2.qcow2') }]]);
  assert.notEqual(v2.digest, v1.digest);
  const second = importName(v2.digest);
  // One tick is at most 60 s away, then the import.
  await eventually('DataSource at v2', async () => ((await dsClaim()) === second ? true : undefined), 100_000, 500);
  console.log(`# v2 imported and published ${((Date.now() - t1) / 1000).toFixed(1)} s after the push`);
  assert.equal(await dvPhase(second), 'Succeeded');
  await eventually('v1 import collected', async () =>
    (await v.client.get(DV, first, at).catch(() => undefined)) === undefined && (await v.client.get(PVC, first, at).catch(() => undefined)) === undefined
      ? true
      : undefined,
  );
  const s2 = (await v.client.get(DIC, 'tiny-cron', at)).status as { conditions: { type: string; status: string }[] };
  assert.equal(s2.conditions.find((c) => c.type === 'UpToDate')?.status, 'True');
  const reasons = (await v.client.list(EVENTS, at)).items.map((e) => (e as { reason?: string }).reason);
  assert.ok(reasons.includes('ImportStarted') && reasons.includes('ImportSucceeded'), reasons.join());
});

/** The one message a tenant sees for any unreachable target; the precise reason only in `cause`. */
const refusedFor = (why: RegExp) => (e: Error) => /unreachable from the poller/.test(e.message) && why.test(String((e.cause as Error | undefined)?.message));

test('the poll: registry digests by tag; http digests follow the ETag; link-local and the host itself are refused', async () => {
  const pushed = await pushDiskImage(registry.url, 'golden/poll', 'v1', [[{ path: 'disk/disk.qcow2', file: join(dir, 'v1.qcow2') }]]);
  assert.equal(await registryDigest(`docker://${registry.url}/golden/poll:v1`, { allowLoopback: true }), pushed.digest);
  await assert.rejects(registryDigest(`docker://${registry.url}/golden/poll:v1`, {}), refusedFor(/loopback/));
  await assert.rejects(registryDigest(`docker://${registry.url}/golden/none:v1`, { allowLoopback: true }), /has no image/);
  let etag = '"one"';
  const server: Server = createServer((req, res) => {
    res.setHeader('etag', etag);
    res.end(req.method === 'HEAD' ? undefined : 'disk');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/tiny.qcow2`;
    const a = await httpDigest(url, { allowLoopback: true });
    assert.equal(await httpDigest(url, { allowLoopback: true }), a);
    etag = '"two"';
    assert.notEqual(await httpDigest(url, { allowLoopback: true }), a);
  } finally {
    server.close();
  }
  await assert.rejects(httpDigest('http://169.254.169.254/latest/meta-data', {}), refusedFor(/link-local/));
  // The control plane's own (non-loopback) addresses: its services are not registries.
  const own = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal);
  if (own) await assert.rejects(httpDigest(`http://${own.address}:2379/`, {}), refusedFor(/control plane's host/));
});
