/**
 * Admission checks that need the requesting user, not just the object: a DataVolume (or a
 * VM's dataVolumeTemplates, or a DataSource) that copies another namespace's disk needs read
 * access to that disk, as CDI's clone authorization does. Without this a tenant could clone
 * any tenant's volume by naming it.
 */
import type { KindInfo } from '@vessel/api';
import { authorize, type User } from './auth.ts';

type Obj = Record<string, unknown>;

interface Ref { resource: 'datasources' | 'persistentvolumeclaims'; group: string; namespace: string; name: string; field: string }

/** The volumes an object copies from, with the field that names each. */
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
  return [];
}

/** Throws 403 when `user` may not read a volume `obj` copies from. */
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
