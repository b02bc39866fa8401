/**
 * ObjectMeta validation (apimachinery's ValidateObjectMeta): name/generateName per the kind's name
 * rule, namespace, labels, annotations, owner references. Also used for embedded template metadata
 * (VM spec.template.metadata, dataVolumeTemplates[].metadata), whose labels end up on real objects.
 */
import { invalid, required, tooLong } from './errors.ts';
import { ANNOTATIONS_TOTAL_MAX, dns1123Label, labelValue, qualifiedName, validateName, type NameRule } from './names.ts';
import type { FieldCause } from './types.ts';
import { arr, isObj, str, type Obj } from './kinds/util.ts';

export function validateLabels(labels: unknown, path: string, causes: FieldCause[]): void {
  if (!isObj(labels)) return;
  for (const [k, v] of Object.entries(labels)) {
    for (const e of qualifiedName(k)) causes.push(invalid(path, k, e));
    if (typeof v === 'string') for (const e of labelValue(v)) causes.push(invalid(path, v, e));
  }
}

export function validateAnnotations(annotations: unknown, path: string, causes: FieldCause[]): void {
  if (!isObj(annotations)) return;
  let total = 0;
  for (const [k, v] of Object.entries(annotations)) {
    // Kubernetes lower-cases annotation keys before checking them (upper case is allowed).
    for (const e of qualifiedName(k.toLowerCase())) causes.push(invalid(path, k, e));
    total += Buffer.byteLength(k) + (typeof v === 'string' ? Buffer.byteLength(v) : 0);
  }
  if (total > ANNOTATIONS_TOTAL_MAX) causes.push(tooLong(path, ANNOTATIONS_TOTAL_MAX, `must have at most ${ANNOTATIONS_TOTAL_MAX} bytes`));
}

export interface MetaOptions {
  nameRule: NameRule;
  /** Top-level objects need a name (or generateName); embedded template metadata does not. */
  requireName: boolean;
  old?: Obj;
}

export function validateObjectMeta(meta: unknown, path: string, opts: MetaOptions, causes: FieldCause[]): void {
  const m: Obj = isObj(meta) ? meta : {};
  const name = str(m.name);
  const generateName = str(m.generateName);
  if (name) {
    for (const e of validateName(opts.nameRule, name)) causes.push(invalid(`${path}.name`, name, e));
  } else if (opts.requireName && !generateName) {
    causes.push(required(`${path}.name`, 'name or generateName is required'));
  }
  if (generateName) {
    for (const e of validateName(opts.nameRule, generateName, true)) causes.push(invalid(`${path}.generateName`, generateName, e));
  }
  const ns = str(m.namespace);
  if (ns) for (const e of dns1123Label(ns)) causes.push(invalid(`${path}.namespace`, ns, e));
  validateLabels(m.labels, `${path}.labels`, causes);
  validateAnnotations(m.annotations, `${path}.annotations`, causes);
  arr(m.ownerReferences).forEach((ref, i) => {
    if (!isObj(ref)) return;
    for (const f of ['apiVersion', 'kind', 'name', 'uid']) {
      if (!str(ref[f])) causes.push(required(`${path}.ownerReferences[${i}].${f}`));
    }
  });
  const oldMeta = opts.old;
  if (oldMeta && name && typeof oldMeta.name === 'string' && oldMeta.name !== name) {
    causes.push(invalid(`${path}.name`, name, 'field is immutable'));
  }
}
