/**
 * Disk hotplug against a real QEMU (TCG, started paused with -S: SCSI hotplug needs no guest):
 * attach, detach, re-adoption by a fresh VolumeHotplug (an agent restart), leftovers of an
 * interrupted attach, a hotplug volume cold-plugged by the argv builder, and the refusals.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { storage } from '@vessel/api';
import type { KubeObject } from '@vessel/runtime';
import { buildQemuArgv } from '../qemu/argv.ts';
import { PathError } from '../storage/pools.ts';
import { QmpClient } from '../qmp/client.ts';
import { isHotpluggable, mergeVolumeStatus, scsiTargetName, VolumeHotplug, type HotplugDeps, type HotplugQmp, type VolumeStatusEntry } from './hotplug.ts';

type Obj = Record<string, unknown>;

test('target names, hotpluggable volumes, volumeStatus merging', () => {
  assert.deepEqual([0, 1, 25, 26, 27, 51, 52, 255].map(scsiTargetName), ['sda', 'sdb', 'sdz', 'sdaa', 'sdab', 'sdaz', 'sdba', 'sdiv']);
  assert.equal(isHotpluggable({ name: 'a', dataVolume: { name: 'a', hotpluggable: true } }), true);
  assert.equal(isHotpluggable({ name: 'a', persistentVolumeClaim: { claimName: 'a', hotpluggable: true } }), true);
  assert.equal(isHotpluggable({ name: 'a', dataVolume: { name: 'a' } }), false);
  const root = { name: 'root', target: 'vda' };
  const old = { name: 'x', target: 'sda', phase: 'Ready', hotplugVolume: {} };
  const fresh = { name: 'y', target: 'sdb', phase: 'Ready', hotplugVolume: {} };
  assert.deepEqual(mergeVolumeStatus([root, old], [fresh]), [root, fresh]);
  assert.deepEqual(mergeVolumeStatus(undefined, []), []);
});

const QEMU = 'qemu-system-x86_64';
const haveQemu = spawnSync(QEMU, ['--version']).status === 0 && spawnSync('qemu-img', ['--version']).status === 0;

describe('hotplug with a real QEMU', { skip: haveQemu ? false : 'qemu-system-x86_64 or qemu-img missing' }, () => {
  let dir: string;
  let qemu: ChildProcess;
  let qmp: QmpClient;
  const commands: string[] = [];
  /** The QMP client, recording which commands hotplug sends. */
  let recording: HotplugQmp;
  const claims = new Map<string, KubeObject>();
  const events: string[] = [];
  const vmi: KubeObject = { metadata: { name: 'hot', namespace: 'default', uid: 'u1' }, spec: {}, status: { phase: 'Running' } };
  const deps: HotplugDeps = {
    claim: (ns, name) => claims.get(`${ns}/${name}`),
    locate: (_ns, path) => {
      if (!path.startsWith(dir)) throw new PathError('PathNotInPool', 'not here');
      return path;
    },
    event: async (_vmi, type, reason, message) => {
      events.push(`${type} ${reason} ${message}`);
    },
    writeVolumeStatus: async (_vmi, entries) => {
      const status = vmi.status as Obj;
      status.volumeStatus = mergeVolumeStatus(status.volumeStatus, entries);
    },
  };
  const volumeStatus = () => (vmi.status as Obj).volumeStatus as VolumeStatusEntry[];
  const entry = (name: string) => volumeStatus().find((e) => e.name === name);
  const claim = (name: string, bound = true) =>
    claims.set(`default/${name}`, {
      metadata: { name, namespace: 'default', annotations: bound ? { [storage.VOLUME_PATH]: join(dir, `${name}.qcow2`) } : {} },
      spec: { accessModes: ['ReadWriteOnce'] },
      status: { phase: bound ? 'Bound' : 'Pending', capacity: { storage: '16Mi' } },
    });
  const spec = (disks: Obj[], volumes: Obj[]): V1VirtualMachineInstanceSpec =>
    ({
      domain: { memory: { guest: '64Mi' }, devices: { disks, interfaces: [], autoattachPodInterface: false, autoattachGraphicsDevice: false } },
      volumes,
    }) as unknown as V1VirtualMachineInstanceSpec;
  const hotDisk = (name: string, extra: Obj = {}) => ({ name, disk: { bus: 'scsi' }, ...extra });
  const hotVolume = (name: string) => ({ name, dataVolume: { name, hotpluggable: true } });
  const peripherals = async () => (await qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' })).map((p) => p.name);
  const nodeNames = async () => (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true })).map((n) => n['node-name']);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vessel-hotplug-'));
    for (const name of ['cold', 'hot', 'other']) {
      const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, `${name}.qcow2`), '16M'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      claim(name);
    }
    // Started with `cold`, a hotplug volume persisted in the VM's template: the argv builder plugs it.
    vmi.spec = spec([hotDisk('cold')], [hotVolume('cold')]);
    const built = buildQemuArgv({ vmi: vmi as never, accel: 'tcg', volumes: { cold: { path: join(dir, 'cold.qcow2'), format: 'qcow2' } } });
    const socket = join(dir, 'qmp.sock');
    const args = [...built.argv, ...built.chardevs.flatMap((c) => ['-chardev', `null,id=${c.id}`]), '-S', '-qmp', `unix:${socket},server=on,wait=off`];
    qemu = spawn(QEMU, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    qmp = await QmpClient.connect(socket, { timeoutMs: 60_000, waitForSocket: true });
    recording = {
      execute: (command, a, o) => {
        commands.push(command);
        return qmp.execute(command, a, o);
      },
      waitForEvent: (event, o) => qmp.waitForEvent(event, o),
    } as HotplugQmp;
  });
  after(async () => {
    await qmp?.execute('quit').catch(() => undefined);
    await qmp?.close();
    qemu?.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  test('a hotplug volume plugged at start is found attached: no second attach', async () => {
    const h = new VolumeHotplug(deps);
    assert.deepEqual(await h.sync(vmi, recording), {});
    assert.ok(!commands.includes('blockdev-add') && !commands.includes('device_add'), commands.join(' '));
    assert.deepEqual(
      { ...entry('cold'), persistentVolumeClaimInfo: undefined },
      {
        name: 'cold',
        target: 'sda',
        phase: 'Ready',
        reason: 'VolumeReady',
        message: 'Successfully attach hotplugged volume cold to VM',
        hotplugVolume: {},
        persistentVolumeClaimInfo: undefined,
      },
    );
    assert.equal(entry('cold')?.persistentVolumeClaimInfo?.claimName, 'cold');
    assert.match(events.join('\n'), /Normal VolumeReady Successfully attach hotplugged volume cold/);
  });

  test('attach: blockdev-add (file + qcow2) and a scsi-hd on the next free target', async () => {
    vmi.spec = spec([hotDisk('cold'), hotDisk('hot', { serial: 'HOT01' })], [hotVolume('cold'), hotVolume('hot')]);
    commands.length = 0;
    assert.deepEqual(await new VolumeHotplug(deps).sync(vmi, recording), {});
    assert.deepEqual(
      commands.filter((c) => !c.startsWith('q')),
      ['blockdev-add', 'blockdev-add', 'device_add'],
    );
    assert.equal(entry('hot')?.phase, 'Ready');
    assert.equal(entry('hot')?.target, 'sdb');
    assert.ok((await peripherals()).includes('ua-hot'));
    assert.ok((await nodeNames()).includes('disk-hot'));
    assert.equal(await qmp.execute('qom-get', { path: '/machine/peripheral/ua-hot', property: 'serial' }), 'HOT01');
  });

  test('a restarted agent re-adopts: nothing is attached twice', async () => {
    commands.length = 0;
    events.length = 0;
    const before = structuredClone(volumeStatus());
    assert.deepEqual(await new VolumeHotplug(deps).sync(vmi, recording), {});
    assert.deepEqual(
      commands.filter((c) => !c.startsWith('q')),
      [],
    );
    assert.deepEqual(volumeStatus(), before);
    assert.deepEqual(events, [], 'no new Events for what was already Ready');
  });

  test('detach: device_del, DEVICE_DELETED, blockdev-del; the status entry goes', async () => {
    vmi.spec = spec([hotDisk('cold')], [hotVolume('cold')]);
    commands.length = 0;
    assert.deepEqual(await new VolumeHotplug(deps).sync(vmi, recording), {});
    assert.deepEqual(
      commands.filter((c) => !c.startsWith('q')),
      ['device_del', 'blockdev-del', 'blockdev-del'],
    );
    assert.ok(!(await peripherals()).includes('ua-hot'));
    assert.ok(!(await nodeNames()).some((n) => n.endsWith('-hot')));
    assert.equal(entry('hot'), undefined);
    assert.match(events.join('\n'), /Normal VolumeUnplugged Volume hot has been unplugged/);
    // The file is free again: another process can open it for writing.
    const r = spawnSync('qemu-img', ['info', '-U', join(dir, 'hot.qcow2')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  });

  test('the nodes of an interrupted attach are made again; the freed target is reused', async () => {
    await qmp.execute('blockdev-add', { driver: 'file', filename: join(dir, 'hot.qcow2'), 'node-name': 'file-hot' });
    await qmp.execute('blockdev-add', { driver: 'qcow2', file: 'file-hot', 'node-name': 'disk-hot' });
    vmi.spec = spec([hotDisk('cold'), hotDisk('hot')], [hotVolume('cold'), hotVolume('hot')]);
    commands.length = 0;
    assert.deepEqual(await new VolumeHotplug(deps).sync(vmi, recording), {});
    assert.deepEqual(
      commands.filter((c) => !c.startsWith('q')),
      ['blockdev-del', 'blockdev-del', 'blockdev-add', 'blockdev-add', 'device_add'],
    );
    assert.equal(entry('hot')?.target, 'sdb');
  });

  test('a volume persisted at start can be unplugged too', async () => {
    vmi.spec = spec([hotDisk('hot')], [hotVolume('hot')]);
    assert.deepEqual(await new VolumeHotplug(deps).sync(vmi, recording), {});
    assert.ok(!(await peripherals()).includes('ua-cold'));
    assert.ok(!(await nodeNames()).some((n) => n.endsWith('-cold')));
    assert.deepEqual(
      volumeStatus().map((e) => e.name),
      ['hot'],
    );
  });

  test('waiting and refusals are reported in volumeStatus', async () => {
    claim('other', false);
    vmi.spec = spec(
      [hotDisk('hot'), hotDisk('other'), { name: 'virt', disk: { bus: 'virtio' } }, hotDisk('nothere')],
      [hotVolume('hot'), hotVolume('other'), hotVolume('virt'), hotVolume('nothere')],
    );
    claim('virt');
    events.length = 0;
    const r = await new VolumeHotplug(deps).sync(vmi, recording);
    assert.equal(r.retryMs, 3000);
    assert.equal(entry('other')?.phase, 'Pending');
    assert.equal(entry('other')?.reason, 'PvcNotReady');
    assert.equal(entry('virt')?.reason, 'UnsupportedBus');
    assert.match(entry('virt')?.message ?? '', /must use bus scsi, not virtio/);
    assert.equal(entry('nothere')?.reason, 'PvcNotFound');
    assert.ok(!events.some((e) => e.includes('PvcNotReady') || e.includes('Bound')), 'waiting for a claim is no Warning');
    assert.match(events.join('\n'), /Warning HotplugFailed volume virt: a hotplugged disk must use bus scsi/);
    claim('other');
    assert.equal((await new VolumeHotplug(deps).sync(vmi, recording)).retryMs, 3000, 'nothere still waits');
    assert.equal(entry('other')?.phase, 'Ready');
    assert.equal(entry('other')?.target, 'sda', 'the target cold left is free again');
  });

  test('a volume another QEMU holds cannot be attached; the error says so and it is retried', async () => {
    const holder = spawn('qemu-io', ['-f', 'qcow2', join(dir, 'cold.qcow2')], { stdio: ['pipe', 'ignore', 'ignore'] });
    await new Promise((r) => setTimeout(r, 500));
    try {
      vmi.spec = spec([hotDisk('hot'), hotDisk('cold')], [hotVolume('hot'), hotVolume('cold')]);
      const r = await new VolumeHotplug(deps).sync(vmi, recording);
      assert.equal(r.retryMs, 10_000);
      assert.equal(entry('cold')?.reason, 'AttachFailed');
      assert.match(entry('cold')?.message ?? '', /lock/);
      assert.ok(!(await nodeNames()).some((n) => n.endsWith('-cold')), 'a failed attach leaves no nodes behind');
    } finally {
      holder.kill('SIGKILL');
    }
  });
});
