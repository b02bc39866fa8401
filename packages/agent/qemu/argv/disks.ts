/**
 * Volumes and disks: spec.volumes matched to spec.domain.devices.disks by name, each disk a
 * protocol and a format -blockdev on the path the agent resolved, and a device on its bus
 * (virtio-blk, SCSI on the virtio-scsi controller, SATA on AHCI controllers), with KubeVirt's
 * defaults for cache, boot order and discard. Controllers come before the disks on them.
 */
import { SUPPORTED_DISK_BUSES, blockSizeProblem, defaultDiskBus } from '@vessel/api';
import type { QemuVolume } from '../argv.ts';
import {
  checkHostString,
  checkName,
  claimId,
  forEachNamed,
  isSet,
  opt,
  readBool,
  readBootOrder,
  readInt,
  readList,
  readObj,
  readStr,
  supportedStrings,
  virtio,
  type Configurator,
  type Ctx,
  type Obj,
  type OptProps,
} from './context.ts';
import { SCSI_CONTROLLER_ID, blockNodeNames, deviceId } from './ids.ts';

const CACHE_MODES = supportedStrings('domain.devices.disks[].cache');
const IO_MODES = supportedStrings('domain.devices.disks[].io');
/** KubeVirt's errorPolicy as QEMU's [werror, rerror]. */
const ERROR_POLICIES: Record<string, [string, string]> = {
  stop: ['stop', 'stop'],
  report: ['report', 'report'],
  ignore: ['ignore', 'ignore'],
  enospace: ['enospc', 'report'],
};
const VOLUME_SOURCES = ['containerDisk', 'dataVolume', 'persistentVolumeClaim', 'ephemeral', 'emptyDisk', 'cloudInitNoCloud', 'cloudInitConfigDrive'];
const REFUSED_SOURCES = ['hostDisk', 'configMap', 'secret', 'serviceAccount', 'downwardAPI', 'downwardMetrics', 'sysprep', 'memoryDump', 'containerPath'];

interface VolumeInfo {
  index: number;
  source?: string;
  pvcReadOnly: boolean;
  used: boolean;
}

/** The disk's per-device settings: caching, I/O, identity and geometry. */
interface Tuning {
  cache: string;
  io?: string;
  serial?: string;
  errors?: [string, string];
  shareable: boolean;
  logical?: number;
  physical?: number;
  discardGranularity?: number;
}

/** A disk whose spec is valid, with the volume the agent made available for it. */
interface Disk {
  name: string;
  kind: 'disk' | 'cdrom';
  bus: string;
  ro: boolean;
  volume: QemuVolume;
  tuning: Tuning;
  bootindex?: number;
}

/** State across the disk list: names taken, list-order boot indexes, bus slots and controllers. */
interface Walk {
  names: Set<string>;
  implicitBoot: number;
  sata: number;
  scsi: number;
  controllers: string[];
}

export const disks: Configurator = (ctx) => {
  const { c, devices } = ctx;
  const volumes = readVolumes(ctx);
  const blockMQ = readBool(devices.blockMultiQueue, 'spec.domain.devices.blockMultiQueue', c) === true;
  const walk: Walk = { names: new Set(), implicitBoot: 0, sata: 0, scsi: 0, controllers: [] };
  const out: string[] = [];
  readList(devices.disks, 'spec.domain.devices.disks', c).forEach((d, i) => {
    const disk = readDisk(ctx, d, `spec.domain.devices.disks[${i}]`, volumes, walk);
    if (disk) out.push(...blockdevs(disk), '-device', diskDevice(ctx, disk, walk, blockMQ));
  });
  for (const [vname, v] of volumes) {
    if (!v.used) ctx.warnings.push(`spec.volumes[${v.index}]: volume ${vname} is not used by any disk`);
  }
  // Every VM gets the virtio-scsi controller, as in KubeVirt: hotplugged disks go on it. Only
  // disableHotplug without a scsi disk leaves it out. It comes first, so its PCI slot never moves.
  const disableHotplug = readBool(devices.disableHotplug, 'spec.domain.devices.disableHotplug', c) === true;
  if (walk.scsi > 0 || !disableHotplug) ctx.args.devices.push('-device', opt(virtio(ctx, 'virtio-scsi-pci'), [['id', SCSI_CONTROLLER_ID]]));
  ctx.args.devices.push(...walk.controllers, ...out);
};

function readVolumes(ctx: Ctx): Map<string, VolumeInfo> {
  const { c } = ctx;
  const volumes = new Map<string, VolumeInfo>();
  forEachNamed(c, ctx.spec.volumes, 'spec.volumes', 'the volume name', volumes, (o, vname, path, j) => {
    const sources = VOLUME_SOURCES.filter((k) => isSet(o[k]));
    const refused = REFUSED_SOURCES.filter((k) => isSet(o[k]));
    if (sources.length + refused.length === 0) c.required(path, 'a volume source');
    else if (sources.length + refused.length > 1) c.invalid(path, vname, `exactly one volume source may be set, found ${[...sources, ...refused].join(', ')}`);
    const pvc = readObj(o.persistentVolumeClaim, `${path}.persistentVolumeClaim`, c);
    const ephPvc = readObj(readObj(o.ephemeral, `${path}.ephemeral`, c)?.persistentVolumeClaim, `${path}.ephemeral.persistentVolumeClaim`, c);
    const pvcReadOnly = readBool(pvc?.readOnly, `${path}.persistentVolumeClaim.readOnly`, c) === true;
    readBool(ephPvc?.readOnly, `${path}.ephemeral.persistentVolumeClaim.readOnly`, c);
    volumes.set(vname, { index: j, source: sources.length === 1 && refused.length === 0 ? sources[0] : undefined, pvcReadOnly, used: false });
  });
  return volumes;
}

/** Checks one disk and its volume; returns it when it can be attached (causes say the rest). */
function readDisk(ctx: Ctx, d: unknown, path: string, volumes: Map<string, VolumeInfo>, walk: Walk): Disk | undefined {
  const { c, input } = ctx;
  const o = readObj(d, path, c);
  if (!o) return undefined;
  const name = checkName(c, readStr(o.name, `${path}.name`, c), `${path}.name`, 'the disk name', true);
  if (name === undefined) return undefined;
  if (walk.names.has(name)) {
    c.duplicate(`${path}.name`, name);
    return undefined;
  }
  walk.names.add(name);
  claimId(ctx, deviceId(name), `${path}.name`, name);
  const vol = volumes.get(name);
  if (!vol) c.invalid(`${path}.name`, name, 'no volume of this name in spec.volumes');
  else vol.used = true;

  const target = readTarget(ctx, o, path, name);
  if (!target) return undefined;
  const { kind, bus, readOnly } = target;
  const hostVol = vol ? input.volumes[name] : undefined;
  const ro = readOnly === true || vol?.pvcReadOnly === true || hostVol?.readOnly === true;
  if (kind === 'disk' && bus === 'sata' && ro) {
    c.invalid(
      readOnly ? `${path}.disk.readonly` : `${path}.disk.bus`,
      readOnly ? true : bus,
      'a SATA disk cannot be read-only in QEMU; use bus virtio or scsi',
    );
  }
  const tuning = readTuning(ctx, o, path, hostVol);
  let bootindex = readBootOrder(ctx, o.bootOrder, `${path}.bootOrder`);
  // No boot order anywhere: disks boot in list order ("strict" would otherwise boot nothing).
  if (!ctx.explicitBoot) bootindex = ++walk.implicitBoot;

  if (!vol) return undefined;
  if (vol.source === undefined) return undefined; // refused or invalid source, already reported
  if (!hostVol) {
    c.required(`spec.volumes[${vol.index}]`, `volume ${name} (${vol.source}) has not been made available on this node`);
    return undefined;
  }
  if (hostVol.format !== 'qcow2' && hostVol.format !== 'raw') throw new TypeError(`buildQemuArgv: bad format for volume ${name}`);
  return { name, kind, bus, ro, volume: hostVol, tuning, bootindex };
}

/** disk or cdrom (lun is refused by the allow list), its bus and readonly. */
function readTarget(ctx: Ctx, o: Obj, path: string, name: string): { kind: 'disk' | 'cdrom'; bus: string; readOnly?: boolean } | undefined {
  const { c } = ctx;
  const targets = ['disk', 'cdrom', 'lun'].filter((k) => isSet(o[k]));
  if (targets.length > 1) c.invalid(path, name, `set only one of disk, cdrom or lun, found ${targets.join(', ')}`);
  if (targets.includes('lun')) return undefined;
  const kind: 'disk' | 'cdrom' = targets[0] === 'cdrom' ? 'cdrom' : 'disk';
  const target = readObj(o[kind], `${path}.${kind}`, c) ?? {};
  const bus = readStr(target.bus, `${path}.${kind}.bus`, c) ?? defaultDiskBus('amd64');
  const buses = SUPPORTED_DISK_BUSES[kind];
  if (!buses.includes(bus)) {
    if (kind === 'cdrom' && bus === 'virtio') c.invalid(`${path}.cdrom.bus`, bus, 'a cdrom cannot use the virtio bus; use sata or scsi');
    else c.value(`${path}.${kind}.bus`, bus, buses);
  }
  let readOnly = readBool(target.readonly, `${path}.${kind}.readonly`, c);
  if (kind === 'cdrom') {
    if (readOnly === false) c.value(`${path}.cdrom.readonly`, false, 'cdroms are read-only in Vessel');
    readOnly = true;
    const tray = readStr(target.tray, `${path}.cdrom.tray`, c);
    if (tray !== undefined && tray !== 'closed') c.value(`${path}.cdrom.tray`, tray, ['closed']);
  }
  return { kind, bus, readOnly };
}

function readTuning(ctx: Ctx, o: Obj, path: string, hostVol: QemuVolume | undefined): Tuning {
  const { c } = ctx;
  const cacheDefault = hostVol?.directIO === false ? 'writethrough' : 'none';
  const cache = readStr(o.cache, `${path}.cache`, c) ?? cacheDefault;
  if (!CACHE_MODES.includes(cache)) c.value(`${path}.cache`, cache, CACHE_MODES);
  if (cache === 'none' && hostVol?.directIO === false)
    c.invalid(`${path}.cache`, cache, 'the volume is on a file system without O_DIRECT support (such as tmpfs)');
  const io = readStr(o.io, `${path}.io`, c);
  if (io !== undefined && !IO_MODES.includes(io)) c.value(`${path}.io`, io, IO_MODES);
  if (io === 'native' && cache !== 'none') c.invalid(`${path}.io`, io, 'native I/O needs cache none');
  const serial = readStr(o.serial, `${path}.serial`, c);
  if (serial !== undefined && !/^[A-Za-z0-9_.+-]+$/.test(serial)) c.invalid(`${path}.serial`, serial, 'must consist of letters, digits or _.+-');
  const errorPolicy = readStr(o.errorPolicy, `${path}.errorPolicy`, c);
  if (errorPolicy !== undefined && !Object.hasOwn(ERROR_POLICIES, errorPolicy)) c.value(`${path}.errorPolicy`, errorPolicy, Object.keys(ERROR_POLICIES));
  const shareable = readBool(o.shareable, `${path}.shareable`, c) === true;
  if (shareable && hostVol?.format === 'qcow2') c.invalid(`${path}.shareable`, true, 'only raw volumes can be shared; this one is qcow2');
  const custom = readObj(readObj(o.blockSize, `${path}.blockSize`, c)?.custom, `${path}.blockSize.custom`, c);
  const blockSize = (k: string): number | undefined => {
    const n = readInt(custom?.[k], `${path}.blockSize.custom.${k}`, c, 0, 2 ** 31);
    const problem = n === undefined ? undefined : blockSizeProblem(n);
    if (problem) c.invalid(`${path}.blockSize.custom.${k}`, n, problem);
    return n;
  };
  return {
    cache,
    io,
    serial,
    errors: errorPolicy && Object.hasOwn(ERROR_POLICIES, errorPolicy) ? ERROR_POLICIES[errorPolicy] : undefined,
    shareable,
    logical: blockSize('logical'),
    physical: blockSize('physical'),
    discardGranularity: readInt(custom?.discardGranularity, `${path}.blockSize.custom.discardGranularity`, c, 0, 2 ** 31),
  };
}

/** The protocol (file or host_device) node and the format node on it. */
function blockdevs(disk: Disk): string[] {
  const { volume, ro, tuning } = disk;
  const nodes = blockNodeNames(disk.name);
  const direct = tuning.cache === 'none';
  const discard = ro ? undefined : 'unmap';
  return [
    '-blockdev',
    opt(`driver=${volume.block ? 'host_device' : 'file'}`, [
      ['filename', checkHostString('volume path', volume.path)],
      ['node-name', nodes.file],
      ['cache.direct', direct],
      ['aio', tuning.io === 'native' || tuning.io === 'threads' ? tuning.io : undefined],
      ['discard', discard],
      ['read-only', ro || undefined],
    ]),
    '-blockdev',
    opt(`driver=${volume.format}`, [
      ['file', nodes.file],
      ['node-name', nodes.format],
      ['cache.direct', direct],
      ['discard', discard],
      ['read-only', ro || undefined],
    ]),
  ];
}

/** The disk's device model and where it sits; adds AHCI controllers as SATA ports fill up. */
function placement(ctx: Ctx, disk: Disk, walk: Walk, blockMQ: boolean): [string, OptProps] {
  if (disk.bus === 'virtio') return [virtio(ctx, 'virtio-blk-pci'), [['num-queues', blockMQ && ctx.vcpus > 1 ? ctx.vcpus : undefined]]];
  const cdrom = disk.kind === 'cdrom';
  if (disk.bus === 'scsi') {
    const where: OptProps = [
      ['bus', `${SCSI_CONTROLLER_ID}.0`],
      ['channel', 0],
      ['scsi-id', walk.scsi++],
      ['lun', 0],
    ];
    return [cdrom ? 'scsi-cd' : 'scsi-hd', where];
  }
  // Six ports per AHCI controller; q35 has one built in (bus "ide"), more are ich9-ahci.
  const ctl = Math.floor(walk.sata / 6);
  const ctlId = ctx.q35 && ctl === 0 ? 'ide' : `sata${ctl}`;
  if (walk.sata % 6 === 0 && ctlId !== 'ide') walk.controllers.push('-device', opt('ich9-ahci', [['id', ctlId]]));
  const port = walk.sata++ % 6;
  return [cdrom ? 'ide-cd' : 'ide-hd', [['bus', `${ctlId}.${port}`]]];
}

function diskDevice(ctx: Ctx, disk: Disk, walk: Walk, blockMQ: boolean): string {
  const { tuning: t } = disk;
  const [head, where] = placement(ctx, disk, walk, blockMQ);
  const [werror, rerror] = t.errors ?? [];
  return opt(head, [
    ...where,
    ['drive', blockNodeNames(disk.name).format],
    ['id', deviceId(disk.name)],
    ['write-cache', disk.kind === 'cdrom' ? undefined : t.cache !== 'writethrough'],
    ['serial', t.serial],
    ['bootindex', disk.bootindex],
    ['logical_block_size', t.logical],
    ['physical_block_size', t.physical],
    ['discard_granularity', t.discardGranularity],
    ['share-rw', t.shareable || undefined],
    ['werror', werror],
    ['rerror', rerror],
  ]);
}
