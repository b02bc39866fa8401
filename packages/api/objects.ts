/**
 * Well-known names and pure helpers about the objects both the controllers (server) and the
 * node agent read: defined once here so neither side imports the other.
 */
import type { KubeObject } from './types.ts';

type Obj = Record<string, unknown>;

/** A JSON object (not null, not an array); `T` names what its members are known to be (e.g. JSON values). */
export const isObject = <T extends Record<string, unknown> = Record<string, unknown>>(v: unknown): v is T =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** An object's annotations ({} when it has none). */
export const annotationsOf = (o: { metadata?: { annotations?: Record<string, string> } }): Record<string, string> => o.metadata?.annotations ?? {};

/** `status.phase` as a string ('' when there is none). */
export const phaseOf = (o: KubeObject | undefined): string => String((o?.status as Obj | undefined)?.phase ?? '');

/** KubeVirt's reason on a VMI whose node stopped reporting. */
export const NODE_UNRESPONSIVE = 'NodeUnresponsive';
/** On a VM, then its next VMI: the guest memory file that start resumes from (a restore with memory). */
export const RESUME_MEMORY = 'vessel.io/resume-memory';
/** On a VirtualMachineClone and the restore it makes: "full" for standalone disk copies instead of linked clones. */
export const CLONE_DISK_TYPE = 'clone.vessel.io/type';

export type RunStrategy = 'Always' | 'RerunOnFailure' | 'Once' | 'Manual' | 'Halted';

/** A VM's runStrategy, with the older `running: true|false` mapped onto it as KubeVirt does. */
export function runStrategyOf(vm: KubeObject): RunStrategy {
  const spec = (vm.spec ?? {}) as { runStrategy?: RunStrategy; running?: boolean };
  if (spec.runStrategy) return spec.runStrategy;
  return spec.running ? 'Always' : 'Halted';
}

/** One volume of a VM or VMI that is backed by a claim: a DataVolume's claim has the DataVolume's name. */
export interface ClaimVolume {
  volume: string;
  claim: string;
  kind: 'dataVolume' | 'claim';
}

/** The claim-backed volumes of a VMI (spec.volumes) or a VM (spec.template.spec.volumes). */
export function claimVolumes(o: KubeObject): ClaimVolume[] {
  const spec = o.spec as Obj | undefined;
  const vmiSpec = o.kind === 'VirtualMachine' || isObject(spec?.template) ? ((spec?.template as Obj | undefined)?.spec as Obj | undefined) : spec;
  const vols = (vmiSpec?.volumes as { name?: string; persistentVolumeClaim?: { claimName?: string }; dataVolume?: { name?: string } }[] | undefined) ?? [];
  const out: ClaimVolume[] = [];
  for (const v of vols) {
    if (v.dataVolume?.name) out.push({ volume: v.name ?? '', claim: v.dataVolume.name, kind: 'dataVolume' });
    else if (v.persistentVolumeClaim?.claimName) out.push({ volume: v.name ?? '', claim: v.persistentVolumeClaim.claimName, kind: 'claim' });
  }
  return out;
}

/** The claim names a VM or VMI uses (each once). */
export const claimNames = (o: KubeObject): string[] => [...new Set(claimVolumes(o).map((v) => v.claim))];
