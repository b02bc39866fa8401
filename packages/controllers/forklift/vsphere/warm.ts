/**
 * WarmOps for a running vSphere VM (docs/forklift.md, "Warm migration from vSphere"): Changed
 * Block Tracking rounds, as Forklift does them. Each round takes a snapshot (no memory, no
 * quiescing); a disk's first copy asks QueryChangedDiskAreas with changeId "*" (its allocated
 * areas), later ones the areas changed since the changeId its previous copy saw; those byte
 * ranges are read from the datastore (HTTP Range GETs of the disk's flat extent) and written at
 * their offsets into the target volume through its agent's NBD export (../range-writer.ts). The
 * round's snapshot goes once every disk has read it, so each round's snapshot sits directly on
 * the base disk: under it the base flat extent is frozen, and is exactly the snapshot's view
 * (a second snapshot would leave the data in a delta file `/folder` cannot read at disk offsets).
 * CBT's changeIds outlive the snapshot they were read from, as backup tools rely on. Cutover:
 * the source is powered off, a last round copies what changed since, then its snapshot goes.
 * A VM with snapshots of its own runs on a delta file: refused (VDDK or the NFC lease would be
 * needed; ../vsphere/cbt.ts openExportLease is not wired here).
 */
import { refs, type KubeObject } from '@vessel/api';
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import type { Readable } from 'node:stream';
import { writeRanges, type NbdTarget } from '../range-writer.ts';
import type { WarmDisk, WarmOps } from '../warm.ts';
import { WarmTargets } from '../warm-targets.ts';
import { createSnapshot, queryChangedAreas, removeSnapshot, snapshotDisks, type DiskArea } from './cbt.ts';
import type { VsphereVm } from './inventory.ts';
import { flatExtent, powerOff } from './provider.ts';
import { parseDatastorePath, VsphereError, type MoRef, type VsphereClient } from './soap.ts';

const { VMS } = refs;

export interface VsphereWarmSource {
  /** A logged-in client (called again after `release`). */
  connect: () => Promise<VsphereClient>;
  vm: VsphereVm;
  /** Datastore id → name (the inventory's). */
  datastoreName: (id: string) => string | undefined;
  /** The target claim of disk i (the cold path's names). */
  claim: (i: number) => string;
  targetNamespace: string;
  /** Who asks (migration uid and VM id): the agents answer this id; snapshot names carry it. */
  id: string;
  storageClass?: string;
  labels?: Record<string, string>;
  /** The target VirtualMachine, made at VirtualMachineCreation. */
  targetVm: () => KubeObject;
  pollMs?: number;
  answerTimeoutMs?: number;
  checkpoint?: () => void;
  /** A round's figures (tests and logs). */
  onCopy?: (r: { volume: string; snapshot: string; changeId: string; areas: number; bytes: number; ms: number }) => void;
}

export function vsphereWarmOps(kube: Client, src: VsphereWarmSource): WarmOps {
  const vmId = src.vm.id;
  const disks: (WarmDisk & { key: number })[] = src.vm.disks.map((d, i) => ({ volume: `disk${i}`, size: d.capacity, claim: src.claim(i), key: Number(d.id) }));
  let client: VsphereClient | undefined;
  const session = async () => (client ??= await src.connect());
  // The round's snapshot and the disks copied against it; a disk copied again starts a new round.
  let round: { snap: MoRef; ids: Map<number, string>; files: Map<number, string>; copied: Set<string> } | undefined;
  const taken: MoRef[] = [];
  /** Per disk: the changeId of the snapshot its last successful copy read. */
  const lastChangeId = new Map<string, string>();
  const flatFiles = new Map<string, { ds: string; path: string }>();
  const targets = new WarmTargets(kube, src);

  const exportOf = (d: WarmDisk): Promise<NbdTarget> => targets.exportWithKey(d);
  // The raw file holding disk i's bytes: the descriptor's flat extent (vcsim may list only `-flat.vmdk`).
  const flatOf = async (c: VsphereClient, i: number): Promise<{ ds: string; path: string }> => {
    const known = flatFiles.get(disks[i].volume);
    if (known) return known;
    const file = src.vm.disks[i].file;
    const where = parseDatastorePath(file);
    if (!where) throw new VsphereError('NotFound', `disk ${file} is not a datastore path`);
    const ds = src.datastoreName(src.vm.disks[i].datastore ?? '') ?? where.datastore;
    const res = await c.download(src.vm.datacenter, ds, where.path);
    let path: string | undefined;
    if (res.statusCode === 404 && where.path.endsWith('.vmdk')) path = where.path.replace(/\.vmdk$/, '-flat.vmdk');
    else if (res.statusCode === 200 && Number(res.headers['content-length'] ?? Infinity) <= 64 * 1024) {
      const chunks: Buffer[] = [];
      for await (const b of res) chunks.push(b as Buffer);
      const extent = flatExtent(Buffer.concat(chunks).toString('latin1'));
      if (extent) path = (where.path.includes('/') ? where.path.slice(0, where.path.lastIndexOf('/') + 1) : '') + extent;
    }
    res.destroy();
    // A sparse or multi-extent VMDK has no byte offsets a changed area could name.
    if (!path) throw new VsphereError('NotSupported', `${file}: warm rounds read a flat extent; this disk has none (HTTP ${res.statusCode})`);
    const f = { ds, path };
    flatFiles.set(disks[i].volume, f);
    return f;
  };
  let rounds = 0;
  const removeTaken = async (c: VsphereClient) => {
    while (taken.length) {
      await removeSnapshot(c, taken[0]);
      taken.shift();
    }
  };

  return {
    async initialize() {
      const c = await session();
      const state = (await c.retrieve({ type: 'VirtualMachine', value: vmId }, ['runtime.powerState', 'config.changeTrackingEnabled']))?.props;
      if (!state) throw new VsphereError('NotFound', `VM ${vmId} is no longer in the inventory`);
      if (state.get('runtime.powerState')?.text.trim() !== 'poweredOn')
        throw new Error(`VM ${src.vm.name} is not powered on (a warm migration copies a running VM)`);
      // Forklift asks the user to enable CBT; it is checked, not turned on here.
      if (state.get('config.changeTrackingEnabled')?.text.trim() !== 'true')
        throw new VsphereError('ChangeTrackingNotEnabled', `VM ${src.vm.name}: Changed Block Tracking is not enabled`);
      if (!disks.length) throw new Error(`VM ${src.vm.name} has no disk`);
      return disks;
    },

    async allocate(d) {
      await targets.allocate(d);
    },

    async copy(d, mode, progress) {
      const t0 = Date.now();
      const c = await session();
      const i = disks.findIndex((x) => x.volume === d.volume);
      const key = disks[i].key;
      if (!round || round.copied.has(d.volume)) {
        const snap = await createSnapshot(c, vmId, `forklift-warm-${src.id.replace(/[^\w.-]/g, '-')}-${++rounds}`, 'Vessel warm migration precopy');
        taken.push(snap);
        const seen = await snapshotDisks(c, snap);
        round = { snap, ids: seen.changeIds, files: seen.files, copied: new Set() };
      }
      // The flat extent is this snapshot's view only while the disk is the inventory's file: a
      // delta file (snapshots left from elsewhere) needs VDDK or NFC, not built. Refused rather
      // than copying stale bytes.
      const file = round.files.get(key);
      if (file !== undefined && file !== src.vm.disks[i].file)
        throw new VsphereError(
          'NotSupported',
          `disk ${d.volume} is ${file} under snapshot ${round.snap.value}, not ${src.vm.disks[i].file}: reading a snapshot's delta needs VDDK or NFC (not built)`,
        );
      const changeId = round.ids.get(key);
      if (!changeId)
        throw new VsphereError('ChangeTrackingNotEnabled', `disk ${d.volume} (key ${key}) has no changeId in snapshot ${round.snap.value}: CBT is off for it`);
      const since = mode === 'full' ? '*' : (lastChangeId.get(d.volume) ?? '*');
      const areas: DiskArea[] = await queryChangedAreas(c, vmId, round.snap, key, since, d.size);
      const target = await exportOf(d);
      const flat = await flatOf(c, i);
      const read = async (start: number, length: number): Promise<Readable> => {
        const res = await c.download(src.vm.datacenter, flat.ds, flat.path, [start, start + length - 1]);
        const whole = res.statusCode === 200 && start === 0 && Number(res.headers['content-length']) === length;
        if (res.statusCode !== 206 && !whole) {
          res.resume();
          throw new VsphereError('NotFound', `GET [${flat.ds}] ${flat.path} bytes ${start}+${length}: HTTP ${res.statusCode}`);
        }
        return res;
      };
      const bytes = await writeRanges(target, areas, read, { progress, checkpoint: src.checkpoint });
      progress(bytes, bytes);
      lastChangeId.set(d.volume, changeId);
      round.copied.add(d.volume);
      // Every disk has read this snapshot: it goes, so the next one sits on the base disk again.
      if (round.copied.size === disks.length) await removeTaken(c);
      src.onCopy?.({ volume: d.volume, snapshot: round.snap.value, changeId: since, areas: areas.length, bytes, ms: Date.now() - t0 });
      return { bytes, deltaId: round.snap.value };
    },

    async quiesceSource() {
      // vSphere has no pause a snapshot would see: the guest is powered off, then the last round runs.
      await powerOff(await session(), vmId);
    },

    async stopSource() {
      const c = await session();
      await powerOff(c, vmId);
      await removeTaken(c);
      round = undefined;
    },

    async createTarget() {
      try {
        await kube.create(VMS, src.targetVm(), { namespace: src.targetNamespace });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
    },

    async discard() {
      await targets.discard(disks.map((d) => d.claim));
    },

    async release() {
      await targets.release(disks.map((d) => d.claim));
      const c = client;
      client = undefined;
      if (!c) return;
      // A cancel or failure: this run's snapshots go (the source keeps running).
      for (const s of taken.splice(0)) await removeSnapshot(c, s).catch(() => undefined);
      round = undefined;
      await c.logout().finally(() => c.close());
    },
  };
}
