/**
 * Preemption, pure: when a VMI fits no node, which lower-priority VMIs to evict, and where,
 * following kube-scheduler's DefaultPreemption plugin:
 *  - a VMI whose preemption policy is Never preempts nothing;
 *  - only nodes that failed on cpu or memory are candidates (taints, selectors, readiness and
 *    volume pins are not solved by evicting anything);
 *  - on a candidate node every VMI of strictly lower priority is removed; if the preemptor
 *    still does not fit, the node is out; else victims are reprieved one by one, highest
 *    priority first (then the longest running), as long as the preemptor still fits: what
 *    remains are the victims;
 *  - the node chosen has the lowest highest-victim priority, then the lowest sum of victim
 *    priorities, then the fewest victims, then the latest start among its highest-priority
 *    victims, then the first name;
 *  - each victim is evicted as its evictionStrategy says: live-migrated when it asks for it and
 *    fits on another node (after the victims placed before it), else stopped.
 * Equal or higher priority VMIs are never victims. No PodDisruptionBudgets (Vessel has none).
 */
import { filterNode, REASONS, sumRequests, type NodeLike, type Requests, type SchedulingSettings, type VmiSchedulingSpec } from './fit.ts';

/** A VMI already on a node, as preemption sees it. */
export interface PlacedVmi {
  /** namespace/name */
  key: string;
  nodeName: string;
  requests: Requests;
  priority: number;
  /** When it started (ms since the epoch); the longest running is reprieved first among equals. */
  startedAt?: number;
  /** Its evictionStrategy asks for live migration (and it can migrate). */
  liveMigrate: boolean;
  /** Its spec, to find another node for it when it live-migrates. */
  spec?: VmiSchedulingSpec;
}

export interface PreemptionInput {
  vmi: { spec: VmiSchedulingSpec; requests: Requests; priority: number; preemptionPolicy: 'PreemptLowerPriority' | 'Never' };
  nodes: NodeLike[];
  placed: PlacedVmi[];
  requiredNodes?: string[];
  settings?: SchedulingSettings;
}

export interface Victim {
  key: string;
  priority: number;
  /** 'migrate': live-migrate it to `to`; 'stop': stop it (its VM restarts it when there is room, per runStrategy). */
  action: 'migrate' | 'stop';
  to?: string;
}

export type PreemptionResult = { node: string; victims: Victim[] } | { node: undefined; reason: string };

const RESOLVABLE = new Set<string>([REASONS.insufficientCpu, REASONS.insufficientMemory]);
const ZERO: Requests = { cpuMillis: 0, memoryBytes: 0 };
// Extended resources (dedicated CPUs, hugepages) summed too: filterNode checks them against the node's.
const sum = (rs: Requests[]): Requests => rs.reduce(sumRequests, ZERO);

/** kube's MoreImportantPod: higher priority, then the earlier start. */
function moreImportant(a: PlacedVmi, b: PlacedVmi): number {
  if (a.priority !== b.priority) return b.priority - a.priority;
  return (a.startedAt ?? Infinity) - (b.startedAt ?? Infinity);
}

/** The victims on one node, or undefined when evicting every lower-priority VMI would not make room. */
export function victimsOnNode(input: PreemptionInput, node: NodeLike): PlacedVmi[] | undefined {
  const on = input.placed.filter((p) => p.nodeName === node.metadata.name);
  const lower = on.filter((p) => p.priority < input.vmi.priority).sort(moreImportant);
  const kept = on.filter((p) => p.priority >= input.vmi.priority);
  const fits = (staying: PlacedVmi[]) =>
    filterNode(input.vmi.spec, node, input.vmi.requests, sum(staying.map((p) => p.requests)), input.requiredNodes) === undefined;
  if (!fits(kept)) return undefined;
  const victims: PlacedVmi[] = [];
  for (const p of lower) {
    if (fits([...kept, p])) kept.push(p);
    else victims.push(p);
  }
  return victims;
}

/** The preemption kube-scheduler would do for this VMI, or why there is none. */
export function choosePreemption(input: PreemptionInput): PreemptionResult {
  if (input.vmi.preemptionPolicy === 'Never') return { node: undefined, reason: 'not eligible due to preemptionPolicy=Never.' };
  const used = new Map<string, Requests>();
  for (const p of input.placed) used.set(p.nodeName, sumRequests(used.get(p.nodeName) ?? ZERO, p.requests));
  let best: { node: string; victims: PlacedVmi[]; top: number; total: number; latest: number } | undefined;
  for (const node of input.nodes) {
    const reason = filterNode(input.vmi.spec, node, input.vmi.requests, used.get(node.metadata.name) ?? ZERO, input.requiredNodes);
    if (reason === undefined || !RESOLVABLE.has(reason)) continue;
    const victims = victimsOnNode(input, node);
    if (!victims?.length) continue;
    const top = Math.max(...victims.map((v) => v.priority));
    const c = {
      node: node.metadata.name,
      victims,
      top,
      total: victims.reduce((s, v) => s + v.priority, 0),
      // The latest start among the highest-priority victims: the one that loses the least work.
      latest: Math.max(...victims.filter((v) => v.priority === top).map((v) => v.startedAt ?? 0)),
    };
    if (!best || better(c, best)) best = c;
  }
  if (!best) return { node: undefined, reason: 'No preemption victims found for incoming VMI.' };
  return { node: best.node, victims: placeVictims(input, best.node, best.victims) };
}

function better(
  a: { node: string; victims: unknown[]; top: number; total: number; latest: number },
  b: { node: string; victims: unknown[]; top: number; total: number; latest: number },
): boolean {
  if (a.top !== b.top) return a.top < b.top;
  if (a.total !== b.total) return a.total < b.total;
  if (a.victims.length !== b.victims.length) return a.victims.length < b.victims.length;
  if (a.latest !== b.latest) return a.latest > b.latest;
  return a.node < b.node;
}

/** Live-migrating victims go to the first other node that fits them (counting the ones moved before); the rest stop. */
function placeVictims(input: PreemptionInput, from: string, victims: PlacedVmi[]): Victim[] {
  const used = new Map<string, Requests>();
  for (const p of input.placed) used.set(p.nodeName, sumRequests(used.get(p.nodeName) ?? ZERO, p.requests));
  return victims.map((v) => {
    if (v.liveMigrate) {
      const to = input.nodes.find((n) => n.metadata.name !== from && filterNode(v.spec ?? {}, n, v.requests, used.get(n.metadata.name) ?? ZERO) === undefined)
        ?.metadata.name;
      if (to) {
        used.set(to, sumRequests(used.get(to) ?? ZERO, v.requests));
        return { key: v.key, priority: v.priority, action: 'migrate', to };
      }
    }
    return { key: v.key, priority: v.priority, action: 'stop' };
  });
}
