/**
 * IPv4 addresses and ranges as numbers, for the cluster network's IPAM and its validation
 * (docs/network.md). Canonical form only: no leading zeros, four decimal octets, as Kubernetes
 * requires for an IPAddress's name.
 */

/** The address as an unsigned 32-bit number, or undefined unless `s` is a canonical IPv4 address. */
export function parseIPv4(s: string): number | undefined {
  const m = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/.exec(s);
  if (!m) return undefined;
  const o = m.slice(1, 5).map(Number);
  if (o.some((x) => x > 255)) return undefined;
  return ((o[0] << 24) >>> 0) + (o[1] << 16) + (o[2] << 8) + o[3];
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** An IPv4 range: its network address, prefix length and size. */
export interface Cidr {
  /** The network address (host bits zero). */
  base: number;
  prefix: number;
  size: number;
  /** As given, normalised: "10.244.0.0/16". */
  text: string;
}

/** `a.b.c.d/n` with the host bits zero and a prefix of 8..30, or undefined. */
export function parseCidr(s: string): Cidr | undefined {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(s);
  if (!m) return undefined;
  const ip = parseIPv4(m[1]);
  const prefix = Number(m[2]);
  if (ip === undefined || prefix < 8 || prefix > 30) return undefined;
  const size = 2 ** (32 - prefix);
  if (ip % size !== 0) return undefined;
  return { base: ip, prefix, size, text: `${formatIPv4(ip)}/${prefix}` };
}
export const CIDR_PROBLEM = 'must be an IPv4 range such as 10.244.0.0/16: host bits zero, prefix length 8 to 30';

/** Whether `ip` is a host address of the range (not its network or broadcast address). */
export function isHostOf(cidr: Cidr, ip: number): boolean {
  return ip > cidr.base && ip < cidr.base + cidr.size - 1;
}

/**
 * The MAC of a VM NIC on the cluster network when the interface names none: `0a:58:` and the
 * four address bytes (OVN-Kubernetes' convention), locally administered and unique as the address is.
 */
export function macForIPv4(ip: number): string {
  return ['0a', '58', ...[ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/**
 * The first host address of `cidr` at or after `from` (wrapping around) that `taken` does not
 * hold, or undefined when the range is full. Allocators start from a rotating offset so that an
 * address just released is not handed out again at once.
 */
export function firstFree(cidr: Cidr, taken: (ip: number) => boolean, from: number = cidr.base + 1): number | undefined {
  const hosts = cidr.size - 2;
  const start = Math.min(Math.max(from - cidr.base - 1, 0), hosts - 1);
  for (let i = 0; i < hosts; i++) {
    const ip = cidr.base + 1 + ((start + i) % hosts);
    if (!taken(ip)) return ip;
  }
  return undefined;
}

/** The service range's default (`--service-cidr`), the range kubeadm clusters commonly use. */
export const DEFAULT_SERVICE_CIDR = '10.96.0.0/16';
/** Kubernetes' default --service-node-port-range. */
export const NODE_PORT_RANGE = { min: 30000, max: 32767 } as const;
