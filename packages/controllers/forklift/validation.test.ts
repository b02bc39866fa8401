/** Map and plan validation: Forklift's condition types and categories from an inventory and the target cluster. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Inventory, InventoryVm } from './ova.ts';
import { networkMapConcerns, planConcerns, ready, rfc1123Name, storageMapConcerns, toConditions, type PlanContext } from './validation.ts';

const GiB = 1024 ** 3;
const vm = (id: string, name: string, over: Partial<InventoryVm> = {}): InventoryVm => ({
  id,
  name,
  ovfId: name,
  source: `${name}.ova`,
  osType: 'otherGuest',
  cpus: 1,
  memoryMB: 256,
  firmware: 'bios',
  disks: [{ id: 'd1', file: 'd1.vmdk', capacity: GiB, format: '' }],
  nics: [{ name: 'nic0', network: 'VM Network', mac: '00:50:56:00:00:01' }],
  ...over,
});
const inv: Inventory = {
  vms: [
    vm('1', 'web'),
    vm('2', 'Bad_Name.example', { source: 'bad.ova' }),
    vm('3', 'efi-vm', { firmware: 'efi', source: 'web.ova' }),
    vm('4', 'odd', { firmware: 'coreboot', source: 'web.ova', nics: [{ name: 'n', network: 'lab' }] }),
    vm('5', 'huge', { source: 'web.ova', disks: [{ id: 'd', file: 'd', capacity: 10 * GiB, format: '' }] }),
  ],
  networks: [
    { id: 'VM Network', name: 'VM Network' },
    { id: 'lab', name: 'lab' },
  ],
  datastores: [
    { id: 'web.ova', name: 'web.ova' },
    { id: 'bad.ova', name: 'bad.ova' },
  ],
  hosts: [],
  errors: [],
};
const meta = { name: 'm', namespace: 'ns' };

test('NetworkMap: Ready when every source network exists and every NAD destination exists', () => {
  const map = (src: object, dst: object) => ({ metadata: meta, spec: { map: [{ source: src, destination: dst }] } });
  const nad = (ns: string, name: string) => ns === 'ns' && name === 'blue';
  assert.ok(ready(networkMapConcerns(map({ name: 'VM Network' }, { type: 'pod' }), inv, nad)));
  assert.ok(ready(networkMapConcerns(map({ id: 'lab' }, { type: 'multus', name: 'blue' }), inv, nad)));
  const c = networkMapConcerns(map({ name: 'nope' }, { type: 'multus', name: 'red' }), inv, nad);
  assert.deepEqual(
    c.map((x) => [x.type, x.reason, x.category, x.items]),
    [
      ['SourceNetworkNotValid', 'NotFound', 'Critical', ['[0]']],
      ['DestinationNetworkNotValid', 'NotFound', 'Critical', ['[0]']],
    ],
  );
  assert.ok(!ready(networkMapConcerns(map({}, { type: 'ignored' }), inv, nad)));
  assert.equal(networkMapConcerns(map({ name: 'lab' }, { type: 'pod' }), undefined, nad)[0].type, 'SourceProviderNotReady');
});

test('StorageMap: Ready when every source datastore (OVA) and StorageClass exist', () => {
  const map = (src: object, sc: string) => ({ metadata: meta, spec: { map: [{ source: src, destination: { storageClass: sc } }] } });
  assert.ok(ready(storageMapConcerns(map({ name: 'web.ova' }, 'local'), inv, (n) => n === 'local')));
  assert.deepEqual(
    storageMapConcerns(map({ name: 'x.ova' }, 'gold'), inv, (n) => n === 'local').map((x) => x.type),
    ['SourceStorageNotValid', 'DestinationStorageNotValid'],
  );
});

test('Plan: concerns per VM as Forklift reports them; Ready only without a Critical one', () => {
  const nm = { metadata: meta, spec: { map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] } };
  const sm = { metadata: meta, spec: { map: [{ source: { name: 'web.ova' }, destination: { storageClass: 'small' } }] } };
  const ctx: PlanContext = {
    inventory: inv,
    networkMap: nm,
    storageMap: sm,
    vmExists: (ns, name) => ns === 'target' && name === 'web',
    classMaxBytes: (sc) => (sc === 'small' ? 4 * GiB : undefined),
    mapReady: () => true,
  };
  const plan = (vms: object[]) => ({ metadata: meta, spec: { targetNamespace: 'target', vms } });
  const ok = planConcerns(plan([{ name: 'efi-vm' }]), ctx);
  assert.ok(ready(ok.concerns));
  assert.equal(ok.concerns.at(-1)?.type, 'Ready');
  const { concerns, vms } = planConcerns(plan([{ name: 'web' }, { id: '2' }, { name: 'odd' }, { name: 'huge' }, { name: 'ghost' }]), ctx);
  const by = Object.fromEntries(concerns.map((c) => [c.type, c]));
  assert.equal(by.VMAlreadyExists.category, 'Critical');
  assert.deepEqual(by.VMAlreadyExists.items, ["id:1 name:'web'"]);
  assert.equal(by.TargetNameNotValid.category, 'Warn');
  assert.match(by.TargetNameNotValid.items![0], /newName:'bad-name-example'/);
  assert.equal(vms.find((v) => v.vm.id === '2')?.newName, 'bad-name-example');
  assert.deepEqual(by.VMStorageNotMapped.items, ["id:2 name:'Bad_Name.example'"]);
  assert.deepEqual(by.VMNetworksNotMapped.items, ["id:4 name:'odd'"]);
  assert.match(by.UnsupportedFirmware.items![0], /coreboot/);
  assert.deepEqual(by.InvalidDiskSizes.items, ["id:5 name:'huge'"]);
  assert.deepEqual(by.VMNotFound.items, ['name:ghost']);
  assert.ok(!ready(concerns));
  assert.ok(!concerns.some((c) => c.type === 'Ready'));
  const warm = planConcerns({ metadata: meta, spec: { targetNamespace: 'Bad NS', warm: true, vms: [] } }, { ...ctx, networkMap: undefined });
  assert.deepEqual(
    warm.concerns.map((c) => c.type),
    ['NamespaceNotValid', 'MigrationTypeNotValid', 'NetworkMapRefNotValid'],
  );
  // Warm from the host openshift provider (this cluster's agents on both sides) is allowed.
  const hostWarm = planConcerns(
    { metadata: meta, spec: { targetNamespace: 'Bad NS', warm: true, vms: [] } },
    { ...ctx, networkMap: undefined, warmSupported: true },
  );
  assert.ok(!hostWarm.concerns.some((c) => c.type === 'MigrationTypeNotValid'));
});

test('rfc1123Name and stored conditions', () => {
  assert.equal(rfc1123Name('My VM (prod)_01'), 'my-vm-prod-01');
  assert.equal(rfc1123Name('x'.repeat(80)).length, 63);
  const c = toConditions(
    [{ type: 'Ready', status: 'True', category: 'Required', message: 'ok' }],
    [{ type: 'Ready', status: 'True', lastTransitionTime: 'then' }],
    'now',
  );
  assert.deepEqual(c, [{ type: 'Ready', status: 'True', category: 'Required', message: 'ok', lastTransitionTime: 'then' }]);
});

test('Plan: pvcNameTemplate rendered per disk (the VM one over the plan one), invalid or duplicate names Critical; hooks resolved', () => {
  const nm = { metadata: meta, spec: { map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] } };
  const sm = { metadata: meta, spec: { map: [{ source: { name: 'web.ova' }, destination: { storageClass: 'local' } }] } };
  const ctx: PlanContext = {
    inventory: inv,
    networkMap: nm,
    storageMap: sm,
    vmExists: () => false,
    classMaxBytes: () => undefined,
    mapReady: () => true,
    hookState: (ns, name) => (name === 'ok' ? 'Ready' : name === 'broken' ? 'NotReady' : 'NotFound'),
  };
  const plan = (spec: object) => ({ metadata: { name: 'p1', namespace: 'ns' }, spec: { targetNamespace: 'target', ...spec } });
  const good = planConcerns(
    plan({
      pvcNameTemplate: '{{.PlanName}}-{{.VmName}}-{{.DiskIndex}}',
      vms: [
        { name: 'efi-vm', hooks: [{ hook: { name: 'ok' }, step: 'PreHook' }] },
        { name: 'huge', pvcNameTemplate: 'big-{{.DiskIndex}}' },
        // .FileName: the OVF's href of the disk (d1.vmdk); .WinDriveLetter: '' (no guest-agent data).
        { name: 'web', pvcNameTemplate: '{{printf "%.2s" .FileName}}{{.WinDriveLetter}}-{{.DiskIndex}}' },
      ],
    }),
    ctx,
  );
  assert.ok(ready(good.concerns), JSON.stringify(good.concerns));
  assert.deepEqual(
    good.vms.map((v) => v.diskNames),
    [['p1-efi-vm-0'], ['big-0'], ['d1-0']],
  );
  assert.deepEqual(good.vms[0].hooks, [{ step: 'PreHook', namespace: 'ns', name: 'ok' }]);
  const bad = planConcerns(
    plan({
      pvcNameTemplate: 'same',
      vms: [
        {
          name: 'efi-vm',
          hooks: [
            { hook: { name: 'ghost' }, step: 'PreHook' },
            { hook: { name: 'broken' }, step: 'PostHook' },
            { hook: { name: 'ok' }, step: 'During' },
          ],
        },
        { name: 'huge' },
        { name: 'odd', pvcNameTemplate: '{{.Bad}}' },
        { name: 'web', pvcNameTemplate: 'w-{{.DiskIndex}}', hooks: [{ hook: { name: 'ok', namespace: 'other' }, step: 'PreHook' }] },
      ],
    }),
    ctx,
  );
  const by = (t: string) => bad.concerns.filter((c) => c.type === t);
  assert.deepEqual(
    by('PVCNameTemplateNotValid').flatMap((c) => c.items),
    [
      `id:5 name:'huge' "same" names two disks of the plan`,
      `id:4 name:'odd' unknown variable .Bad: one of .VmName, .PlanName, .DiskIndex, .RootDiskIndex, .Shared, .FileName, .WinDriveLetter`,
    ],
  );
  assert.equal(by('PVCNameTemplateNotValid')[0].category, 'Critical');
  assert.deepEqual(
    by('HookNotValid').map((c) => [c.reason, c.items]),
    [
      ['NotFound', [`id:3 name:'efi-vm' hook:ns/ghost`]],
      ['NotReady', [`id:3 name:'efi-vm' hook:ns/broken`]],
      ['NotPermitted', [`id:1 name:'web' hook:other/ok`]],
    ],
  );
  assert.deepEqual(by('HookStepNotValid')[0].items, [`id:3 name:'efi-vm' step:'During'`]);
  assert.ok(!ready(bad.concerns));
});
