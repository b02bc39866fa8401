/**
 * Annotation and label keys that belong to Vessel itself. Controllers and agents write them to
 * say where a volume lives, what a claim is cloned or restored from, which memory file a VM
 * resumes from; the agent acts on them. A user who could set one could point the agent at
 * another tenant's files, so admission lets only administrators (the server's and agents' own
 * identity) set or change them, on every kind and in every object metadata a controller copies
 * from (a VM's template, its dataVolumeTemplates, a snapshot content's copy of the VM).
 *
 * The rule is the prefix `vessel.io/` exactly. Options meant for users live in subdomains
 * (`snapshot.vessel.io/with-memory`, `clone.vessel.io/type`, `cdi.vessel.io/checksum`), which
 * are not reserved: a key's domain says who writes it.
 */
import { isObject as isObj } from './objects.ts';

export const RESERVED_PREFIX = 'vessel.io/';

export const isReservedKey = (key: string): boolean => key.startsWith(RESERVED_PREFIX);

/** `map` without its reserved keys (a controller copying user metadata into an object it writes). */
export function withoutReserved(map: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!map) return map;
  return Object.fromEntries(Object.entries(map).filter(([k]) => !isReservedKey(k)));
}

type Obj = Record<string, unknown>;

/** One object metadata inside an object, with the field path that names it. */
export interface EmbeddedMeta {
  path: string;
  meta: Obj;
}

/**
 * Every object metadata in `obj` whose labels or annotations a controller may copy into an
 * object it writes: the object's own, a VM's (or a pool's, a replica set's) template, each
 * dataVolumeTemplate (a pool's VM template's too), and the VM a snapshot content keeps.
 */
export function embeddedMetadata(obj: Obj): EmbeddedMeta[] {
  const out: EmbeddedMeta[] = [];
  const add = (path: string, v: unknown) => {
    if (isObj(v)) out.push({ path, meta: v });
  };
  const vmLike = (prefix: string, o: unknown) => {
    if (!isObj(o)) return;
    add(`${prefix}metadata`, o.metadata);
    const spec = o.spec;
    if (!isObj(spec)) return;
    if (isObj(spec.template)) add(`${prefix}spec.template.metadata`, spec.template.metadata);
    if (Array.isArray(spec.dataVolumeTemplates))
      spec.dataVolumeTemplates.forEach((t, i) => {
        if (isObj(t)) add(`${prefix}spec.dataVolumeTemplates[${i}].metadata`, t.metadata);
      });
  };
  vmLike('', obj);
  // A pool's VM template: its own metadata, its VMI template and its dataVolumeTemplates.
  if (isObj(obj.spec) && isObj(obj.spec.virtualMachineTemplate)) vmLike('spec.virtualMachineTemplate.', obj.spec.virtualMachineTemplate);
  const source = isObj(obj.spec) && isObj(obj.spec.source) ? obj.spec.source : undefined;
  if (source && isObj(source.virtualMachine)) vmLike('spec.source.virtualMachine.', source.virtualMachine);
  return out;
}
