/**
 * The `scale` subresource (autoscaling/v1 Scale) of kinds that declare one (KindInfo.scaleSubresource:
 * VirtualMachinePools and VirtualMachineInstanceReplicaSets), as kube-apiserver serves it for
 * CRDs: spec.replicas ↔ .spec.replicas, status.replicas ← .status.replicas, status.selector ←
 * .status.labelSelector. A write changes only the parent's spec.replicas, through the parent's
 * own update path (validation, admission, resourceVersion precondition), so `kubectl scale`
 * and a HorizontalPodAutoscaler-style client see the same rules as an edit of the object.
 */
import type { KindInfo, KubeObject } from '@vessel/api';
import { isObject } from '@vessel/api';
import { invalid } from './errors.ts';
import { applyPatch, parsePatchBody, type PatchType } from './patch.ts';
import type { Json } from '@vessel/api';
import type { Resources, WriteOptions } from './resources.ts';

type Obj = Record<string, unknown>;

/** KubeVirt defaults a pool's or replica set's replicas to 1 when unset. */
const DEFAULT_REPLICAS = 1;

export function toScale(obj: KubeObject): Obj {
  const m = obj.metadata ?? {};
  const spec = (obj.spec ?? {}) as { replicas?: number };
  const status = (obj.status ?? {}) as { replicas?: number; labelSelector?: string };
  return {
    kind: 'Scale',
    apiVersion: 'autoscaling/v1',
    metadata: {
      name: m.name,
      namespace: m.namespace,
      uid: m.uid,
      resourceVersion: m.resourceVersion,
      creationTimestamp: m.creationTimestamp,
    },
    spec: { replicas: spec.replicas ?? DEFAULT_REPLICAS },
    status: { replicas: status.replicas ?? 0, ...(status.labelSelector ? { selector: status.labelSelector } : {}) },
  };
}

/** spec.replicas of a Scale body, or a 422 naming the field (kube-apiserver's ValidateScale). */
function replicasOf(scale: unknown, name: string): number {
  const replicas = isObject(scale) && isObject(scale.spec) ? scale.spec.replicas : undefined;
  if (typeof replicas !== 'number' || !Number.isInteger(replicas))
    throw invalid('Scale', 'autoscaling', name, [{ reason: 'FieldValueRequired', field: 'spec.replicas', message: 'Required value: an integer' }]);
  if (replicas < 0)
    throw invalid('Scale', 'autoscaling', name, [
      { reason: 'FieldValueInvalid', field: 'spec.replicas', message: `Invalid value: ${replicas}: must be greater than or equal to 0` },
    ]);
  return replicas;
}

async function setReplicas(resources: Resources, info: KindInfo, ns: string | undefined, name: string, scale: unknown, write: WriteOptions): Promise<Obj> {
  const replicas = replicasOf(scale, name);
  const current = await resources.get(info, ns, name);
  const rv = isObject(scale) && isObject(scale.metadata) ? scale.metadata.resourceVersion : undefined;
  const next = structuredClone(current);
  next.spec = { ...((next.spec ?? {}) as Obj), replicas };
  // A Scale that names a resourceVersion is a precondition on the parent, as upstream.
  if (typeof rv === 'string' && rv !== '') next.metadata = { ...next.metadata, resourceVersion: rv };
  const w = await resources.update(info, ns, name, next, undefined, write);
  return toScale(w.object);
}

/** Serves GET, PUT and PATCH of `<plural>/<name>/scale`. */
export async function serveScale(
  resources: Resources,
  info: KindInfo,
  ns: string | undefined,
  name: string,
  verb: 'get' | 'update' | 'patch',
  body: { object?: () => Promise<unknown>; patch?: () => Promise<{ type: PatchType; text: string }> },
  write: WriteOptions,
): Promise<Obj> {
  if (verb === 'get') return toScale(await resources.get(info, ns, name));
  if (verb === 'update') return setReplicas(resources, info, ns, name, await body.object!(), write);
  const { type, text } = await body.patch!();
  const current = toScale(await resources.get(info, ns, name));
  // No precondition unless the patch sets one: the controllers write status all the time.
  delete (current.metadata as Obj).resourceVersion;
  const patched = applyPatch(type, current as Json, parsePatchBody(type, text));
  return setReplicas(resources, info, ns, name, patched, write);
}
