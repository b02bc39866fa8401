/**
 * Admission checks that need more than the object itself:
 *  - the requesting user: only administrators (the server and agents) set Vessel's own
 *    annotations and labels (`vessel.io/*`: where a claim's volume lives, what it is cloned or
 *    restored from, which memory file a VM resumes); a DataVolume (or a VM's dataVolumeTemplates, or a
 *    DataSource) that copies another namespace's disk needs read access to that disk, as CDI's
 *    clone authorization does, and a VirtualMachineClone needs read access to the VM or
 *    snapshot it copies. Without this a tenant could clone any tenant's volume by naming it;
 *  - other objects (admitReferences), as virt-api's VMRestoreAdmitter reads them: a restore
 *    needs a usable VirtualMachineSnapshot, no other unfinished restore of its target, and a
 *    target VM that is not running unless the restore may stop it (targetReadinessPolicy
 *    StopTarget) or wait for it (WaitEventually);
 *  - the cluster network's IPAddresses (admitFixedAddress): a fixed address a VM or standalone VMI
 *    asks for (`ipam.vessel.io/ip`) must be a host address of the VM network that no other parent
 *    holds, so a conflict is refused before anything is stored instead of leaving a VM that
 *    cannot start;
 *  - VirtualMachineInstancePresets (admitPresets): a VMI being created gets the domain of the
 *    presets that select it merged in, as virt-api's mutating webhook did.
 */
import {
  embeddedMetadata,
  findByResource,
  ipam,
  instancetypes,
  isReservedKey,
  parseCidr,
  priority,
  pvcResizeRefusal,
  RESERVED_PREFIX,
  type Cidr,
  type FieldCause,
  type KindInfo,
  type KubeObject,
  isObject as isObj,
  presets,
} from '@vessel/api';
import { ADMIN_GROUP, authorize, type User } from './auth.ts';
import { ApiError, forbidden, invalid } from './errors.ts';

type Obj = Record<string, unknown>;

interface Ref {
  resource: 'datasources' | 'persistentvolumeclaims' | 'virtualmachines' | 'virtualmachinesnapshots';
  group: string;
  namespace: string;
  name: string;
  field: string;
}

/** What a VirtualMachineClone may copy (spec.source.kind -> the resource read). */
const CLONE_SOURCES: Record<string, { resource: Ref['resource']; group: string }> = {
  VirtualMachine: { resource: 'virtualmachines', group: 'kubevirt.io' },
  VirtualMachineSnapshot: { resource: 'virtualmachinesnapshots', group: 'snapshot.kubevirt.io' },
};

/** What an object copies from (volumes; a clone's VM or snapshot), with the field that names each. */
export function cloneReferences(info: KindInfo, obj: Obj): Ref[] {
  const ns = String((obj.metadata as Obj | undefined)?.namespace ?? 'default');
  const fromDvSpec = (spec: Obj | undefined, field: string): Ref[] => {
    if (!spec) return [];
    const out: Ref[] = [];
    const ref = spec.sourceRef as { name?: string; namespace?: string } | undefined;
    if (ref?.name) out.push({ resource: 'datasources', group: 'cdi.kubevirt.io', namespace: ref.namespace ?? ns, name: ref.name, field: `${field}.sourceRef` });
    const pvc = (spec.source as { pvc?: { name?: string; namespace?: string } } | undefined)?.pvc;
    if (pvc?.name) out.push({ resource: 'persistentvolumeclaims', group: '', namespace: pvc.namespace ?? ns, name: pvc.name, field: `${field}.source.pvc` });
    return out;
  };
  if (info.group === 'cdi.kubevirt.io' && info.kind === 'DataVolume') return fromDvSpec(obj.spec as Obj, 'spec');
  if (info.group === 'cdi.kubevirt.io' && info.kind === 'DataSource') return fromDvSpec({ source: (obj.spec as Obj | undefined)?.source }, 'spec');
  if (info.group === 'kubevirt.io' && info.kind === 'VirtualMachine') {
    const templates = ((obj.spec as Obj | undefined)?.dataVolumeTemplates as { spec?: Obj }[] | undefined) ?? [];
    return templates.flatMap((t, i) => fromDvSpec(t.spec, `spec.dataVolumeTemplates[${i}].spec`));
  }
  if (info.group === 'clone.kubevirt.io' && info.kind === 'VirtualMachineClone') {
    // A local reference: the source lives in the clone's namespace.
    const source = (obj.spec as { source?: { kind?: string; name?: string } } | undefined)?.source;
    const kind = source?.kind !== undefined ? CLONE_SOURCES[source.kind] : undefined;
    if (kind && source?.name) return [{ ...kind, namespace: ns, name: source.name, field: 'spec.source' }];
  }
  if (info.group === 'export.kubevirt.io' && info.kind === 'VirtualMachineExport') {
    // An export hands out the source's bytes: its creator must be able to read the source (a local reference too).
    const source = (obj.spec as { source?: { kind?: string; name?: string } } | undefined)?.source;
    const kind =
      source?.kind === 'PersistentVolumeClaim'
        ? { resource: 'persistentvolumeclaims' as const, group: '' }
        : source?.kind !== undefined
          ? CLONE_SOURCES[source.kind]
          : undefined;
    if (kind && source?.name) return [{ ...kind, namespace: ns, name: source.name, field: 'spec.source' }];
  }
  return [];
}

/** Throws 403 when `user` may not read something `obj` copies from. */
export function authorizeCloneSources(user: User, info: KindInfo, obj: unknown): void {
  if (typeof obj !== 'object' || obj === null) return;
  for (const ref of cloneReferences(info, obj as Obj)) {
    try {
      authorize(user, { verb: 'get', group: ref.group, resource: ref.resource, namespace: ref.namespace, name: ref.name });
    } catch (e) {
      if (e instanceof Error) e.message = `${ref.field}: cannot clone from ${ref.namespace}/${ref.name}: ${e.message}`;
      throw e;
    }
  }
}

/** How admission reads other objects: Resources.get (a 404 ApiError when the object is absent) and list. */
export interface ObjectReader {
  get(info: KindInfo, namespace: string | undefined, name: string): Promise<KubeObject>;
  list(info: KindInfo, namespace: string | undefined, q: Record<string, never>): Promise<{ items: KubeObject[] }>;
}

const VMS = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const STORAGE_CLASSES = findByResource('storage.k8s.io', 'v1', 'storageclasses')!;
const VMIS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
const VMSNAPSHOTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots')!;
const VMRESTORES = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinerestores')!;
const VMEXPORTS = findByResource('export.kubevirt.io', 'v1beta1', 'virtualmachineexports')!;

/** A VMI in one of these phases has stopped for good; any other VMI is a running VM. */
const FINAL_PHASES = new Set(['Succeeded', 'Failed']);
/** Restores that may proceed while the target runs: they stop it, or wait until it is stopped. */
const MAY_RUN_POLICIES = new Set(['StopTarget', 'WaitEventually']);

async function getOrUndefined(reader: ObjectReader, info: KindInfo, namespace: string, name: string): Promise<KubeObject | undefined> {
  try {
    return await reader.get(info, namespace, name);
  } catch (e) {
    if (e instanceof ApiError && e.code === 404) return undefined;
    throw e;
  }
}

/** The checks of virt-api's VMRestoreAdmitter that read other objects, as causes. */
async function restoreCauses(reader: ObjectReader, ns: string, spec: Obj): Promise<FieldCause[]> {
  const causes: FieldCause[] = [];
  const snapshotName = typeof spec.virtualMachineSnapshotName === 'string' ? spec.virtualMachineSnapshotName : '';
  if (snapshotName) {
    const snapshot = await getOrUndefined(reader, VMSNAPSHOTS, ns, snapshotName);
    const field = 'spec.virtualMachineSnapshotName';
    const status = (snapshot?.status ?? {}) as { phase?: string; readyToUse?: boolean };
    if (!snapshot) {
      causes.push({
        reason: 'FieldValueInvalid',
        field,
        message: `VirtualMachineSnapshot "${snapshotName}" does not exist in namespace "${ns}": name an existing snapshot (vessel get vmsnapshots -n ${ns})`,
      });
    } else if (status.phase === 'Failed') {
      causes.push({
        reason: 'FieldValueInvalid',
        field,
        message: `VirtualMachineSnapshot "${snapshotName}" has failed and is invalid to use: take a new snapshot`,
      });
    } else if (status.readyToUse !== true) {
      causes.push({
        reason: 'FieldValueInvalid',
        field,
        message: `VirtualMachineSnapshot "${snapshotName}" is not ready to use yet: wait until its status.readyToUse is true`,
      });
    }
  }
  const target = (spec.target ?? {}) as { apiGroup?: string; kind?: string; name?: string };
  // Two restores writing one VM's disks and spec would leave it half one, half the other.
  const unfinished = target.name
    ? (await reader.list(VMRESTORES, ns, {})).items.find(
        (r) => ((r.spec as Obj | undefined)?.target as { name?: string } | undefined)?.name === target.name && (r.status as Obj | undefined)?.complete !== true,
      )
    : undefined;
  if (unfinished) {
    causes.push({
      reason: 'FieldValueInvalid',
      field: 'spec.target',
      message: `VirtualMachineRestore ${unfinished.metadata?.name} of ${target.name} is in progress: wait until it completes, or delete it`,
    });
  }
  // A Ready export serves the VM's disks as they are: a restore would change them under it.
  const exporting = target.name
    ? (await reader.list(VMEXPORTS, ns, {})).items.find((e) => {
        const source = (e.spec as { source?: { kind?: string; name?: string } } | undefined)?.source;
        return source?.kind === 'VirtualMachine' && source.name === target.name && (e.status as Obj | undefined)?.phase === 'Ready';
      })
    : undefined;
  if (exporting) {
    causes.push({
      reason: 'FieldValueInvalid',
      field: 'spec.target',
      message: `VirtualMachineExport ${exporting.metadata?.name} is exporting the disks of ${target.name}: delete it before restoring`,
    });
  }
  const policy = typeof spec.targetReadinessPolicy === 'string' ? spec.targetReadinessPolicy : undefined;
  if (target.kind === 'VirtualMachine' && target.name && !(policy && MAY_RUN_POLICIES.has(policy))) {
    const vm = await getOrUndefined(reader, VMS, ns, target.name);
    const vmi = vm ? await getOrUndefined(reader, VMIS, ns, target.name) : undefined;
    const phase = (vmi?.status as { phase?: string } | undefined)?.phase ?? '';
    if (vmi && !FINAL_PHASES.has(phase)) {
      causes.push({
        reason: 'FieldValueInvalid',
        field: 'spec.target',
        message: `VirtualMachine ${target.name} is running: stop it first (vessel stop ${target.name}) or set spec.targetReadinessPolicy: StopTarget`,
      });
    }
  }
  return causes;
}

const INSTANCETYPE_KINDS: Record<string, KindInfo> = {
  VirtualMachineInstancetype: findByResource('instancetype.kubevirt.io', 'v1beta1', 'virtualmachineinstancetypes')!,
  VirtualMachineClusterInstancetype: findByResource('instancetype.kubevirt.io', 'v1beta1', 'virtualmachineclusterinstancetypes')!,
  VirtualMachinePreference: findByResource('instancetype.kubevirt.io', 'v1beta1', 'virtualmachinepreferences')!,
  VirtualMachineClusterPreference: findByResource('instancetype.kubevirt.io', 'v1beta1', 'virtualmachineclusterpreferences')!,
};

/** virt-api refuses a new VM whose instancetype or preference does not exist (inferFromVolume is resolved at start). */
async function instancetypeCauses(reader: ObjectReader, ns: string, spec: Obj): Promise<FieldCause[]> {
  const causes: FieldCause[] = [];
  for (const which of ['instancetype', 'preference'] as const) {
    const m = instancetypes.matcherOf(spec, which);
    const kind = m && instancetypes.normalizeKind(which, m.kind);
    const info = kind ? INSTANCETYPE_KINDS[kind] : undefined;
    if (!m || !info) continue; // the kind was refused by validation already
    if (!(await getOrUndefined(reader, info, info.namespaced ? ns : '', m.name))) {
      causes.push({
        reason: 'FieldValueNotFound',
        field: `spec.${which}.name`,
        message: `${kind} "${m.name}" not found${info.namespaced ? ` in namespace "${ns}"` : ''}: create it first (vessel get ${info.plural}${info.namespaced ? ` -n ${ns}` : ''})`,
      });
    }
  }
  return causes;
}

/**
 * Checks of a new object against the objects it refers to; throws a 422 Invalid naming the
 * fields. Only on create: the specs concerned are immutable, and an update (a finalizer
 * removed, a label added) must not fail because the world changed since. Resources calls
 * admission before it assigns the uid, so an object without a uid is being created.
 */
export async function admitReferences(reader: ObjectReader, info: KindInfo, obj: KubeObject): Promise<void> {
  if (obj.metadata?.uid) return;
  if (info.group === 'kubevirt.io' && info.kind === 'VirtualMachine') {
    const causes = await instancetypeCauses(reader, obj.metadata?.namespace ?? 'default', (obj.spec ?? {}) as Obj);
    if (causes.length) throw invalid(info.kind, info.group, obj.metadata?.name ?? '', causes);
  }
  if (info.group === 'snapshot.kubevirt.io' && info.kind === 'VirtualMachineRestore') {
    const ns = obj.metadata?.namespace ?? 'default';
    const causes = await restoreCauses(reader, ns, (obj.spec ?? {}) as Obj);
    if (causes.length) throw invalid(info.kind, info.group, obj.metadata?.name ?? '', causes);
  }
}

/**
 * Everything admission checks before `obj` is stored: the caller's access to what it copies
 * (403), then the objects it refers to (422). What the API server's write path runs as
 * WriteOptions.admit, with `reader` its Resources. `current`: the stored object an update
 * replaces, as the update path read it (undefined on create), so admission does not read it again.
 */
export async function admit(
  user: User,
  reader: ObjectReader,
  info: KindInfo,
  obj: KubeObject,
  current?: KubeObject,
  opts: AdmissionOptions = {},
): Promise<void> {
  authorizeCloneSources(user, info, obj);
  keepVmiStatus(user, info, obj, current);
  admitReservedKeys(user, info, obj, current);
  await admitReferences(reader, info, obj);
  await admitClaimResize(reader, info, obj, current);
  await admitFixedAddress(reader, info, obj, opts.vmNetwork, user, current);
  await admitPresets(reader, info, obj, current, opts.recordEvent);
  await admitPriority(reader, info, obj);
}

const VMIPRESETS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstancepresets')!;

/**
 * Merges the matching presets into a VMI being created (presets.ts). Conflicting values are left
 * as the VMI has them and reported with a Warning Event on the VMI (reason PresetFailed, as
 * virt-api's), since the VMI still starts.
 */
export async function admitPresets(
  reader: ObjectReader,
  info: KindInfo,
  obj: KubeObject,
  current: KubeObject | undefined,
  recordEvent?: AdmissionOptions['recordEvent'],
): Promise<void> {
  if (current || info.group !== 'kubevirt.io' || info.kind !== 'VirtualMachineInstance') return;
  const all = (await reader.list(VMIPRESETS, obj.metadata?.namespace ?? 'default', {})).items;
  if (all.length === 0) return;
  const result = presets.applyPresets(obj, all);
  if (result.conflicts.length)
    await recordEvent?.(obj, 'Warning', 'PresetFailed', `VirtualMachineInstancePreset values not applied (the VMI's own win): ${result.conflicts.join('; ')}`);
}

const PRIORITY_CLASSES = findByResource('scheduling.k8s.io', 'v1', 'priorityclasses')!;

/**
 * Kubernetes' Priority admission plugin, for VMIs in place of pods: a new VMI's
 * spec.priorityClassName (else the global default class) resolves into its priority
 * annotations (priority.ts), and a name no class has is refused, so its VM reports FailedCreate
 * (Kubernetes refuses such a pod with 403; here 422 naming the field, as every bad input). Only
 * on create: a class deleted later changes nothing running. A PriorityClass marked globalDefault
 * is refused while another one is (the plugin refuses it too, with 403).
 */
export async function admitPriority(reader: ObjectReader, info: KindInfo, obj: KubeObject): Promise<void> {
  if (info.group === 'kubevirt.io' && info.kind === 'VirtualMachineInstance' && !obj.metadata?.uid) {
    const name = (obj.spec as { priorityClassName?: unknown } | undefined)?.priorityClassName;
    const className = typeof name === 'string' && name ? name : undefined;
    // The critical classes outrank every VM of every tenant: only kube-system's may use them
    // (Kubernetes' rule until ResourceQuota scopes took over; Vessel has no quota scopes).
    const ns = obj.metadata?.namespace ?? 'default';
    if (className?.startsWith('system-') && ns !== 'kube-system')
      throw forbidden(
        `virtualmachineinstances "${obj.metadata?.name ?? ''}" is forbidden: the ${className} priority class is reserved to the kube-system namespace, not ${ns}`,
      );
    const classes = (await reader.list(PRIORITY_CLASSES, undefined, {})).items as unknown as priority.PriorityClassLike[];
    const resolved = priority.resolvePriority(className, classes);
    if (!resolved) {
      throw invalid(info.kind, info.group, obj.metadata?.name ?? '', [
        { reason: 'FieldValueNotFound', field: 'spec.priorityClassName', message: `Not found: no PriorityClass with name ${className} was found` },
      ]);
    }
    obj.metadata = obj.metadata ?? { name: '' };
    obj.metadata.annotations = {
      ...obj.metadata.annotations,
      [priority.PRIORITY]: String(resolved.priority),
      [priority.PREEMPTION_POLICY]: resolved.preemptionPolicy,
    };
    return;
  }
  if (info.group === 'scheduling.k8s.io' && info.kind === 'PriorityClass' && (obj as { globalDefault?: unknown }).globalDefault === true) {
    const other = (await reader.list(PRIORITY_CLASSES, undefined, {})).items.find(
      (c) => c.metadata?.name !== obj.metadata?.name && (c as { globalDefault?: unknown }).globalDefault === true,
    );
    if (other) {
      throw invalid(info.kind, info.group, obj.metadata?.name ?? '', [
        {
          reason: 'FieldValueForbidden',
          field: 'globalDefault',
          message: `Forbidden: PriorityClass ${other.metadata?.name} is marked as default already and no more than one default may exist`,
        },
      ]);
    }
  }
}

/**
 * A VMI's status is the system's: KubeVirt gives VMIs no status subresource, but only its own
 * components write the status. A user's create or update keeps what is stored (none on create),
 * as a status subresource would: the agent dials `status.interfaces` addresses no more, but the
 * EndpointSlice controller publishes them and Services' DNAT sends traffic there, so a tenant's
 * own address there would aim another tenant's or the host's traffic.
 */
export function keepVmiStatus(user: User, info: KindInfo, obj: KubeObject, current: KubeObject | undefined): void {
  if (info.group !== 'kubevirt.io' || info.kind !== 'VirtualMachineInstance' || user.groups.includes(ADMIN_GROUP)) return;
  if (current?.status === undefined) delete obj.status;
  else obj.status = current.status;
}

/** What admission needs from the server's configuration. */
export interface AdmissionOptions {
  /** The VM network (default 10.244.0.0/16). */
  vmNetwork?: Cidr;
  /** Records an Event about `obj` (preset conflicts); failures are the recorder's to swallow. */
  recordEvent?: (obj: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string) => Promise<void>;
}

const IPADDRESSES = findByResource('networking.k8s.io', 'v1', 'ipaddresses')!;
const DEFAULT_VM_NETWORK = parseCidr(ipam.DEFAULT_VM_NETWORK_CIDR)!;

/**
 * A fixed address (`ipam.vessel.io/ip` on a VM's template or a standalone VMI) is refused (422,
 * naming the annotation) when it is malformed, outside the VM network, its network or broadcast
 * address, or held by an IPAddress of another parent. Checked on create and whenever the value
 * changes; an update that keeps it is not refused because the world changed since. A VMI a VM
 * owns carries its template's annotation, but the VM is the parent: it is not checked again.
 */
export async function admitFixedAddress(
  reader: ObjectReader,
  info: KindInfo,
  obj: KubeObject,
  cidr: Cidr = DEFAULT_VM_NETWORK,
  user?: User,
  current?: KubeObject,
): Promise<void> {
  if (info.group !== 'kubevirt.io' || (info.kind !== 'VirtualMachine' && info.kind !== 'VirtualMachineInstance')) return;
  const kind = info.kind;
  const value = ipam.fixedIpOf(kind, obj);
  if (value === undefined) return;
  const vmOwned = (obj.metadata?.ownerReferences ?? []).some((r) => r.kind === 'VirtualMachine' && r.controller);
  if (kind === 'VirtualMachineInstance' && vmOwned) return;
  const ns = obj.metadata?.namespace ?? 'default';
  const name = obj.metadata?.name ?? '';
  if (obj.metadata?.uid) {
    const stored = current ?? (await getOrUndefined(reader, info, ns, name));
    if (stored && ipam.fixedIpOf(kind, stored) === value) return;
  }
  const field = ipam.fixedIpField(kind);
  const cause = ipam.fixedIpProblem(field, value, cidr);
  if (cause) throw invalid(info.kind, info.group, name, [cause]);
  const holder = await getOrUndefined(reader, IPADDRESSES, '', value);
  const p = ((holder?.spec as Obj | undefined)?.parentRef ?? {}) as Partial<ipam.ParentRef>;
  const self = (q: Partial<ipam.ParentRef>) => q.group === 'kubevirt.io' && q.resource === info.plural && q.namespace === ns && q.name === name;
  let clash: { parent: Partial<ipam.ParentRef>; verb: string } | undefined = holder && !self(p) ? { parent: p, verb: 'already held by' } : undefined;
  // Two VMs stored one after the other with one address would both pass the check above
  // before the controller allocates for the first: what others ask for counts too.
  if (!clash) {
    for (const other of [VMS, VMIS]) {
      const asking = (await reader.list(other, undefined, {})).items.find((o) => {
        if (other === VMIS && (o.metadata?.ownerReferences ?? []).some((r) => r.kind === 'VirtualMachine' && r.controller)) return false;
        const parent = { group: 'kubevirt.io', resource: other.plural, namespace: o.metadata?.namespace, name: o.metadata?.name };
        return !self(parent) && ipam.fixedIpOf(other.kind as 'VirtualMachine' | 'VirtualMachineInstance', o) === value;
      });
      if (asking) {
        clash = {
          parent: { group: 'kubevirt.io', resource: other.plural, namespace: asking.metadata?.namespace, name: asking.metadata?.name },
          verb: 'already asked for by',
        };
        break;
      }
    }
  }
  if (!clash) return;
  // The other parent is named only to those who may read it: a tenant learns nothing of another namespace.
  let by = 'another parent';
  const q = clash.parent;
  if (q.resource && q.name) {
    try {
      if (user) authorize(user, { verb: 'get', group: q.group ?? '', resource: q.resource, namespace: q.namespace, name: q.name });
      by = ipam.parentKey(q as ipam.ParentRef);
    } catch {
      /* not readable by this user: left unnamed */
    }
  }
  throw invalid(info.kind, info.group, name, [
    {
      reason: 'FieldValueInvalid',
      field,
      message: `Invalid value: ${JSON.stringify(value)}: ${clash.verb} ${by}: pick a free address (kubectl get ipaddresses)`,
    },
  ]);
}

/**
 * Vessel's own annotations and labels (reserved.ts): only administrators (the server's and
 * agents' identity) set or change them, on every kind and in every embedded metadata a
 * controller copies. A non-administrator's update that leaves one out keeps it, so a manifest
 * applied again with `kubectl replace` does not fail on keys its author never wrote.
 */
export function admitReservedKeys(user: User, info: KindInfo, obj: KubeObject, current: KubeObject | undefined): void {
  if (user.groups.includes(ADMIN_GROUP)) return;
  const before = new Map(current ? embeddedMetadata(current as Obj).map((e) => [e.path, e.meta]) : []);
  const causes: FieldCause[] = [];
  for (const { path, meta } of embeddedMetadata(obj as Obj)) {
    for (const field of ['labels', 'annotations'] as const) {
      const now = (isObj(meta[field]) ? meta[field] : {}) as Record<string, unknown>;
      const old = before.get(path)?.[field];
      const was = (isObj(old) ? old : {}) as Record<string, unknown>;
      for (const [k, v] of Object.entries(now)) {
        if (isReservedKey(k) && was[k] !== v) {
          causes.push({
            reason: 'FieldValueForbidden',
            field: `${path}.${field}[${k}]`,
            message: `${k} is set by Vessel itself: leave it out (keys under ${RESERVED_PREFIX} are reserved; user options live in subdomains such as snapshot.vessel.io/)`,
          });
        }
      }
      if (path !== 'metadata') continue;
      const kept = Object.entries(was).filter(([k]) => isReservedKey(k) && !(k in now));
      if (kept.length) meta[field] = { ...now, ...Object.fromEntries(kept) };
    }
  }
  if (causes.length) throw invalid(info.kind, info.group, obj.metadata?.name ?? '', causes);
}

/** Kubernetes' PersistentVolumeClaimResize admission: a claim grows only in a class that allows it (403). */
async function admitClaimResize(reader: ObjectReader, info: KindInfo, obj: KubeObject, old: KubeObject | undefined): Promise<void> {
  if (info.group !== '' || info.kind !== 'PersistentVolumeClaim' || !obj.metadata?.uid || !old) return;
  const className = (obj.spec as { storageClassName?: string } | undefined)?.storageClassName;
  const sc = className ? await getOrUndefined(reader, STORAGE_CLASSES, '', className) : undefined;
  const why = pvcResizeRefusal(obj, old, sc);
  if (why) throw forbidden(`persistentvolumeclaims "${obj.metadata.name}" is forbidden: ${why}`);
}
