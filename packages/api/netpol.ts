/**
 * NetworkPolicy (networking.k8s.io/v1) as both sides read it: label selectors (matching, and
 * kubectl's text form), IPv4 blocks of any prefix length, and the spec's shape. The API server
 * validates with these, the node agents enforce with them, so both agree on what a selector
 * selects.
 */
import { parseIPv4 } from './ip.ts';

export interface LabelSelectorRequirement {
  key: string;
  operator: string;
  values?: string[];
}
export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}
export interface NetworkPolicyPort {
  protocol?: string;
  port?: number | string;
  endPort?: number;
}
export interface IPBlock {
  cidr: string;
  except?: string[];
}
export interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: IPBlock;
}
export interface NetworkPolicyIngressRule {
  ports?: NetworkPolicyPort[];
  from?: NetworkPolicyPeer[];
}
export interface NetworkPolicyEgressRule {
  ports?: NetworkPolicyPort[];
  to?: NetworkPolicyPeer[];
}
export interface NetworkPolicySpec {
  podSelector?: LabelSelector;
  policyTypes?: string[];
  ingress?: NetworkPolicyIngressRule[];
  egress?: NetworkPolicyEgressRule[];
}

export const POLICY_TYPES = ['Ingress', 'Egress'] as const;
export const PROTOCOLS = ['TCP', 'UDP', 'SCTP'] as const;
export const SELECTOR_OPERATORS = ['In', 'NotIn', 'Exists', 'DoesNotExist'] as const;

/** Whether `labels` satisfy the selector; an empty selector selects everything, as in Kubernetes. */
export function matchesSelector(sel: LabelSelector | undefined, labels: Record<string, string> | undefined): boolean {
  const l = labels ?? {};
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) if (l[k] !== v) return false;
  for (const e of sel?.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(l, e.key);
    const values = e.values ?? [];
    const ok =
      e.operator === 'In'
        ? has && values.includes(l[e.key])
        : e.operator === 'NotIn'
          ? !has || !values.includes(l[e.key])
          : e.operator === 'Exists'
            ? has
            : e.operator === 'DoesNotExist'
              ? !has
              : false; // an unknown operator selects nothing rather than everything
    if (!ok) return false;
  }
  return true;
}

/** kubectl's form (metav1.FormatLabelSelector): `app=web,tier in (a,b),!x`, `<none>` when empty. */
export function formatSelector(sel: LabelSelector | undefined): string {
  const parts = Object.entries(sel?.matchLabels ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`);
  for (const e of sel?.matchExpressions ?? []) {
    const values = [...(e.values ?? [])].sort().join(',');
    if (e.operator === 'In') parts.push(`${e.key} in (${values})`);
    else if (e.operator === 'NotIn') parts.push(`${e.key} notin (${values})`);
    else if (e.operator === 'Exists') parts.push(e.key);
    else if (e.operator === 'DoesNotExist') parts.push(`!${e.key}`);
  }
  return parts.length ? parts.join(',') : '<none>';
}

/** An IPv4 block `a.b.c.d/n` with any prefix 0..32; host bits are masked (Kubernetes accepts them). */
export interface Block {
  base: number;
  prefix: number;
  text: string;
}

export function parseBlock(s: string): Block | undefined {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(s);
  if (!m) return undefined;
  const ip = parseIPv4(m[1]);
  const prefix = Number(m[2]);
  if (ip === undefined || prefix > 32) return undefined;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const base = (ip & mask) >>> 0;
  const text = `${[base >>> 24, (base >>> 16) & 255, (base >>> 8) & 255, base & 255].join('.')}/${prefix}`;
  return { base, prefix, text };
}

/** Whether `inner` lies inside `outer` and is smaller (an `except` must be a strict subset of `cidr`). */
export function strictlyWithin(inner: Block, outer: Block): boolean {
  if (inner.prefix <= outer.prefix) return false;
  const mask = outer.prefix === 0 ? 0 : (0xffffffff << (32 - outer.prefix)) >>> 0;
  return (inner.base & mask) >>> 0 === outer.base;
}

/** Whether address `ip` (a number) lies in the block. */
export function blockHas(b: Block, ip: number): boolean {
  const mask = b.prefix === 0 ? 0 : (0xffffffff << (32 - b.prefix)) >>> 0;
  return (ip & mask) >>> 0 === b.base;
}

/** The policy types of a spec, defaulted as Kubernetes does: Ingress always, Egress when egress rules exist. */
export function policyTypesOf(spec: NetworkPolicySpec | undefined): ('Ingress' | 'Egress')[] {
  if (spec?.policyTypes?.length) return POLICY_TYPES.filter((t) => spec.policyTypes!.includes(t));
  return spec?.egress?.length ? ['Ingress', 'Egress'] : ['Ingress'];
}
