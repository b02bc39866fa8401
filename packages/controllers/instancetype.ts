/**
 * What the VM controller does with a VM's instancetype and preference when it starts the VM
 * (docs/instancetypes.md): find them (by name, or inferred from a volume's labels), keep the
 * copies it uses in ControllerRevisions owned by the VM so later edits of the instancetype do
 * not change the VM, and give the VMI spec with them applied. KubeVirt's virt-controller does
 * the same at start (its revisions at first sight of the VM; here at first start).
 */
import { instancetypes, refs, type KubeObject } from '@vessel/api';
import { isStatusError, type Client, type ResourceRef } from '@vessel/client';

const { INSTANCETYPES, CLUSTER_INSTANCETYPES, PREFERENCES, CLUSTER_PREFERENCES, CONTROLLER_REVISIONS, DATAVOLUMES, DATASOURCES, PVCS } = refs;
type Obj = Record<string, unknown>;

/** On a VMI: the instancetype and preference it was made with (JSON of Applied), for RestartRequired and the VM's status. */
export const INSTANCETYPE_APPLIED = 'vessel.io/instancetype-applied';

/** KubeVirt's InstancetypeStatusRef. */
export interface StatusRef {
  kind: string;
  name: string;
  controllerRevisionRef?: { name: string };
  inferFromVolume?: string;
  inferFromVolumeFailurePolicy?: string;
}
export interface Applied {
  instancetype?: StatusRef;
  preference?: StatusRef;
}

const KIND_REFS: Record<string, ResourceRef> = {
  [instancetypes.INSTANCETYPE]: INSTANCETYPES,
  [instancetypes.CLUSTER_INSTANCETYPE]: CLUSTER_INSTANCETYPES,
  [instancetypes.PREFERENCE]: PREFERENCES,
  [instancetypes.CLUSTER_PREFERENCE]: CLUSTER_PREFERENCES,
};

/** What the controller reads: its caches first, the API server when they miss (a just-created object). */
export interface Lookup {
  get(res: ResourceRef, namespace: string | undefined, name: string): Promise<KubeObject | undefined>;
}

export type Sizing = { spec: Obj; applied: Applied } | { problem: { reason: string; message: string } };

type Which = 'instancetype' | 'preference';

/**
 * The key of what a VM asks for (kinds and names, or the volume to infer them from): a VMI made
 * with another key needs a restart to get it.
 */
export function requestedKey(vmSpec: unknown): string {
  const part = (which: Which) => {
    const m = (vmSpec as Obj | undefined)?.[which] as Obj | undefined;
    if (!m) return '';
    const infer = typeof m.inferFromVolume === 'string' ? m.inferFromVolume : '';
    return infer ? `infer:${infer}` : `${instancetypes.normalizeKind(which, m.kind as string | undefined) ?? ''}/${String(m.name ?? '')}`;
  };
  const it = part('instancetype');
  const pref = part('preference');
  return it || pref ? `${it}|${pref}` : '';
}

/** requestedKey of the spec a VMI was made from (its annotation), '' for a VMI made without any. */
export function appliedKey(vmi: KubeObject): string {
  const raw = vmi.metadata?.annotations?.[INSTANCETYPE_APPLIED];
  if (!raw) return '';
  try {
    const a = JSON.parse(raw) as Applied;
    const part = (r: StatusRef | undefined) => (!r ? '' : r.inferFromVolume ? `infer:${r.inferFromVolume}` : `${r.kind}/${r.name}`);
    return `${part(a.instancetype)}|${part(a.preference)}`;
  } catch {
    return '';
  }
}

/** The Applied refs on a VMI, if any. */
export function appliedOf(vmi: KubeObject): Applied | undefined {
  const raw = vmi.metadata?.annotations?.[INSTANCETYPE_APPLIED];
  if (!raw) return undefined;
  try {
    return JSON.parse(raw) as Applied;
  } catch {
    return undefined;
  }
}

/** The labels the named volume's claim, DataVolume or that DataVolume's DataSource carry (first with a default-instancetype/preference label wins). */
async function inferLabels(lookup: Lookup, vm: KubeObject, volumeName: string, label: string): Promise<Record<string, string> | undefined> {
  const ns = vm.metadata?.namespace;
  const volumes = (((vm.spec as Obj | undefined)?.template as Obj | undefined)?.spec as Obj | undefined)?.volumes as Obj[] | undefined;
  const volume = volumes?.find((v) => v.name === volumeName);
  if (!volume) return undefined;
  const candidates: KubeObject[] = [];
  const dvName = (volume.dataVolume as Obj | undefined)?.name as string | undefined;
  const claimName = (volume.persistentVolumeClaim as Obj | undefined)?.claimName as string | undefined;
  if (dvName) {
    const dv = await lookup.get(DATAVOLUMES, ns, dvName);
    if (dv) {
      candidates.push(dv);
      const ref = (dv.spec as Obj | undefined)?.sourceRef as { kind?: string; name?: string; namespace?: string } | undefined;
      if (ref?.name && (ref.kind ?? 'DataSource') === 'DataSource') {
        const ds = await lookup.get(DATASOURCES, ref.namespace ?? ns, ref.name);
        if (ds) candidates.push(ds);
      }
    }
    // A dataVolumeTemplate's labels, for a DataVolume not made yet.
    const t = ((vm.spec as Obj | undefined)?.dataVolumeTemplates as { metadata?: { name?: string; labels?: Record<string, string> } }[] | undefined)?.find(
      (d) => d.metadata?.name === dvName,
    );
    if (t?.metadata?.labels) candidates.push({ metadata: { name: dvName, labels: t.metadata.labels } } as KubeObject);
  }
  const pvc = await lookup.get(PVCS, ns, claimName ?? dvName ?? '');
  if (pvc) candidates.unshift(pvc);
  return candidates.map((c) => c.metadata?.labels).find((l) => l?.[label]);
}

/** The kind and name a matcher names, inferred from its volume when it says so. */
async function resolveMatcher(lookup: Lookup, vm: KubeObject, which: Which): Promise<StatusRef | { problem: string } | { ignored: true } | undefined> {
  const m = (vm.spec as Obj | undefined)?.[which] as Obj | undefined;
  if (!m) return undefined;
  const infer = typeof m.inferFromVolume === 'string' ? m.inferFromVolume : undefined;
  if (!infer) {
    const kind = instancetypes.normalizeKind(which, m.kind as string | undefined);
    if (!kind || typeof m.name !== 'string') return { problem: `spec.${which} names no ${which}` };
    return { kind, name: m.name };
  }
  const policy = typeof m.inferFromVolumeFailurePolicy === 'string' ? m.inferFromVolumeFailurePolicy : 'RejectInferFromVolumeFailure';
  const label = which === 'instancetype' ? instancetypes.DEFAULT_INSTANCETYPE_LABEL : instancetypes.DEFAULT_PREFERENCE_LABEL;
  const kindLabel = which === 'instancetype' ? instancetypes.DEFAULT_INSTANCETYPE_KIND_LABEL : instancetypes.DEFAULT_PREFERENCE_KIND_LABEL;
  const labels = await inferLabels(lookup, vm, infer, label);
  const kind = instancetypes.normalizeKind(which, labels?.[kindLabel]);
  if (!labels || !kind) {
    if (policy === 'IgnoreInferFromVolumeFailure') return { ignored: true };
    return { problem: `unable to infer the ${which} from volume ${infer}: its claim, DataVolume or DataSource has no ${label} label` };
  }
  return { kind, name: labels[label]!, inferFromVolume: infer, inferFromVolumeFailurePolicy: policy };
}

/**
 * The storage class the VM's preference gives the DataVolumes of its dataVolumeTemplates that
 * name none (`volumes.preferredStorageClassName`), read from the preference as it is now.
 */
export async function preferredStorageClass(lookup: Lookup, vm: KubeObject): Promise<string | undefined> {
  const r = await resolveMatcher(lookup, vm, 'preference');
  if (!r || 'ignored' in r || 'problem' in r) return undefined;
  const res = KIND_REFS[r.kind]!;
  const pref = await lookup.get(res, res.namespaced ? vm.metadata?.namespace : undefined, r.name);
  const name = ((pref?.spec as Obj | undefined)?.volumes as Obj | undefined)?.preferredStorageClassName;
  return typeof name === 'string' && name ? name : undefined;
}

/**
 * The spec of the instancetype or preference `ref` names for this start: the VM's revision of it
 * when it has one for the same object (spec revisionName, or the status' controllerRevisionRef),
 * else the object as it is now, stored in a new revision.
 */
async function specFor(
  client: Client,
  lookup: Lookup,
  vm: KubeObject,
  which: Which,
  ref: StatusRef,
  prior: StatusRef | undefined,
): Promise<{ spec: Obj; ref: StatusRef } | { problem: string }> {
  const ns = vm.metadata?.namespace;
  const pinned = ((vm.spec as Obj | undefined)?.[which] as Obj | undefined)?.revisionName as string | undefined;
  const known = pinned ?? (prior && prior.kind === ref.kind && prior.name === ref.name ? prior.controllerRevisionRef?.name : undefined);
  if (known) {
    const rev = await lookup.get(CONTROLLER_REVISIONS, ns, known);
    const spec = rev && instancetypes.specOfRevision(rev);
    if (spec) return { spec, ref: { ...ref, controllerRevisionRef: { name: known } } };
    if (pinned) return { problem: `ControllerRevision ${pinned} (spec.${which}.revisionName) not found` };
    // The revision was deleted: the VM takes the object as it is now.
  }
  const res = KIND_REFS[ref.kind]!;
  const source = await lookup.get(res, res.namespaced ? ns : undefined, ref.name);
  if (!source) return { problem: `${ref.kind} ${ref.name} not found${res.namespaced ? ` in namespace ${ns}` : ''}` };
  const rev = instancetypes.revisionFor(vm, { ...source, kind: ref.kind });
  try {
    await client.create(CONTROLLER_REVISIONS, rev, { namespace: ns });
  } catch (e) {
    if (!isStatusError(e, 'AlreadyExists')) throw e;
  }
  return { spec: structuredClone((source.spec ?? {}) as Obj), ref: { ...ref, controllerRevisionRef: { name: rev.metadata!.name! } } };
}

/**
 * The VMI spec of a VM about to start, with its instancetype and preference applied, and the refs
 * to record; or why it cannot start. `status`: the VM's status (its earlier refs are reused).
 */
export async function sizeVm(client: Client, lookup: Lookup, vm: KubeObject, status: Obj): Promise<Sizing> {
  const template = ((vm.spec as Obj | undefined)?.template as Obj | undefined)?.spec;
  const applied: Applied = {};
  const specs: { instancetype?: Obj; preference?: Obj } = {};
  for (const which of ['instancetype', 'preference'] as const) {
    const r = await resolveMatcher(lookup, vm, which);
    if (!r || 'ignored' in r) continue;
    if ('problem' in r) return { problem: { reason: 'FailedCreate', message: r.problem } };
    const prior = status[`${which}Ref`] as StatusRef | undefined;
    const got = await specFor(client, lookup, vm, which, r, prior);
    if ('problem' in got) return { problem: { reason: 'FailedCreate', message: got.problem } };
    applied[which] = got.ref;
    specs[which] = got.spec;
  }
  if (!applied.instancetype && !applied.preference) return { spec: (template ?? {}) as Obj, applied };
  if (applied.instancetype) {
    const conflicts = instancetypes.instancetypeConflicts(template, 'spec.template.spec');
    if (conflicts.length) return { problem: { reason: 'FailedCreate', message: conflicts.map((c) => c.message).join('; ') } };
  }
  const unmet = instancetypes.requirementsProblem(specs.instancetype, specs.preference, template);
  if (unmet) return { problem: { reason: 'FailedCreate', message: unmet } };
  return { spec: instancetypes.applyInstancetype(template, specs.instancetype, specs.preference), applied };
}
