/**
 * KubeVirt's `masquerade` binding on the cluster network: each such VM gets a "pod", a network
 * namespace of its own, as KubeVirt's virt-launcher pod. A veth joins it to the node: the node
 * end (named like a tap, so NetworkPolicy's rules on vsl-br0 match it) is a port of vsl-br0, the
 * pod end `eth0` holds the VM's cluster IP and MAC. Inside, the bridge `k6t-eth0` (10.0.2.1/24)
 * carries QEMU's tap `tap0`; the guest gets 10.0.2.2 from a small dnsmasq, nftables DNATs what
 * arrives for the cluster IP to it and masquerades what it sends (KubeVirt's addresses and rules).
 * Named from the VMI's namespace/name, so a restarted agent finds it again.
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseIPv4 } from '@vessel/api';
import { addBridgePort, VM_MTU } from './bridge.ts';
import { deleteNetns } from './devcluster.ts';
import { alive, cmdline } from './dnsmasq.ts';
import { NetworkError } from './errors.ts';
import { bridgeCmd, checkNetns, inNs, ip, linkDetails, type NetNs } from './exec.ts';
import { ensureTap, tapName } from './taps.ts';

/** KubeVirt's masquerade addresses: the guest, and the pod's bridge (its gateway). */
export const GUEST_IP = '10.0.2.2';
export const POD_GATEWAY = '10.0.2.1';
export const POD_PREFIX = 24;
export const POD_BRIDGE = 'k6t-eth0';
/** QEMU's tap inside the pod, and the pod's end of the veth. */
export const POD_TAP = 'tap0';
export const POD_IFACE = 'eth0';
export const MASQ_TABLE = 'vessel-masq';

/** A port KubeVirt's masquerade forwards (`spec.domain.devices.interfaces[].ports[]`). */
export interface MasqPort {
  port: number;
  protocol?: string;
}

const HEX_LEN = 11;
const podPrefix = (nodeNetns: NetNs) => (nodeNetns === undefined ? 'vsl-pod-' : `${checkNetns(nodeNetns)}-p`);

/**
 * The pod's namespace: `<node netns>-p<hex>` in the dev cluster (its destroy sweeps them),
 * `vsl-pod-<hex>` on a real host; hex is the tap name's (sha256 of namespace/name).
 */
export function podNetnsName(nodeNetns: NetNs, namespace: string, name: string): string {
  return checkNetns(podPrefix(nodeNetns) + tapName(namespace, name).slice(3));
}

/** The node-side veth of a pod namespace (the VMI's tap name). */
const vethOf = (nodeNetns: NetNs, podNetns: string) => 'vsl' + podNetns.slice(podPrefix(nodeNetns).length);

/** The pod's nftables table (pure): DNAT of the cluster IP to the guest (all ports, or exactly `ports`), SNAT of the guest's traffic. */
export function masqRuleset(clusterIp: string, ports?: readonly MasqPort[]): string {
  if (parseIPv4(clusterIp) === undefined) throw new NetworkError('InvalidArgument', `bad cluster IP ${JSON.stringify(clusterIp)}`);
  const match = `iifname "${POD_IFACE}" ip daddr ${clusterIp}`;
  const dnat = ports?.length
    ? ports.map((p, i) => {
        const proto = (p.protocol ?? 'TCP').toUpperCase();
        if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535 || (proto !== 'TCP' && proto !== 'UDP'))
          throw new NetworkError('InvalidArgument', `ports[${i}]: ${JSON.stringify(p)}: a port 1-65535, protocol TCP or UDP`);
        return `    ${match} ${proto.toLowerCase()} dport ${p.port} dnat to ${GUEST_IP}`;
      })
    : [`    ${match} dnat to ${GUEST_IP}`];
  return [
    `table ip ${MASQ_TABLE}`,
    `delete table ip ${MASQ_TABLE}`,
    `table ip ${MASQ_TABLE} {`,
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    ...dnat,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${GUEST_IP} oifname "${POD_IFACE}" snat to ${clusterIp}`,
    '  }',
    '}',
    '',
  ].join('\n');
}

export interface PodDhcp {
  mac: string;
  /** The DNS server the guest gets: the node's gateway on the VM network. */
  dns: string;
  /** The VMI's namespace: first of the search domains, as Kubernetes does. */
  namespace: string;
  hostname?: string;
  mtu?: number;
}

/** The pod's dnsmasq arguments (DHCP only, one static lease, on k6t-eth0). Pure apart from `dir`. */
export function podDnsmasqArgs(d: PodDhcp, dir: string): string[] {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(d.mac) || parseIPv4(d.dns) === undefined || !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(d.namespace))
    throw new NetworkError(
      'InvalidArgument',
      `pod dnsmasq: bad MAC ${JSON.stringify(d.mac)}, DNS ${JSON.stringify(d.dns)} or namespace ${JSON.stringify(d.namespace)}`,
    );
  const hostname = d.hostname && /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(d.hostname) ? d.hostname : undefined;
  return [
    '--conf-file=/dev/null',
    '--no-hosts',
    '--port=0', // no DNS here: the guest asks the node's dnsmasq (cluster.local names)
    `--interface=${POD_BRIDGE}`,
    '--except-interface=lo',
    '--bind-dynamic',
    `--dhcp-range=${GUEST_IP},static,255.255.255.0,infinite`,
    `--dhcp-host=${[d.mac, GUEST_IP, ...(hostname ? [hostname] : []), 'infinite'].join(',')}`,
    '--dhcp-authoritative',
    `--dhcp-option=option:router,${POD_GATEWAY}`,
    `--dhcp-option=option:dns-server,${d.dns}`,
    `--dhcp-option=option:mtu,${d.mtu ?? VM_MTU}`,
    `--dhcp-option=option:domain-search,${d.namespace}.svc.cluster.local,svc.cluster.local,cluster.local`,
    '--leasefile-ro',
    `--pid-file=${join(dir, 'dnsmasq.pid')}`,
    `--log-facility=${join(dir, 'dnsmasq.log')}`,
    '--log-dhcp',
    '--user=root', // its state is in the agent's private directory
  ];
}

export interface PodSpec extends PodDhcp {
  /** The VM's cluster IP and the VM network's prefix length. */
  ip: string;
  prefix: number;
  multiQueue?: boolean;
  ports?: readonly MasqPort[];
}

/** The pod's state directory (dnsmasq's pid file and log) under the node's network state directory. */
export const podStateDir = (stateDir: string, podNetns: string): string => join(stateDir, 'pods', podNetns);

/** Makes (or brings up to date) the VMI's pod; returns its namespace, where QEMU opens `tap0`. */
export async function ensurePod(nodeNetns: NetNs, stateDir: string, namespace: string, name: string, p: PodSpec): Promise<string> {
  const pod = podNetnsName(nodeNetns, namespace, name);
  const veth = tapName(namespace, name);
  const args = podDnsmasqArgs(p, podStateDir(stateDir, pod));
  const rules = masqRuleset(p.ip, p.ports);
  const have = await ip(undefined, ['netns', 'list']);
  if (!have.stdout.split('\n').some((l) => l.split(' ')[0] === pod)) await ip(undefined, ['netns', 'add', pod]);
  await ip(pod, ['link', 'set', 'lo', 'up']);
  // A tap of the same name (the VM used the bridge binding before) or a half-made pair: made again.
  const kind = ((await linkDetails(nodeNetns, veth))?.linkinfo as { info_kind?: string } | undefined)?.info_kind;
  if (kind !== 'veth' || !(await linkDetails(pod, POD_IFACE))) {
    await ip(nodeNetns, ['link', 'del', veth], { okCodes: [1, 255] });
    await ip(pod, ['link', 'del', POD_IFACE], { okCodes: [1, 255] });
    await ip(nodeNetns, ['link', 'add', veth, 'type', 'veth', 'peer', 'name', POD_IFACE, 'netns', pod]);
  }
  await addBridgePort(nodeNetns, veth);
  // The VM's MAC may still be learnt on the VXLAN port (it ran on another node a moment ago) and
  // the pod sends nothing before it is asked: tell the bridge where the MAC is now.
  await bridgeCmd(nodeNetns, ['fdb', 'replace', p.mac, 'dev', veth, 'master', 'static']);
  await ip(pod, ['link', 'set', POD_IFACE, 'address', p.mac, 'mtu', String(VM_MTU), 'up']);
  await ip(pod, ['addr', 'flush', 'dev', POD_IFACE]);
  await ip(pod, ['addr', 'add', `${p.ip}/${p.prefix}`, 'dev', POD_IFACE]);
  await ip(pod, ['route', 'replace', 'default', 'via', p.dns, 'dev', POD_IFACE]);
  if (!(await linkDetails(pod, POD_BRIDGE))) await ip(pod, ['link', 'add', POD_BRIDGE, 'type', 'bridge']);
  await ip(pod, ['link', 'set', POD_BRIDGE, 'mtu', String(VM_MTU), 'up']);
  await ip(pod, ['addr', 'replace', `${POD_GATEWAY}/${POD_PREFIX}`, 'dev', POD_BRIDGE]);
  await ensureTap(pod, POD_TAP, { multiQueue: p.multiQueue, bridge: POD_BRIDGE });
  await inNs(pod, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
  await inNs(pod, ['nft', '-f', '-'], { input: rules });
  await ensurePodDnsmasq(pod, podStateDir(stateDir, pod), args);
  return pod;
}

/**
 * After a live migration every bridge and VXLAN device of the VM network still has the pod's MAC
 * learnt towards the source node, and QEMU's own announce (RARP) stays inside the pod, behind the
 * NAT. Gratuitous ARP requests from the pod's `eth0` (iputils' `arping -U`, broadcast, so flooded
 * over VXLAN to every node) move them here at once; one a second, three in all, as QEMU's rounds.
 */
export async function announcePod(pod: string, ip: string): Promise<void> {
  if (!parseIPv4(ip)) throw new NetworkError('InvalidArgument', `not an IPv4 address: ${ip}`);
  await inNs(checkNetns(pod), ['arping', '-q', '-U', '-c', '3', '-I', POD_IFACE, ip], { timeoutMs: 10_000 });
}

/** Starts the pod's dnsmasq, or keeps the running one when its arguments are the same. */
async function ensurePodDnsmasq(pod: string, dir: string, args: string[]): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o750 });
  const pid = await podDnsmasqPid(dir);
  if (pid !== undefined) {
    if (JSON.stringify((await cmdline(pid))?.slice(1)) === JSON.stringify(args)) return;
    await stopPid(pid);
  }
  await inNs(pod, ['dnsmasq', ...args], { timeoutMs: 10_000 });
  if ((await podDnsmasqPid(dir)) === undefined)
    throw new NetworkError('DnsmasqFailed', `the pod dnsmasq of ${pod} wrote no pid file: see ${join(dir, 'dnsmasq.log')}`);
}

async function podDnsmasqPid(dir: string): Promise<number | undefined> {
  const file = join(dir, 'dnsmasq.pid');
  const pid = Number.parseInt((await readFile(file, 'utf8').catch(() => '')).trim(), 10);
  if (!Number.isSafeInteger(pid) || pid <= 1) return undefined;
  return (await cmdline(pid))?.includes(`--pid-file=${file}`) ? pid : undefined;
}

async function stopPid(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 250 && (await alive(pid)); i++) await new Promise((r) => setTimeout(r, 20));
}

/** Tears a pod down: its dnsmasq, the namespace (and with it both veth ends), its state. Idempotent. */
export async function removePod(nodeNetns: NetNs, stateDir: string, pod: string): Promise<void> {
  const dir = podStateDir(stateDir, checkNetns(pod));
  const pid = await podDnsmasqPid(dir);
  if (pid !== undefined) await stopPid(pid);
  // Anything else still inside (a QEMU that outlived its stop) would keep the namespace alive.
  await deleteNetns(pod);
  await ip(nodeNetns, ['link', 'del', vethOf(nodeNetns, pod)], { okCodes: [1, 255] });
  await rm(dir, { recursive: true, force: true });
}

/** The pod namespaces of this node's agent (for collecting those of VMs that are gone). */
export async function listPods(nodeNetns: NetNs): Promise<string[]> {
  const prefix = podPrefix(nodeNetns);
  const r = await ip(undefined, ['netns', 'list']);
  return r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith(prefix) && new RegExp(`^[0-9a-f]{${HEX_LEN}}$`).test(n.slice(prefix.length)));
}
