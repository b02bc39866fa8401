/**
 * VirtualMachineSnapshots (snapshot.kubevirt.io/v1beta1), done by the agent of the node that
 * holds the VM's disks: the VMI's node while it runs, else the node its claims were made on.
 * For each disk of the VM (claims and DataVolumes; cloud-init, container and empty disks are
 * excluded, as in KubeVirt) the volume's current state becomes a snapshot file (see
 * storage/chain.ts): online while the guest runs (its filesystems frozen through the guest
 * agent when one answers, else crash-consistent; the guest is paused for the instant the disks
 * switch when there are several), offline when it is stopped. The
 * VirtualMachineSnapshotContent records the VM's spec and, per volume, the claim and the file.
 * Deleting the content (its snapshot's deletion does, through the owner reference) deletes the
 * files, merging each into its child so every other snapshot and the VM stay whole.
 */
import { rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Client } from '@vessel/client';
import { Controller, EventRecorder, setCondition, updateStatus, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { isStatusError } from '@vessel/client';
import { snapshots, storage, refs, phaseOf, annotationsOf } from '@vessel/api';
import { faultPoint } from '../faults.ts';
import { fstrim, ping } from '../qga/client.ts';
import { withFrozenGuest } from '../qga/freeze.ts';
import { deviceId } from '../qemu/argv.ts';
import { runDirFiles } from '../qemu/process.ts';
import { ChainError, compact, deleteSnapshot, snapshotFileFor, takeSnapshot } from '../storage/chain.ts';
import { containedPath, PathError, type Pool } from '../storage/pools.ts';
import { scrubPaths } from '../scrub.ts';
import { saveMemory } from '../vms/memory.ts';
import type { VmRuntime } from '../vms/runtime.ts';

type Obj = Record<string, unknown>;
const { VMS, VMIS, PVCS, VMSNAPSHOTS, VMSNAPSHOTCONTENTS } = refs;
const { SNAPSHOT_FILES, SNAPSHOT_NODE, MEMORY_FILE, WITH_MEMORY, SPARSIFY, TRIMMED_BYTES } = snapshots;
/** Held on a content while its files exist. */
export const CONTENT_FINALIZER = 'vessel.io/snapshot-files';
const CONTENT_KEY = 'content:';
const COMPACT_KEY = 'compact';
const FINAL = new Set(['Succeeded', 'Failed']);
const keyOf = (o: KubeObject) => `${o.metadata.namespace}/${o.metadata.name}`;

export interface SnapshotOptions {
  nodeName: string;
  pools: Map<string, Pool>;
  vms: VmRuntime;
  log?: Log;
}

/** A VM's disks a snapshot covers: volume name and claim name. */
export function snapshotVolumes(vmSpec: Obj): { included: { volume: string; claim: string }[]; excluded: string[] } {
  const vols = (((vmSpec.template as Obj | undefined)?.spec as Obj | undefined)?.volumes as Obj[] | undefined) ?? [];
  const included: { volume: string; claim: string }[] = [];
  const excluded: string[] = [];
  for (const v of vols) {
    const claim = (v.dataVolume as Obj | undefined)?.name ?? (v.persistentVolumeClaim as Obj | undefined)?.claimName;
    if (typeof claim === 'string') included.push({ volume: String(v.name), claim });
    else excluded.push(String(v.name));
  }
  return { included, excluded };
}

export class SnapshotController extends Controller {
  private readonly snapshots: Informer;
  private readonly contents: Informer;
  private readonly vmList: Informer;
  private readonly vmis: Informer;
  private readonly pvcs: Informer;
  private readonly events: EventRecorder;

  constructor(
    client: Client,
    private readonly opts: SnapshotOptions,
  ) {
    super('snapshots', client, opts.log);
    this.events = new EventRecorder(client, 'virt-handler', opts.nodeName);
    this.snapshots = this.inform(VMSNAPSHOTS);
    this.contents = this.inform(VMSNAPSHOTCONTENTS, (c) => [CONTENT_KEY + keyOf(c)]);
    const pending = () =>
      this.snapshots
        .list()
        .filter((s) => !FINAL.has(phaseOf(s)))
        .map(keyOf);
    this.vmList = this.inform(VMS, pending);
    // A QEMU that ended lets go of its images: tombstoned snapshot files may merge now.
    this.vmis = this.inform(VMIS, (vmi) => [...pending(), ...(FINAL.has(phaseOf(vmi)) || vmi.metadata.deletionTimestamp ? [COMPACT_KEY] : [])]);
    this.pvcs = this.inform(PVCS, pending);
  }

  protected async reconcile(key: string): Promise<void> {
    if (key === COMPACT_KEY) return this.compactPools();
    if (key.startsWith(CONTENT_KEY)) return this.reconcileContent(key.slice(CONTENT_KEY.length));
    const snap = this.snapshots.get(key);
    if (!snap || snap.metadata.deletionTimestamp || FINAL.has(phaseOf(snap))) return;
    const ns = snap.metadata.namespace!;
    const source = ((snap.spec as Obj | undefined)?.source ?? {}) as { name?: string };
    const vm = this.vmList.get(`${ns}/${source.name}`);
    if (!vm) {
      await this.progress(snap, 'False', 'SourceNotFound', `VirtualMachine ${source.name} does not exist`);
      return;
    }
    const spec = (vm.spec ?? {}) as Obj;
    const vols = snapshotVolumes(spec);
    const vmi = this.vmis.get(`${ns}/${vm.metadata.name}`);
    const running = !!vmi && !FINAL.has(phaseOf(vmi)) && !vmi.metadata.deletionTimestamp && phaseOf(vmi) === 'Running';
    const claims = vols.included.map((v) => ({ ...v, pvc: this.pvcs.get(`${ns}/${v.claim}`) }));
    const node = running
      ? String((vmi.status as Obj).nodeName)
      : claims[0]
        ? annotationsOf(claims[0].pvc ?? { metadata: { name: '' } })[storage.SELECTED_NODE]
        : this.opts.nodeName;
    if (node !== this.opts.nodeName) return; // that node's agent takes it
    const unready = claims.find((c) => !c.pvc || !annotationsOf(c.pvc)[storage.VOLUME_PATH]);
    if (unready) {
      await this.progress(snap, 'False', 'VolumeNotReady', `the disk ${unready.volume} (claim ${unready.claim}) has no volume yet`);
      this.queue.addAfter(key, 3000);
      return;
    }
    if (vmi && !running && !FINAL.has(phaseOf(vmi))) {
      await this.progress(snap, 'False', 'VMStarting', 'the VM is starting or stopping: waiting until it runs or is stopped');
      this.queue.addAfter(key, 2000);
      return;
    }

    const uid = snap.metadata.uid!;
    // Each claim's file, checked to be in the namespace's own pool directory before anything opens it.
    const volumes: Record<string, { pool: Pool; path: string }> = {};
    try {
      for (const c of claims)
        volumes[c.volume] = containedPath(
          this.opts.pools.values(),
          ns,
          annotationsOf(c.pvc!)[storage.VOLUME_PATH],
          `${storage.VOLUME_PATH} of claim ${c.claim}`,
        );
    } catch (e) {
      if (e instanceof PathError) return this.fail(snap, e.message);
      throw e;
    }
    const files: Record<string, string> = {};
    for (const c of claims) files[c.volume] = snapshotFileFor(volumes[c.volume].path, uid);
    const contentName = `vmsnapshot-content-${uid}`;
    // Memory only exists while the guest runs; a stopped VM's snapshot is its disks.
    const memory =
      running && annotationsOf(snap)[WITH_MEMORY] === 'true' && claims[0]
        ? join(dirname(volumes[claims[0].volume].path), `${vm.metadata.name}@${uid}.memory`)
        : undefined;
    // A running guest whose agent answers is frozen around the disk switch (KubeVirt's GuestAgent
    // indication). Not with memory: the paused instant already makes disks and memory one state,
    // and a guest saved frozen would resume frozen.
    const runDir = this.opts.vms.runDirFor(ns, vm.metadata.name);
    const qga = runDir ? runDirFiles(runDir).qga : '';
    const agent = running && !!runDir && !memory && (await ping(qga));
    const indications = running ? ['Online', agent ? 'GuestAgent' : 'NoGuestAgent'] : [];
    await updateStatus(this.client, VMSNAPSHOTS, ns, snap.metadata.name, (s) => {
      s.phase = 'InProgress';
      s.sourceUID = vm.metadata.uid;
      s.readyToUse = false;
      s.indications = indications;
      s.snapshotVolumes = { includedVolumes: vols.included.map((v) => v.volume), excludedVolumes: vols.excluded };
      setCondition(s, { type: 'Progressing', status: 'True', reason: 'InProgress', message: 'Source locked and operation in progress' }, false);
      setCondition(s, { type: 'Ready', status: 'False', reason: 'NotReady', message: 'Not ready' }, false);
    });
    // Sparsify: blocks the guest's filesystems no longer use are discarded before the disks
    // switch, so they read as zeros in the snapshot and copies of it (images) leave them out.
    let trimmed: number | undefined;
    if (annotationsOf(snap)[SPARSIFY] === 'true' && !this.contents.get(`${ns}/${contentName}`)) {
      trimmed = running && runDir && (agent || (await ping(qga))) ? await this.trim(snap, qga) : undefined;
      if (trimmed === undefined)
        await this.events.record(
          snap,
          'Warning',
          'NotSparsified',
          `${running ? 'no guest agent answers' : 'the VM is stopped'}: free space inside the guest could not be trimmed, so the snapshot keeps it`,
        );
    }
    await this.ensureContent(
      snap,
      vm,
      contentName,
      claims.map((c) => ({ volume: c.volume, pvc: c.pvc! })),
      files,
      memory,
      trimmed,
    );
    faultPoint('snapshot:content');

    const created = new Date().toISOString();
    try {
      await this.opts.vms.withVm(ns, vm.metadata.name, async (qmp) => {
        // Several disks, or disks and memory, are taken while the guest is paused: one instant.
        const pause = !!qmp && (claims.length > 1 || !!memory) && (await qmp.execute<{ status: string }>('query-status')).status === 'running';
        const take = async () => {
          if (pause) await qmp.execute('stop');
          try {
            for (const c of claims) {
              const vol = volumes[c.volume];
              await takeSnapshot(vol.pool, vol.path, files[c.volume], qmp ? { qmp, device: deviceId(c.volume) } : undefined);
            }
            if (memory && qmp && !(await exists(memory))) {
              const bytes = await saveMemory(qmp, memory);
              this.log(`snapshots: ${ns}/${snap.metadata.name}: saved ${Math.round(bytes / 1048576)} MiB of guest memory`);
            }
          } finally {
            if (pause) await qmp.execute('cont');
          }
        };
        if (!agent || !qmp) return take();
        // Frozen (flushed, writes held) from before the disks switch until right after, thawed
        // even when the switch fails, and at the latest at the deadline.
        const { freeze } = await withFrozenGuest(qga, take, { log: (m) => this.log(`snapshots: ${ns}/${snap.metadata.name}: ${m}`) });
        if (freeze.quiesced) {
          this.log(
            `snapshots: ${ns}/${snap.metadata.name}: ${freeze.filesystems} guest filesystem(s) frozen for ${freeze.frozenMs} ms${freeze.problem ? `; ${freeze.problem}` : ''}`,
          );
        } else {
          // Taken crash-consistent after all: said on the snapshot, as KubeVirt does.
          await this.events.record(snap, 'Warning', 'QuiesceFailed', `${freeze.problem ?? 'the guest was not frozen'}: the snapshot is crash-consistent`);
          await updateStatus(this.client, VMSNAPSHOTS, ns, snap.metadata.name, (s) => {
            s.indications = [...indications, 'QuiesceFailed'];
          });
        }
      });
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (e instanceof ChainError && e.code === 'GoldenImage') return this.fail(snap, message);
      await this.events.record(snap, 'Warning', 'SnapshotRetry', this.scrub(message, ns));
      throw e; // retried with backoff
    }
    const volumeSnapshotStatus = claims.map((c) => ({ volumeSnapshotName: volumeSnapshotName(uid, c.volume), readyToUse: true, creationTime: created }));
    await updateStatus(this.client, VMSNAPSHOTCONTENTS, ns, contentName, (s) => {
      s.readyToUse = true;
      s.creationTime = created;
      s.volumeSnapshotStatus = volumeSnapshotStatus;
    });
    await updateStatus(this.client, VMSNAPSHOTS, ns, snap.metadata.name, (s) => {
      s.phase = 'Succeeded';
      s.readyToUse = true;
      s.creationTime = created;
      s.virtualMachineSnapshotContentName = contentName;
      setCondition(s, { type: 'Progressing', status: 'False', reason: 'Operation complete', message: 'Operation complete' }, false);
      setCondition(s, { type: 'Ready', status: 'True', reason: 'Operation complete', message: 'Operation complete' }, false);
    });
    await this.events.record(
      snap,
      'Normal',
      'SuccessfulVirtualMachineSnapshot',
      `Virtual Machine snapshot ${snap.metadata.name} of ${vm.metadata.name} ${running ? 'taken online' : 'taken'} (${claims.length} disk${claims.length === 1 ? '' : 's'})`,
    );
  }

  /** guest-fstrim; the bytes trimmed, or undefined when the agent failed. */
  private async trim(snap: KubeObject, qga: string): Promise<number | undefined> {
    try {
      const paths = await fstrim(qga);
      const bytes = paths.reduce((n, p) => n + p.trimmed, 0);
      const failed = paths.filter((p) => p.error).map((p) => `${p.path}: ${p.error}`);
      await this.events.record(
        snap,
        'Normal',
        'GuestTrimmed',
        `the guest trimmed ${Math.round(bytes / 1048576)} MiB of free space on ${paths.length - failed.length} filesystem(s)${failed.length ? `; not on ${failed.join(', ')}` : ''}`,
      );
      return bytes;
    } catch (e) {
      this.log(`snapshots: ${snap.metadata.namespace}/${snap.metadata.name}: guest-fstrim: ${e instanceof Error ? e.message : String(e)}`);
      return undefined;
    }
  }

  private async ensureContent(
    snap: KubeObject,
    vm: KubeObject,
    name: string,
    claims: { volume: string; pvc: KubeObject }[],
    files: Record<string, string>,
    memory: string | undefined,
    trimmed: number | undefined,
  ): Promise<void> {
    if (this.contents.get(`${snap.metadata.namespace}/${name}`)) return;
    const uid = snap.metadata.uid!;
    try {
      await this.client.create(
        VMSNAPSHOTCONTENTS,
        {
          apiVersion: 'snapshot.kubevirt.io/v1beta1',
          kind: 'VirtualMachineSnapshotContent',
          metadata: {
            name,
            namespace: snap.metadata.namespace,
            annotations: {
              [SNAPSHOT_FILES]: JSON.stringify(files),
              [SNAPSHOT_NODE]: this.opts.nodeName,
              ...(memory ? { [MEMORY_FILE]: memory } : {}),
              ...(trimmed !== undefined ? { [TRIMMED_BYTES]: String(trimmed) } : {}),
            },
            finalizers: [CONTENT_FINALIZER],
            ownerReferences: [
              {
                apiVersion: 'snapshot.kubevirt.io/v1beta1',
                kind: 'VirtualMachineSnapshot',
                name: snap.metadata.name,
                uid,
                controller: true,
                blockOwnerDeletion: true,
              },
            ],
          },
          spec: {
            virtualMachineSnapshotName: snap.metadata.name,
            source: {
              virtualMachine: {
                metadata: { name: vm.metadata.name, namespace: vm.metadata.namespace, labels: vm.metadata.labels, annotations: vm.metadata.annotations },
                spec: vm.spec,
              },
            },
            volumeBackups: claims.map((c) => ({
              volumeName: c.volume,
              persistentVolumeClaim: {
                metadata: { name: c.pvc.metadata.name, namespace: c.pvc.metadata.namespace, labels: c.pvc.metadata.labels },
                spec: c.pvc.spec,
              },
              volumeSnapshotName: volumeSnapshotName(uid, c.volume),
            })),
          },
        },
        { namespace: snap.metadata.namespace },
      );
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
    }
  }

  /** A content going away: its files go (merged into their children where needed), then the finalizer. */
  private async reconcileContent(key: string): Promise<void> {
    const content = this.contents.get(key);
    if (!content?.metadata.deletionTimestamp) return;
    if (annotationsOf(content)[SNAPSHOT_NODE] !== this.opts.nodeName) return;
    const finalizers = (content.metadata.finalizers as string[] | undefined) ?? [];
    if (!finalizers.includes(CONTENT_FINALIZER)) return;
    const ns = content.metadata.namespace!;
    const files = Object.values(JSON.parse(annotationsOf(content)[SNAPSHOT_FILES] ?? '{}') as Record<string, string>);
    const memory = annotationsOf(content)[MEMORY_FILE];
    // Only files in the content's own namespace are deleted, whatever its annotations name.
    const contained = (path: string, what: string) => {
      try {
        return containedPath(this.opts.pools.values(), ns, path, what);
      } catch (e) {
        if (!(e instanceof PathError)) throw e;
        this.log(`snapshots: content ${key}: ${e.message}: not deleting it`);
        return undefined;
      }
    };
    for (const file of files) {
      const c = contained(file, SNAPSHOT_FILES);
      if (c) await deleteSnapshot(c.pool, c.path);
    }
    const mem = memory ? contained(memory, MEMORY_FILE) : undefined;
    if (mem) await rm(mem.path, { force: true });
    const rest = finalizers.filter((f) => f !== CONTENT_FINALIZER);
    await this.client.patch(
      VMSNAPSHOTCONTENTS,
      content.metadata.name,
      { metadata: { resourceVersion: content.metadata.resourceVersion, finalizers: rest.length ? rest : null } },
      { namespace: content.metadata.namespace },
    );
  }

  /** A message for the snapshot's status or Events: no host paths (see scrub.ts). */
  private scrub(message: string, namespace: string | undefined): string {
    return scrubPaths(message, { pools: [...this.opts.pools.values()].map((p) => p.dir) }, namespace);
  }

  /** Merges snapshot files deleted while their child was open, now that it may be closed. */
  private async compactPools(): Promise<void> {
    for (const pool of this.opts.pools.values()) {
      const merged = await compact(pool);
      if (merged.length) this.log(`snapshots: merged ${merged.length} deleted snapshot file(s) in pool ${pool.name}`);
    }
  }

  private async progress(snap: KubeObject, status: 'True' | 'False', reason: string, message: string): Promise<void> {
    await updateStatus(this.client, VMSNAPSHOTS, snap.metadata.namespace, snap.metadata.name, (s) => {
      s.phase ??= 'InProgress';
      setCondition(s, { type: 'Progressing', status, reason, message }, false);
      setCondition(s, { type: 'Ready', status: 'False', reason, message }, false);
    });
  }

  private async fail(snap: KubeObject, raw: string): Promise<void> {
    const message = this.scrub(raw, snap.metadata.namespace);
    await updateStatus(this.client, VMSNAPSHOTS, snap.metadata.namespace, snap.metadata.name, (s) => {
      s.phase = 'Failed';
      s.error = { time: new Date().toISOString(), message };
      setCondition(s, { type: 'Progressing', status: 'False', reason: 'Failed', message }, false);
      setCondition(s, { type: 'Failure', status: 'True', reason: 'Failed', message }, false);
    });
    await this.events.record(snap, 'Warning', 'VirtualMachineSnapshotFailed', message);
  }
}

const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

export const volumeSnapshotName = (snapshotUid: string, volume: string) => `vmsnapshot-${snapshotUid}-volume-${volume}`;
