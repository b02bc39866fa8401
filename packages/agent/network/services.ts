/**
 * The Services data plane of a node (docs/network.md): from Services and their EndpointSlices,
 * the nftables table `ip vessel-services` (DNAT of ClusterIP:port and NodePorts to the ready
 * endpoints, masquerade of that traffic to the node's gateway, reject when there is none), one
 * /32 route per ClusterIP, and the DNS names dnsmasq answers. Everything is rebuilt whole from
 * the caches when anything changes (debounced), and written only when it differs.
 */
import { formatIPv4, parseIPv4, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import { Controller, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { BRIDGE } from './bridge.ts';
import { Dnsmasq } from './dnsmasq.ts';
import { inNs, ip, type NetNs } from './exec.ts';

export const SERVICES_TABLE = 'vessel-services';
/** kube-proxy's masquerade bit: set on a service connection's first packet, read in postrouting. */
export const MASQ_MARK = 0x4000;
/** Routing protocol number that tags the ClusterIP routes this module owns (free in rt_protos). */
export const ROUTE_PROTO = 77;
const SLICE_SERVICE_LABEL = 'kubernetes.io/service-name';
const SYNC = 'sync';
/** Coalesces a burst of changes (a Service and its slice arrive together) into one transaction. */
const DEBOUNCE_MS = 50;

const LABEL_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export type Protocol = 'TCP' | 'UDP';

/** One port of a Service as the data plane sees it. */
export interface ServicePortModel {
  name: string;
  protocol: Protocol;
  port: number;
  nodePort?: number;
  /** Ready endpoints for this port: address and target port. */
  endpoints: { ip: string; port: number }[];
}

/** What a node needs of a Service (validated: every field is safe to put into a ruleset). */
export interface ServiceModel {
  namespace: string;
  name: string;
  /** undefined for headless Services (no rules, DNS only). */
  clusterIP?: string;
  ports: ServicePortModel[];
  /** Ready endpoint addresses (headless DNS answers) and, for those with one, their hostname. */
  ready: { ip: string; hostname?: string }[];
}

type Obj = Record<string, unknown>;
interface SliceEndpoint {
  addresses?: string[];
  conditions?: { ready?: boolean };
  hostname?: string;
}
interface SlicePort {
  name?: string;
  port?: number;
  protocol?: string;
}

const validIp = (s: unknown): string | undefined => {
  const v = typeof s === 'string' ? parseIPv4(s) : undefined;
  return v === undefined || formatIPv4(v) !== s ? undefined : s;
};
const validPort = (n: unknown): number | undefined => (Number.isInteger(n) && (n as number) > 0 && (n as number) < 65536 ? (n as number) : undefined);
const protocolOf = (p: unknown): Protocol | undefined => (p === undefined || p === 'TCP' ? 'TCP' : p === 'UDP' ? 'UDP' : undefined);

/**
 * Services and EndpointSlices (any namespaces) → the models, sorted by namespace/name. A Service
 * or port that cannot be expressed safely (a malformed address, SCTP) is left out: the API
 * server validated it already, so this only guards the ruleset against a hostile store.
 */
export function serviceModels(services: readonly KubeObject[], slices: readonly KubeObject[]): ServiceModel[] {
  const byService = new Map<string, KubeObject[]>();
  for (const s of slices) {
    const svc = (s.metadata.labels as Record<string, string> | undefined)?.[SLICE_SERVICE_LABEL];
    if (!svc || (s as Obj).addressType !== 'IPv4') continue;
    const k = `${s.metadata.namespace}/${svc}`;
    byService.set(k, [...(byService.get(k) ?? []), s]);
  }
  const out: ServiceModel[] = [];
  for (const svc of services) {
    const { namespace = '', name } = svc.metadata;
    if (!LABEL_RE.test(namespace) || !LABEL_RE.test(name)) continue;
    const spec = (svc.spec ?? {}) as { type?: string; clusterIP?: string; ports?: Obj[] };
    if (spec.type === 'ExternalName') continue;
    const headless = spec.clusterIP === 'None';
    const clusterIP = headless ? undefined : validIp(spec.clusterIP);
    if (!headless && !clusterIP) continue; // not allocated yet
    const mySlices = byService.get(`${namespace}/${name}`) ?? [];
    const readyEps = mySlices.flatMap((s) =>
      (((s as Obj).endpoints as SliceEndpoint[] | undefined) ?? []).filter((e) => e.conditions?.ready !== false).map((e) => ({ e, s })),
    );
    const ready = new Map<string, string | undefined>();
    for (const { e } of readyEps) {
      const a = validIp(e.addresses?.[0]);
      if (a) ready.set(a, ready.get(a) ?? (typeof e.hostname === 'string' && LABEL_RE.test(e.hostname) ? e.hostname : undefined));
    }
    const ports: ServicePortModel[] = [];
    for (const p of spec.ports ?? []) {
      const port = validPort(p.port);
      const protocol = protocolOf(p.protocol);
      if (port === undefined || protocol === undefined) continue;
      const pname = typeof p.name === 'string' ? p.name : '';
      const endpoints = new Map<string, number>();
      for (const { e, s } of readyEps) {
        const sp = (((s as Obj).ports as SlicePort[] | undefined) ?? []).find((x) => (x.name ?? '') === pname && (x.protocol ?? 'TCP') === protocol);
        const a = validIp(e.addresses?.[0]);
        const tp = validPort(sp?.port);
        if (a && tp !== undefined && !endpoints.has(a)) endpoints.set(a, tp);
      }
      ports.push({
        name: pname,
        protocol,
        port,
        nodePort: spec.type === 'NodePort' || spec.type === 'LoadBalancer' ? validPort(p.nodePort) : undefined,
        endpoints: [...endpoints].map(([ip, port]) => ({ ip, port })).sort((x, y) => cmpIp(x.ip, y.ip)),
      });
    }
    out.push({
      namespace,
      name,
      clusterIP,
      ports,
      ready: [...ready].map(([ip, hostname]) => ({ ip, ...(hostname ? { hostname } : {}) })).sort((x, y) => cmpIp(x.ip, y.ip)),
    });
  }
  return out.sort((x, y) => `${x.namespace}/${x.name}`.localeCompare(`${y.namespace}/${y.name}`));
}

const cmpIp = (a: string, b: string) => (parseIPv4(a) ?? 0) - (parseIPv4(b) ?? 0);

/**
 * The table, replacing the previous one in one `nft -f -` transaction (pure). NAT chains DNAT
 * a connection's first packet and mark it; postrouting masquerades marked traffic leaving on the
 * VM bridge, so the endpoint answers this node (which un-NATs) rather than the client directly.
 * Ports without ready endpoints are rejected in filter chains (nat chains cannot reject).
 */
export function servicesRuleset(models: readonly ServiceModel[]): string {
  const dispatch: string[] = [];
  const reject: string[] = [];
  const chains: string[] = [];
  let n = 0;
  for (const s of models) {
    if (s.clusterIP === undefined) continue;
    for (const p of s.ports) {
      const l4 = p.protocol.toLowerCase();
      const what = `comment "${s.namespace}/${s.name}:${p.port}/${p.protocol}"`;
      const matches = [
        `ip daddr ${s.clusterIP} ${l4} dport ${p.port}`,
        ...(p.nodePort !== undefined ? [`fib daddr type local ${l4} dport ${p.nodePort}`] : []),
      ];
      if (p.endpoints.length === 0) {
        const how = p.protocol === 'TCP' ? 'reject with tcp reset' : 'reject with icmp type port-unreachable';
        for (const m of matches) reject.push(`    ${m} ${how} ${what}`);
        continue;
      }
      const chain = `svc-${n++}`;
      for (const m of matches) dispatch.push(`    ${m} goto ${chain} ${what}`);
      // Every endpoint of one Service port has the same target port (the controller writes the
      // Service's targetPort number); the first one's is used.
      const target =
        p.endpoints.length === 1
          ? p.endpoints[0].ip
          : `numgen random mod ${p.endpoints.length} map { ${p.endpoints.map((e, i) => `${i} : ${e.ip}`).join(', ')} }`;
      chains.push(
        `  chain ${chain} {`,
        `    meta mark set meta mark | 0x${MASQ_MARK.toString(16)}`,
        `    meta l4proto ${l4} dnat to ${target}:${p.endpoints[0].port}`,
        '  }',
      );
    }
  }
  return [
    // Declaring the table first makes the delete succeed when it does not exist yet.
    `table ip ${SERVICES_TABLE}`,
    `delete table ip ${SERVICES_TABLE}`,
    `table ip ${SERVICES_TABLE} {`,
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    '    jump services',
    '  }',
    '  chain output {',
    '    type nat hook output priority -100; policy accept;',
    '    jump services',
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    meta mark & 0x${MASQ_MARK.toString(16)} == 0x${MASQ_MARK.toString(16)} oifname "${BRIDGE}" masquerade`,
    '  }',
    ...['input', 'forward', 'output'].flatMap((hook) => [
      `  chain filter-${hook} {`,
      `    type filter hook ${hook} priority filter - 10; policy accept;`,
      '    ct state new jump no-endpoints',
      '  }',
    ]),
    '  chain no-endpoints {',
    ...reject,
    '  }',
    '  chain services {',
    ...dispatch,
    '  }',
    ...chains,
    '}',
    '',
  ].join('\n');
}

/**
 * dnsmasq's hosts-file text (pure): `name.ns.svc.cluster.local` and `name.ns.svc` → the
 * ClusterIP, or for a headless Service its ready endpoints' addresses; an endpoint with a
 * hostname (a VM whose subdomain is this headless Service) also as `hostname.name.ns.svc...`.
 */
export function dnsHosts(models: readonly ServiceModel[]): string {
  const lines: string[] = [];
  const names = (n: string) => `${n}.svc.cluster.local ${n}.svc`;
  for (const s of models) {
    const base = `${s.name}.${s.namespace}`;
    if (s.clusterIP !== undefined) {
      lines.push(`${s.clusterIP} ${names(base)}`);
      continue;
    }
    for (const e of s.ready) lines.push(`${e.ip} ${names(base)}`);
    for (const e of s.ready) if (e.hostname) lines.push(`${e.ip} ${names(`${e.hostname}.${base}`)}`);
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

export async function installServicesRuleset(ns: NetNs, text: string): Promise<void> {
  await inNs(ns, ['nft', '-f', '-'], { input: text });
}

export async function removeServicesRuleset(ns: NetNs): Promise<void> {
  await inNs(ns, ['nft', 'delete', 'table', 'ip', SERVICES_TABLE], { okCodes: [1] });
}

/**
 * One /32 route per ClusterIP on the VM bridge, tagged with ROUTE_PROTO: a connection the node
 * itself opens needs a route before its output hook DNATs it, and a VM's packet to a Service
 * without endpoints must be forwarded (to be rejected) rather than dropped as unroutable.
 */
export async function syncServiceRoutes(ns: NetNs, clusterIPs: readonly string[]): Promise<{ added: string[]; removed: string[] }> {
  const r = await ip(ns, ['-j', '-4', 'route', 'show', 'proto', String(ROUTE_PROTO)]);
  const have = new Set((JSON.parse(r.stdout || '[]') as { dst: string }[]).map((x) => x.dst.replace(/\/32$/, '')));
  const want = new Set(clusterIPs.filter((a) => validIp(a)));
  const added = [...want].filter((a) => !have.has(a));
  const removed = [...have].filter((a) => !want.has(a));
  for (const a of added) await ip(ns, ['route', 'replace', `${a}/32`, 'dev', BRIDGE, 'proto', String(ROUTE_PROTO)]);
  for (const a of removed) await ip(ns, ['route', 'del', `${a}/32`, 'proto', String(ROUTE_PROTO)], { okCodes: [2] });
  return { added, removed };
}

/**
 * A VM's connection to a ClusterIP enters and leaves the node on the bridge (DNAT to another VM
 * on the segment); the kernel would then send the VM an ICMP redirect naming the endpoint as the
 * next hop for the ClusterIP, and the VM's later connections would bypass the node's NAT and
 * time out. Both `all` and the bridge must say no (the kernel ORs them).
 */
export async function disableRedirects(ns: NetNs): Promise<void> {
  await inNs(ns, ['sysctl', '-q', '-w', 'net.ipv4.conf.all.send_redirects=0', `net.ipv4.conf.${BRIDGE}.send_redirects=0`]);
}

export interface ServiceProxyOptions {
  /** The node's namespace (dev cluster); undefined: the agent's own. */
  netns?: string;
  /** The node's network state directory (dnsmasq's, shared with ClusterNetwork). */
  stateDir: string;
  log?: Log;
}

/** Keeps the node's Services data plane in step with the Services and EndpointSlices it watches. */
export class ServiceProxy extends Controller {
  private readonly services: Informer;
  private readonly slices: Informer;
  private readonly dnsmasq: Dnsmasq;
  private rulesNow?: string;

  constructor(
    client: Client,
    private readonly opts: ServiceProxyOptions,
  ) {
    // One worker: each sync rebuilds everything, so two at once would only race.
    super('services', client, opts.log, 1);
    this.services = this.inform(refs.SERVICES, () => [SYNC]);
    this.slices = this.inform(refs.ENDPOINTSLICES, () => [SYNC]);
    this.dnsmasq = new Dnsmasq(opts.netns, opts.stateDir, this.log);
  }

  protected override async started(): Promise<void> {
    await disableRedirects(this.opts.netns);
    this.queue.add(SYNC);
  }

  protected async reconcile(): Promise<void> {
    await new Promise((r) => setTimeout(r, DEBOUNCE_MS));
    const models = serviceModels(this.services.list(), this.slices.list());
    const rules = servicesRuleset(models);
    // Routes first: a rule for a ClusterIP is of no use to the node's own connections without one.
    const routes = await syncServiceRoutes(
      this.opts.netns,
      models.flatMap((m) => (m.clusterIP ? [m.clusterIP] : [])),
    );
    if (rules !== this.rulesNow) {
      await installServicesRuleset(this.opts.netns, rules);
      const eps = models.reduce((k, m) => k + m.ports.reduce((j, p) => j + p.endpoints.length, 0), 0);
      this.log(
        `services: ${models.length} Services, ${eps} endpoints in table ${SERVICES_TABLE}${routes.added.length || routes.removed.length ? ` (routes +${routes.added.length} -${routes.removed.length})` : ''}`,
      );
      this.rulesNow = rules;
    }
    await this.dnsmasq.setDnsHosts(dnsHosts(models));
  }

  /** Removes the table and the routes (the node leaves the cluster network). */
  async remove(): Promise<void> {
    await removeServicesRuleset(this.opts.netns);
    await syncServiceRoutes(this.opts.netns, []);
  }
}
