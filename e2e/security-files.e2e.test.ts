/**
 * Tenant isolation of the agent's files, end to end (real server, controllers and agent in this
 * process, real qemu-img, the tiny guest under QEMU): a path from an object never reaches
 * another namespace's file; failure messages tenants read carry no host paths; a failing
 * clone retries with backoff; and nothing a deleted VM left (serial output, cloud-init user
 * data) is seen by a VM of the same name in a re-created namespace. Hostile paths point only
 * at decoy files this test makes.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { sh } from '../packages/agent/storage/testing.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startVessel, type Vessel } from './harness.ts';
import { runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const NS: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };

type Obj = Record<string, unknown>;
type Event = { involvedObject: { name: string; kind?: string }; reason: string; message: string; type: string; count?: number };
let v: Vessel;
let poolDir: string;

const annotationsOf = (o: KubeObject) => (o.metadata?.annotations as Record<string, string> | undefined) ?? {};

async function namespace(name: string): Promise<void> {
  await v.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
}

async function eventsOf(ns: string, name: string): Promise<Event[]> {
  return ((await v.client.list(EVENTS, { namespace: ns })).items as unknown as Event[]).filter((e) => e.involvedObject.name === name);
}

function blankDv(name: string, size = '16Mi'): KubeObject {
  return {
    apiVersion: 'cdi.kubevirt.io/v1beta1',
    kind: 'DataVolume',
    metadata: { name },
    spec: { source: { blank: {} }, storage: { resources: { requests: { storage: size } } } },
  };
}

async function boundPath(ns: string, name: string): Promise<string> {
  return eventually(
    `claim ${ns}/${name} Bound`,
    async () => {
      const pvc = await v.client.get(PVC, name, { namespace: ns });
      return (pvc.status as Obj | undefined)?.phase === 'Bound' ? annotationsOf(pvc)['vessel.io/volume-path'] : undefined;
    },
    60_000,
  );
}

/** What a VM that does not show its output is doing: printed when a wait for it fails. */
async function diagnose(ns: string, name: string): Promise<string> {
  const brief = (o: KubeObject | undefined) => JSON.stringify({ uid: o?.metadata?.uid, status: o?.status }).slice(0, 1500);
  const get = (r: ResourceRef, n: string) => v.client.get(r, n, { namespace: ns }).catch(() => undefined);
  const lines = [`VM ${ns}/${name}: ${brief(await get(VM, name))}`, `VMI: ${brief(await get(VMI, name))}`];
  for (const r of [DV, PVC]) for (const o of (await v.client.list(r, { namespace: ns })).items) lines.push(`${r.plural}/${o.metadata?.name}: ${brief(o)}`);
  for (const e of (await v.client.list(EVENTS, { namespace: ns })).items as unknown as Event[])
    lines.push(`event ${e.type} ${e.reason} ${e.involvedObject.kind}/${e.involvedObject.name}: ${e.message}`);
  const dir = await runDirOf(v.dataDir, ns, name);
  lines.push(`run directory ${dir}: ${dir ? (await readdir(dir)).join(' ') : '-'}`);
  lines.push(`serial tail: ${(await serialLog(v.dataDir, ns, name)).slice(-1500)}`);
  return lines.join('\n');
}

/** eventually(), with diagnose(ns, name) in the error when it times out. */
async function eventuallyVm<T>(ns: string, name: string, what: string, fn: () => Promise<T | undefined>, timeoutMs: number, intervalMs: number): Promise<T> {
  try {
    return await eventually(what, fn, timeoutMs, intervalMs);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${await diagnose(ns, name).catch((d: unknown) => `(no diagnosis: ${String(d)})`)}`, { cause: e });
  }
}

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  poolDir = v.agent!.pools.get('local')!.dir;
});
after(async () => {
  await v?.close();
});

test('restore-source <pool>/t1/../t2/<file>@snap on a claim in t1 is refused and makes no volume', async () => {
  await namespace('t1');
  await namespace('t2');
  // A decoy "snapshot file" of tenant t2, and t1's directory (made as any claim of t1 would).
  await v.agent!.pools.get('local')!.ensureNamespaceDir('t1');
  await v.agent!.pools.get('local')!.ensureNamespaceDir('t2');
  const decoy = join(poolDir, 't2', 'secret-00000000-0000-4000-8000-000000000002.qcow2@snap.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', decoy, '16M']);
  const traversal = `${poolDir}/t1/../t2/${decoy.split('/').pop()}`;
  // Set as an administrator (admission keeps tenants from setting vessel.io/* annotations at all).
  await v.client.create(
    PVC,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: {
        name: 'stolen',
        namespace: 't1',
        annotations: { 'vessel.io/restore-source': traversal, 'volume.kubernetes.io/selected-node': 'node-a', 'vessel.io/volume-pool': 'local' },
      },
      spec: { accessModes: ['ReadWriteOnce'], storageClassName: 'local', resources: { requests: { storage: '16Mi' } } },
    },
    { namespace: 't1' },
  );
  const refusal = await eventually('the refusal on claim t1/stolen', async () => (await eventsOf('t1', 'stolen')).find((e) => e.type === 'Warning'), 30_000);
  assert.equal(refusal.reason, 'PathOutsideNamespace');
  assert.match(refusal.message, /vessel\.io\/restore-source: .*namespace t1/);
  assert.ok(!refusal.message.includes(poolDir), `no pool path in the event: ${refusal.message}`);
  assert.ok(!refusal.message.includes('t2'), `the other namespace is not named: ${refusal.message}`);
  // Some time for a (wrong) population to finish: still nothing.
  await new Promise((r) => setTimeout(r, 1500));
  const pvc = await v.client.get(PVC, 'stolen', { namespace: 't1' });
  assert.notEqual((pvc.status as Obj | undefined)?.phase, 'Bound');
  assert.equal(annotationsOf(pvc)['vessel.io/volume-path'], undefined);
  assert.deepEqual(
    (await readdir(join(poolDir, 't1'))).filter((f) => f.startsWith('stolen-')),
    [],
    'no volume (nor temporary) file for the claim',
  );
});

test('a failing clone retries with backoff, and its DataVolume shows no host path', async () => {
  await namespace('t3');
  await v.client.create(DV, blankDv('src'), { namespace: 't3' });
  const srcPath = await boundPath('t3', 'src');
  // The source volume breaks (a decoy: not a qcow2 any more): every clone attempt fails in
  // qemu-img, whose error names the source's full path.
  await writeFile(srcPath, 'this is not a qcow2 image\n'.repeat(100));
  await v.client.create(
    DV,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'copy' },
      spec: { source: { pvc: { namespace: 't3', name: 'src' } }, storage: { resources: { requests: { storage: '16Mi' } } } },
    },
    { namespace: 't3' },
  );
  const retries = async () => (await eventsOf('t3', 'copy')).filter((e) => e.reason === 'ImportRetry');
  const attempts = (es: Event[]) => es.reduce((n, e) => n + (e.count ?? 1), 0);
  await eventually('the first failed attempt', async () => ((await retries()).length ? true : undefined), 30_000, 50);
  const t0 = Date.now();
  // Whatever else touches the DataVolume meanwhile (here a label, 4 times a second; the
  // agent's own status write of each failure is such a touch) must not start an attempt early.
  for (let i = 0; Date.now() - t0 < 3000; i++) {
    await v.client.patch(DV, 'copy', { metadata: { labels: { touched: String(i) } } }, { namespace: 't3' });
    await new Promise((r) => setTimeout(r, 250));
  }
  const within3s = attempts(await retries());
  const elapsed = Date.now() - t0;
  // Attempts at 0, 1 s and 3 s: at most 3 Warnings in the 3 s after the first (13 in a second before the fix).
  assert.ok(within3s <= 3, `${within3s} ImportRetry Warnings within ${elapsed} ms of the first`);
  assert.ok(within3s >= 2, `it does retry: ${within3s}`);

  // Between attempts the DataVolume's conditions show the failure.
  const conditions = await eventually(
    "the failure in the DataVolume's conditions",
    async () => {
      const dv = await v.client.get(DV, 'copy', { namespace: 't3' });
      const cs = (dv.status as Obj).conditions as { type: string; message?: string }[];
      return cs.some((c) => c.type === 'Running' && /qemu-img/.test(c.message ?? '')) ? cs : undefined;
    },
    30_000,
    50,
  );
  const messages = [...conditions.map((c) => c.message ?? ''), ...(await eventsOf('t3', 'copy')).map((e) => e.message)];
  const failure = conditions.find((c) => c.type === 'Running')?.message ?? '';
  for (const m of messages) {
    assert.ok(!m.includes(poolDir) && !m.includes(v.dataDir), `a host path in a DataVolume message: ${m}`);
    assert.ok(!/\/pools\//.test(m), `a pool path in a DataVolume message: ${m}`);
  }
  assert.match(failure, /volume src/, `the file is described as the claim's volume: ${failure}`);
  await v.client.delete(DV, 'copy', { namespace: 't3' });
});

test('a VM of the same name in a re-created namespace sees nothing of the deleted one', { timeout: 900_000 }, async () => {
  await ensureTinyImage(v.client, () => undefined);
  const ns = 'ns1';
  const secret = `OLD-TENANT-SECRET-${Date.now()}`;
  await namespace(ns);
  await v.client.create(VM, tinyVm('box', { namespace: ns, userData: `#!/bin/sh\necho ${secret}\n` }), { namespace: ns });
  await eventuallyVm(
    ns,
    'box',
    "the secret on the old VM's console",
    async () => ((await serialLog(v.dataDir, ns, 'box')).includes(secret) ? true : undefined),
    420_000,
    500,
  );
  const oldDir = (await runDirOf(v.dataDir, ns, 'box'))!;
  assert.ok(existsSync(join(oldDir, 'serial.log')));

  await v.client.delete(NS, ns);
  await eventually(
    `namespace ${ns} gone`,
    async () =>
      v.client.get(NS, ns).then(
        () => undefined,
        () => true,
      ),
    240_000,
    500,
  );
  await eventually('the old run directory removed', async () => (existsSync(oldDir) ? undefined : true), 30_000, 250);
  await eventually(
    `the agent's directories of ${ns} removed`,
    async () => (!existsSync(join(v.dataDir, 'vms', ns)) && !existsSync(join(poolDir, ns)) ? true : undefined),
    30_000,
    250,
  );

  await namespace(ns);
  await v.client.create(VM, tinyVm('box', { namespace: ns, userData: '#!/bin/sh\necho NEW-TENANT-HERE\n' }), { namespace: ns });
  await eventuallyVm(
    ns,
    'box',
    "the new VM's own output",
    async () => ((await serialLog(v.dataDir, ns, 'box')).includes('NEW-TENANT-HERE') ? true : undefined),
    420_000,
    500,
  );
  const newDir = (await runDirOf(v.dataDir, ns, 'box'))!;
  assert.notEqual(newDir, oldDir);
  const vm = await v.client.get(VM, 'box', { namespace: ns });
  assert.equal(newDir.split('/').pop(), vm.metadata!.uid, "the run directory is the VM's uid, not its name");
  assert.ok(!(await serialLog(v.dataDir, ns, 'box')).includes(secret), "the new VM's serial log has none of the old output");
  // What the tenant reads through the API: the serial-log subresource.
  const res = await v.client.stream('GET', `/apis/subresources.kubevirt.io/v1/namespaces/${ns}/virtualmachineinstances/box/serial-log`, {
    headers: { Accept: 'text/plain' },
  });
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const viaApi = Buffer.concat(chunks).toString('utf8');
  assert.equal(res.statusCode, 200, viaApi);
  assert.match(viaApi, /NEW-TENANT-HERE/);
  assert.ok(!viaApi.includes(secret), 'the serial-log subresource shows none of the old output');
  // Nor any file of its run directory (the cloud-init ISO holds the user data).
  for (const f of await readdir(newDir)) {
    if (f.endsWith('.sock')) continue;
    assert.ok(!(await readFile(join(newDir, f), 'latin1')).includes(secret), `${f} of the new VM holds the old secret`);
  }
  await v.client.delete(VM, 'box', { namespace: ns });
  await eventually('the VMI gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 180_000);
  await eventually('the run directory of the deleted VM removed', async () => (existsSync(newDir) ? undefined : true), 30_000, 250);
});

test('a restarted agent removes run directories a crash left of VMs that no longer exist', async () => {
  const dataDir = v.dataDir;
  await v.stop();
  // Decoys as a crash would leave them: a uid directory and one by name (the older layout).
  const byUid = join(dataDir, 'vms', 'gone', '3f0e8a52-2d36-4b4f-9d9e-7a1c2b3d4e5f');
  const byName = join(dataDir, 'vms', 'gone', 'oldvm');
  for (const d of [byUid, byName]) {
    await mkdir(d, { recursive: true });
    await writeFile(join(d, 'serial.log'), 'DECOY OUTPUT OF A DELETED VM\n');
  }
  v = await startVessel({ dataDir, agent: { nodeName: 'node-a' } });
  await eventually(
    'the leftover run directories removed',
    async () => (!existsSync(byUid) && !existsSync(byName) && !existsSync(join(dataDir, 'vms', 'gone')) ? true : undefined),
    30_000,
    250,
  );
});
