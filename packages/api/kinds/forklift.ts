/**
 * Admission of the migration toolkit's kinds (forklift.konveyor.io, docs/forklift.md), beyond
 * their CRD schemas: what Forklift's webhooks and controllers would refuse anyway, refused here
 * with the field named (a source with neither id nor name, a `multus` destination without its
 * NAD, an `ova` provider without its directory, a plan without a VM or a valid namespace).
 */
import { invalid, notSupported, required } from '../errors.ts';
import { dns1123Label } from '../names.ts';
import type { KubeObject } from '../types.ts';
import { HOOK_SCRIPT_ANNOTATION, HOOK_SCRIPT_NAME, HOOK_URL_ANNOTATION } from '../forklift.ts';
import { arr, isSet, obj, str, type SemanticContext } from './util.ts';

/** Forklift's provider types; Vessel reads `ova` so far (the others are accepted and reported by the controller). */
export const PROVIDER_TYPES = ['openshift', 'vsphere', 'ovirt', 'openstack', 'ova', 'ec2', 'hyperv'] as const;

function sourceRef(v: unknown, path: string, ctx: SemanticContext): void {
  const ref = obj(v);
  if (ref && !str(ref.id) && !str(ref.name)) ctx.causes.push(required(path, 'either id or name'));
}

export function validateProvider(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  if (isSet(spec.type) && !(PROVIDER_TYPES as readonly unknown[]).includes(spec.type)) ctx.causes.push(notSupported('spec.type', spec.type, PROVIDER_TYPES));
  if (spec.type === 'ova' && (!isSet(spec.url) || spec.url === ''))
    ctx.causes.push(required('spec.url', 'an ova provider names the directory holding its OVAs'));
}

export function validateNetworkMap(o: KubeObject, ctx: SemanticContext): void {
  arr(obj(o.spec)?.map).forEach((e, i) => {
    const entry = obj(e);
    // openshift: `{type: pod}` names the source cluster's pod network.
    if (obj(entry?.source)?.type !== 'pod') sourceRef(entry?.source, `spec.map[${i}].source`, ctx);
    const dst = obj(entry?.destination);
    if (dst?.type === 'multus' && !str(dst.name))
      ctx.causes.push(required(`spec.map[${i}].destination.name`, 'a multus destination names its NetworkAttachmentDefinition'));
  });
}

export function validateStorageMap(o: KubeObject, ctx: SemanticContext): void {
  arr(obj(o.spec)?.map).forEach((e, i) => sourceRef(obj(e)?.source, `spec.map[${i}].source`, ctx));
}

export function validatePlan(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  const ns = str(spec.targetNamespace);
  if (ns) for (const e of dns1123Label(ns)) ctx.causes.push(invalid('spec.targetNamespace', ns, e));
  arr(spec.vms).forEach((v, i) => sourceRef(v, `spec.vms[${i}]`, ctx));
  if (!str(obj(obj(spec.provider)?.source)?.name)) ctx.causes.push(required('spec.provider.source.name'));
}

/** A Hook's Vessel annotations (docs/forklift.md "Hooks"): one of them, a plain script name or an http(s) URL. */
export function validateHook(o: KubeObject, ctx: SemanticContext): void {
  const ann = obj(obj(o.metadata)?.annotations);
  const script = ann?.[HOOK_SCRIPT_ANNOTATION];
  const url = ann?.[HOOK_URL_ANNOTATION];
  const path = (k: string) => `metadata.annotations[${k}]`;
  if (isSet(script) && isSet(url))
    ctx.causes.push(invalid(path(HOOK_URL_ANNOTATION), url, `set only one of ${HOOK_SCRIPT_ANNOTATION} and ${HOOK_URL_ANNOTATION}`));
  if (isSet(script) && !(typeof script === 'string' && HOOK_SCRIPT_NAME.test(script)))
    ctx.causes.push(invalid(path(HOOK_SCRIPT_ANNOTATION), script, "a script name: letters, digits, '.', '_', '-', no path"));
  if (isSet(url)) {
    let u: URL | undefined;
    try {
      u = new URL(String(url));
    } catch {
      u = undefined;
    }
    if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:') || u.username || u.password)
      ctx.causes.push(invalid(path(HOOK_URL_ANNOTATION), url, 'an http or https URL without credentials'));
  }
}

export function validateForkliftMigration(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (spec && obj(spec.plan) && !str(obj(spec.plan)?.name)) ctx.causes.push(required('spec.plan.name'));
}
