/**
 * VirtualMachineExport controller: the pure source decision (what is in use, what is missing),
 * and flows over the in-memory client: token Secret generated, Pending while the VM runs,
 * Ready with KubeVirt's link shapes once it stops, the VM kept from starting while Ready, and
 * the ttl deleting the export.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { refs, vmexport } from '@vessel/api';
import { getCondition, updateStatus, type KubeObject } from '@vessel/runtime';
import { VirtualMachineController } from './vm.ts';
import { VirtualMachineExportController, exportBlocking, sourceState, type SourceView } from './vmexport.ts';
import { InMemoryClient, settle, tryGet, until, vmObject } from './testing/harness.ts';

const { PVCS, SECRETS, VMEXPORTS, VMIS, VMS } = refs;
const NS = { namespace: 'default' };
type Obj = Record<string, unknown>;

const started = performance.now();
after(() => {
  console.log(`# vmexport.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

const obj = (name: string, extra: Obj = {}): KubeObject => ({ apiVersion: 'v1', kind: 'X', metadata: { name, namespace: 'default' }, ...extra });
const vmWithDisk = (name: string, claim: string, spec: Obj = {}) => {
  const vm = vmObject(name, { runStrategy: 'Halted', ...spec });
  (vm.spec as { template: { spec: Obj } }).template.spec.volumes = [{ name: 'root', persistentVolumeClaim: { claimName: claim } }];
  return vm;
};
function view(o: Partial<Record<'vms' | 'vmis' | 'pvcs' | 'snaps' | 'contents', KubeObject[]>>): SourceView {
  const find = (list: KubeObject[] | undefined) => (n: string) => list?.find((x) => x.metadata.name === n);
  return {
    vm: find(o.vms),
    vmi: find(o.vmis),
    pvc: find(o.pvcs),
    snapshot: find(o.snaps),
    content: find(o.contents),
    liveVmis: () => (o.vmis ?? []).filter((v) => !['Succeeded', 'Failed'].includes(String((v.status as Obj | undefined)?.phase))),
  };
}

test('Go durations: what ttlDuration accepts', () => {
  assert.equal(vmexport.parseGoDuration('2h'), 7200_000);
  assert.equal(vmexport.parseGoDuration('1h30m'), 5400_000);
  assert.equal(vmexport.parseGoDuration('1.5s'), 1500);
  assert.equal(vmexport.parseGoDuration('0'), 0);
  for (const bad of ['', '2', 'h', '2d', '-1h', '1h ', 'abc']) assert.equal(vmexport.parseGoDuration(bad), undefined, bad);
});

test('sourceState: a running VM, a claim in use, a snapshot not ready are Pending with the reason; a stopped VM is Ready', () => {
  const bound = obj('disk', { status: { phase: 'Bound' } });
  const vm = vmWithDisk('vm1', 'disk');
  const running = obj('vm1', {
    kind: 'VirtualMachineInstance',
    status: { phase: 'Running' },
    spec: { volumes: [{ name: 'root', dataVolume: { name: 'disk' } }] },
  });
  const spec = (kind: string, name: string) => ({ source: { kind, name } });

  const r1 = sourceState(spec('VirtualMachine', 'vm1'), view({ vms: [vm], vmis: [running], pvcs: [bound] }));
  assert.equal(r1.ready, false);
  assert.equal(!r1.ready && r1.reason, 'InUse');
  assert.match(!r1.ready ? r1.message : '', /is running: the export waits until it is stopped/);
  assert.deepEqual(sourceState(spec('VirtualMachine', 'vm1'), view({ vms: [vm], pvcs: [bound] })), {
    ready: true,
    volumes: ['disk'],
    virtualMachineName: 'vm1',
  });
  const stopped = { ...running, status: { phase: 'Succeeded' } };
  assert.equal(sourceState(spec('VirtualMachine', 'vm1'), view({ vms: [vm], vmis: [stopped], pvcs: [bound] })).ready, true);

  const r2 = sourceState(spec('PersistentVolumeClaim', 'disk'), view({ vmis: [running], pvcs: [bound] }));
  assert.equal(!r2.ready && r2.reason, 'InUse');
  const r3 = sourceState(spec('VirtualMachine', 'vm1'), view({ vms: [vm], pvcs: [obj('disk', { status: { phase: 'Pending' } })] }));
  assert.equal(!r3.ready && r3.reason, 'PVCPending');
  const r4 = sourceState(spec('VirtualMachine', 'nope'), view({}));
  assert.equal(!r4.ready && r4.reason, 'VMNotFound');

  const snap = obj('s1', { spec: { source: { name: 'vm1' } }, status: { readyToUse: false } });
  const r5 = sourceState(spec('VirtualMachineSnapshot', 's1'), view({ snaps: [snap] }));
  assert.equal(!r5.ready && r5.reason, 'SnapshotNotReady');
  const content = obj('c1', { spec: { volumeBackups: [{ volumeName: 'root', persistentVolumeClaim: { metadata: { name: 'disk' } } }] } });
  content.metadata.annotations = { 'vessel.io/snapshot-files': JSON.stringify({ root: '/pool/default/x.qcow2' }) };
  const ready = { ...snap, status: { readyToUse: true, virtualMachineSnapshotContentName: 'c1' } };
  assert.deepEqual(sourceState(spec('VirtualMachineSnapshot', 's1'), view({ snaps: [ready], contents: [content] })), {
    ready: true,
    volumes: ['disk'],
    virtualMachineName: 'vm1',
  });
});

test('exportBlocking: only a Ready export of the VM itself', () => {
  const e = (phase: string, kind = 'VirtualMachine') => obj('e', { spec: { source: { kind, name: 'vm1' } }, status: { phase } });
  assert.ok(exportBlocking([e('Ready')], 'vm1'));
  assert.equal(exportBlocking([e('Pending')], 'vm1'), undefined);
  assert.equal(exportBlocking([e('Ready')], 'vm2'), undefined);
  assert.equal(exportBlocking([e('Ready', 'VirtualMachineSnapshot')], 'vm1'), undefined);
});

async function setup() {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const ctl = new VirtualMachineExportController(c);
  const vms = new VirtualMachineController(c);
  await ctl.start();
  await vms.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctl.stop();
      await vms.stop();
      c.close();
    },
  };
}

const exportObject = (name: string, spec: Obj) => ({
  apiVersion: 'export.kubevirt.io/v1beta1',
  kind: 'VirtualMachineExport',
  metadata: { name, namespace: 'default' },
  spec,
});
const exportStatus = async (c: InMemoryClient, name: string) => ((await c.get(VMEXPORTS, name, NS)).status ?? {}) as Obj;

async function boundClaim(c: InMemoryClient, name: string) {
  await c.create(
    PVCS,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    },
    NS,
  );
  await updateStatus(c, PVCS, 'default', name, (s) => {
    s.phase = 'Bound';
  });
}

test('a VM export: Pending while the VM runs, then Ready with the links and a generated token; the VM cannot start while it is Ready', async () => {
  await using h = await setup();
  const { c } = h;
  await boundClaim(c, 'disk');
  await c.create(VMS, vmWithDisk('vm1', 'disk', { runStrategy: 'Always' }), NS);
  await until('VMI created', () => tryGet(c, VMIS, 'vm1'));
  await c.create(VMEXPORTS, exportObject('ex1', { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm1' } }), NS);

  const pending = await until('Pending', async () => {
    const s = await exportStatus(c, 'ex1');
    return s.phase === 'Pending' && getCondition({ metadata: { name: 'ex1' }, status: s }, 'Ready')?.reason === 'InUse' ? s : undefined;
  });
  assert.equal(pending.links, undefined);
  assert.equal(pending.tokenSecretRef, 'export-token-ex1');
  const secret = await c.get(SECRETS, 'export-token-ex1', NS);
  assert.ok(Buffer.from(String((secret.data as Obj).token), 'base64').toString().length >= 32);

  await c.patch(VMS, 'vm1', { spec: { runStrategy: 'Halted' } }, NS);
  const ready = await until('Ready', async () => {
    const s = await exportStatus(c, 'ex1');
    return s.phase === 'Ready' ? s : undefined;
  });
  const links = ready.links as { internal: Obj; external: { cert: string; volumes: Obj[]; manifests: Obj[] } };
  assert.ok(links.internal);
  assert.deepEqual(
    links.external.volumes.map((v) => (v.formats as { format: string; url: string }[]).map((f) => [v.name, f.format, f.url.replace(/^https?:\/\/[^/]+/, '')])),
    [
      [
        ['disk', 'raw', '/api/export.kubevirt.io/v1beta1/namespaces/default/ex1/volumes/disk/disk.img'],
        ['disk', 'gzip', '/api/export.kubevirt.io/v1beta1/namespaces/default/ex1/volumes/disk/disk.img.gz'],
      ],
    ],
  );
  assert.deepEqual(
    links.external.manifests.map((m) => m.type),
    ['all', 'auth-header-secret'],
  );
  assert.equal(ready.virtualMachineName, 'vm1');
  assert.ok(Date.parse(String(ready.ttlExpirationTime)) - Date.now() > 7000_000, 'the 2 h default ttl');

  // Asked to run, the VM stays Stopped while the export is Ready, and says why.
  await c.patch(VMS, 'vm1', { spec: { runStrategy: 'Always' } }, NS);
  const vm = await until('VM blocked', async () => {
    const v = await c.get(VMS, 'vm1', NS);
    return getCondition(v as KubeObject, 'Ready')?.reason === 'VMExportInProgress' ? v : undefined;
  });
  assert.equal((vm.status as Obj).printableStatus, 'Stopped');
  assert.equal(await tryGet(c, VMIS, 'vm1'), undefined);
  // Deleting the export lets it start.
  await c.delete(VMEXPORTS, 'ex1', NS);
  await until('VMI created', () => tryGet(c, VMIS, 'vm1'));
});

test('a given token Secret must exist; the ttl deletes the export', async () => {
  await using h = await setup();
  const { c } = h;
  await boundClaim(c, 'disk');
  await c.create(VMEXPORTS, exportObject('ex2', { source: { kind: 'PersistentVolumeClaim', name: 'disk' }, tokenSecretRef: 'mine' }), NS);
  await until(
    'TokenSecretMissing',
    async () => getCondition({ metadata: { name: 'x' }, status: await exportStatus(c, 'ex2') }, 'Ready')?.reason === 'TokenSecretMissing',
  );
  await c.create(SECRETS, { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'mine' }, stringData: { token: 'a-token-of-my-own-choosing' } }, NS);
  await until('Ready', async () => (await exportStatus(c, 'ex2')).phase === 'Ready');
  await settle();
  assert.equal(await tryGet(c, SECRETS, 'export-token-ex2'), undefined, 'no token generated when one is given');

  // creationTimestamp has whole seconds, so a ttl of N s leaves the export between N-1 and N s.
  await c.create(VMEXPORTS, exportObject('short', { source: { kind: 'PersistentVolumeClaim', name: 'disk' }, ttlDuration: '3s' }), NS);
  await until('Ready', async () => (await exportStatus(c, 'short')).phase === 'Ready');
  await until('deleted after its ttl', async () => (await tryGet(c, VMEXPORTS, 'short')) === undefined, 8000);
});
