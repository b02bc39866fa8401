/**
 * KubeVirt snapshot semantics (snapshot.kubevirt.io/v1beta1), following virt-api's
 * VMSnapshotAdmitter and VMRestoreAdmitter and the validating admission policies that replaced
 * parts of them: a snapshot's source and a restore's target are VirtualMachines of kubevirt.io,
 * a restore names its snapshot, the policy fields take the upstream values, and the spec of a
 * snapshot, a snapshot content or a restore is immutable after creation. Checks that need other
 * objects (does the snapshot exist, is the target running) are admission's (apiserver/admission.ts).
 */
import { forbidden, invalid, notSupported, required } from '../errors.ts';
import { validateAnnotations, validateLabels } from '../meta.ts';
import { dns1123Subdomain } from '../names.ts';
import type { KubeObject } from '../types.ts';
import { arr, isObj, isSet, jsonEqual, obj, str, type Obj, type SemanticContext } from './util.ts';

export const KUBEVIRT_GROUP = 'kubevirt.io';
export const SNAPSHOT_GROUP = 'snapshot.kubevirt.io';

export const DELETION_POLICIES = ['Delete', 'Retain'] as const;
export const TARGET_READINESS_POLICIES = ['StopTarget', 'WaitGracePeriod', 'FailImmediate', 'WaitEventually'] as const;
export const VOLUME_RESTORE_POLICIES = ['InPlace', 'RandomizeNames', 'PrefixTargetName'] as const;
export const VOLUME_OWNERSHIP_POLICIES = ['Vm', 'None'] as const;

/** metav1.Duration's wire form (Go's time.ParseDuration): "90s", "5m", "1h30m", "1.5h", "0". */
const DURATION_RE = /^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$/;

/** `v` without null members (Kubernetes treats null as unset), for comparing specs. */
function withoutNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNulls);
  if (!isObj(v)) return v;
  const out: Obj = {};
  for (const [k, x] of Object.entries(v)) if (isSet(x)) out[k] = withoutNulls(x);
  return out;
}

/**
 * On update, refuses any change to spec: upstream's "spec is immutable after creation"
 * (Vessel adds what to do instead).
 */
export function immutableSpec(o: KubeObject, ctx: SemanticContext, kind: string): void {
  if (ctx.op !== 'update' || !ctx.old) return;
  if (!jsonEqual(withoutNulls(o.spec), withoutNulls(ctx.old.spec))) {
    ctx.causes.push(forbidden('spec', `spec is immutable after creation; delete the ${kind} and create a new one`));
  }
}

/**
 * A TypedLocalObjectReference at `path` that must name a `kind` of `group`, as the admitters
 * check a snapshot's source and a restore's target: apiGroup set and right, kind right, name set.
 * A missing reference, kind or name is reported by structural validation (they are required).
 */
export function checkTypedRef(ref: Obj | undefined, path: string, group: string, kind: string, what: string, ctx: SemanticContext): void {
  if (!ref) return;
  const apiGroup = ref.apiGroup;
  if (!isSet(apiGroup) || apiGroup === '') {
    ctx.causes.push(required(`${path}.apiGroup`, `${what} is a ${kind}: set apiGroup: ${group}`));
  } else if (typeof apiGroup === 'string' && apiGroup !== group) {
    ctx.causes.push(notSupported(`${path}.apiGroup`, apiGroup, [group]));
  }
  const k = ref.kind;
  if (k === '') ctx.causes.push(required(`${path}.kind`, `set kind: ${kind}`));
  else if (typeof k === 'string' && k !== kind) ctx.causes.push(notSupported(`${path}.kind`, k, [kind]));
  if (ref.name === '') ctx.causes.push(required(`${path}.name`, `name the ${kind}`));
}

export function validateVirtualMachineSnapshot(o: KubeObject, ctx: SemanticContext): void {
  immutableSpec(o, ctx, 'VirtualMachineSnapshot');
  const spec = obj(o.spec);
  if (ctx.op !== 'create' || !spec) return; // a missing spec is structural validation's
  checkTypedRef(obj(spec.source), 'spec.source', KUBEVIRT_GROUP, 'VirtualMachine', 'the source of a snapshot', ctx);
  const deletionPolicy = str(spec.deletionPolicy);
  if (deletionPolicy !== undefined && !(DELETION_POLICIES as readonly string[]).includes(deletionPolicy)) {
    ctx.causes.push(notSupported('spec.deletionPolicy', deletionPolicy, DELETION_POLICIES));
  }
  const deadline = str(spec.failureDeadline);
  if (deadline !== undefined && !DURATION_RE.test(deadline)) {
    ctx.causes.push(invalid('spec.failureDeadline', deadline, 'must be a duration such as "90s", "5m" or "1h30m"'));
  }
}

export function validateVirtualMachineSnapshotContent(o: KubeObject, ctx: SemanticContext): void {
  immutableSpec(o, ctx, 'VirtualMachineSnapshotContent');
}

const RESTORE_PATCH_PREFIXES = ['/spec/', '/metadata/labels/', '/metadata/annotations/'];

/**
 * spec.patches of a restore or a clone: each one JSON patch operation on the new VM (upstream
 * joins them into one JSON patch). A restore limits them to paths under `prefixes`.
 */
export function checkPatches(patches: unknown[], example: string, ctx: SemanticContext, prefixes?: readonly string[]): void {
  patches.forEach((p, i) => {
    const field = `spec.patches[${i}]`;
    if (typeof p !== 'string') return; // structural validation reported it
    let op: unknown;
    try {
      op = JSON.parse(p);
    } catch {
      ctx.causes.push(invalid(field, p, `patch is not valid JSON; write one JSON patch operation, e.g. ${example}`));
      return;
    }
    const path = isObj(op) ? str(op.path) : undefined;
    if (!isObj(op) || typeof op.op !== 'string' || path === undefined) {
      ctx.causes.push(invalid(field, p, `a patch is one JSON patch operation with "op" and "path", e.g. ${example}`));
    } else if (prefixes && !prefixes.some((prefix) => path.startsWith(prefix))) {
      ctx.causes.push(invalid(field, p, `patches[] can only modify paths under ${prefixes.slice(0, -1).join(', ')}, or ${prefixes[prefixes.length - 1]}`));
    }
  });
}

export function validateVirtualMachineRestore(o: KubeObject, ctx: SemanticContext): void {
  immutableSpec(o, ctx, 'VirtualMachineRestore');
  const spec = obj(o.spec);
  if (ctx.op !== 'create' || !spec) return;
  const causes = ctx.causes;
  checkTypedRef(obj(spec.target), 'spec.target', KUBEVIRT_GROUP, 'VirtualMachine', 'the target of a restore', ctx);
  const targetName = str(obj(spec.target)?.name);
  if (targetName) for (const e of dns1123Subdomain(targetName)) causes.push(invalid('spec.target.name', targetName, e));
  if (spec.virtualMachineSnapshotName === '') {
    causes.push(required('spec.virtualMachineSnapshotName', 'name the VirtualMachineSnapshot to restore from'));
  }
  const enumField = (field: string, list: readonly string[]): void => {
    const v = str(spec[field]);
    if (v !== undefined && !list.includes(v)) causes.push(notSupported(`spec.${field}`, v, list));
  };
  enumField('targetReadinessPolicy', TARGET_READINESS_POLICIES);
  enumField('volumeRestorePolicy', VOLUME_RESTORE_POLICIES);
  enumField('volumeOwnershipPolicy', VOLUME_OWNERSHIP_POLICIES);
  arr(spec.volumeRestoreOverrides).forEach((ov, i) => {
    if (!isObj(ov)) return;
    const field = `spec.volumeRestoreOverrides[${i}]`;
    if (!str(ov.volumeName))
      causes.push(required(`${field}.volumeName`, 'volumeRestoreOverrides[].volumeName is required: name the volume of the snapshotted VM'));
    if (!isSet(ov.restoreName) && !isSet(ov.labels) && !isSet(ov.annotations)) {
      causes.push(required(field, 'volumeRestoreOverrides[] must specify at least one field: restoreName, annotations, or labels'));
    }
    const restoreName = str(ov.restoreName);
    if (restoreName) for (const e of dns1123Subdomain(restoreName)) causes.push(invalid(`${field}.restoreName`, restoreName, e));
    validateLabels(ov.labels, `${field}.labels`, causes);
    validateAnnotations(ov.annotations, `${field}.annotations`, causes);
  });
  checkPatches(arr(spec.patches), '{"op": "replace", "path": "/spec/runStrategy", "value": "Halted"}', ctx, RESTORE_PATCH_PREFIXES);
}
