/**
 * The pure placement logic of Vessel's VM scheduler: which nodes a VirtualMachineInstance may
 * run on (filters), which of those it should run on (scoring), and, when none fits, the
 * kube-scheduler style explanation ("0/3 nodes are available: 1 Insufficient memory, ...").
 * No I/O: the scheduler controller feeds it informer caches and writes the result.
 *
 * Semantics follow what a KubeVirt virt-launcher pod would get from kube-scheduler:
 *  - requests: vmiRequests() mirrors KubeVirt's resource rendering (cpuAllocationRatio,
 *    memoryOvercommit, dedicated CPUs), with Vessel's own, smaller per-VM memory overhead
 *    (vmiOverheadBytes: KubeVirt's formula without virt-launcher's processes, TCG measured);
 *  - filters, in order, each failing node counted once under the first that fails: Ready (as
 *    the not-ready/unreachable NoSchedule taints the node lifecycle controller would add),
 *    spec.unschedulable, the kubevirt.io/schedulable label, volume node pins, nodeSelector and
 *    required node affinity, NoSchedule/NoExecute taints, a CPU manager for dedicated CPUs,
 *    extended resources (dedicated CPUs, hugepages), then cpu and memory;
 *  - scoring: sum of matching preferred node-affinity weights first, then LeastAllocated
 *    (mean free fraction of cpu and memory after placement), ties broken by node name.
 */
import type {
  K8sIoApiCoreV1NodeSelectorRequirement,
  K8sIoApiCoreV1NodeSelectorTerm,
  K8sIoApiCoreV1Toleration,
  V1DomainSpec,
  V1VirtualMachineInstanceSpec,
} from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { migration, tryParseQuantity } from '@vessel/api';

// ---------------------------------------------------------------------------------------------
// Types

/** The part of a VMI spec that scheduling reads; a full V1VirtualMachineInstanceSpec fits. */
export type VmiSchedulingSpec = Pick<V1VirtualMachineInstanceSpec, 'affinity' | 'nodeSelector' | 'tolerations'> & {
  domain?: Pick<V1DomainSpec, 'cpu' | 'memory' | 'resources'> & { devices?: { autoattachGraphicsDevice?: boolean } };
};

export interface TaintLike {
  key: string;
  value?: string;
  effect: string;
}
export type TolerationLike = K8sIoApiCoreV1Toleration;
export type NodeSelectorTermLike = K8sIoApiCoreV1NodeSelectorTerm;
export type NodeSelectorRequirementLike = K8sIoApiCoreV1NodeSelectorRequirement;

/** The fields of a core v1 Node that scheduling reads (structural, so informer objects fit). */
export interface NodeLike {
  metadata: { name: string; labels?: Record<string, string> };
  spec?: { taints?: TaintLike[]; unschedulable?: boolean };
  status?: {
    allocatable?: Record<string, string | number>;
    conditions?: { type: string; status: string }[];
  };
}

export interface Requests {
  cpuMillis: number;
  memoryBytes: number;
  /**
   * Extended resources by name, counted against the node's allocatable of that name:
   * DEDICATED_CPUS (exclusive CPUs of the node's CPU manager) and hugepages-2Mi/-1Gi (bytes).
   */
  extended?: Record<string, number>;
}

export interface SchedulingSettings {
  /** KubeVirt developerConfiguration.cpuAllocationRatio: a vCPU requests 1/ratio of a CPU. Default 10. */
  cpuAllocationRatio?: number;
  /** KubeVirt developerConfiguration.memoryOvercommit: guest memory as a % of the request. Default 100. */
  memoryOvercommitPercent?: number;
}

export interface ScheduleInput {
  vmi: { metadata: { name: string; namespace: string }; spec: VmiSchedulingSpec };
  nodes: NodeLike[];
  /** VMIs already on nodes, with requests computed by vmiRequests(). */
  placed: { nodeName: string; requests: Requests }[];
  /**
   * Nodes a volume pins the VMI to (a node-local pool): it must go to one of these.
   * Undefined means no pin; an empty list means the pins conflict and no node will do.
   */
  requiredNodes?: string[];
  settings?: SchedulingSettings;
}

export type ScheduleResult = { node: string; score: number } | { node: undefined; reason: 'Unschedulable'; message: string };

// ---------------------------------------------------------------------------------------------
// Constants

export const DEFAULT_CPU_ALLOCATION_RATIO = 10;
export const DEFAULT_MEMORY_OVERCOMMIT_PERCENT = 100;
const MiB = 2 ** 20;
/**
 * The terms of Vessel's per-VM memory overhead (vmiOverheadBytes), named after KubeVirt's
 * GetMemoryOverhead (pkg/virt-controller/services/renderresources.go) and measured against
 * QEMU's VmRSS under TCG (bench/overhead.bench.ts, docs/scheduling.md).
 */
export const OVERHEAD = {
  /**
   * QEMU itself beside its guest: KubeVirt's QemuOverhead is 30Mi under KVM; under TCG the
   * translated-code cache and TCG's own state come on top (measured, see docs/scheduling.md).
   * KubeVirt's virt-launcher, virtlogd and virtqemud terms (190Mi) do not exist here.
   */
  qemuBytes: 30 * MiB,
  tcgBytes: 72 * MiB,
  /** Per vCPU: the vCPU thread's stack and CPU state (KubeVirt: 8Mi). */
  perVcpuBytes: 8 * MiB,
  /** The I/O thread (KubeVirt: 8Mi, one per VM). */
  iothreadBytes: 8 * MiB,
  /** The VGA device's video RAM when a graphics device is attached (the default). KubeVirt counts 32Mi; QEMU's VGA has 16 MiB. */
  videoBytes: 16 * MiB,
  /** Page tables and dirty bitmaps: one byte per 512 of guest memory (KubeVirt's pagetable term). */
  guestDivisor: 512,
} as const;

export const SCHEDULABLE_LABEL = 'kubevirt.io/schedulable';
/** KubeVirt's label of a node whose CPU manager can give VMs dedicated CPUs (docs/pinning.md). */
export const CPU_MANAGER_LABEL = 'cpumanager';
/** The node's allocatable exclusive CPUs (its CPU manager's pool, `vessel agent --reserved-cpus`). */
export const DEDICATED_CPUS = 'vessel.io/dedicated-cpus';
export const TAINT_NOT_READY = 'node.kubernetes.io/not-ready';
export const TAINT_UNREACHABLE = 'node.kubernetes.io/unreachable';
export const TAINT_UNSCHEDULABLE = 'node.kubernetes.io/unschedulable';

/** kube-scheduler's filter failure reasons, verbatim, so messages read the same as upstream. */
export const REASONS = {
  unschedulable: 'node(s) were unschedulable',
  // Both the kubevirt.io/schedulable label and nodeSelector/affinity: KubeVirt puts the label
  // into the launcher pod's nodeSelector, so upstream reports both as a selector mismatch.
  nodeAffinity: "node(s) didn't match Pod's node affinity/selector",
  volumeNodeConflict: 'node(s) had volume node affinity conflict',
  insufficientCpu: 'Insufficient cpu',
  insufficientMemory: 'Insufficient memory',
} as const;

/** kube-scheduler's reason for a node with a NoSchedule/NoExecute taint the pod doesn't tolerate. */
export function untoleratedTaintReason(t: TaintLike): string {
  return `node(s) had untolerated taint {${t.key}: ${t.value ?? ''}}`;
}

/** kube-scheduler's reason for a node short of an extended resource ("Insufficient hugepages-2Mi"). */
export function insufficientReason(resource: string): string {
  return `Insufficient ${resource}`;
}

/** A dedicated VMI on a node without a CPU manager: the cpumanager=true selector KubeVirt adds does not match. */
export const NO_CPU_MANAGER_REASON = "node(s) didn't match Pod's node affinity/selector (cpumanager=true: no CPU manager, see vessel agent --reserved-cpus)";

// ---------------------------------------------------------------------------------------------
// Requests

function quantity(q: unknown): number | undefined {
  return tryParseQuantity(q);
}

function positive(n: number | undefined, fallback: number): number {
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : fallback;
}

/** Rounds up like resource.Quantity's Value()/MilliValue(), absorbing float noise ("300m" * 1000). */
function ceilish(n: number): number {
  return Math.ceil(n - 1e-9);
}

/** vCPUs the guest sees: sockets * cores * threads, each defaulting to 1 (KubeVirt's topology). */
export function vmiVcpus(spec: VmiSchedulingSpec): number {
  const cpu = spec.domain?.cpu;
  return positive(cpu?.sockets, 1) * positive(cpu?.cores, 1) * positive(cpu?.threads, 1);
}

/** The accelerator the overhead is counted for: the scheduler does not know a node's before placing, so TCG (the larger) unless told. */
export type Accel = 'tcg' | 'kvm';

/**
 * QEMU's memory beside the guest's, KubeVirt's GetMemoryOverhead without its virt-launcher,
 * virtlogd and virtqemud terms (Vessel runs QEMU directly): QEMU's fixed part (plus TCG's),
 * guest/512 for page tables, 8 MiB per vCPU, 8 MiB for the I/O thread, and 16 MiB of video RAM
 * unless autoattachGraphicsDevice is false.
 */
export function vmiOverheadBytes(guestBytes: number, spec: VmiSchedulingSpec = {}, accel: Accel = 'tcg'): number {
  const graphics = (spec.domain as { devices?: { autoattachGraphicsDevice?: boolean } } | undefined)?.devices?.autoattachGraphicsDevice !== false;
  return (
    OVERHEAD.qemuBytes +
    (accel === 'tcg' ? OVERHEAD.tcgBytes : 0) +
    ceilish(Math.max(0, guestBytes) / OVERHEAD.guestDivisor) +
    vmiVcpus(spec) * OVERHEAD.perVcpuBytes +
    OVERHEAD.iothreadBytes +
    (graphics ? OVERHEAD.videoBytes : 0)
  );
}

/**
 * What a VMI asks of its node, with KubeVirt's semantics:
 *  - memory: resources.requests.memory; else the guest size (memory.guest, else
 *    resources.limits.memory, which KubeVirt copies to guest) scaled by the overcommit,
 *    request = guest * 100 / memoryOvercommitPercent; plus vmiOverheadBytes(guest) unless
 *    resources.overcommitGuestOverhead is set (then KubeVirt leaves the overhead out of the request).
 *  - cpu: resources.requests.cpu; else for dedicatedCpuPlacement one whole CPU per vCPU (plus
 *    one for isolateEmulatorThread; the allocation ratio doesn't apply); else
 *    vCPUs * 1000 / cpuAllocationRatio millicores (1 vCPU = 100m at the default ratio 10).
 * Values round up as Kubernetes quantities do. Malformed quantities count as absent: validation
 * has rejected them already, and a scheduler must not crash on one object.
 */
export function vmiRequests(spec: VmiSchedulingSpec, settings: SchedulingSettings = {}): Requests {
  const ratio = positive(settings.cpuAllocationRatio, DEFAULT_CPU_ALLOCATION_RATIO);
  const overcommit = positive(settings.memoryOvercommitPercent, DEFAULT_MEMORY_OVERCOMMIT_PERCENT);
  const domain = spec.domain;
  const requests: Record<string, unknown> = domain?.resources?.requests ?? {};
  const limits: Record<string, unknown> = domain?.resources?.limits ?? {};

  const requestedMemory = quantity(requests.memory);
  const guestSource = quantity(domain?.memory?.guest) ?? quantity(limits.memory);
  const guest = guestSource ?? requestedMemory ?? 0;
  // Hugepages: the guest's memory comes from the node's hugepage pool, only the overhead from its memory (KubeVirt's launcher pod).
  const pageSize = domain?.memory?.hugepages?.pageSize;
  const hugepages = pageSize === '2Mi' || pageSize === '1Gi' ? `hugepages-${pageSize}` : undefined;
  const baseMemory = hugepages ? 0 : (requestedMemory ?? ((guestSource ?? 0) * 100) / overcommit);
  const overhead = domain?.resources?.overcommitGuestOverhead ? 0 : vmiOverheadBytes(guest, spec);
  const extended: Record<string, number> = {};
  if (hugepages) extended[hugepages] = ceilish(guest);
  if (domain?.cpu?.dedicatedCpuPlacement) extended[DEDICATED_CPUS] = vmiVcpus(spec) + (domain.cpu.isolateEmulatorThread ? 1 : 0);

  const requestedCpu = quantity(requests.cpu);
  let cpuMillis: number;
  if (requestedCpu !== undefined) cpuMillis = requestedCpu * 1000;
  else if (domain?.cpu?.dedicatedCpuPlacement) cpuMillis = (vmiVcpus(spec) + (domain.cpu.isolateEmulatorThread ? 1 : 0)) * 1000;
  else cpuMillis = (vmiVcpus(spec) * 1000) / ratio;

  const out: Requests = { cpuMillis: ceilish(cpuMillis), memoryBytes: ceilish(baseMemory) + overhead };
  if (Object.keys(extended).length > 0) out.extended = extended;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Matching helpers

/** Toleration vs taint, as core/v1 Toleration.ToleratesTaint (an empty key needs operator Exists). */
export function toleratesTaint(t: TolerationLike, taint: TaintLike): boolean {
  if (t.effect && t.effect !== taint.effect) return false;
  const op = t.operator ?? 'Equal';
  if (!t.key) return op === 'Exists'; // empty key + Exists tolerates every taint (of the effect)
  if (t.key !== taint.key) return false;
  if (op === 'Exists') return true;
  if (op === 'Equal') return (t.value ?? '') === (taint.value ?? '');
  return false;
}

function tolerated(tolerations: TolerationLike[] | undefined, taint: TaintLike): boolean {
  return (tolerations ?? []).some((t) => toleratesTaint(t, taint));
}

// Kubernetes parses Gt/Lt values as int64 (strconv.ParseInt): a strict pattern and range check,
// since Number('') === 0 and doubles lose precision past 2^53.
const INTEGER_RE = /^[+-]?[0-9]+$/;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

function int64(s: string): bigint | undefined {
  if (!INTEGER_RE.test(s)) return undefined;
  const n = BigInt(s);
  return n >= INT64_MIN && n <= INT64_MAX ? n : undefined;
}

function requirementMatches(r: NodeSelectorRequirementLike, value: string | undefined): boolean {
  const values = r.values ?? [];
  switch (r.operator) {
    case 'In':
      return value !== undefined && values.includes(value);
    case 'NotIn':
      return value === undefined || !values.includes(value);
    case 'Exists':
      return value !== undefined;
    case 'DoesNotExist':
      return value === undefined;
    case 'Gt':
    case 'Lt': {
      const have = value === undefined ? undefined : int64(value);
      const want = values.length === 1 ? int64(values[0]) : undefined;
      if (have === undefined || want === undefined) return false;
      return r.operator === 'Gt' ? have > want : have < want;
    }
    default:
      return false;
  }
}

/**
 * A NodeSelectorTerm against a node: its matchExpressions (labels) and matchFields (only
 * metadata.name, with In/NotIn, as upstream) are ANDed; an empty term matches nothing.
 */
export function matchesNodeSelectorTerm(term: NodeSelectorTermLike, node: NodeLike): boolean {
  const exprs = term.matchExpressions ?? [];
  const fields = term.matchFields ?? [];
  if (exprs.length === 0 && fields.length === 0) return false;
  const labels = node.metadata.labels ?? {};
  for (const e of exprs) {
    if (!requirementMatches(e, Object.hasOwn(labels, e.key) ? labels[e.key] : undefined)) return false;
  }
  for (const f of fields) {
    if (f.key !== 'metadata.name' || (f.operator !== 'In' && f.operator !== 'NotIn')) return false;
    if (!requirementMatches(f, node.metadata.name)) return false;
  }
  return true;
}

/** nodeSelector (every label equal) and required node affinity (terms ORed). */
function matchesRequiredPlacement(spec: VmiSchedulingSpec, node: NodeLike): boolean {
  const labels = node.metadata.labels ?? {};
  for (const [k, v] of Object.entries(spec.nodeSelector ?? {})) {
    if (!Object.hasOwn(labels, k) || labels[k] !== v) return false;
  }
  const required = spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution;
  if (required) return (required.nodeSelectorTerms ?? []).some((t) => matchesNodeSelectorTerm(t, node));
  return true;
}

/** Sum of the weights of the preferred node-affinity terms the node matches (NodeAffinity score). */
export function preferredAffinityScore(spec: VmiSchedulingSpec, node: NodeLike): number {
  let sum = 0;
  for (const p of spec.affinity?.nodeAffinity?.preferredDuringSchedulingIgnoredDuringExecution ?? []) {
    if (p.weight && p.preference && matchesNodeSelectorTerm(p.preference, node)) sum += p.weight;
  }
  return sum;
}

/**
 * The taint the node lifecycle controller would put on a node that isn't Ready: not-ready for
 * Ready=False, unreachable for Unknown or no Ready condition (a node that never reported).
 * Checking it as a taint keeps kube's wording and lets a toleration for it through.
 */
function readinessTaint(node: NodeLike): TaintLike | undefined {
  const ready = (node.status?.conditions ?? []).find((c) => c.type === 'Ready');
  if (ready?.status === 'True') return undefined;
  return { key: ready?.status === 'False' ? TAINT_NOT_READY : TAINT_UNREACHABLE, value: '', effect: 'NoSchedule' };
}

export interface NodeResources {
  allocatable: Requests;
  used: Requests;
}

function allocatableOf(node: NodeLike): Requests {
  const a = node.status?.allocatable ?? {};
  return {
    cpuMillis: Math.max(0, ceilish((quantity(a.cpu) ?? 0) * 1000)),
    memoryBytes: Math.max(0, ceilish(quantity(a.memory) ?? 0)),
  };
}

/**
 * Why the VMI can't go on this node: the reason of the first filter that fails, or undefined
 * when it fits. `used` is the sum of the requests already placed there.
 */
export function filterNode(spec: VmiSchedulingSpec, node: NodeLike, requests: Requests, used: Requests, requiredNodes?: readonly string[]): string | undefined {
  const tolerations = spec.tolerations;
  const notReady = readinessTaint(node);
  if (notReady && !tolerated(tolerations, notReady)) return untoleratedTaintReason(notReady);
  // As upstream's NodeUnschedulable: a toleration of the unschedulable taint lets a pod through.
  if (node.spec?.unschedulable && !tolerated(tolerations, { key: TAINT_UNSCHEDULABLE, value: '', effect: 'NoSchedule' })) {
    return REASONS.unschedulable;
  }
  if (node.metadata.labels?.[SCHEDULABLE_LABEL] === 'false') return REASONS.nodeAffinity;
  if (requiredNodes && !requiredNodes.includes(node.metadata.name)) return REASONS.volumeNodeConflict;
  if (!matchesRequiredPlacement(spec, node)) return REASONS.nodeAffinity;
  for (const taint of node.spec?.taints ?? []) {
    if ((taint.effect === 'NoSchedule' || taint.effect === 'NoExecute') && !tolerated(tolerations, taint)) {
      return untoleratedTaintReason(taint);
    }
  }
  if (requests.extended?.[DEDICATED_CPUS] && node.metadata.labels?.[CPU_MANAGER_LABEL] !== 'true') return NO_CPU_MANAGER_REASON;
  // The scarcer, more specific resources first: their shortage is the reason worth reading.
  for (const [name, want] of Object.entries(requests.extended ?? {})) {
    const have = Math.max(0, ceilish(quantity(node.status?.allocatable?.[name]) ?? 0));
    if (have - (used.extended?.[name] ?? 0) < want) return insufficientReason(name);
  }
  const alloc = allocatableOf(node);
  if (alloc.cpuMillis - used.cpuMillis < requests.cpuMillis) return REASONS.insufficientCpu;
  if (alloc.memoryBytes - used.memoryBytes < requests.memoryBytes) return REASONS.insufficientMemory;
  return undefined;
}

/**
 * NodeResourcesFit LeastAllocated, 0..100: the mean over cpu and memory of the fraction left
 * free once the VMI is placed; a resource the node has none of scores 0.
 */
export function leastAllocatedScore(allocatable: Requests, usedWithVmi: Requests): number {
  const free = (alloc: number, used: number) => (alloc > 0 ? Math.max(0, ((alloc - used) * 100) / alloc) : 0);
  return (free(allocatable.cpuMillis, usedWithVmi.cpuMillis) + free(allocatable.memoryBytes, usedWithVmi.memoryBytes)) / 2;
}

// ---------------------------------------------------------------------------------------------
// Messages

/**
 * kube-scheduler's FitError text: "0/N nodes are available: " then "count reason" entries,
 * sorted as plain strings (Go's sort.Strings, so "10 ..." sorts before "2 ..."), ", "-joined,
 * ending in ".". With no nodes at all, upstream's "no nodes available to schedule pods".
 */
export function describeUnschedulable(totalNodes: number, reasons: ReadonlyMap<string, number> | Record<string, number>): string {
  if (totalNodes === 0) return 'no nodes available to schedule pods';
  const entries = reasons instanceof Map ? [...reasons.entries()] : Object.entries(reasons);
  const parts = entries.filter(([, n]) => n > 0).map(([reason, n]) => `${n} ${reason}`);
  // Default sort compares UTF-16 code units: byte order for these ASCII strings, as Go's.
  parts.sort();
  return `0/${totalNodes} nodes are available: ${parts.join(', ')}.`;
}

// ---------------------------------------------------------------------------------------------
// Scheduling

/** a + b, extended resources included. */
export const sumRequests = (a: Requests, b: Requests): Requests => {
  const out: Requests = { cpuMillis: a.cpuMillis + b.cpuMillis, memoryBytes: a.memoryBytes + b.memoryBytes };
  if (a.extended || b.extended) {
    out.extended = { ...a.extended };
    for (const [k, v] of Object.entries(b.extended ?? {})) out.extended[k] = (out.extended[k] ?? 0) + v;
  }
  return out;
};

/**
 * Picks the node for a VMI, or explains why there is none. The returned score encodes the
 * ranking: preferred-affinity weight * 1000 + LeastAllocated (0..100), so a higher weight
 * always wins over free capacity; equal scores go to the alphabetically first node.
 */
export function scheduleVmi(input: ScheduleInput): ScheduleResult {
  const { spec } = input.vmi;
  const requests = vmiRequests(spec, input.settings);
  const used = new Map<string, Requests>();
  for (const p of input.placed) used.set(p.nodeName, sumRequests(used.get(p.nodeName) ?? { cpuMillis: 0, memoryBytes: 0 }, p.requests));

  const reasons = new Map<string, number>();
  let best: { node: string; affinity: number; resources: number } | undefined;
  for (const node of input.nodes) {
    const name = node.metadata.name;
    const nodeUsed = used.get(name) ?? { cpuMillis: 0, memoryBytes: 0 };
    const reason = filterNode(spec, node, requests, nodeUsed, input.requiredNodes);
    if (reason) {
      reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
      continue;
    }
    const candidate = {
      node: name,
      affinity: preferredAffinityScore(spec, node),
      resources: leastAllocatedScore(allocatableOf(node), sumRequests(nodeUsed, requests)),
    };
    if (!best || better(candidate, best)) best = candidate;
  }
  if (best) return { node: best.node, score: best.affinity * 1000 + best.resources };
  return { node: undefined, reason: 'Unschedulable', message: describeUnschedulable(input.nodes.length, reasons) };
}

// Compared field by field rather than on the encoded score, so ordering never depends on it.
function better(a: { node: string; affinity: number; resources: number }, b: { node: string; affinity: number; resources: number }): boolean {
  if (a.affinity !== b.affinity) return a.affinity > b.affinity;
  if (a.resources !== b.resources) return a.resources > b.resources;
  return a.node < b.node;
}

// ---------------------------------------------------------------------------------------------
// Migrations in flight

/** The parts of a VMI that say where it takes room: its node, and the target of a migration under way. */
export interface VmiPlacementLike {
  metadata: { uid?: string };
  spec?: VmiSchedulingSpec;
  status?: { phase?: string; nodeName?: string; migrationState?: migration.MigrationState };
}

/**
 * The room VMIs migrating INTO a node take there (issue 13): from the moment the migration
 * controller names the target (in the VMI's migrationState) until the switch makes it the VMI's
 * node, a migrating VMI holds its requests on both nodes, as KubeVirt's target virt-launcher pod
 * does beside the source's. The target agent assigns dedicated CPUs (vessel.io/migration-target-cpus)
 * from the same pool the scheduler counts, so without this two dedicated VMIs could be sent to
 * one free CPU and the second target would fail. A migration that completed (the VMI's node is
 * the target) or failed holds nothing more there.
 */
export function migrationTargetPlacements(vmis: readonly VmiPlacementLike[], settings: SchedulingSettings = {}): { nodeName: string; requests: Requests }[] {
  const out: { nodeName: string; requests: Requests }[] = [];
  for (const v of vmis) {
    const target = migrationTargetOf(v);
    if (target) out.push({ nodeName: target, requests: vmiRequests(v.spec ?? {}, settings) });
  }
  return out;
}

/** The node a VMI is migrating into and takes room on (migrationTargetPlacements' rule), if any. */
export function migrationTargetOf(v: VmiPlacementLike): string | undefined {
  const st = v.status;
  const ms = st?.migrationState;
  if (!migration.isActive(ms) || !ms.targetNode || ms.targetNode === st?.nodeName) return undefined;
  if (st?.phase === 'Succeeded' || st?.phase === 'Failed') return undefined;
  return ms.targetNode;
}

/**
 * The informer index of VMIs by the node they are migrating into (migrationTargetOf): the
 * scheduler looks up each node's incoming VMIs rather than scanning every VMI per decision.
 */
export const BY_MIGRATION_TARGET = 'migrationTarget';
export const byMigrationTarget = (v: object): string[] => {
  const target = migrationTargetOf(v as VmiPlacementLike);
  return target ? [target] : [];
};
