/**
 * vSphere calls for warm migration (Changed Block Tracking), from VMware's documented Web Services
 * API: ReconfigVM_Task with `changeTrackingEnabled`, CreateSnapshot_Task / RemoveSnapshot_Task,
 * a snapshot's disk `changeId`s (`config.hardware.device[].backing.changeId`), and
 * QueryChangedDiskAreas with its paging (a DiskChangeInfo covers `[startOffset, startOffset +
 * length)`; the next call starts where it ended, until the disk's capacity). `changeId: "*"` asks
 * for the allocated areas (the first, full round). And the NFC lease (ExportVm / ExportSnapshot →
 * HttpNfcLease: `state` ready, `info.deviceUrl[]`, HttpNfcLeaseProgress as keep-alive,
 * HttpNfcLeaseComplete / Abort). vcsim 0.24 has neither QueryChangedDiskAreas nor ExportVm: the
 * first is served by our test double (e2e/vcsim/main.go); the lease is tested on parsing only.
 */
import { kid, kids, type XmlElement } from '../xml.ts';
import { esc, moOf, moXml, VsphereError, type MoRef, type VsphereClient } from './soap.ts';

const text = (el: XmlElement | undefined): string => el?.text.trim() ?? '';
const int = (el: XmlElement | undefined, what: string): number => {
  const n = Number(text(el));
  if (!el || !Number.isSafeInteger(n) || n < 0) throw new VsphereError('BadReply', `${what}: not a byte count: ${JSON.stringify(text(el))}`);
  return n;
};

/** A byte range of a disk: `[start, start + length)`. */
export interface DiskArea {
  start: number;
  length: number;
}

/** A DiskChangeInfo (`returnval` of QueryChangedDiskAreas): the range it covers and the changed areas in it. */
export function parseDiskChangeInfo(returnval: XmlElement | undefined): { startOffset: number; length: number; areas: DiskArea[] } {
  if (!returnval) throw new VsphereError('BadReply', 'QueryChangedDiskAreas: no returnval');
  const startOffset = int(kid(returnval, 'startOffset'), 'DiskChangeInfo.startOffset');
  const length = int(kid(returnval, 'length'), 'DiskChangeInfo.length');
  const areas = kids(returnval, 'changedArea').map((a) => ({
    start: int(kid(a, 'start'), 'changedArea.start'),
    length: int(kid(a, 'length'), 'changedArea.length'),
  }));
  for (const a of areas)
    if (a.start < startOffset || a.start + a.length > startOffset + length)
      throw new VsphereError('BadReply', `QueryChangedDiskAreas: area ${a.start}+${a.length} outside ${startOffset}+${length}`);
  return { startOffset, length, areas };
}

/** Sorted areas with touching or overlapping ones joined (fewer, larger reads). */
export function mergeAreas(areas: readonly DiskArea[]): DiskArea[] {
  const out: DiskArea[] = [];
  for (const a of [...areas].filter((x) => x.length > 0).sort((x, y) => x.start - y.start)) {
    const last = out[out.length - 1];
    if (last && a.start <= last.start + last.length) last.length = Math.max(last.length, a.start + a.length - last.start);
    else out.push({ ...a });
  }
  return out;
}

const vmRef = (id: string): MoRef => ({ type: 'VirtualMachine', value: id });

/** Turns CBT on (or off) for the VM (ReconfigVM_Task, waited for); vSphere applies it at the next snapshot or power cycle. */
export async function setChangeTracking(client: VsphereClient, vmId: string, on: boolean): Promise<void> {
  await client.runTask('ReconfigVM_Task', vmRef(vmId), `<spec><changeTrackingEnabled>${on}</changeTrackingEnabled></spec>`);
}

/** A snapshot without memory and without quiescing (what a warm round needs); its moref. */
export async function createSnapshot(client: VsphereClient, vmId: string, name: string, description = ''): Promise<MoRef> {
  const res = await client.runTask(
    'CreateSnapshot_Task',
    vmRef(vmId),
    `<name>${esc(name)}</name><description>${esc(description)}</description><memory>false</memory><quiesce>false</quiesce>`,
  );
  const ref = moOf(res);
  if (!ref?.value) throw new VsphereError('BadReply', 'CreateSnapshot_Task: no snapshot in the task result');
  return { type: 'VirtualMachineSnapshot', value: ref.value };
}

/** Removes one snapshot (its children kept, the disks consolidated). */
export async function removeSnapshot(client: VsphereClient, snapshot: MoRef): Promise<void> {
  await client.runTask('RemoveSnapshot_Task', snapshot, '<removeChildren>false</removeChildren><consolidate>true</consolidate>');
}

/** Device key → `backing.changeId` of each VirtualDisk in an ArrayOfVirtualDevice (a snapshot's or VM's `config.hardware.device`). */
export function parseChangeIds(devices: XmlElement | undefined): Map<number, string> {
  const out = new Map<number, string>();
  for (const d of kids(devices, 'VirtualDevice')) {
    if (d.attrs.type !== 'VirtualDisk') continue;
    const id = text(kid(kid(d, 'backing'), 'changeId'));
    if (id) out.set(Number(text(kid(d, 'key'))), id);
  }
  return out;
}

/** Device key → the disk file (`backing.fileName`) of each VirtualDisk: under a snapshot, a delta file names its base as parent. */
export function parseDiskFiles(devices: XmlElement | undefined): Map<number, string> {
  const out = new Map<number, string>();
  for (const d of kids(devices, 'VirtualDevice'))
    if (d.attrs.type === 'VirtualDisk') out.set(Number(text(kid(d, 'key'))), text(kid(kid(d, 'backing'), 'fileName')));
  return out;
}

/** A snapshot's disks: their change ids (none when CBT was off when it was taken) and files. */
export async function snapshotDisks(client: VsphereClient, snapshot: MoRef): Promise<{ changeIds: Map<number, string>; files: Map<number, string> }> {
  const props = await client.retrieve(snapshot, ['config.hardware.device']);
  if (!props) throw new VsphereError('NotFound', `snapshot ${snapshot.value} is gone`);
  const devices = props.props.get('config.hardware.device');
  return { changeIds: parseChangeIds(devices), files: parseDiskFiles(devices) };
}

/**
 * Every area of disk `deviceKey` changed since `changeId` as of `snapshot` (`"*"`: every allocated
 * area), calling QueryChangedDiskAreas again from where each reply ended until `capacity`.
 */
export async function queryChangedAreas(
  client: VsphereClient,
  vmId: string,
  snapshot: MoRef,
  deviceKey: number,
  changeId: string,
  capacity: number,
): Promise<DiskArea[]> {
  const areas: DiskArea[] = [];
  for (let offset = 0; offset < capacity;) {
    const res = await client.call(
      'QueryChangedDiskAreas',
      `${moXml('_this', vmRef(vmId))}${moXml('snapshot', snapshot)}<deviceKey>${deviceKey}</deviceKey><startOffset>${offset}</startOffset><changeId>${esc(changeId)}</changeId>`,
    );
    const info = parseDiskChangeInfo(kid(res, 'returnval'));
    // A reply that does not move forward would loop for ever.
    if (info.length <= 0 || info.startOffset + info.length <= offset)
      throw new VsphereError('BadReply', `QueryChangedDiskAreas: no progress at offset ${offset}`);
    areas.push(...info.areas);
    offset = info.startOffset + info.length;
  }
  return mergeAreas(areas)
    .map((a) => ({ start: a.start, length: Math.min(a.length, capacity - a.start) }))
    .filter((a) => a.length > 0);
}

/** One file of an NFC lease (HttpNfcLeaseDeviceUrl). */
export interface LeaseDevice {
  key: string;
  /** With the `*` host replaced by the SDK's host. */
  url: string;
  targetId?: string;
  disk: boolean;
  sslThumbprint?: string;
  fileSize?: number;
}

/** An HttpNfcLeaseInfo: its device URLs (`*` → `host`), total disk capacity and timeout. */
export function parseLeaseInfo(info: XmlElement | undefined, host: string): { devices: LeaseDevice[]; totalDiskCapacityInKB?: number; leaseTimeout?: number } {
  if (!info) throw new VsphereError('BadReply', 'HttpNfcLease: no info');
  const devices = kids(info, 'deviceUrl').map((d) => {
    const raw = text(kid(d, 'url'));
    const url = new URL(raw.replace(/^(https?:\/\/)\*(?=[:/])/, `$1${host}`));
    const size = text(kid(d, 'fileSize'));
    return {
      key: text(kid(d, 'key')),
      url: url.toString(),
      ...(text(kid(d, 'targetId')) ? { targetId: text(kid(d, 'targetId')) } : {}),
      disk: text(kid(d, 'disk')) === 'true',
      ...(text(kid(d, 'sslThumbprint')) ? { sslThumbprint: text(kid(d, 'sslThumbprint')) } : {}),
      ...(size ? { fileSize: Number(size) } : {}),
    };
  });
  const cap = text(kid(info, 'totalDiskCapacityInKB'));
  const timeout = text(kid(info, 'leaseTimeout'));
  return { devices, ...(cap ? { totalDiskCapacityInKB: Number(cap) } : {}), ...(timeout ? { leaseTimeout: Number(timeout) } : {}) };
}

/** An open NFC lease: its device URLs; `progress` keeps it alive; `complete`/`abort` end it. */
export interface NfcLease {
  ref: MoRef;
  devices: LeaseDevice[];
  progress(percent: number): Promise<void>;
  /** Calls HttpNfcLeaseProgress every `everyMs` with what `percent()` says (a lease times out after `leaseTimeout` s without); returns the stop. */
  keepAlive(percent: () => number, everyMs?: number): () => void;
  complete(): Promise<void>;
  abort(): Promise<void>;
}

/**
 * ExportVm (a powered-off VM) or ExportSnapshot (a snapshot, the VM may run) → HttpNfcLease,
 * waited for until `state` is ready. Not tested against a live vCenter (vcsim 0.24 has no ExportVm).
 */
export async function openExportLease(client: VsphereClient, of: MoRef, timeoutMs = 120_000): Promise<NfcLease> {
  const method = of.type === 'VirtualMachineSnapshot' ? 'ExportSnapshot' : 'ExportVm';
  const ref = moOf(kid(await client.call(method, moXml('_this', of)), 'returnval'));
  if (!ref) throw new VsphereError('BadReply', `${method}: no lease`);
  const lease: MoRef = { type: 'HttpNfcLease', value: ref.value };
  const abort = () => client.call('HttpNfcLeaseAbort', moXml('_this', lease)).then(() => undefined);
  const deadline = Date.now() + timeoutMs;
  for (let wait = 100; ; wait = Math.min(wait * 2, 2000)) {
    const p = (await client.retrieve(lease, ['state', 'error', 'info']))?.props;
    const state = text(p?.get('state'));
    if (state === 'ready') {
      const progress = (percent: number) =>
        client
          .call('HttpNfcLeaseProgress', `${moXml('_this', lease)}<percent>${Math.max(0, Math.min(100, Math.round(percent)))}</percent>`)
          .then(() => undefined);
      return {
        ref: lease,
        devices: parseLeaseInfo(p?.get('info'), client.host).devices,
        progress,
        keepAlive(percent, everyMs = 30_000) {
          const timer = setInterval(() => void progress(percent()).catch(() => undefined), everyMs);
          timer.unref();
          return () => clearInterval(timer);
        },
        complete: () => client.call('HttpNfcLeaseComplete', moXml('_this', lease)).then(() => undefined),
        abort,
      };
    }
    if (state === 'error') throw new VsphereError('TaskFailed', `${method}: lease error: ${text(kid(p?.get('error'), 'localizedMessage')) || 'failed'}`);
    if (Date.now() > deadline) {
      await abort().catch(() => undefined);
      throw new VsphereError('TaskFailed', `${method}: lease still ${state || 'unknown'} after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, wait));
  }
}
