/**
 * Secondary networks (docs/network.md, "Secondary networks"): a VM NIC on a Multus
 * NetworkAttachmentDefinition of type `bridge` is a port of the NAD's Linux bridge in the node's
 * namespace, made when missing (as the CNI bridge plugin does; `vlan_filtering` when a VLAN is
 * used), with the VLAN as its untagged PVID and the config's MTU. Where QEMU runs in the node's
 * namespace the port is the tap QEMU opens; where it runs in a namespace of its own (a VM's
 * "pod"), the port is a veth whose other end sits in that namespace on a small bridge with the
 * tap (KubeVirt's bridge binding in a pod). Names come from sha256(namespace/name/iface), and
 * every link carries an alias naming its VMI's hash, so release and collect find them again
 * after an agent restart. No DHCP: the guest configures its address (docs).
 */
import { createHash } from 'node:crypto';
import { nad, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import { Controller, type Informer, type Log } from '@vessel/runtime';
import { NetworkError } from './errors.ts';
import { bridgeCmd, ip, linkDetails, type NetNs } from './exec.ts';
import { ensureTap } from './taps.ts';

/** The links of one NIC: `port` on the NAD's bridge; in a pod, `veth` (the port's peer), `bridge` and `tap`. */
export interface SecondaryNames {
  port: string;
  veth: string;
  bridge: string;
  tap: string;
}

const hex = (s: string, n: number): string => createHash('sha256').update(s).digest('hex').slice(0, n);

/** 3-letter prefix + 11 hex digits of sha256(namespace/name/iface): 14 characters, under IFNAMSIZ. */
export function secondaryNames(namespace: string, name: string, iface: string): SecondaryNames {
  const h = hex(`${namespace}/${name}/${iface}`, 11);
  return { port: `vsn${h}`, veth: `vsv${h}`, bridge: `vsk${h}`, tap: `vst${h}` };
}

const ALIAS_PREFIX = 'vessel-nad:';
/** The alias every link of a VMI's secondary NICs carries: its namespace/name hashed (an alias is short). */
export const secondaryAlias = (namespace: string, name: string): string => ALIAS_PREFIX + hex(`${namespace}/${name}`, 16);

/** A NIC ready for QEMU: the tap it opens (in QEMU's namespace). */
export interface SecondaryNic {
  iface: string;
  tap: string;
  /** The NAD's static addresses (CIDRs), for the guest to configure. */
  addresses: string[];
}

/** The NAD's bridge in `ns`: made when missing, with VLAN filtering when a VLAN is used; up. */
export async function ensureNadBridge(ns: NetNs, config: nad.BridgeConfig): Promise<void> {
  const d = await linkDetails(ns, config.bridge);
  const info = d?.linkinfo as { info_kind?: string; info_data?: { vlan_filtering?: number } } | undefined;
  if (d && info?.info_kind !== 'bridge')
    throw new NetworkError('InvalidArgument', `${config.bridge} exists but is a ${info?.info_kind ?? 'plain'} device, not a bridge`);
  if (!d) await ip(ns, ['link', 'add', config.bridge, ...(config.mtu ? ['mtu', String(config.mtu)] : []), 'type', 'bridge']);
  if (config.vlan && info?.info_data?.vlan_filtering !== 1)
    await ip(ns, ['link', 'set', config.bridge, 'type', 'bridge', 'vlan_filtering', '1']).catch((e: unknown) => {
      // Kernels built without CONFIG_BRIDGE_VLAN_FILTERING answer EOPNOTSUPP.
      if (e instanceof NetworkError && /not supported/i.test(e.message))
        throw new NetworkError('Unsupported', `bridge ${config.bridge}: vlan ${config.vlan} needs bridge VLAN filtering, which this node's kernel lacks`, {
          cause: e,
        });
      throw e;
    });
  await ip(ns, ['link', 'set', config.bridge, 'up']);
}

/** Whether the kernel of `ns` can filter VLANs on a bridge (probed on a throwaway bridge). */
export async function vlanFilteringSupported(ns: NetNs): Promise<boolean> {
  const probe = `vsq${hex(String(process.pid), 11)}`;
  const r = await ip(ns, ['link', 'add', probe, 'type', 'bridge', 'vlan_filtering', '1'], { okCodes: [1, 2, 255] });
  if (r.code === 0) await ip(ns, ['link', 'del', probe]);
  return r.code === 0;
}

/** The port's VLAN: the VID as PVID, untagged, instead of the default VLAN 1. */
async function setPortVlan(ns: NetNs, port: string, vlan: number): Promise<void> {
  if (!vlan) return;
  await bridgeCmd(ns, ['vlan', 'del', 'vid', '1', 'dev', port], { okCodes: [1, 2, 255] });
  await bridgeCmd(ns, ['vlan', 'add', 'vid', String(vlan), 'dev', port, 'pvid', 'untagged']);
}

export interface AttachOptions {
  /** The node's namespace, where the NAD's bridge is (undefined: the agent's own). */
  nodeNetns: NetNs;
  /** Where QEMU runs: the node's namespace (→ a tap on the bridge) or a pod's (→ veth + in-pod bridge + tap). */
  qemuNetns: NetNs;
  vmi: { namespace: string; name: string };
  iface: string;
  config: nad.BridgeConfig;
  multiQueue?: boolean;
}

/** Readies a secondary NIC for QEMU (idempotent: a restarted start finds what is there). */
export async function attachSecondary(o: AttachOptions): Promise<SecondaryNic> {
  const n = secondaryNames(o.vmi.namespace, o.vmi.name, o.iface);
  const alias = secondaryAlias(o.vmi.namespace, o.vmi.name);
  const mtu = String(o.config.mtu ?? 1500);
  await ensureNadBridge(o.nodeNetns, o.config);
  const out = { iface: o.iface, addresses: o.config.addresses };
  if (o.qemuNetns === o.nodeNetns) {
    await ensureTap(o.nodeNetns, n.port, { multiQueue: o.multiQueue, mtu: Number(mtu), bridge: o.config.bridge });
    await ip(o.nodeNetns, ['link', 'set', n.port, 'alias', alias]);
    await setPortVlan(o.nodeNetns, n.port, o.config.vlan);
    return { ...out, tap: n.port };
  }
  // A veth across: its node end is the bridge port, its pod end a port of the in-pod bridge.
  const port = await linkDetails(o.nodeNetns, n.port);
  const veth = await linkDetails(o.qemuNetns, n.veth);
  if (!port || !veth) {
    if (port) await ip(o.nodeNetns, ['link', 'del', n.port]);
    if (veth) await ip(o.qemuNetns, ['link', 'del', n.veth]);
    const target = o.qemuNetns === undefined ? ['netns', '1'] : ['netns', o.qemuNetns];
    await ip(o.nodeNetns, ['link', 'add', n.port, 'type', 'veth', 'peer', 'name', n.veth, ...target]);
  }
  await ip(o.nodeNetns, ['link', 'set', n.port, 'mtu', mtu, 'master', o.config.bridge, 'alias', alias, 'up']);
  await setPortVlan(o.nodeNetns, n.port, o.config.vlan);
  if (!(await linkDetails(o.qemuNetns, n.bridge))) await ip(o.qemuNetns, ['link', 'add', n.bridge, 'type', 'bridge']);
  await ip(o.qemuNetns, ['link', 'set', n.bridge, 'mtu', mtu, 'alias', alias, 'up']);
  await ip(o.qemuNetns, ['link', 'set', n.veth, 'mtu', mtu, 'master', n.bridge, 'alias', alias, 'up']);
  await ensureTap(o.qemuNetns, n.tap, { multiQueue: o.multiQueue, mtu: Number(mtu), bridge: n.bridge });
  await ip(o.qemuNetns, ['link', 'set', n.tap, 'alias', alias]);
  return { ...out, tap: n.tap };
}

/** Links in `ns` that carry a secondary alias, by alias. */
async function aliased(ns: NetNs): Promise<{ ifname: string; alias: string }[]> {
  const r = await ip(ns, ['-j', 'link', 'show']);
  return (JSON.parse(r.stdout || '[]') as { ifname: string; ifalias?: string }[])
    .filter((l) => l.ifalias?.startsWith(ALIAS_PREFIX))
    .map((l) => ({ ifname: l.ifname, alias: l.ifalias! }));
}

async function removeLinks(ns: NetNs, keep: (alias: string) => boolean): Promise<number> {
  let removed = 0;
  for (const l of await aliased(ns)) {
    if (keep(l.alias)) continue;
    // A veth's peer goes with it: "not found" then is fine.
    await ip(ns, ['link', 'del', l.ifname], { okCodes: [1, 2, 255] });
    removed++;
  }
  return removed;
}

/** The VMI's QEMU is gone: its secondary links go too (in the node's namespace and, if another, QEMU's). */
export async function releaseSecondary(nodeNetns: NetNs, namespace: string, name: string, qemuNetns: NetNs = nodeNetns): Promise<void> {
  const alias = secondaryAlias(namespace, name);
  await removeLinks(nodeNetns, (a) => a !== alias);
  if (qemuNetns !== nodeNetns) await removeLinks(qemuNetns, (a) => a !== alias);
}

/** Removes secondary links in `ns` of VMIs other than `keep` ("namespace/name"); returns how many. */
export async function collectSecondary(ns: NetNs, keep: Iterable<string>): Promise<number> {
  const wanted = new Set(
    [...keep].map((k) => {
      const [kns, kn] = k.split('/');
      return secondaryAlias(kns, kn);
    }),
  );
  return removeLinks(ns, (a) => wanted.has(a));
}

export interface SecondaryNetworksOptions {
  /** The node's namespace (dev cluster); undefined: the agent's own. */
  netns?: string;
  log?: Log;
}

/**
 * The agent's view of NetworkAttachmentDefinitions: looks up a VM network's NAD and tells the
 * runtime when one appears or changes, so a VM waiting for it starts. A changed NAD takes effect
 * at a VM's next start; a deleted one changes nothing that runs.
 */
export class SecondaryNetworks extends Controller {
  private readonly nads: Informer;
  private readonly listeners: ((nadKey: string) => void)[] = [];

  constructor(
    client: Client,
    private readonly opts: SecondaryNetworksOptions,
  ) {
    super('secondary-networks', client, opts.log, 1);
    this.nads = this.inform(refs.NETWORK_ATTACHMENT_DEFINITIONS, (o) => {
      for (const l of this.listeners) l(`${o.metadata.namespace}/${o.metadata.name}`);
      return [];
    });
  }

  get netns(): NetNs {
    return this.opts.netns;
  }

  /** Called with "namespace/name" of a NAD that appeared or changed. */
  onChange(listener: (nadKey: string) => void): void {
    this.listeners.push(listener);
  }

  protected async reconcile(): Promise<void> {}

  /** The NAD a VM network names, parsed; NetworkError NetworkNotFound / NetworkInvalid saying which and why. */
  lookup(vmNamespace: string, network: string, networkName: string): nad.BridgeConfig {
    const ref = nad.nadRef(vmNamespace, networkName);
    // A NAD decides which node bridge a VM joins: only its own namespace's (no Multus global namespaces).
    if (ref.namespace !== vmNamespace)
      throw new NetworkError(
        'NetworkInvalid',
        `network ${network}: NetworkAttachmentDefinition ${ref.namespace}/${ref.name} is in another namespace; a VM may use only the NADs of its own namespace (${vmNamespace})`,
      );
    const o = this.nads.get(`${ref.namespace}/${ref.name}`);
    if (!o)
      throw new NetworkError(
        'NetworkNotFound',
        `network ${network}: NetworkAttachmentDefinition ${ref.namespace}/${ref.name} does not exist (it starts once it does)`,
      );
    const r = nad.parseConfig((o.spec as { config?: unknown } | undefined)?.config);
    if (!r.config)
      throw new NetworkError('NetworkInvalid', `network ${network}: NetworkAttachmentDefinition ${ref.namespace}/${ref.name}: spec.config ${r.problem}`);
    return r.config;
  }

  /** Looks the NAD up and readies the NIC (see attachSecondary). */
  async attach(
    vmi: { namespace: string; name: string },
    iface: string,
    networkName: string,
    opts: { multiQueue?: boolean; qemuNetns?: NetNs } = {},
  ): Promise<SecondaryNic> {
    const config = this.lookup(vmi.namespace, iface, networkName);
    const qemuNetns = 'qemuNetns' in opts ? opts.qemuNetns : this.opts.netns;
    return attachSecondary({ nodeNetns: this.opts.netns, qemuNetns, vmi, iface, config, multiQueue: opts.multiQueue });
  }

  /** The static addresses a NIC's NAD gives, for status.interfaces (nothing when unknown or none). */
  addressesOf(vmNamespace: string, networkName: string): string[] {
    try {
      return this.lookup(vmNamespace, '', networkName).addresses;
    } catch {
      return [];
    }
  }

  release(namespace: string, name: string, qemuNetns?: NetNs): Promise<void> {
    return releaseSecondary(this.opts.netns, namespace, name, qemuNetns ?? this.opts.netns);
  }

  collect(keep: Iterable<string>): Promise<number> {
    return collectSecondary(this.opts.netns, keep);
  }
}
