/**
 * PriorityClass (scheduling.k8s.io/v1) as Vessel uses it for VMs: the built-in classes, the
 * validation kube-apiserver applies (ValidatePriorityClass), and how a VMI's
 * `spec.priorityClassName` resolves to a priority, as Kubernetes' Priority admission plugin
 * resolves a pod's. KubeVirt copies the class name into the virt-launcher pod, which gets
 * `spec.priority`; Vessel has no pod, so admission writes the resolved figures on the VMI as
 * annotations the scheduler reads (PRIORITY, PREEMPTION_POLICY). See docs/scheduling.md.
 */
import { forbidden, invalid } from './errors.ts';
import type { SemanticContext } from './kinds/util.ts';
import type { KubeObject } from './types.ts';

/** The VMI's resolved priority (an int32, as pod.spec.priority), written by admission at creation. */
export const PRIORITY = 'vessel.io/priority';
/** The VMI's resolved preemption policy (pod.spec.preemptionPolicy), written with PRIORITY. */
export const PREEMPTION_POLICY = 'vessel.io/preemption-policy';
/** The node a preempting VMI waits for while its victims leave (pod.status.nominatedNodeName). */
export const NOMINATED_NODE = 'vessel.io/nominated-node';
/** The QEMU memory overhead the scheduler counted for the VMI, in bytes (beside its guest memory). */
export const MEMORY_OVERHEAD = 'vessel.io/memory-overhead';

export const SYSTEM_PREFIX = 'system-';
/** kube's HighestUserDefinablePriority. */
export const HIGHEST_USER_PRIORITY = 1_000_000_000;
export const PREEMPTION_POLICIES = ['PreemptLowerPriority', 'Never'] as const;
export type PreemptionPolicy = (typeof PREEMPTION_POLICIES)[number];

/** kube's SystemPriorityClasses(): created by the server at start, like the KubeVirt object. */
export const SYSTEM_CLASSES: readonly { name: string; value: number; description: string }[] = [
  { name: 'system-node-critical', value: 2_000_001_000, description: 'Used for system critical pods that must not be moved from their current node.' },
  {
    name: 'system-cluster-critical',
    value: 2_000_000_000,
    description: 'Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.',
  },
];

export function systemPriorityClasses(): KubeObject[] {
  return SYSTEM_CLASSES.map((c) => ({
    apiVersion: 'scheduling.k8s.io/v1',
    kind: 'PriorityClass',
    metadata: { name: c.name },
    value: c.value,
    globalDefault: false,
    description: c.description,
    preemptionPolicy: 'PreemptLowerPriority',
  }));
}

/** ValidatePriorityClass and ValidatePriorityClassUpdate, as kube-apiserver runs them. */
export function validatePriorityClass(o: KubeObject, ctx: SemanticContext): void {
  const pc = o as KubeObject & { value?: unknown; globalDefault?: unknown; preemptionPolicy?: unknown };
  const name = o.metadata?.name ?? '';
  const value = pc.value;
  if (name.startsWith(SYSTEM_PREFIX)) {
    const known = SYSTEM_CLASSES.find((c) => c.name === name);
    const why = !known
      ? `${name} is not a known system priority class`
      : value !== known.value
        ? `value of ${name} PriorityClass must be ${known.value}`
        : pc.globalDefault === true
          ? `globalDefault of ${name} PriorityClass must be false`
          : undefined;
    if (why) ctx.causes.push(forbidden('metadata.name', `priority class names with '${SYSTEM_PREFIX}' prefix are reserved for system use only. error: ${why}`));
  } else if (typeof value === 'number' && value > HIGHEST_USER_PRIORITY) {
    ctx.causes.push(forbidden('value', `maximum allowed value of a user defined priority is ${HIGHEST_USER_PRIORITY}`));
  }
  if (ctx.op === 'update' && ctx.old) {
    const old = ctx.old as typeof pc;
    if (old.value !== value) ctx.causes.push(forbidden('value', 'may not be changed in an update.'));
    if ((old.preemptionPolicy ?? 'PreemptLowerPriority') !== (pc.preemptionPolicy ?? 'PreemptLowerPriority'))
      ctx.causes.push(invalid('preemptionPolicy', pc.preemptionPolicy, 'field is immutable'));
  }
}

/** What a VMI's priority resolves to. */
export interface ResolvedPriority {
  priority: number;
  preemptionPolicy: PreemptionPolicy;
}

/** The parts of a PriorityClass resolution reads. */
export interface PriorityClassLike {
  metadata: { name: string };
  value?: number;
  globalDefault?: boolean;
  preemptionPolicy?: string;
}

const policyOf = (c: PriorityClassLike | undefined): PreemptionPolicy => (c?.preemptionPolicy === 'Never' ? 'Never' : 'PreemptLowerPriority');

/**
 * The Priority admission plugin's resolution: the named class, else the global default (the
 * lowest-valued one, should several claim it), else 0. A name no class has: undefined (the
 * caller refuses the object: "no PriorityClass with name X was found").
 */
export function resolvePriority(className: string | undefined, classes: readonly PriorityClassLike[]): ResolvedPriority | undefined {
  if (className) {
    const c = classes.find((k) => k.metadata.name === className);
    return c ? { priority: c.value ?? 0, preemptionPolicy: policyOf(c) } : undefined;
  }
  const defaults = classes.filter((c) => c.globalDefault === true).sort((a, b) => (a.value ?? 0) - (b.value ?? 0));
  return defaults.length
    ? { priority: defaults[0].value ?? 0, preemptionPolicy: policyOf(defaults[0]) }
    : { priority: 0, preemptionPolicy: 'PreemptLowerPriority' };
}

/** A VMI's resolved priority from its annotations: 0 and PreemptLowerPriority when it has none (created before classes existed). */
export function priorityOf(vmi: { metadata?: { annotations?: Record<string, string> } }): ResolvedPriority {
  const a = vmi.metadata?.annotations ?? {};
  const n = Number(a[PRIORITY]);
  return { priority: Number.isInteger(n) ? n : 0, preemptionPolicy: a[PREEMPTION_POLICY] === 'Never' ? 'Never' : 'PreemptLowerPriority' };
}
