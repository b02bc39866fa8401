/**
 * VirtualMachineInstancePresets (kubevirt.io/v1, deprecated upstream), applied as virt-api's
 * mutating webhook did: when a VMI is created, every preset of its namespace whose selector
 * selects the VMI's labels has its `spec.domain` merged into the VMI's. A value the VMI (or an
 * earlier preset, by name order) already sets differently is a conflict: it is not applied and
 * is reported (the API server records an Event). Each applied preset leaves the annotation
 * `virtualmachinepreset.kubevirt.io/<name>: kubevirt.io/v1`; the VMI annotation
 * `virtualmachineinstancepresets.admission.kubevirt.io/exclude: "true"` opts out.
 */
import { matchesSelector, type LabelSelector } from './netpol.ts';
import { isObject } from './objects.ts';
import type { KubeObject } from './types.ts';

export const PRESET_ANNOTATION_PREFIX = 'virtualmachinepreset.kubevirt.io/';
export const PRESET_EXCLUDE = 'virtualmachineinstancepresets.admission.kubevirt.io/exclude';

export interface PresetResult {
  /** Names of the presets whose domain was merged (conflicting values left out). */
  applied: string[];
  /** One line per value not applied: "<preset>: spec.domain.cpu.cores (VMI has 1, preset 2)". */
  conflicts: string[];
}

type Obj = Record<string, unknown>;

/** Merges `from` into `into` (both domain objects); objects recurse, anything else is a leaf. */
function merge(into: Obj, from: Obj, path: string, conflicts: string[]): void {
  for (const [k, v] of Object.entries(from)) {
    if (v === undefined || v === null) continue;
    const p = `${path}.${k}`;
    const cur = into[k];
    if (cur === undefined || cur === null) into[k] = structuredClone(v);
    else if (isObject(cur) && isObject(v)) merge(cur, v, p, conflicts);
    else if (JSON.stringify(cur) !== JSON.stringify(v)) conflicts.push(`${p} (VMI has ${JSON.stringify(cur)}, preset ${JSON.stringify(v)})`);
  }
}

/** Applies the matching presets to `vmi` in place (create only). */
export function applyPresets(vmi: KubeObject, presets: readonly KubeObject[]): PresetResult {
  const out: PresetResult = { applied: [], conflicts: [] };
  const meta = (vmi.metadata ??= {});
  if (meta.annotations?.[PRESET_EXCLUDE] === 'true') return out;
  const matching = presets
    .filter((p) => {
      const sel = (p.spec as { selector?: LabelSelector } | undefined)?.selector;
      return !!sel && matchesSelector(sel, meta.labels);
    })
    .sort((a, b) => String(a.metadata?.name).localeCompare(String(b.metadata?.name)));
  for (const p of matching) {
    const name = String(p.metadata?.name);
    const domain = (p.spec as { domain?: unknown } | undefined)?.domain;
    const spec = (vmi.spec ??= {}) as Obj;
    const target = (spec.domain ??= {}) as Obj;
    const conflicts: string[] = [];
    if (isObject(domain)) merge(target, domain, 'spec.domain', conflicts);
    out.conflicts.push(...conflicts.map((c) => `${name}: ${c}`));
    out.applied.push(name);
    meta.annotations = { ...meta.annotations, [`${PRESET_ANNOTATION_PREFIX}${name}`]: 'kubevirt.io/v1' };
  }
  return out;
}
