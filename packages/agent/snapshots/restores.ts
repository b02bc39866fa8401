/**
 * VirtualMachineRestores (snapshot.kubevirt.io/v1beta1), done by the agent whose pools hold the
 * snapshot's files. Into the snapshot's own VM: the VM must be stopped (the API refuses a
 * restore of a running VM unless spec.targetReadinessPolicy is StopTarget, which stops it
 * here); every disk becomes a new overlay on its snapshot file (no copy), and the VM's spec
 * becomes the one the snapshot recorded (its run strategy stays). Into a new VM (target names
 * a VM that does not exist): claims `restore-<uid>-<volume>` are made as linked clones of the
 * snapshot files, and a VM with the recorded spec uses them.
 */
import jsonpatch from 'fast-json-patch';
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { snapshots, storage, CLONE_DISK_TYPE, refs, runStrategyOf, phaseOf, annotationsOf } from '@vessel/api';
import { Controller, getCondition, EventRecorder, setCondition, updateStatus, type Informer, type KubeObject } from '@vessel/runtime';
import { faultPoint } from '../faults.ts';
import { compact, restoreVolume } from '../storage/chain.ts';
import { containedPath, PathError } from '../storage/pools.ts';
import { scrubPaths } from '../scrub.ts';
import { RESUME_MEMORY } from '../vms/memory.ts';
import type { SnapshotOptions } from './snapshots.ts';

type Obj = Record<string, unknown>;
const { VMS, VMIS, PVCS, VMSNAPSHOTS, VMSNAPSHOTCONTENTS, VMRESTORES } = refs;
const { MEMORY_FILE, SNAPSHOT_FILES, SNAPSHOT_NODE } = snapshots;
/** On a VM made by a restore: the restore's uid. */
export const RESTORED_BY = 'vessel.io/restored-by';
const FINAL = new Set(['Succeeded', 'Failed']);

export type RestoreOptions = SnapshotOptions;

interface Backup {
  volumeName: string;
  persistentVolumeClaim: { metadata: { name: string; labels?: Record<string, string> }; spec: Obj };
  volumeSnapshotName: string;
}

export class RestoreController extends Controller {
  private readonly restores: Informer;
  private readonly snapshots: Informer;
  private readonly contents: Informer;
  private readonly vmList: Informer;
  private readonly vmis: Informer;
  private readonly pvcs: Informer;
  private readonly events: EventRecorder;

  constructor(
    client: Client,
    private readonly opts: RestoreOptions,
  ) {
    super('restores', client, opts.log);
    this.events = new EventRecorder(client, 'virt-handler', opts.nodeName);
    this.restores = this.inform(VMRESTORES);
    const pending = () =>
      this.restores
        .list()
        .filter((r) => (r.status as Obj | undefined)?.complete !== true)
        .map((r) => `${r.metadata.namespace}/${r.metadata.name}`);
    this.snapshots = this.inform(VMSNAPSHOTS, pending);
    this.contents = this.inform(VMSNAPSHOTCONTENTS, pending);
    this.vmList = this.inform(VMS, pending);
    this.vmis = this.inform(VMIS, pending);
    this.pvcs = this.inform(PVCS, pending);
  }

  protected async reconcile(key: string): Promise<void> {
    try {
      await this.restore(key);
    } catch (e) {
      const restore = this.restores.get(key);
      // Other failures are retried with the queue's backoff (a status write here would bring the
      // restore straight back). A refused path fails the same way every time: said on the
      // restore, without host paths, once.
      if (!restore || !(e instanceof PathError)) throw e;
      const message = scrubPaths(e.message, { pools: [...this.opts.pools.values()].map((p) => p.dir) }, restore.metadata.namespace);
      const reason = e.code;
      if (getCondition(restore, 'Ready')?.reason === reason) return; // said already
      await updateStatus(this.client, VMRESTORES, restore.metadata.namespace, restore.metadata.name, (s) => {
        s.complete = false;
        setCondition(s, { type: 'Progressing', status: 'False', reason, message }, false);
        setCondition(s, { type: 'Ready', status: 'False', reason, message }, false);
      }); // a failed write throws: the queue retries, and the check above lets it through again
      await this.events.record(restore, 'Warning', reason, message);
    }
  }

  private async restore(key: string): Promise<void> {
    const restore = this.restores.get(key);
    if (!restore || restore.metadata.deletionTimestamp || (restore.status as Obj | undefined)?.complete === true) return;
    const ns = restore.metadata.namespace!;
    const spec = (restore.spec ?? {}) as { target?: { name?: string }; virtualMachineSnapshotName?: string; targetReadinessPolicy?: string };
    const snap = this.snapshots.get(`${ns}/${spec.virtualMachineSnapshotName}`);
    const contentName = String((snap?.status as Obj | undefined)?.virtualMachineSnapshotContentName ?? '');
    const content = contentName ? this.contents.get(`${ns}/${contentName}`) : undefined;
    if (!snap || !content || (snap.status as Obj | undefined)?.readyToUse !== true) {
      return this.progress(restore, 'VirtualMachineSnapshotNotReady', `VirtualMachineSnapshot ${spec.virtualMachineSnapshotName} is not ready to use`);
    }
    if (annotationsOf(content)[SNAPSHOT_NODE] !== this.opts.nodeName) return;
    const files = JSON.parse(annotationsOf(content)[SNAPSHOT_FILES] ?? '{}') as Record<string, string>;
    const recorded = ((content.spec as Obj).source as { virtualMachine: { metadata: Obj; spec: Obj } }).virtualMachine;
    const backups = ((content.spec as Obj).volumeBackups as Backup[] | undefined) ?? [];
    const target = String(spec.target?.name ?? '');
    const vm = this.vmList.get(`${ns}/${target}`);

    // In place: a VM that this restore did not make. Otherwise a new VM, perhaps made by an earlier pass.
    const inPlace = !!vm && annotationsOf(vm)[RESTORED_BY] !== restore.metadata.uid;
    if (inPlace) {
      const vmi = this.vmis.get(`${ns}/${target}`);
      if (vmi && !FINAL.has(phaseOf(vmi))) {
        if (spec.targetReadinessPolicy === 'StopTarget' && runStrategyOf(vm) !== 'Halted') {
          await this.client.patch(VMS, target, { spec: { runStrategy: 'Halted', running: null } }, { namespace: ns });
        }
        return this.progress(restore, 'VMNotStopped', `VirtualMachine ${target} is running: stop it first (vessel stop ${target})`);
      }
      await this.opts.vms.withVm(ns, target, async (qmp) => {
        if (qmp) throw new Error(`VirtualMachine ${target} started during the restore`);
        for (const b of backups) {
          const pvc = this.pvcs.get(`${ns}/${b.persistentVolumeClaim.metadata.name}`);
          const recorded = pvc && annotationsOf(pvc)[storage.VOLUME_PATH];
          if (!recorded) throw new Error(`claim ${b.persistentVolumeClaim.metadata.name} of volume ${b.volumeName} has no volume on this node`);
          // The claim's file and the snapshot file, both in the restore's own namespace.
          const { pool, path } = containedPath(
            this.opts.pools.values(),
            ns,
            recorded,
            `${storage.VOLUME_PATH} of claim ${b.persistentVolumeClaim.metadata.name}`,
          );
          const snapshotFile = containedPath([pool], ns, files[b.volumeName] ?? '', `${SNAPSHOT_FILES} of volume ${b.volumeName}`).path;
          await restoreVolume(pool, path, snapshotFile);
        }
      });
      // The recorded spec, keeping how the VM runs now.
      const keep = (vm.spec as Obj | undefined) ?? {};
      const next: Obj = { ...recorded.spec };
      delete next.running;
      delete next.runStrategy;
      if (keep.runStrategy !== undefined) next.runStrategy = keep.runStrategy;
      else next.running = keep.running ?? false;
      const memory = annotationsOf(content)[MEMORY_FILE];
      const metadata = memory ? { ...vm.metadata, annotations: { ...annotationsOf(vm), [RESUME_MEMORY]: memory } } : vm.metadata;
      await this.client.update(VMS, { ...vm, metadata, spec: next }, { namespace: ns });
      for (const pool of this.opts.pools.values()) await compact(pool);
    } else {
      const claims = backups.map((b) => this.pvcs.get(`${ns}/${claimFor(restore, b.volumeName)}`));
      if (!vm || claims.some((c) => !c)) await this.restoreToNewVm(restore, target, recorded, backups, files, annotationsOf(content)[MEMORY_FILE]);
      // Done when the disks exist, not when they were asked for: a full clone copies for a while.
      const unbound = backups
        .map((b, i) => ({ name: claimFor(restore, b.volumeName), pvc: claims[i] }))
        .filter(({ pvc }) => phaseOf(pvc) !== 'Bound' || !annotationsOf(pvc!)[storage.VOLUME_PATH])
        .map(({ name }) => name);
      if (unbound.length) return this.progress(restore, 'RestoreInProgress', `waiting for the disks of ${target}: ${unbound.join(', ')}`, true);
    }
    const restores = backups.map((b) => ({
      volumeName: b.volumeName,
      persistentVolumeClaim: inPlace ? b.persistentVolumeClaim.metadata.name : claimFor(restore, b.volumeName),
      volumeSnapshotName: b.volumeSnapshotName,
    }));
    await updateStatus(this.client, VMRESTORES, ns, restore.metadata.name, (s) => {
      s.complete = true;
      s.restoreTime = new Date().toISOString();
      s.restores = restores;
      setCondition(s, { type: 'Progressing', status: 'False', reason: 'Operation complete', message: 'Operation complete' }, false);
      setCondition(s, { type: 'Ready', status: 'True', reason: 'Operation complete', message: 'Operation complete' }, false);
    });
    await this.events.record(
      restore,
      'Normal',
      'VirtualMachineRestoreComplete',
      `Successfully completed VirtualMachineRestore ${restore.metadata.name} of ${target} from ${spec.virtualMachineSnapshotName}`,
    );
  }

  /** A new VM with the recorded spec on linked clones of the snapshot files. */
  private async restoreToNewVm(
    restore: KubeObject,
    target: string,
    recorded: { metadata: Obj; spec: Obj },
    backups: Backup[],
    files: Record<string, string>,
    memory: string | undefined,
  ): Promise<void> {
    const ns = restore.metadata.namespace!;
    const spec = structuredClone(recorded.spec) as Obj & { template?: { spec?: { volumes?: Obj[] } } };
    delete spec.dataVolumeTemplates;
    const byVolume = new Map(backups.map((b) => [b.volumeName, b]));
    for (const v of spec.template?.spec?.volumes ?? []) {
      if (!byVolume.has(String(v.name))) continue;
      delete v.dataVolume;
      v.persistentVolumeClaim = { claimName: claimFor(restore, String(v.name)) };
    }
    let desired: KubeObject = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      metadata: {
        name: target,
        namespace: ns,
        labels: recorded.metadata.labels as Record<string, string> | undefined,
        annotations: recorded.metadata.annotations as Record<string, string> | undefined,
      },
      spec,
    };
    // spec.patches: JSON patches for the new VM (a clone's new identity), one JSON string each.
    const patches = ((restore.spec as Obj).patches as string[] | undefined) ?? [];
    if (patches.length)
      desired = jsonpatch.applyPatch(
        desired,
        patches.map((p) => JSON.parse(p) as jsonpatch.Operation),
        true,
        false,
      ).newDocument;
    desired.metadata.name = target;
    desired.metadata.namespace = ns;
    // Vessel's own bookkeeping of the source VM is not the new VM's.
    const kept = Object.entries(desired.metadata.annotations ?? {}).filter(([k]) => !k.startsWith('vessel.io/'));
    desired.metadata.annotations = { ...Object.fromEntries(kept), [RESTORED_BY]: restore.metadata.uid!, ...(memory ? { [RESUME_MEMORY]: memory } : {}) };
    let vm: KubeObject;
    try {
      vm = await this.client.create(VMS, desired, { namespace: ns });
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
      vm = await this.client.get(VMS, target, { namespace: ns });
    }
    faultPoint('restore:new-vm');
    for (const b of backups) {
      // Checked here for a clear failure, and again by the volume manager before it opens the file.
      const { pool, path: file } = containedPath(this.opts.pools.values(), ns, files[b.volumeName] ?? '', `${SNAPSHOT_FILES} of volume ${b.volumeName}`);
      const claim = b.persistentVolumeClaim.spec as { resources?: Obj; storageClassName?: string; accessModes?: string[] };
      try {
        await this.client.create(
          PVCS,
          {
            apiVersion: 'v1',
            kind: 'PersistentVolumeClaim',
            metadata: {
              name: claimFor(restore, b.volumeName),
              namespace: ns,
              labels: b.persistentVolumeClaim.metadata.labels,
              annotations: {
                [storage.RESTORE_SOURCE]: file,
                [storage.SELECTED_NODE]: this.opts.nodeName,
                ...(pool ? { [storage.VOLUME_POOL]: pool.name } : {}),
                ...(annotationsOf(restore)[CLONE_DISK_TYPE] === 'full' ? { [storage.CLONE_TYPE]: 'full' } : {}),
              },
              ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: target, uid: vm.metadata.uid!, blockOwnerDeletion: true }],
            },
            spec: { accessModes: claim.accessModes ?? ['ReadWriteOnce'], resources: claim.resources, storageClassName: claim.storageClassName },
          },
          { namespace: ns },
        );
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
    }
  }

  /** Not done yet: `moving` when it advances by itself, otherwise it waits on something else. */
  private async progress(restore: KubeObject, reason: string, message: string, moving = false): Promise<void> {
    await updateStatus(this.client, VMRESTORES, restore.metadata.namespace, restore.metadata.name, (s) => {
      s.complete = false;
      setCondition(s, { type: 'Progressing', status: moving ? 'True' : 'False', reason, message }, false);
      setCondition(s, { type: 'Ready', status: 'False', reason, message }, false);
    });
    this.queue.addAfter(`${restore.metadata.namespace}/${restore.metadata.name}`, moving ? 1000 : 3000);
  }
}

function claimFor(restore: KubeObject, volume: string): string {
  return `restore-${restore.metadata.uid!.slice(0, 8)}-${volume}`;
}
