/**
 * VirtualMachinePool (pool.kubevirt.io/v1alpha1), VirtualMachineInstanceReplicaSet and the
 * deprecated VirtualMachineInstancePreset (kubevirt.io/v1), following virt-api's pool and
 * replica set admitters: replicas not negative, a selector that selects the template's own
 * labels (else the controller would create objects it never counts), and a template valid as
 * a VirtualMachine (pool) or a VMI spec (replica set). A preset's domain may only hold what
 * Vessel runs, since it is merged into VMIs at their creation.
 */
import { invalid, required } from '../errors.ts';
import { validateLabels } from '../meta.ts';
import { matchesSelector, type LabelSelector } from '../netpol.ts';
import { unsupportedVmiSpecFields } from '../support.ts';
import type { KubeObject } from '../types.ts';
import { validateVirtualMachine, validateVmiSpec } from './kubevirt.ts';
import { isObj, obj, type SemanticContext } from './util.ts';

/** KubeVirt's CRD deprecationWarning for kubevirt.io/v1 VirtualMachineInstancePresets. */
export const PRESET_DEPRECATION = 'kubevirt.io/v1 VirtualMachineInstancePresets is now deprecated and will be removed in v2.';

function checkReplicas(spec: Record<string, unknown>, ctx: SemanticContext): void {
  const n = spec.replicas;
  if (typeof n === 'number' && n < 0) ctx.causes.push(invalid('spec.replicas', n, 'must be greater than or equal to 0'));
}

/** The selector must select the template's labels (virt-api: "selector does not match labels"). */
function checkSelector(spec: Record<string, unknown>, labels: unknown, labelsPath: string, ctx: SemanticContext): void {
  const sel = obj(spec.selector);
  if (!sel) return; // required: the structural walk reports it
  validateLabels(sel.matchLabels, 'spec.selector.matchLabels', ctx.causes);
  const l = isObj(labels) ? (labels as Record<string, string>) : {};
  if (!matchesSelector(sel as LabelSelector, l)) {
    ctx.causes.push(invalid('spec.selector', sel, `selector does not match labels: it must select ${labelsPath}`));
  }
}

export function validateVirtualMachinePool(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  checkReplicas(spec, ctx);
  const template = obj(spec.virtualMachineTemplate);
  if (!template) return; // required: reported by the structural walk
  const tmeta = obj(template.metadata);
  checkSelector(spec, tmeta?.labels, 'spec.virtualMachineTemplate.metadata.labels', ctx);
  if (tmeta) validateLabels(tmeta.labels, 'spec.virtualMachineTemplate.metadata.labels', ctx.causes);
  const vmSpec = obj(template.spec);
  if (!vmSpec) {
    ctx.causes.push(required('spec.virtualMachineTemplate.spec', 'the pool creates VirtualMachines from this spec'));
    return;
  }
  // The template is checked as the VirtualMachine it becomes, paths re-rooted under the pool's.
  const oldSpec = obj(obj(obj(ctx.old?.spec)?.virtualMachineTemplate)?.spec);
  const vm: KubeObject = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name: 'template', namespace: o.metadata?.namespace },
    spec: vmSpec,
  };
  const old: KubeObject | undefined = oldSpec ? { ...vm, spec: oldSpec } : undefined;
  const inner: SemanticContext = { op: ctx.op, old, causes: [], warnings: [] };
  validateVirtualMachine(vm, inner);
  const at = (field: string) => `spec.virtualMachineTemplate.${field}`;
  for (const c of inner.causes) ctx.causes.push({ ...c, field: at(c.field), message: c.message.replaceAll('spec.', at('spec.')) });
  for (const w of inner.warnings) ctx.warnings.push(w.startsWith('spec.') ? at(w) : w);
}

export function validateVirtualMachineInstanceReplicaSet(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  checkReplicas(spec, ctx);
  const template = obj(spec.template);
  if (!template) {
    ctx.causes.push(required('spec.template', 'the replica set creates VirtualMachineInstances from this template'));
    return;
  }
  const tmeta = obj(template.metadata);
  checkSelector(spec, tmeta?.labels, 'spec.template.metadata.labels', ctx);
  if (tmeta) validateLabels(tmeta.labels, 'spec.template.metadata.labels', ctx.causes);
  const tspec = obj(template.spec);
  if (!tspec) ctx.causes.push(required('spec.template.spec', 'the VirtualMachineInstance template needs a spec with at least spec.domain'));
  else validateVmiSpec(tspec, 'spec.template.spec', { hasInstancetype: false, old: obj(obj(ctx.old?.spec)?.template)?.spec }, ctx);
}

export function validateVirtualMachineInstancePreset(o: KubeObject, ctx: SemanticContext): void {
  ctx.warnings.push(PRESET_DEPRECATION);
  const spec = obj(o.spec);
  const domain = spec?.domain;
  if (!isObj(domain)) return;
  const oldDomain = obj(ctx.old?.spec)?.domain;
  // The preset's domain becomes part of VMIs: what they could not run is refused here already.
  for (const c of unsupportedVmiSpecFields({ domain }, 'spec', { old: oldDomain === undefined ? undefined : { domain: oldDomain }, values: true })) {
    if (!ctx.unknownFields?.has(c.field)) ctx.causes.push(c);
  }
}
