/**
 * `vsl-vx0`: VXLAN VNI 1 on UDP 4789 from the node's fabric address, a port of the VM bridge.
 * No learning: the agent keeps one all-zero FDB entry per other node (head-end replication for
 * broadcasts and unknown unicast), from the Node list.
 */
import { BRIDGE, VM_MTU } from './bridge.ts';
import { bridgeCmd, ip, linkDetails, type NetNs } from './exec.ts';

export const VXLAN = 'vsl-vx0';
export const VNI = 1;
export const VXLAN_PORT = 4789;
const ZERO_MAC = '00:00:00:00:00:00';

/** Creates (or re-creates, when its VNI, port or local address differ) the VXLAN device. */
export async function ensureVxlan(ns: NetNs, localIp: string, mtu = VM_MTU): Promise<void> {
  const d = await linkDetails(ns, VXLAN);
  const info = d?.linkinfo as { info_kind?: string; info_data?: { id?: number; port?: number; local?: string; learning?: boolean } } | undefined;
  const data = info?.info_data;
  const same = info?.info_kind === 'vxlan' && data?.id === VNI && data?.port === VXLAN_PORT && data?.local === localIp && data?.learning === false;
  if (d && !same) await ip(ns, ['link', 'del', VXLAN]);
  if (!d || !same) await ip(ns, ['link', 'add', VXLAN, 'type', 'vxlan', 'id', String(VNI), 'dstport', String(VXLAN_PORT), 'local', localIp, 'nolearning']);
  await ip(ns, ['link', 'set', VXLAN, 'mtu', String(mtu), 'master', BRIDGE, 'up']);
}

/** The peers (fabric IPs) the all-zero FDB entries point at now. */
export async function fdbPeers(ns: NetNs): Promise<string[]> {
  const r = await bridgeCmd(ns, ['-j', 'fdb', 'show', 'dev', VXLAN]);
  const entries = JSON.parse(r.stdout || '[]') as { mac: string; dst?: string }[];
  return entries.filter((e) => e.mac === ZERO_MAC && e.dst).map((e) => e.dst!);
}

/** Makes the all-zero entries exactly `peers`; returns what changed. */
export async function syncFdb(ns: NetNs, peers: readonly string[]): Promise<{ added: string[]; removed: string[] }> {
  const have = new Set(await fdbPeers(ns));
  const want = new Set(peers);
  const added = [...want].filter((p) => !have.has(p));
  const removed = [...have].filter((p) => !want.has(p));
  for (const p of added) await bridgeCmd(ns, ['fdb', 'append', ZERO_MAC, 'dev', VXLAN, 'dst', p]);
  for (const p of removed) await bridgeCmd(ns, ['fdb', 'del', ZERO_MAC, 'dev', VXLAN, 'dst', p]);
  return { added, removed };
}
