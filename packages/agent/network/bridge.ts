/** The node's VM bridge `vsl-br0`: MTU 1450 (VXLAN's 50 bytes under a 1500 fabric), the node's gateway address. */
import { NetworkError } from './errors.ts';
import { inNs, ip, linkDetails, type NetNs } from './exec.ts';

export const BRIDGE = 'vsl-br0';
export const VM_MTU = 1450;

/** Creates the bridge when missing, and sets its MTU and state (idempotent). */
export async function ensureBridge(ns: NetNs, mtu = VM_MTU): Promise<void> {
  const d = await linkDetails(ns, BRIDGE);
  const kind = (d?.linkinfo as { info_kind?: string } | undefined)?.info_kind;
  if (d && kind !== 'bridge')
    throw new NetworkError('InvalidArgument', `${BRIDGE} exists but is a ${kind ?? 'plain'} device, not a bridge: remove it (ip link del ${BRIDGE})`);
  if (!d) await ip(ns, ['link', 'add', BRIDGE, 'type', 'bridge']);
  await ip(ns, ['link', 'set', BRIDGE, 'mtu', String(mtu), 'up']);
  // Its MAC set once (setting it, even to the same value, pins it): otherwise a bridge takes the
  // lowest MAC of its ports, so a tap joining or leaving changes the gateway's MAC under the
  // guests' ARP caches, and their traffic through the gateway stalls until they ask again (a
  // 48 s stall of a TCP connection in the MariaDB scenario).
  const now = d ?? (await linkDetails(ns, BRIDGE));
  const mac = (now as { address?: string } | undefined)?.address;
  if (mac) await ip(ns, ['link', 'set', BRIDGE, 'address', mac]);
}

/**
 * Makes `port` a port of `bridge` (default the VM bridge), up; on the VM bridge in hairpin mode. Hairpin:
 * a VM's connection to a Service DNATed to that same VM must leave by the port it came in on.
 * Where br_netfilter calls the IP hooks for bridged frames (`bridge-nf-call-iptables`, on in
 * this machine's namespaces), the node's DNAT turns the frame into a bridged one towards the
 * client's own MAC, and a bridge never sends a frame back out its ingress port unless that port
 * is in hairpin mode (kubelet's hairpin-veth, the CNI bridge plugin's hairpinMode). The price:
 * the VM also sees its own broadcasts, which ARP, DHCP and IPv6's DAD (nonce) ignore.
 */
export async function addBridgePort(ns: NetNs, port: string, mtu = VM_MTU, bridge = BRIDGE): Promise<void> {
  await ip(ns, ['link', 'set', port, 'mtu', String(mtu), 'master', bridge, 'up']);
  if (bridge === BRIDGE) await ip(ns, ['link', 'set', port, 'type', 'bridge_slave', 'hairpin', 'on']);
}

/** Gives the bridge exactly `cidr` (the gateway, e.g. 10.244.0.1/16) as its IPv4 address. */
export async function setBridgeAddress(ns: NetNs, cidr: string): Promise<void> {
  const r = await ip(ns, ['-j', '-4', 'addr', 'show', 'dev', BRIDGE]);
  const have = ((JSON.parse(r.stdout) as { addr_info?: { local: string; prefixlen: number }[] }[])[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
  for (const a of have) if (a !== cidr) await ip(ns, ['addr', 'del', a, 'dev', BRIDGE]);
  if (!have.includes(cidr)) await ip(ns, ['addr', 'add', cidr, 'dev', BRIDGE]);
}

/** The node routes between the VM network and the fabric (egress, and later Services). */
export async function enableForwarding(ns: NetNs): Promise<void> {
  await inNs(ns, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
}
