/**
 * The node's side of the cluster network (docs/network.md): builds the data plane in the node's
 * namespace (bridge, VXLAN, forwarding, nftables, dnsmasq), keeps one all-zero FDB entry per
 * other Node (from their `vessel.io/fabric-ip`), and reads IPAM's allocations (IPAddress
 * objects) to give the node's bridge its gateway address and each VM NIC its tap, MAC and IP.
 * It never allocates: creating IPAddresses is the control plane's job.
 */
import { join } from 'node:path';
import { ipam, isHostOf, macForIPv4, parseCidr, parseIPv4, refs } from '@vessel/api';
import type { Client, ResourceRef } from '@vessel/client';
import { Controller, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { BRIDGE, VM_MTU, enableForwarding, ensureBridge, setBridgeAddress } from './bridge.ts';
import { Dnsmasq } from './dnsmasq.ts';
import { NetworkError } from './errors.ts';
import { type NetNs } from './exec.ts';
import { installRuleset } from './nft.ts';
import { POD_TAP, announcePod, ensurePod, listPods, podNetnsName, removePod, type MasqPort } from './pod.ts';
import { ensureTap, listTaps, removeTap, tapName } from './taps.ts';
import { ensureVxlan, syncFdb } from './vxlan.ts';

/** The Node annotation where each agent publishes its fabric address. */
export const FABRIC_IP_ANNOTATION = 'vessel.io/fabric-ip';
/** IPAM's allocations (networking.k8s.io/v1 IPAddress, cluster-scoped, named by the address). */
export const IPADDRESSES: ResourceRef = { group: 'networking.k8s.io', version: 'v1', plural: 'ipaddresses', namespaced: false };
const {
  NETWORK_LABEL: LABEL_NETWORK,
  INTERFACE_LABEL: LABEL_INTERFACE,
  CIDR_ANNOTATION: ANN_CIDR,
  MAC_ANNOTATION: ANN_MAC,
  PARENT_UID_ANNOTATION: ANN_PARENT_UID,
} = ipam;

const BY_PARENT = 'parent';
const FDB_KEY = 'fdb';
const GATEWAY_KEY = 'gateway';

export interface ClusterNetworkOptions {
  nodeName: string;
  /** The node's namespace (dev cluster); undefined: the agent's own (a real host). */
  netns?: string;
  /** This node's address on the fabric: the VXLAN's local end, published on the Node. */
  fabricIp: string;
  /** Where dnsmasq's state lives (pid file, leases directory, log). */
  stateDir: string;
  log?: Log;
}

/** A VM NIC's place on the cluster network. */
export interface ClusterNic {
  iface: string;
  tap: string;
  mac: string;
  ip: string;
  /** The VM network, e.g. 10.244.0.0/16. */
  cidr: string;
}

/** Where QEMU opens a cluster NIC: its tap, in the node's namespace (bridge) or the VM's pod (masquerade). */
export interface AttachedNic extends ClusterNic {
  qemuTap: string;
  /** The namespace QEMU must run in for this NIC (undefined: the agent's own). */
  netns: NetNs;
}

/** What the network needs of a VMI: its name, and its VM (owner) whose addresses it uses. */
export interface VmiRef {
  metadata: { name: string; namespace?: string; uid?: string; ownerReferences?: unknown };
}
type Parent = { resource: string; namespace?: string; name: string; uid?: string };

const parentKey = (p: { resource?: string; namespace?: string; name?: string }) =>
  ipam.parentKey({ group: '', resource: p.resource ?? '', namespace: p.namespace, name: p.name ?? '' });
const parentRefOf = (a: KubeObject) =>
  (a.spec as { parentRef?: { group?: string; resource?: string; namespace?: string; name?: string } } | undefined)?.parentRef ?? {};

/** Who owns a VMI's addresses (the IPAM contract's vmiParent): its VirtualMachine, or the VMI itself when it has none. */
export function addressParent(vmi: VmiRef): Parent {
  const owners = (Array.isArray(vmi.metadata.ownerReferences) ? vmi.metadata.ownerReferences : []) as {
    kind: string;
    name: string;
    uid: string;
    controller?: boolean;
  }[];
  const p = ipam.vmiParent({ metadata: { ...vmi.metadata, ownerReferences: owners } });
  return { resource: p.resource, namespace: p.namespace, name: p.name, uid: p.uid || undefined };
}

export class ClusterNetwork extends Controller {
  private readonly nodes: Informer;
  private readonly addrs: Informer;
  private readonly dnsmasq: Dnsmasq;
  private readonly listeners: ((vmiKey: string) => void)[] = [];
  /** The gateway the bridge holds now. */
  private gatewayNow?: string;

  constructor(
    client: Client,
    private readonly opts: ClusterNetworkOptions,
  ) {
    super('network', client, opts.log, 1);
    if (parseIPv4(opts.fabricIp) === undefined) throw new NetworkError('InvalidArgument', `bad fabric IP ${JSON.stringify(opts.fabricIp)}: an IPv4 address`);
    this.nodes = this.inform(refs.NODES, () => [FDB_KEY]);
    this.addrs = this.inform(IPADDRESSES, (a) => {
      const p = parentRefOf(a);
      if (p.resource === 'nodes') return p.name === opts.nodeName ? [GATEWAY_KEY] : [];
      if (p.resource === 'virtualmachines' || p.resource === 'virtualmachineinstances') for (const l of this.listeners) l(`${p.namespace}/${p.name}`);
      return [];
    });
    this.addrs.addIndex(BY_PARENT, (a) => [parentKey(parentRefOf(a))]);
    this.dnsmasq = new Dnsmasq(opts.netns, opts.stateDir, this.log);
  }

  get netns(): NetNs {
    return this.opts.netns;
  }

  /** Called with "namespace/name" of a VMI whose address appeared or changed. */
  onAddress(listener: (vmiKey: string) => void): void {
    this.listeners.push(listener);
  }

  /** The data plane that does not depend on IPAM: bridge, VXLAN, forwarding. */
  protected override async started(): Promise<void> {
    const ns = this.opts.netns;
    await ensureBridge(ns);
    await ensureVxlan(ns, this.opts.fabricIp);
    await enableForwarding(ns);
    this.queue.add(FDB_KEY);
    this.queue.add(GATEWAY_KEY);
  }

  protected async reconcile(key: string): Promise<void> {
    if (key === FDB_KEY) {
      const peers = this.nodes
        .list()
        .filter((n) => n.metadata.name !== this.opts.nodeName && !n.metadata.deletionTimestamp)
        .map((n) => (n.metadata.annotations as Record<string, string> | undefined)?.[FABRIC_IP_ANNOTATION] ?? '')
        .filter((a) => parseIPv4(a) !== undefined && a !== this.opts.fabricIp);
      const { added, removed } = await syncFdb(this.opts.netns, [...new Set(peers)].sort());
      if (added.length || removed.length)
        this.log(`network: VXLAN peers${added.length ? ` +${added.join(',')}` : ''}${removed.length ? ` -${removed.join(',')}` : ''}`);
      return;
    }
    if (key === GATEWAY_KEY) {
      const gw = this.gateway();
      if (!gw) return; // IPAM has not given this node its address yet; the IPAddress brings us back
      const prefix = parseCidr(gw.cidr)!.prefix;
      await setBridgeAddress(this.opts.netns, `${gw.ip}/${prefix}`);
      await installRuleset(this.opts.netns, gw.cidr);
      await this.dnsmasq.ensure({ gateway: gw.ip, cidr: gw.cidr, mtu: VM_MTU });
      if (this.gatewayNow !== gw.ip) this.log(`network: ${BRIDGE} holds the gateway ${gw.ip}/${prefix}`);
      this.gatewayNow = gw.ip;
      // VMs waiting for the gateway may start now.
      for (const a of this.addrs.list()) {
        const p = parentRefOf(a);
        if (p.resource === 'virtualmachines' || p.resource === 'virtualmachineinstances') for (const l of this.listeners) l(`${p.namespace}/${p.name}`);
      }
    }
  }

  /** This node's gateway on the VM network (its IPAddress), when IPAM has allocated it. */
  gateway(): { ip: string; cidr: string } | undefined {
    const a = this.addrs
      .byIndex(BY_PARENT, parentKey({ resource: 'nodes', name: this.opts.nodeName }))
      .filter((o) => labels(o)[LABEL_NETWORK] !== 'services')
      .sort((x, y) => x.metadata.name.localeCompare(y.metadata.name))[0];
    const cidr = a && inRange(a.metadata.name, annotations(a)[ANN_CIDR]);
    return cidr ? { ip: a.metadata.name, cidr } : undefined;
  }

  /** The address IPAM gave interface `iface` of the VMI (its VM's), or undefined. */
  addressOf(vmi: VmiRef, iface: string): Omit<ClusterNic, 'tap' | 'iface'> | undefined {
    const parent = addressParent(vmi);
    const a = this.addrs.byIndex(BY_PARENT, parentKey(parent)).find((o) => labels(o)[LABEL_INTERFACE] === iface && labels(o)[LABEL_NETWORK] !== 'services');
    if (!a) return undefined;
    const ann = annotations(a);
    // An address of an earlier VM of the same name, not yet released: not ours.
    if (ann[ANN_PARENT_UID] && parent.uid && ann[ANN_PARENT_UID] !== parent.uid) return undefined;
    const cidr = inRange(a.metadata.name, ann[ANN_CIDR]);
    const mac = (ann[ANN_MAC] ?? macForIPv4(parseIPv4(a.metadata.name) ?? 0)).toLowerCase();
    if (!cidr || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) return undefined;
    return { ip: a.metadata.name, mac, cidr };
  }

  /** What status.interfaces can say of the VMI's cluster NIC (a lookup; nothing is created). */
  nicOf(vmi: VmiRef, iface: string): ClusterNic | undefined {
    const a = this.addressOf(vmi, iface);
    return a && { ...a, iface, tap: tapName(vmi.metadata.namespace!, vmi.metadata.name) };
  }

  /**
   * Readies interface `iface` of the VMI for QEMU: with the bridge binding its tap on the bridge
   * and its static DHCP lease; with `masquerade` its pod (pod.ts). NetworkError AddressPending
   * while IPAM has not allocated the VM's or the node's address.
   */
  async attach(
    vmi: VmiRef,
    iface: string,
    opts: { multiQueue?: boolean; hostname?: string; masquerade?: { ports?: readonly MasqPort[] } } = {},
  ): Promise<AttachedNic> {
    const gw = this.gateway();
    if (!gw) throw new NetworkError('AddressPending', `node ${this.opts.nodeName} has no address on the cluster network yet (IPAM allocates it)`);
    const nic = this.nicOf(vmi, iface);
    if (!nic) throw new NetworkError('AddressPending', `interface ${iface} waits for its address on the cluster network (IPAM allocates it)`);
    if (inRange(nic.ip, gw.cidr) !== gw.cidr)
      throw new NetworkError('InvalidArgument', `interface ${iface}: address ${nic.ip} is outside this node's VM network ${gw.cidr}`);
    const hostname = opts.hostname && /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(opts.hostname) ? opts.hostname : undefined;
    const { namespace = '', name } = vmi.metadata;
    if (opts.masquerade) {
      // No lease on the node's dnsmasq: the guest asks its pod's.
      await this.dnsmasq.removeHost(nic.tap);
      const pod = await ensurePod(this.opts.netns, this.opts.stateDir, namespace, name, {
        ip: nic.ip,
        prefix: parseCidr(gw.cidr)!.prefix,
        mac: nic.mac,
        dns: gw.ip,
        namespace,
        hostname,
        multiQueue: opts.multiQueue,
        ports: opts.masquerade.ports,
      });
      return { ...nic, qemuTap: POD_TAP, netns: pod };
    }
    // A pod left from an earlier start with masquerade: its veth holds the tap's name.
    const stale = this.podNetns(namespace, name);
    if ((await listPods(this.opts.netns)).includes(stale)) await removePod(this.opts.netns, this.opts.stateDir, stale);
    await ensureTap(this.opts.netns, nic.tap, { multiQueue: opts.multiQueue });
    await this.dnsmasq.setHost(nic.tap, { mac: nic.mac, ip: nic.ip, hostname });
    return { ...nic, qemuTap: nic.tap, netns: this.opts.netns };
  }

  /** The namespace of the VMI's pod (masquerade binding), whether or not it exists. */
  podNetns(namespace: string, name: string): string {
    return podNetnsName(this.opts.netns, namespace, name);
  }

  /** Gratuitous ARPs for interface `iface` from the VMI's pod: the guest arrived here by a live migration. */
  async announce(vmi: VmiRef, iface: string): Promise<void> {
    const nic = this.nicOf(vmi, iface);
    if (nic) await announcePod(this.podNetns(vmi.metadata.namespace ?? '', vmi.metadata.name), nic.ip);
  }

  /** The VMI's QEMU is gone: its tap (or pod) and lease go too. */
  async release(namespace: string, name: string): Promise<void> {
    const tap = tapName(namespace, name);
    await removePod(this.opts.netns, this.opts.stateDir, this.podNetns(namespace, name));
    await removeTap(this.opts.netns, tap);
    await this.dnsmasq.removeHost(tap);
  }

  /** Removes taps, pods and leases of VMIs other than `keep` ("namespace/name"), e.g. after an agent restart. */
  async collect(keep: Iterable<string>): Promise<number> {
    const pairs = [...keep].map((k) => k.split('/'));
    const wanted = new Set(pairs.map(([ns, n]) => tapName(ns, n)));
    const wantedPods = new Set(pairs.map(([ns, n]) => this.podNetns(ns, n)));
    let removed = 0;
    for (const pod of await listPods(this.opts.netns)) {
      if (wantedPods.has(pod)) continue;
      await removePod(this.opts.netns, this.opts.stateDir, pod);
      removed++;
    }
    for (const t of new Set([...(await listTaps(this.opts.netns)), ...(await this.dnsmasq.hosts())])) {
      if (wanted.has(t)) continue;
      await removeTap(this.opts.netns, t);
      await this.dnsmasq.removeHost(t);
      removed++;
    }
    return removed;
  }
}

/** A state directory for the node's network under the agent's data directory. */
export const networkStateDir = (dataDir: string): string => join(dataDir, 'network');

/** `cidr` normalised when `ip` is one of its host addresses; undefined otherwise (a malformed or foreign allocation). */
function inRange(ip: string, cidr: string | undefined): string | undefined {
  const c = cidr === undefined ? undefined : parseCidr(cidr);
  const v = parseIPv4(ip);
  return c && v !== undefined && isHostOf(c, v) ? c.text : undefined;
}

const labels = (o: KubeObject) => (o.metadata.labels ?? {}) as Record<string, string>;
const annotations = (o: KubeObject) => (o.metadata.annotations ?? {}) as Record<string, string>;
