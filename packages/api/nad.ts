/**
 * NetworkAttachmentDefinitions (k8s.cni.cncf.io/v1, Multus) as both sides read them: the CNI
 * config in `spec.config` parsed into what Vessel builds (the `bridge` plugin: a Linux bridge on
 * the node, an optional VLAN, MTU and static addresses), and a VM network's `networkName`
 * resolved to a namespace/name. The API server refuses what the agent could not build, with the
 * same words.
 */
import { parseIPv4 } from './ip.ts';

/** The one CNI plugin Vessel builds. */
export const SUPPORTED_TYPES = ['bridge'] as const;
/** IPAM plugins: none (`{}` or absent) or `static`. */
export const SUPPORTED_IPAM = ['static'] as const;
/** The CNI bridge plugin's default bridge name. */
export const DEFAULT_BRIDGE = 'cni0';

export interface BridgeConfig {
  cniVersion: string;
  /** The CNI network name (informational). */
  name?: string;
  /** The node's Linux bridge. */
  bridge: string;
  /** 0: untagged. */
  vlan: number;
  mtu?: number;
  /** Static IPv4 addresses with their prefix (`10.1.0.5/24`), for the guest. */
  addresses: string[];
}

export type ParseResult = { config: BridgeConfig; problem?: undefined } | { config?: undefined; problem: string };

const IFNAME = /^[^\s/:]{1,15}$/;
/**
 * The node's own devices a NAD may not name: the cluster network's bridge and VXLAN (a NIC there
 * would bypass IPAM and NetworkPolicy), loopback, and the agent's generated link names.
 */
const RESERVED = /^(vsl-br0|vsl-vx0|lo|vs[a-z][0-9a-f]{11})$/;

/** Whether `s` is an IPv4 address with a prefix length (1-32), e.g. 10.1.0.5/24. */
export function isIPv4Cidr(s: string): boolean {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(s);
  return !!m && parseIPv4(m[1]) !== undefined && Number(m[2]) >= 1 && Number(m[2]) <= 32 && String(Number(m[2])) === m[2];
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Parses a NAD's `spec.config`; `problem` says what is wrong in one sentence. */
export function parseConfig(text: unknown): ParseResult {
  if (typeof text !== 'string' || text.trim() === '') return { problem: 'must be a CNI configuration as a JSON string' };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return { problem: `must be valid JSON: ${(e as Error).message}` };
  }
  if (!isObj(doc)) return { problem: 'must be a JSON object (a CNI configuration or configuration list)' };
  if (typeof doc.cniVersion !== 'string' || doc.cniVersion === '') return { problem: 'cniVersion must be a string, e.g. "0.3.1"' };
  const name = typeof doc.name === 'string' ? doc.name : undefined;
  let plugin: Record<string, unknown>;
  if (doc.plugins !== undefined) {
    if (!Array.isArray(doc.plugins) || doc.plugins.length === 0 || !isObj(doc.plugins[0]))
      return { problem: 'plugins must be a non-empty list of plugin objects' };
    plugin = doc.plugins[0];
    if (plugin.type !== 'bridge') return { problem: `the first plugin of plugins must be of type bridge, not ${JSON.stringify(plugin.type)}` };
  } else if (doc.type !== undefined) {
    plugin = doc;
  } else {
    return { problem: 'must have a plugin type (e.g. "type": "bridge") or a plugins list' };
  }
  if (typeof plugin.type !== 'string' || !(SUPPORTED_TYPES as readonly string[]).includes(plugin.type))
    return { problem: `type ${JSON.stringify(plugin.type)} is not supported: supported types are ${SUPPORTED_TYPES.join(', ')}` };
  const bridge = plugin.bridge ?? DEFAULT_BRIDGE;
  if (typeof bridge !== 'string' || !IFNAME.test(bridge) || bridge === '.' || bridge === '..')
    return { problem: `bridge ${JSON.stringify(bridge)} is not a valid Linux interface name: 1 to 15 characters, no '/', ':' or whitespace` };
  if (RESERVED.test(bridge))
    return { problem: `bridge ${JSON.stringify(bridge)} is one of Vessel's own devices (the cluster network, loopback or the agent's links)` };
  const vlan = plugin.vlan ?? 0;
  if (typeof vlan !== 'number' || !Number.isInteger(vlan) || vlan < 0 || vlan > 4094)
    return { problem: `vlan must be an integer from 0 to 4094 (0: untagged), not ${JSON.stringify(vlan)}` };
  const mtu = plugin.mtu;
  if (mtu !== undefined && (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < 576 || mtu > 9000))
    return { problem: `mtu must be an integer from 576 to 9000, not ${JSON.stringify(mtu)}` };
  const addresses: string[] = [];
  const ipam = plugin.ipam;
  if (ipam !== undefined && !isObj(ipam)) return { problem: 'ipam must be an object' };
  if (ipam && ipam.type !== undefined) {
    if (!(SUPPORTED_IPAM as readonly unknown[]).includes(ipam.type))
      return { problem: `ipam type ${JSON.stringify(ipam.type)} is not supported: use static, or no ipam ({}) and let the guest configure its address` };
    if (!Array.isArray(ipam.addresses) || ipam.addresses.length === 0) return { problem: 'ipam static needs addresses: [{"address": "10.1.0.5/24"}]' };
    for (const [i, a] of ipam.addresses.entries()) {
      const address = isObj(a) ? a.address : undefined;
      if (typeof address !== 'string' || !isIPv4Cidr(address))
        return { problem: `ipam addresses[${i}].address must be an IPv4 address with its prefix length, e.g. 10.1.0.5/24, not ${JSON.stringify(address)}` };
      addresses.push(address);
    }
  } else if (ipam && Object.keys(ipam).length > 0) {
    return { problem: 'ipam must be {} or have a type (static)' };
  }
  return { config: { cniVersion: doc.cniVersion, name, bridge, vlan, mtu: mtu as number | undefined, addresses } };
}

/** KubeVirt's rule for `multus.networkName`: `name` (the VM's namespace) or `namespace/name`. */
export function nadRef(vmNamespace: string, networkName: string): { namespace: string; name: string } {
  const i = networkName.indexOf('/');
  return i < 0 ? { namespace: vmNamespace, name: networkName } : { namespace: networkName.slice(0, i), name: networkName.slice(i + 1) };
}
