/**
 * One persistent tap per VM NIC on the cluster network, made by the agent (QEMU then only opens
 * it: `script=no`), a port of the VM bridge with its MTU. Named from the VMI's namespace/name so
 * an agent restart finds it again; removed when the VM stops.
 */
import { createHash } from 'node:crypto';
import { VM_MTU, addBridgePort } from './bridge.ts';
import { ip, linkDetails, type NetNs } from './exec.ts';

export const TAP_PREFIX = 'vsl';

/** `vsl` + 11 hex digits of the VMI's namespace/name: 14 characters, under IFNAMSIZ. */
export function tapName(namespace: string, name: string): string {
  return TAP_PREFIX + createHash('sha256').update(`${namespace}/${name}`).digest('hex').slice(0, 11);
}

export const isTapName = (n: string): boolean => /^vsl[0-9a-f]{11}$/.test(n);

/** Creates the tap (with multi_queue when QEMU opens several queues), a port of the bridge (`bridge`, default vsl-br0; there in hairpin mode, see addBridgePort), up. */
export async function ensureTap(ns: NetNs, name: string, opts: { multiQueue?: boolean; mtu?: number; bridge?: string } = {}): Promise<void> {
  const d = await linkDetails(ns, name);
  const mq = (d?.linkinfo as { info_data?: { multi_queue?: boolean } } | undefined)?.info_data?.multi_queue === true;
  const tun = (d?.linkinfo as { info_kind?: string } | undefined)?.info_kind === 'tun';
  // The kernel refuses a queue mode other than the tap was made with, and a veth of the same
  // name (the VM used masquerade before) is no tap: made again then.
  const stale = !!d && (!tun || mq !== !!opts.multiQueue);
  if (stale) await ip(ns, ['link', 'del', name]);
  if (!d || stale) await ip(ns, ['tuntap', 'add', 'dev', name, 'mode', 'tap', ...(opts.multiQueue ? ['multi_queue'] : [])]);
  await addBridgePort(ns, name, opts.mtu ?? VM_MTU, opts.bridge);
}

export async function removeTap(ns: NetNs, name: string): Promise<void> {
  await ip(ns, ['link', 'del', name], { okCodes: [1, 255] });
}

/** The agent's taps in `ns` (for collecting those of VMs that are gone). */
export async function listTaps(ns: NetNs): Promise<string[]> {
  const r = await ip(ns, ['-j', 'link', 'show', 'type', 'tun']);
  return (JSON.parse(r.stdout || '[]') as { ifname: string }[]).map((l) => l.ifname).filter(isTapName);
}
