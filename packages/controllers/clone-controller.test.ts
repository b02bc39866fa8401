/**
 * Clone controller flows over the in-memory client (real Resources and SQLite :memory:): the
 * snapshot and restore controllers' parts (the agent's, in Vessel) are written here as they
 * would write them: snapshot readyToUse with its content, restore complete.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { CloneController } from './clone.ts';
import { getCondition, updateStatus } from '@vessel/runtime';
import { refs } from '@vessel/api';
import { InMemoryClient, tryGet, until, vmObject } from './testing/harness.ts';

const { VMCLONES, VMRESTORES, VMS, VMSNAPSHOTCONTENTS, VMSNAPSHOTS } = refs;

const started = performance.now();
after(() => {
  console.log(`# clone-controller.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

type Obj = Record<string, unknown>;
const NS = { namespace: 'default' };

async function setup() {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const ctl = new CloneController(c);
  await ctl.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctl.stop();
      c.close();
    },
  };
}

function source(): ReturnType<typeof vmObject> {
  const vm = vmObject('src', { runStrategy: 'Manual' });
  vm.metadata.labels = { app: 'web', 'secret.io/x': '1' };
  const tspec = (vm.spec as { template: { spec: { domain: { devices: Obj; firmware?: Obj }; networks?: Obj[] } } }).template.spec;
  tspec.networks = [{ name: 'default', pod: {} }];
  const t = tspec.domain;
  t.devices.interfaces = [{ name: 'default', masquerade: {}, macAddress: '02:00:00:00:00:01' }];
  t.firmware = { uuid: '5d307ca9-b3ef-428c-8861-06e72d69f223' };
  return vm;
}

function cloneObject(name: string, spec: Obj): Obj & { metadata: { name: string; namespace: string } } {
  return { apiVersion: 'clone.kubevirt.io/v1beta1', kind: 'VirtualMachineClone', metadata: { name, namespace: 'default' }, spec };
}

const cloneStatus = async (c: InMemoryClient, name: string) =>
  ((await c.get(VMCLONES, name, NS)).status ?? {}) as { phase?: string; targetName?: string; snapshotName?: string; restoreName?: string };
const phase = (c: InMemoryClient, name: string, want: string) => until(`${name} ${want}`, async () => (await cloneStatus(c, name)).phase === want);

/** What the snapshot controller writes when a snapshot is done: its content, then readyToUse. */
async function snapshotDone(c: InMemoryClient, snap: string, vm: Obj): Promise<void> {
  await c.create(VMSNAPSHOTCONTENTS, {
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineSnapshotContent',
    metadata: { name: `vmsnapshot-content-${snap}`, namespace: 'default' },
    spec: { virtualMachineSnapshotName: snap, source: { virtualMachine: { metadata: vm.metadata, spec: vm.spec } } },
  });
  await updateStatus(c, VMSNAPSHOTS, 'default', snap, (s) => {
    s.phase = 'Succeeded';
    s.readyToUse = true;
    s.virtualMachineSnapshotContentName = `vmsnapshot-content-${snap}`;
  });
}

test('clone of a VM: snapshot, restore with a new identity, then the temporary objects go; Succeeded', async () => {
  await using h = await setup();
  const vm = source();
  await h.c.create(VMS, vm);
  await h.c.create(
    VMCLONES,
    cloneObject('c1', {
      source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'src' },
      target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'dst' },
      labelFilters: ['*', '!secret.io/*'],
    }),
  );
  await phase(h.c, 'c1', 'SnapshotInProgress');
  const { snapshotName } = await cloneStatus(h.c, 'c1');
  const snap = await h.c.get(VMSNAPSHOTS, snapshotName!, NS);
  assert.equal((snap.spec as { source: { name: string } }).source.name, 'src');
  assert.equal((snap.metadata?.ownerReferences as { kind: string }[])[0]!.kind, 'VirtualMachineClone');

  await snapshotDone(h.c, snapshotName!, vm);
  await phase(h.c, 'c1', 'RestoreInProgress');
  const { restoreName } = await cloneStatus(h.c, 'c1');
  const restore = await h.c.get(VMRESTORES, restoreName!, NS);
  const rspec = restore.spec as { target: { name: string }; virtualMachineSnapshotName: string; patches: string[] };
  assert.equal(rspec.target.name, 'dst');
  assert.equal(rspec.virtualMachineSnapshotName, snapshotName);
  const patches = rspec.patches.map((p) => JSON.parse(p) as { op: string; path: string });
  assert.ok(
    patches.some((p) => p.op === 'remove' && p.path === '/metadata/labels/secret.io~1x'),
    'filtered label removed',
  );
  assert.ok(
    patches.some((p) => p.op === 'remove' && p.path.endsWith('/interfaces/0/macAddress')),
    'MAC dropped',
  );
  assert.ok(
    patches.some((p) => p.op === 'remove' && p.path.endsWith('/firmware/uuid')),
    'firmware UUID dropped',
  );

  await updateStatus(h.c, VMRESTORES, 'default', restoreName!, (s) => {
    s.complete = true;
  });
  await phase(h.c, 'c1', 'Succeeded');
  const done = await h.c.get(VMCLONES, 'c1', NS);
  assert.equal(getCondition({ status: done.status }, 'Ready')?.status, 'True');
  assert.equal((done.status as { targetName: string }).targetName, 'dst');
  assert.equal(await tryGet(h.c, VMRESTORES, restoreName!), undefined, 'temporary restore deleted');
  assert.equal(await tryGet(h.c, VMSNAPSHOTS, snapshotName!), undefined, 'temporary snapshot deleted');
});

test('clone of a snapshot: no snapshot of its own, and the snapshot stays', async () => {
  await using h = await setup();
  const vm = source();
  await h.c.create(
    VMCLONES,
    cloneObject('c2', {
      source: { apiGroup: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', name: 'snap' },
      target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'dst2' },
    }),
  );
  await phase(h.c, 'c2', 'Pending');
  assert.equal(getCondition({ status: (await h.c.get(VMCLONES, 'c2', NS)).status }, 'Ready')?.reason, 'SourceNotFound');
  await h.c.create(VMSNAPSHOTS, {
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineSnapshot',
    metadata: { name: 'snap', namespace: 'default' },
    spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'src' } },
  });
  await snapshotDone(h.c, 'snap', vm);
  await phase(h.c, 'c2', 'RestoreInProgress');
  const { restoreName } = await cloneStatus(h.c, 'c2');
  assert.equal((await h.c.list(VMSNAPSHOTS, NS)).items.length, 1, 'no snapshot taken');
  await updateStatus(h.c, VMRESTORES, 'default', restoreName!, (s) => {
    s.complete = true;
  });
  await phase(h.c, 'c2', 'Succeeded');
  assert.ok(await tryGet(h.c, VMSNAPSHOTS, 'snap'), 'the source snapshot is kept');
});

test('a target that exists already, or a snapshot that fails: Failed with the reason', async () => {
  await using h = await setup();
  await h.c.create(VMS, source());
  await h.c.create(VMS, vmObject('taken', { runStrategy: 'Halted' }));
  await h.c.create(
    VMCLONES,
    cloneObject('c3', {
      source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'src' },
      target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'taken' },
    }),
  );
  await phase(h.c, 'c3', 'Failed');
  assert.match(getCondition({ status: (await h.c.get(VMCLONES, 'c3', NS)).status }, 'Ready')?.message ?? '', /taken already exists/);

  await h.c.create(
    VMCLONES,
    cloneObject('c4', {
      source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'src' },
      target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'dst4' },
    }),
  );
  await phase(h.c, 'c4', 'SnapshotInProgress');
  const { snapshotName } = await cloneStatus(h.c, 'c4');
  await updateStatus(h.c, VMSNAPSHOTS, 'default', snapshotName!, (s) => {
    s.phase = 'Failed';
    s.error = { message: 'disk locked' };
  });
  await phase(h.c, 'c4', 'Failed');
  assert.match(getCondition({ status: (await h.c.get(VMCLONES, 'c4', NS)).status }, 'Ready')?.message ?? '', /failed: disk locked/);
});
