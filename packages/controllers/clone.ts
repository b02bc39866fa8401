/**
 * VirtualMachineClones (clone.kubevirt.io/v1beta1), the way KubeVirt's clone controller does
 * them: a snapshot of the source VM (none when the source is a snapshot), then a restore of it
 * into the target VM with the new identity given as the restore's JSON patches, then the
 * temporary snapshot and restore go. Phases: Pending → SnapshotInProgress →
 * RestoreInProgress → Succeeded, or Failed with the reason in the Ready condition.
 *
 * New identity: MAC addresses (newMacAddresses, else none, so the new VM's are derived from its
 * own name), SMBIOS serial (newSMBiosSerial, else none), firmware UUID (none: the VM
 * controller gives each VM its own) and fixed address (the template annotation
 * `ipam.vessel.io/ip` is never copied: the source holds that address, so the clone gets its own
 * from IPAM); cloud-init sees a new instance id from the new name.
 * Labels and annotations are copied through KubeVirt's filters (`*` matches everything, a
 * leading `!` excludes). Disks are linked clones of the snapshot; the annotation
 * `clone.vessel.io/type: full` makes standalone copies instead.
 */
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import {
  BY_NAMESPACE,
  byNamespace,
  cacheKey,
  Controller,
  type Log,
  EventRecorder,
  type Informer,
  type KubeObject,
  setCondition,
  updateStatus,
} from '@vessel/runtime';
import { refs, phaseOf, CLONE_DISK_TYPE, ipam } from '@vessel/api';

const { VMCLONES, VMRESTORES, VMS, VMSNAPSHOTCONTENTS, VMSNAPSHOTS } = refs;

type Obj = Record<string, unknown>;
const FINAL = new Set(['Succeeded', 'Failed']);

interface CloneSpec {
  source?: { apiGroup?: string; kind?: string; name?: string };
  target?: { apiGroup?: string; kind?: string; name?: string };
  labelFilters?: string[];
  annotationFilters?: string[];
  template?: { labelFilters?: string[]; annotationFilters?: string[] };
  newMacAddresses?: Record<string, string>;
  newSMBiosSerial?: string;
}

/** KubeVirt's filter semantics: keys matching any pattern are kept, then `!pattern` ones dropped. */
export function filterKeys(map: Record<string, string> | undefined, filters: string[] | undefined): Record<string, string> {
  const patterns = filters ?? ['*'];
  const re = (p: string) => new RegExp(`^${p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
  const include = patterns.filter((p) => !p.startsWith('!')).map(re);
  const exclude = patterns.filter((p) => p.startsWith('!')).map((p) => re(p.slice(1)));
  return Object.fromEntries(Object.entries(map ?? {}).filter(([k]) => include.some((r) => r.test(k)) && !exclude.some((r) => r.test(k))));
}

/** The JSON patches (as KubeVirt's restore takes them: one JSON string each) that give the target its own identity. */
export function identityPatches(source: { metadata?: Obj; spec?: Obj }, spec: CloneSpec): string[] {
  const ops: Obj[] = [];
  // The restore copies the recorded labels and annotations; those the filters leave out are
  // removed one key at a time (a restore may patch only below /metadata/labels/ and /spec/).
  const drop = (map: unknown, filters: string[] | undefined, path: string, always: string[] = []) => {
    const all = (map ?? {}) as Record<string, string>;
    const kept = filterKeys(all, filters);
    for (const k of Object.keys(all))
      if (!(k in kept) || always.includes(k)) ops.push({ op: 'remove', path: `${path}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}` });
  };
  const meta = source.metadata ?? {};
  drop(meta.labels, spec.labelFilters, '/metadata/labels');
  drop(meta.annotations, spec.annotationFilters, '/metadata/annotations', ['kubectl.kubernetes.io/last-applied-configuration']);
  const template = (source.spec?.template ?? {}) as { metadata?: Obj; spec?: Obj };
  drop(template.metadata?.labels, spec.template?.labelFilters, '/spec/template/metadata/labels');
  drop(template.metadata?.annotations, spec.template?.annotationFilters, '/spec/template/metadata/annotations', [ipam.FIXED_IP]);
  const domain = (template.spec?.domain ?? {}) as { devices?: { interfaces?: Obj[] }; firmware?: Obj };
  (domain.devices?.interfaces ?? []).forEach((iface, i) => {
    const path = `/spec/template/spec/domain/devices/interfaces/${i}/macAddress`;
    const mac = spec.newMacAddresses?.[String(iface.name)];
    if (mac !== undefined) ops.push({ op: 'add', path, value: mac });
    else if (iface.macAddress !== undefined) ops.push({ op: 'remove', path });
  });
  const fw = domain.firmware;
  if (fw?.uuid !== undefined) ops.push({ op: 'remove', path: '/spec/template/spec/domain/firmware/uuid' });
  if (spec.newSMBiosSerial !== undefined) {
    if (fw) ops.push({ op: 'add', path: '/spec/template/spec/domain/firmware/serial', value: spec.newSMBiosSerial });
    else ops.push({ op: 'add', path: '/spec/template/spec/domain/firmware', value: { serial: spec.newSMBiosSerial } });
  } else if (fw?.serial !== undefined) {
    ops.push({ op: 'remove', path: '/spec/template/spec/domain/firmware/serial' });
  }
  return ops.map((o) => JSON.stringify(o));
}

export class CloneController extends Controller {
  private readonly clones: Informer;
  private readonly snapshots: Informer;
  private readonly restores: Informer;
  private readonly vms: Informer;
  private readonly contents: Informer;
  private readonly events: EventRecorder;

  constructor(client: Client, log?: Log) {
    super('clone', client, log);
    this.events = new EventRecorder(client, 'clone-controller');
    this.clones = this.inform(VMCLONES).addIndex(BY_NAMESPACE, byNamespace);
    const owner = (o: KubeObject) =>
      ((o.metadata.ownerReferences as { kind: string; name: string }[] | undefined) ?? [])
        .filter((r) => r.kind === 'VirtualMachineClone')
        .map((r) => `${o.metadata.namespace}/${r.name}`);
    this.snapshots = this.inform(VMSNAPSHOTS, (s) => [...owner(s), ...this.waitingOn(s)]);
    this.restores = this.inform(VMRESTORES, owner);
    this.vms = this.inform(VMS, () => []);
    this.contents = this.inform(VMSNAPSHOTCONTENTS, (c) => this.clonesIn(c.metadata.namespace).map(cacheKey));
  }

  /** Clones whose source is this snapshot. */
  private waitingOn(snap: KubeObject): string[] {
    return this.clonesIn(snap.metadata.namespace)
      .filter((c) => (c.spec as CloneSpec | undefined)?.source?.name === snap.metadata.name)
      .map(cacheKey);
  }

  /** The clones of a namespace still at work. */
  private clonesIn(namespace: string | undefined): KubeObject[] {
    return namespace ? this.clones.byIndex(BY_NAMESPACE, namespace).filter((c) => !FINAL.has(phaseOf(c))) : [];
  }

  protected async reconcile(key: string): Promise<void> {
    const clone = this.clones.get(key);
    if (!clone || clone.metadata.deletionTimestamp || FINAL.has(phaseOf(clone))) return;
    const ns = clone.metadata.namespace!;
    const uid = clone.metadata.uid!;
    const spec = (clone.spec ?? {}) as CloneSpec;
    const target = spec.target?.name ?? ((clone.status as Obj | undefined)?.targetName as string | undefined) ?? `clone-${uid.slice(0, 8)}`;
    const fromSnapshot = spec.source?.kind === 'VirtualMachineSnapshot';
    const snapshotName = fromSnapshot ? spec.source!.name! : `tmp-snapshot-${uid}`;
    const restoreName = `tmp-restore-${uid}`;
    const existing = this.vms.get(`${ns}/${target}`);
    if (existing && !this.restores.get(`${ns}/${restoreName}`))
      return this.fail(clone, `the target VirtualMachine ${target} already exists: choose another spec.target.name`);

    const snap = this.snapshots.get(`${ns}/${snapshotName}`);
    if (!snap && fromSnapshot) return this.setPhase(clone, 'Pending', target, 'SourceNotFound', `VirtualMachineSnapshot ${snapshotName} does not exist`);
    if (!snap) {
      if (!this.vms.get(`${ns}/${spec.source?.name}`))
        return this.setPhase(clone, 'Pending', target, 'SourceNotFound', `VirtualMachine ${spec.source?.name} does not exist`);
      await this.createOwned(clone, VMSNAPSHOTS, {
        apiVersion: 'snapshot.kubevirt.io/v1beta1',
        kind: 'VirtualMachineSnapshot',
        metadata: { name: snapshotName, namespace: ns },
        spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: spec.source?.name } },
      });
      return this.setPhase(clone, 'SnapshotInProgress', target, 'SnapshotInProgress', `taking snapshot ${snapshotName} of ${spec.source?.name}`, snapshotName);
    }
    if (phaseOf(snap) === 'Failed')
      return this.fail(clone, `snapshot ${snapshotName} failed: ${String(((snap.status as Obj).error as Obj | undefined)?.message ?? '')}`);
    const content = this.contents.get(`${ns}/${String((snap.status as Obj | undefined)?.virtualMachineSnapshotContentName ?? '')}`);
    if ((snap.status as Obj | undefined)?.readyToUse !== true || !content) {
      return this.setPhase(
        clone,
        'SnapshotInProgress',
        target,
        'SnapshotInProgress',
        `waiting for snapshot ${snapshotName}`,
        fromSnapshot ? undefined : snapshotName,
      );
    }
    // The patches apply to the VM as the snapshot recorded it.
    const source = ((content.spec as Obj).source as { virtualMachine: { metadata: Obj; spec: Obj } }).virtualMachine;

    const restore = this.restores.get(`${ns}/${restoreName}`);
    if (!restore) {
      const full = clone.metadata.annotations?.[CLONE_DISK_TYPE] === 'full';
      await this.createOwned(clone, VMRESTORES, {
        apiVersion: 'snapshot.kubevirt.io/v1beta1',
        kind: 'VirtualMachineRestore',
        metadata: { name: restoreName, namespace: ns, ...(full ? { annotations: { [CLONE_DISK_TYPE]: 'full' } } : {}) },
        spec: {
          target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target },
          virtualMachineSnapshotName: snapshotName,
          patches: identityPatches(source, spec),
        },
      });
      return this.setPhase(
        clone,
        'RestoreInProgress',
        target,
        'RestoreInProgress',
        `creating ${target} from ${snapshotName}`,
        fromSnapshot ? undefined : snapshotName,
        restoreName,
      );
    }
    if ((restore.status as Obj | undefined)?.complete !== true)
      return this.setPhase(
        clone,
        'RestoreInProgress',
        target,
        'RestoreInProgress',
        `creating ${target} from ${snapshotName}`,
        fromSnapshot ? undefined : snapshotName,
        restoreName,
      );

    // Done: the temporary objects go (the new VM's disks keep the snapshot files they read).
    await this.client.delete(VMRESTORES, restoreName, { namespace: ns }).catch((e) => {
      if (!isStatusError(e, 'NotFound')) throw e;
    });
    if (!fromSnapshot)
      await this.client.delete(VMSNAPSHOTS, snapshotName, { namespace: ns }).catch((e) => {
        if (!isStatusError(e, 'NotFound')) throw e;
      });
    await updateStatus(this.client, VMCLONES, ns, clone.metadata.name, (s) => {
      s.phase = 'Succeeded';
      s.targetName = target;
      delete s.snapshotName;
      delete s.restoreName;
      setCondition(s, { type: 'Progressing', status: 'False', reason: 'Succeeded', message: 'Clone succeeded' }, false);
      setCondition(s, { type: 'Ready', status: 'True', reason: 'Succeeded', message: 'Clone succeeded' }, false);
    });
    await this.events.record(clone, 'Normal', 'CloneSucceeded', `VirtualMachine ${target} cloned from ${spec.source?.kind} ${spec.source?.name}`);
  }

  private async createOwned(clone: KubeObject, res: typeof VMSNAPSHOTS, obj: KubeObject): Promise<void> {
    obj.metadata.ownerReferences = [
      {
        apiVersion: 'clone.kubevirt.io/v1beta1',
        kind: 'VirtualMachineClone',
        name: clone.metadata.name,
        uid: clone.metadata.uid!,
        controller: true,
        blockOwnerDeletion: true,
      },
    ];
    try {
      await this.client.create(res, obj, { namespace: clone.metadata.namespace });
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
    }
  }

  private async setPhase(
    clone: KubeObject,
    phase: string,
    target: string,
    reason: string,
    message: string,
    snapshotName?: string,
    restoreName?: string,
  ): Promise<void> {
    await updateStatus(this.client, VMCLONES, clone.metadata.namespace, clone.metadata.name, (s) => {
      s.phase = phase;
      s.targetName = target;
      s.creationTime ??= new Date().toISOString(); // upstream field name: an unknown field is refused (Strict)
      if (snapshotName) s.snapshotName = snapshotName;
      if (restoreName) s.restoreName = restoreName;
      setCondition(s, { type: 'Progressing', status: 'True', reason, message }, false);
      setCondition(s, { type: 'Ready', status: 'False', reason, message }, false);
    });
  }

  private async fail(clone: KubeObject, message: string): Promise<void> {
    await updateStatus(this.client, VMCLONES, clone.metadata.namespace, clone.metadata.name, (s) => {
      s.phase = 'Failed';
      setCondition(s, { type: 'Progressing', status: 'False', reason: 'Failed', message }, false);
      setCondition(s, { type: 'Ready', status: 'False', reason: 'Failed', message }, false);
    });
    await this.events.record(clone, 'Warning', 'CloneFailed', message);
  }
}
