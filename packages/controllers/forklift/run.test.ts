/**
 * A MigrationRun over the in-memory client: at most maxInFlight VMs at once, a VM canceled
 * before it starts and one canceled while it waits for its DataVolume (the volume deleted, the
 * VM Completed with Canceled), the others Completed, and the migration's end per Forklift.
 * DataVolumes are marked Succeeded by the test (no upload), so no bytes move here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { refs } from '@vessel/api';
import { updateStatus } from '@vessel/runtime';
import { InMemoryClient, until } from '../testing/harness.ts';
import { cancelNames, migrationOutcome, MigrationRun, runLimited, type VmStatus } from './migration.ts';
import type { PlanVmResult } from './validation.ts';
import { planAndMigration } from './testdata.ts';

const { DATAVOLUMES, FORKLIFT_MIGRATIONS, VMS } = refs;

test('runLimited: never more than the limit at once, every item once, in order', async () => {
  let now = 0;
  let max = 0;
  const seen: number[] = [];
  await runLimited([1, 2, 3, 4, 5, 6, 7], 3, async (i) => {
    seen.push(i);
    max = Math.max(max, ++now);
    await new Promise((r) => setTimeout(r, 5 + (i % 3) * 5));
    now--;
  });
  assert.equal(max, 3);
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7]);
});

test('cancelNames and migrationOutcome: Forklift matching (id first, else name) and end (Failed > all Canceled > Succeeded)', () => {
  const vm = { id: 'a1', name: 'web' };
  assert.ok(cancelNames([{ id: 'a1' }], vm));
  assert.ok(cancelNames([{ name: 'web' }], vm));
  assert.ok(!cancelNames([{ id: 'b2', name: 'web' }], vm), 'an id decides when given');
  assert.ok(!cancelNames(undefined, vm));
  const done = (t: string) => ({ phase: 'Completed', conditions: [{ type: t, status: 'True' }] });
  assert.equal(migrationOutcome([done('Succeeded'), done('Canceled')]), 'Succeeded');
  assert.equal(migrationOutcome([done('Canceled'), done('Canceled')]), 'Canceled');
  assert.equal(migrationOutcome([done('Canceled'), { phase: 'Failed', conditions: [] }]), 'Failed');
});

test('MigrationRun: maxInFlight 2 over 5 VMs; two canceled (before and during); the others Completed', async () => {
  const c = new InMemoryClient();
  const ns = 'fk';
  const { plan, migration } = await planAndMigration(c, ns, 'ova');
  const vms: PlanVmResult[] = ['a', 'b', 'c', 'd', 'e'].map((n) => ({
    targetName: n,
    ...(n === 'e' ? { diskNames: ['custom-e'] } : {}),
    vm: {
      id: `id-${n}`,
      name: n,
      ovfId: n,
      source: `${n}.ova`,
      osType: '',
      cpus: 1,
      memoryMB: 64,
      firmware: 'bios',
      disks: [{ id: 'd', file: `${n}.vmdk`, capacity: 1 << 20, format: '' }],
      nics: [],
    },
  }));
  const canceled = new Set(['id-c']);
  let inFlight = 0;
  let maxInFlight = 0;
  const run = new MigrationRun(
    c,
    {
      migration,
      plan,
      vms,
      maxInFlight: 2,
      canceled: (v) => canceled.has(v.vm.id),
      initialize: async () => {
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        const open = () => Promise.reject(new Error('no upload expected'));
        return Object.assign(open, { close: async () => void inFlight-- });
      },
      storage: () => ({ storageClass: 'local' }),
      network: () => undefined,
    },
    () => undefined,
  );
  // The "importer": every DataVolume but d's turns Succeeded.
  let stop = false;
  const importer = (async () => {
    while (!stop) {
      for (const dv of (await c.list(DATAVOLUMES, { namespace: ns })).items)
        if (dv.metadata?.name !== 'd-disk0' && (dv.status as { phase?: string } | undefined)?.phase !== 'Succeeded')
          await updateStatus(c, DATAVOLUMES, ns, dv.metadata!.name!, (s) => void (s.phase = 'Succeeded'));
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const done = run.run();
  // d waits for its volume: cancel it there, as `vessel plan cancel --vm d` does.
  await until('d-disk0 created', async () => (await c.list(DATAVOLUMES, { namespace: ns })).items.some((d) => d.metadata?.name === 'd-disk0'), 20_000);
  canceled.add('id-d');
  // A cancel naming a VM already Completed does nothing to it.
  const first = await until(
    'a VM Completed',
    async () => {
      const st = (await c.get(FORKLIFT_MIGRATIONS, 'm', { namespace: ns })).status as { vms?: VmStatus[] } | undefined;
      return st?.vms?.find((x) => x.phase === 'Completed' && x.conditions?.[0]?.type === 'Succeeded')?.id;
    },
    20_000,
  );
  canceled.add(first);
  run.checkCancel();
  await done;
  stop = true;
  await importer;
  const status = (await c.get(FORKLIFT_MIGRATIONS, 'm', { namespace: ns })).status as { vms: VmStatus[]; conditions: { type: string }[] };
  const byName = Object.fromEntries(status.vms.map((v) => [v.name, v]));
  assert.equal(maxInFlight, 2);
  for (const n of ['a', 'b', 'e']) assert.equal(byName[n].conditions?.[0].type, 'Succeeded', n);
  for (const n of ['c', 'd']) {
    assert.equal(byName[n].phase, 'Completed', n);
    assert.deepEqual(
      byName[n].conditions?.map((x) => [x.type, x.reason]),
      [['Canceled', 'UserRequested']],
      n,
    );
  }
  assert.equal(byName.c.started, undefined, 'c never started');
  assert.equal(byName.d.pipeline.find((s) => s.name === 'DiskTransfer')?.phase, 'Canceled');
  const dvs = (await c.list(DATAVOLUMES, { namespace: ns })).items.map((d) => d.metadata?.name).sort();
  assert.deepEqual(dvs, ['a-disk0', 'b-disk0', 'custom-e'], "d's volume deleted, e's named by its template");
  assert.deepEqual((await c.list(VMS, { namespace: ns })).items.map((v) => v.metadata?.name).sort(), ['a', 'b', 'e']);
  assert.equal(status.conditions[0].type, 'Succeeded');
});
