/**
 * NetworkPolicy enforcement on the node (docs/network.md): one nftables table `bridge
 * vessel_policy` in the node's namespace, replaced whole in one `nft -f -` transaction whenever
 * a policy, a VMI or a Namespace changes (debounced). The `bridge` family, because VM-to-VM
 * traffic on one L2 segment never reaches the IP layer of the node.
 *
 * For each local VM NIC (its tap) selected by a policy of a type, the traffic forwarded to the
 * tap (Ingress) or from it (Egress) passes only when it is ARP, DHCP, an answer within a
 * connection, or matches a rule of one of those policies; the rest is dropped. A NIC no policy
 * of a type selects is open for that type, as in Kubernetes. Peers are resolved to the VMs'
 * cluster addresses (status.interfaces[].ipAddress of their pod interface).
 */
import { ipam, migration, netpol, parseIPv4, refs } from '@vessel/api';
import type { Client, ResourceRef } from '@vessel/client';
import { Controller, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { NetworkError } from './errors.ts';
import { inNs, type NetNs } from './exec.ts';
import { tapName } from './taps.ts';

export const POLICY_TABLE = 'vessel_policy';
export const NETWORK_POLICIES: ResourceRef = { group: 'networking.k8s.io', version: 'v1', plural: 'networkpolicies', namespaced: true };
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
/** The label Kubernetes puts on every Namespace; treated as present even if a store lacks it. */
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

/** A VM as policies see it: where it is, its labels, its cluster address (if it has one yet). */
export interface PolicyVm {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  ip?: string;
}
export interface PolicyObject {
  namespace: string;
  name: string;
  spec: netpol.NetworkPolicySpec;
}

/** What the ruleset is computed from; lookups, so the caller can answer them from indexes. */
export interface PolicyInput {
  /** The VMs whose NICs are taps on this node. */
  local: PolicyVm[];
  policiesIn(namespace: string): PolicyObject[];
  vmsIn(namespace: string): PolicyVm[];
  namespaces(): { name: string; labels: Record<string, string> }[];
  /** The node's own address on the VM network: its traffic to its VMs always passes, as Kubernetes lets a node reach its pods. */
  nodeAddress?: string;
  /** Whether the kernel tracks connections in the bridge family; without it answers are recognised statelessly. */
  conntrack: boolean;
}

type Dir = 'ingress' | 'egress';

/** The ruleset text (pure; `nft -f -` reads it). */
export function policyRuleset(input: PolicyInput): string {
  const chains: string[] = [];
  const ingressMap: string[] = [];
  const egressMap: string[] = [];
  const nsLabels = new Map(input.namespaces().map((n) => [n.name, { ...n.labels, [NAMESPACE_NAME_LABEL]: n.name }]));
  const ipsMemo = new Map<string, string[]>();
  const resolve = (policyNs: string, peer: netpol.NetworkPolicyPeer): string[] => {
    const key = JSON.stringify([policyNs, peer.podSelector ?? null, peer.namespaceSelector ?? null]);
    let ips = ipsMemo.get(key);
    if (!ips) {
      const nss = peer.namespaceSelector ? [...nsLabels].filter(([, l]) => netpol.matchesSelector(peer.namespaceSelector, l)).map(([n]) => n) : [policyNs];
      ips = nss
        .flatMap((n) => input.vmsIn(n))
        .filter((v) => v.ip && netpol.matchesSelector(peer.podSelector, v.labels))
        .map((v) => v.ip!);
      ips = [...new Set(ips)].sort(compareIPs);
      ipsMemo.set(key, ips);
    }
    return ips;
  };
  for (const vm of [...input.local].sort((a, b) => tapOf(a).localeCompare(tapOf(b)))) {
    const tap = tapOf(vm);
    const selecting = input
      .policiesIn(vm.namespace)
      .filter((p) => netpol.matchesSelector(p.spec.podSelector, vm.labels))
      .sort((a, b) => a.name.localeCompare(b.name));
    for (const dir of ['ingress', 'egress'] as const) {
      const type = dir === 'ingress' ? 'Ingress' : 'Egress';
      const pols = selecting.filter((p) => netpol.policyTypesOf(p.spec).includes(type));
      if (pols.length === 0) continue; // selected by no policy of this type: open
      const chain = `${dir === 'ingress' ? 'in' : 'out'}_${tap}`;
      const body = answersAndInfrastructure(dir, input);
      for (const p of pols) {
        const rules = dir === 'ingress' ? (p.spec.ingress ?? []) : (p.spec.egress ?? []);
        for (const r of rules)
          body.push(
            ...ruleLines(dir, r.ports, dir === 'ingress' ? (r as netpol.NetworkPolicyIngressRule).from : (r as netpol.NetworkPolicyEgressRule).to, p, resolve),
          );
      }
      body.push(`drop comment "${vm.namespace}/${vm.name}: isolated for ${type}"`);
      chains.push(`  chain ${chain} {`, ...body.map((l) => `    ${l}`), '  }');
      (dir === 'ingress' ? ingressMap : egressMap).push(`"${tap}" : jump ${chain}`);
    }
  }
  const vmap = (field: string, entries: string[]) => (entries.length ? [`    ${field} vmap { ${entries.join(', ')} }`] : []);
  return [
    // Declaring the table first makes the delete succeed when it does not exist yet.
    `table bridge ${POLICY_TABLE}`,
    `delete table bridge ${POLICY_TABLE}`,
    `table bridge ${POLICY_TABLE} {`,
    // VM to VM on this node or over VXLAN: the receiver's ingress, then the sender's egress
    // (the per-NIC chains return when allowed, so both are checked).
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    ...vmap('oifname', ingressMap),
    ...vmap('iifname', egressMap),
    '  }',
    // The node to a VM (its own traffic, or routed from outside): the VM's ingress.
    '  chain output {',
    '    type filter hook output priority filter; policy accept;',
    ...(input.nodeAddress ? [`    ip saddr ${input.nodeAddress} accept`] : []),
    ...vmap('oifname', ingressMap),
    '  }',
    // A VM to the node (DNS, or routed out of the VM network): the VM's egress.
    '  chain input {',
    '    type filter hook input priority filter; policy accept;',
    ...vmap('iifname', egressMap),
    '  }',
    ...chains,
    '}',
    '',
  ].join('\n');
}

const tapOf = (vm: PolicyVm) => tapName(vm.namespace, vm.name);

function compareIPs(a: string, b: string): number {
  return (parseIPv4(a) ?? 0) - (parseIPv4(b) ?? 0);
}

/** What an isolated NIC always lets through: ARP, DHCP, answers, and (egress) the node itself. */
function answersAndInfrastructure(dir: Dir, input: PolicyInput): string[] {
  const lines = ['ether type arp return', 'udp sport { 67, 68 } udp dport { 67, 68 } return'];
  if (input.conntrack) lines.push('ct state established,related return');
  else {
    // Without bridge conntrack (nf_conntrack_bridge) only the opening of a TCP connection (a
    // SYN without ACK) is subject to the rules; ICMP errors and echo replies pass.
    lines.push('meta l4proto tcp tcp flags & (syn | ack) != syn return');
    lines.push('icmp type { echo-reply, destination-unreachable, time-exceeded } return');
  }
  // The node answers DNS and routes out of the VM network; as Kubernetes, host traffic is not isolated.
  if (dir === 'egress' && input.nodeAddress) lines.push(`ip daddr ${input.nodeAddress} return`);
  return lines;
}

/** The lines that allow one rule: every peer × every port group; none when the peers resolve to nothing. */
function ruleLines(
  dir: Dir,
  ports: netpol.NetworkPolicyPort[] | undefined,
  peers: netpol.NetworkPolicyPeer[] | undefined,
  p: PolicyObject,
  resolve: (ns: string, peer: netpol.NetworkPolicyPeer) => string[],
): string[] {
  const addr = dir === 'ingress' ? 'ip saddr' : 'ip daddr';
  const sources: string[] = [];
  if (!peers?.length) sources.push('');
  else {
    const ips = new Set<string>();
    for (const peer of peers) {
      if (peer.ipBlock) {
        const cidr = netpol.parseBlock(peer.ipBlock.cidr);
        if (!cidr) continue; // refused by the API server; a stored bad one allows nothing
        const except = (peer.ipBlock.except ?? []).map((e) => netpol.parseBlock(e)).filter((b): b is netpol.Block => !!b && netpol.strictlyWithin(b, cidr));
        sources.push(`${addr} ${cidr.text}${except.length ? ` ${addr} != { ${except.map((b) => b.text).join(', ')} }` : ''}`);
      } else for (const ip of resolve(p.namespace, peer)) ips.add(ip);
    }
    if (ips.size) sources.unshift(`${addr} { ${[...ips].sort(compareIPs).join(', ')} }`);
    if (sources.length === 0) return [];
  }
  const portMatches = portMatchesOf(ports);
  if (portMatches.length === 0) return [];
  const comment = `comment "${p.namespace}/${p.name}"`;
  return sources.flatMap((s) => portMatches.map((m) => [s, m, 'return', comment].filter(Boolean).join(' ')));
}

/** `meta l4proto tcp th dport { 80, 8000-8080 }` per protocol; [''] for any port; [] when only named ports (a VM has no container ports to name). */
function portMatchesOf(ports: netpol.NetworkPolicyPort[] | undefined): string[] {
  if (!ports?.length) return [''];
  const byProto = new Map<string, Set<string> | 'all'>();
  for (const p of ports) {
    const proto = (p.protocol ?? 'TCP').toLowerCase();
    if (!['tcp', 'udp', 'sctp'].includes(proto)) continue;
    if (p.port === undefined || p.port === null) {
      byProto.set(proto, 'all');
      continue;
    }
    if (!isPort(p.port)) continue; // a name, or a stored value admission would refuse: allows nothing
    const cur = byProto.get(proto);
    if (cur === 'all') continue;
    const set = cur ?? new Set<string>();
    set.add(isPort(p.endPort) && p.endPort > p.port ? `${p.port}-${p.endPort}` : String(p.port));
    byProto.set(proto, set);
  }
  return [...byProto]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([proto, set]) => (set === 'all' ? `meta l4proto ${proto}` : `meta l4proto ${proto} th dport { ${[...set].join(', ')} }`));
}

const isPort = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;

/** Whether this kernel tracks connections in the bridge family (nf_conntrack_bridge); checked without changing anything. */
export async function bridgeConntrack(ns: NetNs): Promise<boolean> {
  const probe = `table bridge ${POLICY_TABLE}_probe {\n  chain c {\n    ct state established accept\n  }\n}\n`;
  const r = await inNs(ns, ['nft', '-c', '-f', '-'], { input: probe, okCodes: [1] });
  return r.code === 0;
}

export async function installPolicyRuleset(ns: NetNs, text: string): Promise<void> {
  await inNs(ns, ['nft', '-f', '-'], { input: text });
}

export async function removePolicyRuleset(ns: NetNs): Promise<void> {
  await inNs(ns, ['nft', 'delete', 'table', 'bridge', POLICY_TABLE], { okCodes: [1] });
}

/** A VMI as a policy peer: namespace, name, labels and the address of its pod interface. */
export function policyVmOf(vmi: KubeObject): PolicyVm {
  const iface = ipam.podInterface(vmi.spec)?.name;
  const st = (vmi.status ?? {}) as { interfaces?: { name?: string; ipAddress?: string }[] };
  const ip = (st.interfaces ?? []).find((i) => i.name === iface)?.ipAddress;
  return {
    namespace: vmi.metadata.namespace ?? '',
    name: vmi.metadata.name,
    labels: (vmi.metadata.labels ?? {}) as Record<string, string>,
    ip: ip && parseIPv4(ip) !== undefined ? ip : undefined,
  };
}

/**
 * The nodes whose taps serve a VMI: where it runs, and the target of its migration unless that
 * failed. The target makes its tap before the guest arrives and the guest runs there before the
 * switch write names that node, so the target's rules must already hold for it (no window in
 * which the arrived guest is open); a completed migration's target is its node anyway.
 */
export function policyNodesOf(vmi: KubeObject): string[] {
  const nodeName = String((vmi.status as { nodeName?: string } | undefined)?.nodeName ?? '');
  const ms = migration.stateOf(vmi);
  return ms?.targetNode && !ms.failed && ms.targetNode !== nodeName ? [nodeName, ms.targetNode] : [nodeName];
}

const FINAL = new Set(['Succeeded', 'Failed']);
const KEY = 'ruleset';
const BY_NS = 'namespace';
const BY_NODE = 'node';
/** Changes that come in bursts (a namespace of VMs starting) make one transaction. */
const DEBOUNCE_MS = 100;
/** How long a migration target waits for this node's rules to cover its VM (a working enforcer takes ~0.1 s). */
export const COVER_TIMEOUT_MS = 30_000;

export interface PolicyEnforcerOptions {
  nodeName: string;
  netns?: string;
  /** The node's gateway on the VM network, once IPAM gave it one. */
  nodeAddress: () => string | undefined;
  log?: Log;
}

/** Keeps the node's policy table in step with NetworkPolicies, VMIs and Namespaces. */
export class PolicyEnforcer extends Controller {
  private readonly vmis: Informer;
  private readonly namespaces: Informer;
  private readonly policies: Informer;
  private conntrack?: boolean;
  private installed?: string;
  /** Those waiting for a ruleset installed (or found unchanged) after they asked that covers a VMI (`ns/name`). */
  private readonly waiters = new Set<{ key: string; resolve: () => void }>();

  constructor(
    client: Client,
    private readonly opts: PolicyEnforcerOptions,
  ) {
    super('netpol', client, opts.log, 1);
    const later = () => {
      this.queue.addAfter(KEY, DEBOUNCE_MS);
      return [];
    };
    this.vmis = this.inform(refs.VMIS, later);
    this.vmis.addIndex(BY_NS, (o) => [o.metadata.namespace ?? '']);
    this.vmis.addIndex(BY_NODE, policyNodesOf);
    this.namespaces = this.inform(NAMESPACES, later);
    this.policies = this.inform(NETWORK_POLICIES, later);
    this.policies.addIndex(BY_NS, (o) => [o.metadata.namespace ?? '']);
  }

  protected override async started(): Promise<void> {
    this.queue.add(KEY);
  }

  /** The text last installed (for tests and diagnostics). */
  get ruleset(): string | undefined {
    return this.installed;
  }

  /**
   * Resolves once this node's table, installed after the call, is computed with the VMI among
   * the node's VMs (its policies' rules on its tap, or none selecting it). A migration target
   * waits for it before it says it is ready, so the guest never runs here unpoliced. Throws
   * after `timeoutMs` (the migration then fails rather than open the VM).
   */
  async covers(namespace: string, name: string, timeoutMs = COVER_TIMEOUT_MS): Promise<void> {
    let waiter: { key: string; resolve: () => void } | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        new Promise<void>((resolve) => {
          waiter = { key: `${namespace}/${name}`, resolve };
          this.waiters.add(waiter);
          this.queue.add(KEY);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new NetworkError(
                  'CommandFailed',
                  `the NetworkPolicy rules of ${namespace}/${name} are not in place on ${this.opts.nodeName} after ${timeoutMs / 1000} s`,
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
      if (waiter) this.waiters.delete(waiter);
    }
  }

  protected async reconcile(): Promise<void> {
    this.conntrack ??= await bridgeConntrack(this.opts.netns);
    const live = (o: KubeObject) => !FINAL.has(String((o.status as { phase?: string } | undefined)?.phase ?? '')) && !o.metadata.deletionTimestamp;
    const nodeAddress = this.opts.nodeAddress();
    // Taken before the table is computed: a waiter added during the install waits for the next.
    const waiting = [...this.waiters];
    const localVmis = this.vmis.byIndex(BY_NODE, this.opts.nodeName).filter(live);
    const text = policyRuleset({
      local: localVmis.map(policyVmOf),
      policiesIn: (ns) =>
        this.policies.byIndex(BY_NS, ns).map((p) => ({ namespace: ns, name: p.metadata.name, spec: (p.spec ?? {}) as netpol.NetworkPolicySpec })),
      vmsIn: (ns) => this.vmis.byIndex(BY_NS, ns).filter(live).map(policyVmOf),
      namespaces: () => this.namespaces.list().map((n) => ({ name: n.metadata.name, labels: (n.metadata.labels ?? {}) as Record<string, string> })),
      nodeAddress,
      conntrack: this.conntrack,
    });
    // The node's address comes with IPAM; until then look again soon.
    if (!nodeAddress) this.queue.addAfter(KEY, 1000);
    if (text !== this.installed) {
      await installPolicyRuleset(this.opts.netns, text);
      const isolated = (text.match(/^ {2}chain (in|out)_/gm) ?? []).length;
      if (this.installed === undefined || isolated !== (this.installed.match(/^ {2}chain (in|out)_/gm) ?? []).length)
        this.log(`netpol: ${isolated} isolated NIC direction(s) on ${this.opts.nodeName}`);
      this.installed = text;
    }
    const covered = new Set(localVmis.map((o) => `${o.metadata.namespace}/${o.metadata.name}`));
    for (const w of waiting) if (covered.has(w.key)) w.resolve();
  }
}
