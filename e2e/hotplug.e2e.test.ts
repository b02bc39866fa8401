/**
 * Disk hotplug end to end (the scenario): real server, controllers and node agent in
 * this process, real QEMU (TCG) running the tiny guest. A blank DataVolume is hotplugged into
 * running VM A with `vessel addvolume`; A's user-data script waits for /dev/sda, writes a marker
 * to the raw disk and says so on its console; `vessel removevolume` unplugs it (A sees /dev/sda
 * go); then it is hotplugged into running VM B, whose script reads the marker back. Also:
 * --persist puts a volume in A's template without RestartRequired, and bad requests get clear
 * errors.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { StatusError, type KubeObject, type ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { serialLog, tinyVm as tinyVmFor } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
type Obj = Record<string, unknown>;
interface VolumeStatus {
  name: string;
  target: string;
  phase?: string;
  reason?: string;
  message?: string;
  hotplugVolume?: Obj;
  persistentVolumeClaimInfo?: Obj;
}

let v: Vessel;
const ns = 'default';
const MARKER = `VESSEL-HOTPLUG-MARKER-${process.pid}-${Date.now()}`;

/** A waits for the disk, writes the marker to its first sector, then waits for it to go. */
const WRITER = `#!/bin/sh
while [ ! -b /dev/sda ]; do sleep 1; done
echo "HOTPLUG-SEEN sda $(cat /sys/block/sda/size) sectors"
echo ${MARKER} > /tmp/marker
dd if=/tmp/marker of=/dev/sda bs=512 count=1 conv=sync 2>/dev/null
sync
echo "HOTPLUG-WROTE $?"
while [ -b /dev/sda ]; do sleep 1; done
echo "HOTPLUG-GONE sda"
`;
/** B waits for the disk and prints what its first sector holds. */
const READER = `#!/bin/sh
while [ ! -b /dev/sda ]; do sleep 1; done
echo "HOTPLUG-READ $(dd if=/dev/sda bs=512 count=1 2>/dev/null | tr -d '\\000' | head -n 1)"
size=$(cat /sys/block/sda/size)
while [ -b /dev/sda ] && [ "$(cat /sys/block/sda/size)" = "$size" ]; do sleep 1; done
echo "HOTPLUG-GREW $(cat /sys/block/sda/size) sectors"
`;

const tinyVm = (name: string, userData: string, memory = '128Mi') => tinyVmFor(name, { namespace: ns, userData, memory });
const blankDv = (name: string): Obj => ({
  apiVersion: 'cdi.kubevirt.io/v1beta1',
  kind: 'DataVolume',
  metadata: { name, namespace: ns },
  spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '64Mi' } } } },
});

const serial = (name: string) => serialLog(v.dataDir, ns, name);
async function serialHas(name: string, what: RegExp, timeoutMs = 180_000): Promise<RegExpMatchArray> {
  return eventually(`${what} on ${name}'s serial console`, async () => (await serial(name)).match(what) ?? undefined, timeoutMs, 500);
}
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 60_000 });
const get = (ref: ResourceRef, name: string) => v.client.get(ref, name, { namespace: ns });
const volumeStatus = async (vmi: string): Promise<VolumeStatus[]> =>
  (((await get(VMI, vmi)).status as Obj | undefined)?.volumeStatus as VolumeStatus[] | undefined) ?? [];
const specVolumes = (o: KubeObject, template = false): Obj[] => {
  const spec = (template ? ((o.spec as Obj).template as Obj).spec : o.spec) as Obj;
  return (spec.volumes as Obj[] | undefined) ?? [];
};
/** The VM once the VM controller has written its status for the current generation. */
const settled = (name: string) =>
  eventually(
    `VM ${name}'s status for its generation`,
    async () => {
      const vm = await get(VM, name);
      return (vm.status as Obj | undefined)?.observedGeneration === vm.metadata!.generation ? vm : undefined;
    },
    30_000,
  );
const conditions = (o: KubeObject) => ((o.status as Obj | undefined)?.conditions as { type: string; status: string }[] | undefined) ?? [];
async function put(resource: string, name: string, action: string, body: unknown): Promise<{ code: number; message: string }> {
  try {
    await v.client.request('PUT', `/apis/subresources.kubevirt.io/v1/namespaces/${ns}/${resource}/${name}/${action}`, { body });
    return { code: 202, message: '' };
  } catch (e) {
    if (!(e instanceof StatusError)) throw e;
    return { code: e.code, message: e.message };
  }
}
async function eventReasons(involved: string): Promise<string[]> {
  const list = await v.client.list(EVENTS, { namespace: ns });
  return list.items
    .filter((e) => ((e as Obj).involvedObject as Obj | undefined)?.name === involved)
    .map((e) => `${String((e as Obj).reason)}: ${String((e as Obj).message)}`);
}

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
  // Everything that takes time starts at once: the disks, and both guests booting.
  await v.client.create(DV, blankDv('scratch'), { namespace: ns });
  await v.client.create(DV, blankDv('extra'), { namespace: ns });
  await v.client.create(VM, tinyVm('writer', WRITER), { namespace: ns });
  await v.client.create(VM, tinyVm('reader', READER), { namespace: ns });
  // A VM that cannot be scheduled: its VMI exists but is not running.
  await v.client.create(VM, tinyVm('waiting', READER, '1000Gi'), { namespace: ns });
});
after(async () => {
  for (const vm of (await v.client.list(VM, { namespace: ns })).items) await v.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.close();
});

describe('disk hotplug', () => {
  test('a blank DataVolume hotplugged into A, written, unplugged, then hotplugged into B, which reads it', async () => {
    await serialHas('writer', /VESSEL-USERDATA-START/);
    await serialHas('reader', /VESSEL-USERDATA-START/);
    await eventually(
      'DataVolume scratch Succeeded',
      async () => (((await get(DV, 'scratch')).status as Obj | undefined)?.phase === 'Succeeded' ? true : undefined),
      120_000,
    );

    const added = await vessel('addvolume', 'writer', '--volume-name=scratch', '--serial=SCRATCH1');
    assert.equal(added.code, 0, added.err);
    assert.match(added.out, /Successfully submitted add volume request to VM writer for volume scratch/);
    const seen = await serialHas('writer', /HOTPLUG-SEEN sda (\d+) sectors/);
    assert.equal(Number(seen[1]), 64 * 2048, 'the guest sees a 64Mi disk');
    await serialHas('writer', /HOTPLUG-WROTE 0/);
    const ready = await eventually(
      "scratch Ready in writer's volumeStatus",
      async () => (await volumeStatus('writer')).find((s) => s.name === 'scratch' && s.phase === 'Ready'),
      60_000,
    );
    assert.equal(ready.target, 'sda');
    assert.equal(ready.reason, 'VolumeReady');
    assert.deepEqual(ready.hotplugVolume, {});
    const vmi = await get(VMI, 'writer');
    const vol = specVolumes(vmi).find((x) => x.name === 'scratch');
    assert.deepEqual(vol, { name: 'scratch', dataVolume: { name: 'scratch', hotpluggable: true } });
    assert.ok(!specVolumes(await get(VM, 'writer'), true).some((x) => x.name === 'scratch'), 'without --persist the template is unchanged');

    // The same claim twice into one VM: refused.
    const twice = await put('virtualmachineinstances', 'writer', 'addvolume', {
      name: 'again',
      disk: { disk: { bus: 'scsi' } },
      volumeSource: { dataVolume: { name: 'scratch' } },
    });
    assert.equal(twice.code, 400);
    assert.match(twice.message, /Unable to add volume source \[scratch\] because it already exists/);

    const removed = await vessel('removevolume', 'writer', '--volume-name=scratch');
    assert.equal(removed.code, 0, removed.err);
    await serialHas('writer', /HOTPLUG-GONE sda/);
    await eventually(
      "scratch gone from writer's volumeStatus",
      async () => ((await volumeStatus('writer')).some((s) => s.name === 'scratch') ? undefined : true),
      60_000,
    );
    assert.ok(!specVolumes(await get(VMI, 'writer')).some((x) => x.name === 'scratch'));
    const events = await eventReasons('writer');
    assert.ok(
      events.some((e) => e.startsWith('VolumeReady: Successfully attach hotplugged volume scratch')),
      events.join('\n'),
    );
    assert.ok(
      events.some((e) => e.startsWith('VolumeUnplugged:')),
      events.join('\n'),
    );

    assert.equal((await vessel('addvolume', 'reader', '--volume-name=scratch')).code, 0);
    const read = await serialHas('reader', /HOTPLUG-READ (\S*)/);
    assert.equal(read[1], MARKER, 'B reads what A wrote');

    // Growing the plugged claim: the guest sees the new size, and volumeStatus shows it.
    await v.client.patch(PVC, 'scratch', { spec: { resources: { requests: { storage: '96Mi' } } } }, { namespace: ns });
    const grew = await serialHas('reader', /HOTPLUG-GREW (\d+) sectors/, 120_000);
    assert.equal(Number(grew[1]), 96 * 2048);
    await eventually(
      "scratch at 96Mi in reader's volumeStatus",
      async () => {
        const e = (await volumeStatus('reader')).find((x) => x.name === 'scratch');
        return (e?.persistentVolumeClaimInfo?.capacity as Obj | undefined)?.storage === '96Mi' ? true : undefined;
      },
      60_000,
    );
  });

  test('--persist: the template gets the volume, the running VM gets the disk, and no RestartRequired', async () => {
    await eventually(
      'DataVolume extra Succeeded',
      async () => (((await get(DV, 'extra')).status as Obj | undefined)?.phase === 'Succeeded' ? true : undefined),
      120_000,
    );
    const vmiUid = (await get(VMI, 'writer')).metadata!.uid;
    const dry = await vessel('addvolume', 'writer', '--volume-name=extra', '--persist', '--dry-run');
    assert.equal(dry.code, 0, dry.err);
    assert.ok(!specVolumes(await get(VM, 'writer'), true).some((x) => x.name === 'extra'), 'a dry run changes nothing');

    const r = await vessel('addvolume', 'writer', '--volume-name=extra', '--persist');
    assert.equal(r.code, 0, r.err);
    const vm = await get(VM, 'writer');
    assert.deepEqual(
      specVolumes(vm, true).find((x) => x.name === 'extra'),
      { name: 'extra', dataVolume: { name: 'extra', hotpluggable: true } },
    );
    const disks = ((((vm.spec as Obj).template as Obj).spec as Obj).domain as { devices: { disks: Obj[] } }).devices.disks;
    assert.deepEqual(
      disks.find((d) => d.name === 'extra'),
      { name: 'extra', disk: { bus: 'scsi' } },
    );
    const ready = await eventually(
      "extra Ready in writer's volumeStatus",
      async () => (await volumeStatus('writer')).find((s) => s.name === 'extra' && s.phase === 'Ready'),
      60_000,
    );
    assert.equal(ready.target, 'sda', 'the target scratch left is reused');
    assert.ok(!conditions(await settled('writer')).some((c) => c.type === 'RestartRequired'), 'a persisted hotplug needs no restart');
    assert.equal((await get(VMI, 'writer')).metadata!.uid, vmiUid, 'the same VMI runs on');

    const gone = await vessel('removevolume', 'writer', '--volume-name=extra', '--persist');
    assert.equal(gone.code, 0, gone.err);
    assert.ok(!specVolumes(await get(VM, 'writer'), true).some((x) => x.name === 'extra'));
    await eventually(
      "extra gone from writer's volumeStatus",
      async () => ((await volumeStatus('writer')).some((s) => s.name === 'extra') ? undefined : true),
      60_000,
    );
    assert.ok(!conditions(await settled('writer')).some((c) => c.type === 'RestartRequired'));
    // The control: any other template change does make it RestartRequired.
    await v.client.patch(VM, 'writer', { spec: { template: { spec: { terminationGracePeriodSeconds: 21 } } } }, { namespace: ns });
    assert.ok(conditions(await settled('writer')).some((c) => c.type === 'RestartRequired' && c.status === 'True'));
    await v.client.patch(VM, 'writer', { spec: { template: { spec: { terminationGracePeriodSeconds: 20 } } } }, { namespace: ns });
    assert.ok(!conditions(await settled('writer')).some((c) => c.type === 'RestartRequired'));
  });

  test('bad requests get clear errors', async () => {
    const dv = { dataVolume: { name: 'extra' } };
    const cases: [string, string, string, unknown, number, RegExp][] = [
      ['virtualmachineinstances', 'writer', 'addvolume', undefined, 400, /the request body is empty/],
      [
        'virtualmachineinstances',
        'writer',
        'addvolume',
        { disk: { disk: { bus: 'scsi' } }, volumeSource: dv },
        400,
        /AddVolumeOptions requires name to be set/,
      ],
      ['virtualmachineinstances', 'writer', 'addvolume', { name: 'extra', volumeSource: dv }, 400, /requires disk to not be nil/],
      ['virtualmachineinstances', 'writer', 'addvolume', { name: 'extra', disk: {} }, 400, /requires volumeSource to not be nil/],
      [
        'virtualmachineinstances',
        'writer',
        'addvolume',
        { name: 'root', disk: { disk: { bus: 'scsi' } }, volumeSource: dv },
        400,
        /Unable to add volume \[root\] because volume with that name already exists/,
      ],
      [
        'virtualmachineinstances',
        'writer',
        'addvolume',
        { name: 'nope', disk: { disk: { bus: 'scsi' } }, volumeSource: { persistentVolumeClaim: { claimName: 'nope' } } },
        400,
        /PersistentVolumeClaim default\/nope not found/,
      ],
      ['virtualmachineinstances', 'writer', 'addvolume', { name: 'extra', disk: { disk: { bus: 'virtio' } }, volumeSource: dv }, 400, /must use bus scsi/],
      ['virtualmachineinstances', 'writer', 'removevolume', { name: 'nothere' }, 400, /Unable to remove volume \[nothere\] because it does not exist/],
      ['virtualmachineinstances', 'writer', 'removevolume', { name: 'root' }, 400, /Unable to remove volume \[root\] because it is not hotpluggable/],
      ['virtualmachines', 'writer', 'removevolume', { name: 'root' }, 400, /not hotpluggable/],
      [
        'virtualmachineinstances',
        'waiting',
        'addvolume',
        { name: 'extra', disk: { disk: { bus: 'scsi' } }, volumeSource: dv },
        409,
        /VMI waiting is not running/,
      ],
      ['virtualmachines', 'nosuchvm', 'addvolume', { name: 'extra', disk: { disk: { bus: 'scsi' } }, volumeSource: dv }, 404, /not found/],
    ];
    await eventually('VMI waiting exists', async () => get(VMI, 'waiting'), 60_000);
    for (const [resource, name, action, body, code, message] of cases) {
      const r = await put(resource, name, action, body);
      assert.equal(r.code, code, `${resource}/${name}/${action} ${JSON.stringify(body)}: ${r.message}`);
      assert.match(r.message, message);
    }
    const cli = await vessel('removevolume', 'writer', '--volume-name=root');
    assert.equal(cli.code, 1);
    assert.match(cli.err, /^Error: Unable to remove volume \[root\] because it is not hotpluggable/);
    const usage = await vessel('addvolume', 'writer');
    assert.notEqual(usage.code, 0);
    assert.match(usage.err, /--volume-name/);
    assert.deepEqual(
      specVolumes(await get(VMI, 'writer')).map((x) => x.name),
      ['root', 'cloudinit'],
      'no refused request changed the VMI',
    );
  });
});
