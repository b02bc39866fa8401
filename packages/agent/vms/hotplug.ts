/**
 * Disk hotplug on a running VM (KubeVirt's hotplug volumes), over QMP. The VMI spec says what
 * should be attached: every volume with `dataVolume.hotpluggable` or
 * `persistentVolumeClaim.hotpluggable` set, with the disk of the same name. `sync()` makes the
 * running QEMU match it:
 *
 * - attach: the claim's volume file (its `vessel.io/volume-path`) is opened with `blockdev-add`
 *   (file node + qcow2 node, named like the argv builder names cold-plugged disks) and plugged as
 *   a `scsi-hd` on the virtio-scsi controller every VM has (`scsi0`), on the lowest free SCSI
 *   target, with device id `ua-<name>`;
 * - detach: every SCSI disk QEMU has that the spec no longer lists (and every volume the status
 *   still shows as hotplugged) is unplugged with `device_del`, then, once QEMU reports
 *   DEVICE_DELETED, its block nodes are closed with `blockdev-del`, so another VM can open the
 *   volume.
 *
 * QEMU itself is the record of what is attached (`qom-list /machine/peripheral`,
 * `query-named-block-nodes`), so a restarted agent that re-adopts a QEMU picks up where it was:
 * nothing is attached twice, and the nodes of an attach interrupted half-way are closed and made
 * again. Hotplug volumes present when the VM started were plugged by the argv builder under the
 * same names and are found attached.
 *
 * The outcome is written to the VMI's `status.volumeStatus` in KubeVirt's shape (phase Ready,
 * reason VolumeReady, target `sdX`, `hotplugVolume: {}`) and as Events (VolumeReady,
 * VolumeUnplugged, HotplugFailed). Other volumeStatus entries are left as they are.
 */
import type { V1Disk, V1VirtualMachineInstanceSpec, V1Volume } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import type { Client } from '@vessel/client';
import { refs } from '@vessel/api';
import { updateStatus, type EventRecorder, type KubeObject } from '@vessel/runtime';
import { blockNodeNames, deviceId, SCSI_CONTROLLER_ID } from '../qemu/argv.ts';
import type { QmpClient } from '../qmp/client.ts';
import { QmpError } from '../qmp/errors.ts';
import { claimVolumePath, PrepareError } from './prepare.ts';

type Obj = Record<string, unknown>;
/** The part of the QMP client hotplug uses (a fake in unit tests). */
export type HotplugQmp = Pick<QmpClient, 'execute' | 'waitForEvent'>;

/** One entry of a VMI's status.volumeStatus (KubeVirt's VolumeStatus). */
export interface VolumeStatusEntry {
  name: string;
  target: string;
  phase?: string;
  reason?: string;
  message?: string;
  hotplugVolume?: Record<string, string>;
  persistentVolumeClaimInfo?: Obj;
}

export interface HotplugDeps {
  /** Claims by namespace and name, from the agent's cache. */
  claim(namespace: string, name: string): KubeObject | undefined;
  /** A claim's recorded volume path as a file of this node's pools in `namespace`'s directory, or a PathError (see PrepareContext.locate). */
  locate(namespace: string, path: string): string;
  event(vmi: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void>;
  /** Replaces the hotplug entries (those with hotplugVolume) of the VMI's status.volumeStatus. */
  writeVolumeStatus(vmi: KubeObject, entries: VolumeStatusEntry[]): Promise<void>;
  log?: (line: string) => void;
}

export interface HotplugResult {
  /** Something is not done yet (a claim still filling, a device that would not go): sync again after this long. */
  retryMs?: number;
}

/** QOM types of the devices that sit on the virtio-scsi bus and can be unplugged from it. */
const SCSI_TYPES = new Set(['scsi-hd', 'scsi-cd', 'scsi-block', 'scsi-generic']);
/** virtio-scsi addresses targets 0-255 (lun 0 on each). */
const MAX_SCSI_TARGET = 255;
const DETACH_TIMEOUT_MS = 60_000;
const RETRY_PENDING_MS = 3_000;
const RETRY_FAILED_MS = 10_000;

/** Whether a volume is hotpluggable (KubeVirt: `hotpluggable: true` on its dataVolume or persistentVolumeClaim). */
export function isHotpluggable(v: V1Volume | Obj): boolean {
  const o = v as Obj;
  return (o.dataVolume as Obj | undefined)?.hotpluggable === true || (o.persistentVolumeClaim as Obj | undefined)?.hotpluggable === true;
}

/** libvirt's name for SCSI disk `n`: sda ... sdz, sdaa ... */
export function scsiTargetName(n: number): string {
  let s = '';
  for (let i = n; i >= 0; i = Math.floor(i / 26) - 1) s = String.fromCharCode(97 + (i % 26)) + s;
  return `sd${s}`;
}

/** What QEMU has now: devices with ids (`/machine/peripheral/<id>`) by QOM type, and every block node. */
interface QemuDisks {
  devices: Map<string, string>;
  nodes: Set<string>;
}

class HotplugFailure extends Error {
  constructor(
    readonly reason: string,
    message: string,
    readonly retryMs?: number,
  ) {
    super(message);
    this.name = 'HotplugFailure';
  }
}

export class VolumeHotplug {
  constructor(private readonly deps: HotplugDeps) {}

  /**
   * Attaches and detaches until QEMU has exactly the hotplug volumes the VMI spec lists. `qmp`
   * undefined (no QEMU of this VMI here) does nothing.
   */
  async sync(vmi: KubeObject, qmp: HotplugQmp | undefined): Promise<HotplugResult> {
    if (!qmp) return {};
    const spec = (vmi.spec ?? {}) as V1VirtualMachineInstanceSpec;
    const volumes = spec.volumes ?? [];
    const disks = spec.domain?.devices?.disks ?? [];
    const diskNames = new Set(disks.map((d) => d.name));
    const volumeNames = new Set(volumes.map((v) => v.name));
    const before = new Map(hotplugEntries(vmi).map((e) => [e.name, e]));
    const qemu = await inspect(qmp);
    const entries: VolumeStatusEntry[] = [];
    let retryMs: number | undefined;
    const retryIn = (ms: number) => {
      retryMs = Math.min(retryMs ?? ms, ms);
    };

    // Detach first: that frees SCSI targets and claims for what comes next.
    const gone = new Set<string>();
    for (const [id, type] of qemu.devices) {
      if (id.startsWith('ua-') && SCSI_TYPES.has(type) && !diskNames.has(id.slice(3))) gone.add(id.slice(3));
    }
    for (const name of before.keys()) if (!volumeNames.has(name)) gone.add(name);
    for (const name of gone) {
      const had = qemu.devices.has(deviceId(name));
      try {
        await this.detach(qmp, qemu, name);
        if (had) await this.deps.event(vmi, 'Normal', 'VolumeUnplugged', `Volume ${name} has been unplugged from the VM`);
      } catch (e) {
        const message = `cannot unplug volume ${name}: ${errorText(e)}`;
        const prev = before.get(name);
        if (prev?.message !== message) await this.deps.event(vmi, 'Warning', 'HotplugFailed', message);
        entries.push({ name, target: prev?.target ?? '', phase: 'Detaching', reason: 'VolumeDetachFailed', message, hotplugVolume: {} });
        retryIn(RETRY_FAILED_MS);
      }
    }

    for (const vol of volumes.filter(isHotpluggable)) {
      const prev = before.get(vol.name);
      const claimName = vol.dataVolume?.name ?? vol.persistentVolumeClaim?.claimName ?? '';
      const pvc = this.deps.claim(vmi.metadata.namespace ?? '', claimName);
      const claimInfo = pvc ? claimInfoOf(pvc, claimName) : undefined;
      try {
        const target = qemu.devices.has(deviceId(vol.name))
          ? await targetOf(qmp, qemu, vol.name)
          : await this.attach(
              vmi,
              qmp,
              qemu,
              vol,
              disks.find((d) => d.name === vol.name),
              pvc,
              claimName,
            );
        const message = `Successfully attach hotplugged volume ${vol.name} to VM`;
        entries.push({
          name: vol.name,
          target,
          phase: 'Ready',
          reason: 'VolumeReady',
          message,
          hotplugVolume: {},
          ...(claimInfo ? { persistentVolumeClaimInfo: claimInfo } : {}),
        });
        if (prev?.phase !== 'Ready') await this.deps.event(vmi, 'Normal', 'VolumeReady', message);
      } catch (e) {
        const f = e instanceof HotplugFailure ? e : new HotplugFailure('AttachFailed', `cannot attach volume ${vol.name}: ${errorText(e)}`, RETRY_FAILED_MS);
        entries.push({
          name: vol.name,
          target: '',
          phase: 'Pending',
          reason: f.reason,
          message: f.message,
          hotplugVolume: {},
          ...(claimInfo ? { persistentVolumeClaimInfo: claimInfo } : {}),
        });
        // Waiting for a claim to fill is normal; anything else is worth an Event (once per message).
        if (prev?.message !== f.message && f.reason !== 'PvcNotReady') await this.deps.event(vmi, 'Warning', 'HotplugFailed', f.message);
        if (f.retryMs !== undefined) retryIn(f.retryMs);
      }
    }
    await this.deps.writeVolumeStatus(vmi, entries);
    return retryMs === undefined ? {} : { retryMs };
  }

  /** Opens the claim's volume and plugs it in; resolves with the disk's target name (sdX). */
  private async attach(
    vmi: KubeObject,
    qmp: HotplugQmp,
    qemu: QemuDisks,
    vol: V1Volume,
    disk: V1Disk | undefined,
    pvc: KubeObject | undefined,
    claimName: string,
  ): Promise<string> {
    const name = vol.name;
    const ns = vmi.metadata.namespace ?? '';
    if (!disk) throw new HotplugFailure('DiskNotFound', `volume ${name} has no disk of the same name in spec.domain.devices.disks`);
    if (disk.cdrom || disk.lun) throw new HotplugFailure('UnsupportedDisk', `volume ${name}: only disk targets can be hotplugged (not cdrom or lun)`);
    const bus = disk.disk?.bus ?? 'scsi';
    if (bus !== 'scsi') throw new HotplugFailure('UnsupportedBus', `volume ${name}: a hotplugged disk must use bus scsi, not ${bus}`);
    if (!qemu.devices.has(SCSI_CONTROLLER_ID)) {
      throw new HotplugFailure(
        'NoScsiController',
        `volume ${name}: the VM has no virtio-scsi controller for hotplugged disks (it was started with disableHotplug, or by an older Vessel): restart it first`,
      );
    }
    const cache = disk.cache ?? 'none';
    if (!['none', 'writethrough', 'writeback'].includes(cache)) throw new HotplugFailure('InvalidDisk', `volume ${name}: unsupported cache mode ${cache}`);
    const io = disk.io;
    if (io === 'native' && cache !== 'none') throw new HotplugFailure('InvalidDisk', `volume ${name}: native I/O needs cache none`);
    if (disk.serial !== undefined && !/^[A-Za-z0-9_.+-]+$/.test(disk.serial))
      throw new HotplugFailure('InvalidDisk', `volume ${name}: the serial must consist of letters, digits or _.+-`);
    const path = this.claimPath(ns, claimName, name, pvc);

    const nodes = blockNodeNames(name);
    const id = deviceId(name);
    // Nodes without their device are what an attach interrupted by an agent restart left: start afresh.
    await dropNodes(qmp, qemu, nodes);
    const scsiId = await freeScsiTarget(qmp, qemu);
    const direct = cache === 'none';
    const ro = disk.disk?.readonly === true || vol.persistentVolumeClaim?.readOnly === true;
    const access: Obj = ro ? { 'read-only': true } : { discard: 'unmap' };
    await qmp.execute('blockdev-add', {
      driver: 'file',
      filename: path,
      'node-name': nodes.file,
      cache: { direct },
      ...(io === 'native' || io === 'threads' ? { aio: io } : {}),
      ...access,
    });
    qemu.nodes.add(nodes.file);
    try {
      await qmp.execute('blockdev-add', { driver: 'qcow2', file: nodes.file, 'node-name': nodes.format, cache: { direct }, ...access });
      qemu.nodes.add(nodes.format);
      await qmp.execute('device_add', {
        driver: 'scsi-hd',
        bus: `${SCSI_CONTROLLER_ID}.0`,
        channel: 0,
        'scsi-id': scsiId,
        lun: 0,
        drive: nodes.format,
        id,
        'write-cache': cache === 'writethrough' ? 'off' : 'on',
        ...(disk.serial !== undefined ? { serial: disk.serial } : {}),
      });
    } catch (e) {
      await dropNodes(qmp, qemu, nodes).catch((d: unknown) =>
        this.deps.log?.(`hotplug: ${ns}/${vmi.metadata.name}: closing the nodes of ${name}: ${errorText(d)}`),
      );
      throw e;
    }
    qemu.devices.set(id, 'scsi-hd');
    return scsiTargetName(scsiId);
  }

  /** Unplugs the volume's device (if QEMU has it) and closes its block nodes. */
  private async detach(qmp: HotplugQmp, qemu: QemuDisks, name: string): Promise<void> {
    const id = deviceId(name);
    const type = qemu.devices.get(id);
    if (type !== undefined) {
      if (!SCSI_TYPES.has(type)) throw new Error(`its device ${id} is a ${type}, which cannot be unplugged; stop the VM to remove it`);
      const deleted = qmp.waitForEvent('DEVICE_DELETED', { timeoutMs: DETACH_TIMEOUT_MS, match: (ev) => ev.data.device === id });
      deleted.catch(() => undefined); // awaited below; this only keeps an early rejection from being unhandled
      try {
        await qmp.execute('device_del', { id });
        await deleted;
      } catch (e) {
        // Already gone (unplugged while we were not looking): nothing to wait for.
        if (!(e instanceof QmpError && e.errorClass === 'DeviceNotFound')) {
          const still = await inspect(qmp);
          if (still.devices.has(id)) throw e;
        }
      }
      qemu.devices.delete(id);
    }
    await dropNodes(qmp, qemu, blockNodeNames(name));
  }

  /** The claim's volume file; a HotplugFailure says why it cannot be used (yet). */
  private claimPath(ns: string, claim: string, volume: string, pvc: KubeObject | undefined): string {
    try {
      return claimVolumePath(ns, claim, volume, pvc, this.deps.locate);
    } catch (e) {
      if (e instanceof PrepareError) throw new HotplugFailure(e.reason, e.message, e.retry ? RETRY_PENDING_MS : undefined);
      throw e;
    }
  }
}

/** HotplugDeps for the agent: status writes and Events through the API server. */
export function agentHotplugDeps(opts: {
  client: Client;
  events: EventRecorder;
  claim: HotplugDeps['claim'];
  locate: HotplugDeps['locate'];
  log?: (line: string) => void;
  /** Takes host paths out of what the VMI's status and Events say (QMP errors name files). */
  scrub?: (message: string, namespace: string | undefined) => string;
}): HotplugDeps {
  const scrub = opts.scrub ?? ((m: string) => m);
  return {
    claim: opts.claim,
    locate: opts.locate,
    log: opts.log,
    event: (vmi, type, reason, message) => opts.events.record(vmi, type, reason, scrub(message, vmi.metadata.namespace)),
    async writeVolumeStatus(vmi, list) {
      const entries = list.map((e) => (e.message ? { ...e, message: scrub(e.message, vmi.metadata.namespace) } : e));
      await updateStatus(opts.client, refs.VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, current) => {
        if (s.phase === 'Succeeded' || s.phase === 'Failed' || current.metadata.uid !== vmi.metadata.uid) return false;
        const next = mergeVolumeStatus(s.volumeStatus, entries);
        if (next.length) s.volumeStatus = next;
        else delete s.volumeStatus;
      });
    },
  };
}

/** status.volumeStatus with its hotplug entries replaced by `entries` (the others kept, first). */
export function mergeVolumeStatus(current: unknown, entries: VolumeStatusEntry[]): VolumeStatusEntry[] {
  const others = (Array.isArray(current) ? (current as VolumeStatusEntry[]) : []).filter((e) => !e.hotplugVolume && !entries.some((n) => n.name === e.name));
  return [...others, ...entries];
}

function hotplugEntries(vmi: KubeObject): VolumeStatusEntry[] {
  const list = (vmi.status as Obj | undefined)?.volumeStatus;
  return (Array.isArray(list) ? (list as VolumeStatusEntry[]) : []).filter((e) => e.hotplugVolume);
}

function claimInfoOf(pvc: KubeObject, claimName: string): Obj {
  const spec = (pvc.spec ?? {}) as { accessModes?: string[]; volumeMode?: string; resources?: { requests?: Obj } };
  const status = (pvc.status ?? {}) as { capacity?: Obj };
  return {
    claimName,
    accessModes: spec.accessModes ?? [],
    volumeMode: spec.volumeMode ?? 'Filesystem',
    ...(status.capacity ? { capacity: status.capacity } : {}),
    ...(spec.resources?.requests ? { requests: spec.resources.requests } : {}),
  };
}

async function inspect(qmp: HotplugQmp): Promise<QemuDisks> {
  const props = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/machine/peripheral' });
  const devices = new Map<string, string>();
  for (const p of props) {
    const m = /^child<(.+)>$/.exec(p.type);
    if (m) devices.set(p.name, m[1]);
  }
  const named = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
  return { devices, nodes: new Set(named.map((n) => n['node-name'])) };
}

async function scsiIdOf(qmp: HotplugQmp, id: string): Promise<number> {
  return Number(await qmp.execute<number>('qom-get', { path: `/machine/peripheral/${id}`, property: 'scsi-id' }));
}

/** The target name of an attached disk: sdX from its SCSI target; '' when it is not on the SCSI bus. */
async function targetOf(qmp: HotplugQmp, qemu: QemuDisks, name: string): Promise<string> {
  const id = deviceId(name);
  return SCSI_TYPES.has(qemu.devices.get(id) ?? '') ? scsiTargetName(await scsiIdOf(qmp, id)) : '';
}

async function freeScsiTarget(qmp: HotplugQmp, qemu: QemuDisks): Promise<number> {
  const used = new Set<number>();
  for (const [id, type] of qemu.devices) if (SCSI_TYPES.has(type)) used.add(await scsiIdOf(qmp, id));
  for (let n = 0; n <= MAX_SCSI_TARGET; n++) if (!used.has(n)) return n;
  throw new HotplugFailure('NoFreeTarget', `all ${MAX_SCSI_TARGET + 1} SCSI targets of the VM are in use`);
}

/** Closes a disk's block nodes that exist (format node first: it holds the file node). */
async function dropNodes(qmp: HotplugQmp, qemu: QemuDisks, nodes: { file: string; format: string }): Promise<void> {
  for (const node of [nodes.format, nodes.file]) {
    if (!qemu.nodes.has(node)) continue;
    await qmp.execute('blockdev-del', { 'node-name': node });
    qemu.nodes.delete(node);
  }
}

function errorText(e: unknown): string {
  if (e instanceof QmpError) return e.desc;
  return e instanceof Error ? e.message : String(e);
}
