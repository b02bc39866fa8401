/**
 * The ImageConversion step's logic: which guests virt-v2v converts, the plan's Warning concern
 * when no node has it, the step's place in the pipeline, and the request/answer exchange on the
 * claim over the in-memory API (the agent's answers written by the test).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { forklift, refs } from '@vessel/api';
import { InMemoryClient } from '@vessel/apiserver/testing';
import { updateStatus } from '@vessel/runtime';
import { conversionConcerns, conversionWanted, convert, nodeHasVirtV2v, osFamily, SKIPPED_MESSAGE, type ConversionStatus } from './conversion.ts';
import { initialStatus } from './migration.ts';
import type { PlanVmResult } from './validation.ts';

const { PVCS } = refs;
const vm = (osType: string, id = 'a'): PlanVmResult => ({
  targetName: `vm-${id}`,
  vm: {
    id,
    name: `VM ${id}`,
    ovfId: id,
    source: 'x.ova',
    osType,
    cpus: 1,
    memoryMB: 256,
    firmware: 'bios',
    disks: [{ id: 'd', file: 'd.vmdk', capacity: 1 << 20, format: '' }],
    nics: [],
  },
});

test('osFamily / conversionWanted: Windows and Linux guests convert, others not; skipGuestConversion opts out', () => {
  assert.equal(osFamily('debian10_64Guest'), 'linux');
  assert.equal(osFamily('Debian GNU/Linux 12 (64-bit)'), 'linux');
  assert.equal(osFamily('rhel9_64Guest'), 'linux');
  assert.equal(osFamily('other4xLinux64Guest'), 'linux');
  assert.equal(osFamily('windows2019srv_64Guest'), 'windows');
  assert.equal(osFamily('win10Guest'), 'windows');
  assert.equal(osFamily('Microsoft Windows Server 2022'), 'windows');
  assert.equal(osFamily('otherGuest64'), undefined);
  assert.equal(osFamily(''), undefined);
  assert.equal(conversionWanted(vm('debian10_64Guest').vm, {}), true);
  assert.equal(conversionWanted(vm('debian10_64Guest').vm, { skipGuestConversion: true }), false);
  assert.equal(conversionWanted(vm('otherGuest').vm, {}), false);
});

test('conversionConcerns: a Warn naming the VMs that want conversion when no node has virt-v2v', () => {
  const vms = [vm('debian10_64Guest', 'a'), vm('otherGuest', 'b'), vm('win10Guest', 'c')];
  assert.deepEqual(conversionConcerns(vms, {}, true), []);
  assert.deepEqual(conversionConcerns(vms, { skipGuestConversion: true }, false), []);
  assert.deepEqual(conversionConcerns(vms, {}, false), [
    {
      type: 'GuestConversionSkipped',
      status: 'True',
      category: 'Warn',
      reason: 'NotInstalled',
      message: SKIPPED_MESSAGE,
      items: ["id:a name:'VM a'", "id:c name:'VM c'"],
    },
  ]);
  assert.equal(SKIPPED_MESSAGE, 'guest conversion skipped: virt-v2v is not installed');
});

test('nodeHasVirtV2v: a Ready node with the label', () => {
  const node = (labels: Record<string, string>, ready: string) => ({
    metadata: { name: 'n', labels },
    status: { conditions: [{ type: 'Ready', status: ready }] },
  });
  assert.equal(nodeHasVirtV2v(node({ [forklift.NODE_VIRT_V2V]: '2.2.0' }, 'True')), true);
  assert.equal(nodeHasVirtV2v(node({ [forklift.NODE_VIRT_V2V]: '2.2.0' }, 'False')), false);
  assert.equal(nodeHasVirtV2v(node({}, 'True')), false);
});

test('initialStatus: ImageConversion between DiskTransfer and VirtualMachineCreation when the VM converts', () => {
  assert.deepEqual(
    initialStatus(vm('debian10_64Guest'), 't', true).pipeline.map((p) => p.name),
    ['Initialize', 'DiskTransfer', 'ImageConversion', 'VirtualMachineCreation'],
  );
  assert.deepEqual(
    initialStatus(vm('debian10_64Guest'), 't').pipeline.map((p) => p.name),
    ['Initialize', 'DiskTransfer', 'VirtualMachineCreation'],
  );
});

test('convert: the request on the first claim, progress from the agent answer, Succeeded resolves, Failed throws its reason', async () => {
  const c = new InMemoryClient();
  await c.create(refs.NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 't' } });
  for (const n of ['x-disk0', 'x-disk1'])
    await c.create(
      PVCS,
      {
        apiVersion: 'v1',
        kind: 'PersistentVolumeClaim',
        metadata: { name: n, namespace: 't' },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Mi' } } },
      },
      { namespace: 't' },
    );
  const req: forklift.ConversionRequest = { id: 'm1/a', claims: ['x-disk0', 'x-disk1'], firmware: 'bios', name: 'x', memoryMB: 256, cpus: 1 };
  const answer = (s: ConversionStatus) =>
    c.patch(PVCS, 'x-disk0', { metadata: { annotations: { [forklift.CONVERSION_STATUS]: JSON.stringify(s) } } }, { namespace: 't' });
  // An answer to an earlier request is not this one's.
  await answer({ id: 'm0/a', phase: 'Failed', message: 'old' });
  const seen: ConversionStatus[] = [];
  const run = convert(
    c,
    't',
    req.claims,
    req,
    (s) => seen.push(s),
    () => false,
    5,
  );
  for (let i = 0; i < 100; i++) {
    const a = (await c.get(PVCS, 'x-disk0', { namespace: 't' })).metadata?.annotations ?? {};
    if (a[forklift.CONVERT_REQUEST]) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const pvc = await c.get(PVCS, 'x-disk0', { namespace: 't' });
  assert.deepEqual(JSON.parse(pvc.metadata!.annotations![forklift.CONVERT_REQUEST]), req);
  await answer({ id: 'm1/a', phase: 'Running', stage: 'Inspecting the source', stages: { completed: 2, total: 6 } });
  await new Promise((r) => setTimeout(r, 30));
  await answer({ id: 'm1/a', phase: 'Succeeded', stages: { completed: 6, total: 6 }, seconds: 12.5 });
  const done = await run;
  assert.equal(done.phase, 'Succeeded');
  assert.ok(seen.some((s) => s.stage === 'Inspecting the source'));
  assert.ok(!seen.some((s) => s.id === 'm0/a'));

  // A second request (another migration) fails with the agent's reason.
  const again = convert(
    c,
    't',
    req.claims,
    { ...req, id: 'm2/a' },
    () => undefined,
    () => false,
    5,
  );
  await new Promise((r) => setTimeout(r, 30));
  await answer({ id: 'm2/a', phase: 'Failed', message: 'ConversionFailed: inspection could not detect the source guest (or physical machine).' });
  await assert.rejects(again, /ConversionFailed: inspection could not detect/);
});

test("the step's reason, warning and annotations are what Forklift's Migration schema accepts (a string warning is not)", async () => {
  const c = new InMemoryClient();
  await c.create(refs.NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 't' } });
  await c.create(
    refs.FORKLIFT_MIGRATIONS,
    { apiVersion: 'forklift.konveyor.io/v1beta1', kind: 'Migration', metadata: { name: 'm', namespace: 't' }, spec: { plan: { name: 'p', namespace: 't' } } },
    { namespace: 't' },
  );
  const s = initialStatus(vm('debian10_64Guest'), 't', true);
  const step = s.pipeline.find((p) => p.name === 'ImageConversion')!;
  Object.assign(step, {
    phase: 'Completed',
    reason: 'Converting Debian 12 to run on KVM',
    warning: { phase: 'ImageConversion', reasons: ['could not determine a way to update the configuration of Grub2'] },
    annotations: { seconds: '1547.3' },
  });
  await updateStatus(c, refs.FORKLIFT_MIGRATIONS, 't', 'm', (st) => {
    st.vms = [s];
  });
  const got = (await c.get(refs.FORKLIFT_MIGRATIONS, 'm', { namespace: 't' })).status as { vms: { pipeline: { name: string; warning?: unknown }[] }[] };
  assert.deepEqual(got.vms[0].pipeline[2].warning, step.warning);
  await assert.rejects(
    updateStatus(c, refs.FORKLIFT_MIGRATIONS, 't', 'm', (st) => {
      st.vms = [{ ...s, pipeline: s.pipeline.map((p) => (p.name === 'ImageConversion' ? { ...p, warning: 'a string' } : p)) }];
    }),
    /warning/,
  );
});
