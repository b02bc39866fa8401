/** IPv4 address arithmetic for the VM network (pure). */

const IP_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function parseIp(ip: string): number | undefined {
  const m = IP_RE.exec(ip);
  if (!m) return undefined;
  const o = m.slice(1).map(Number);
  if (o.some((x) => x > 255)) return undefined;
  return o.reduce((a, x) => a * 256 + x, 0);
}

export const formatIp = (v: number): string => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');

export interface Cidr { network: string; prefix: number; netmask: string }

/** `10.244.0.0/16` → its network, prefix and netmask; undefined when malformed. */
export function parseCidr(cidr: string): Cidr | undefined {
  const [addr, len, ...rest] = cidr.split('/');
  const v = parseIp(addr ?? '');
  const prefix = Number(len);
  if (rest.length || v === undefined || !/^\d{1,2}$/.test(len ?? '') || prefix < 1 || prefix > 30) return undefined;
  const size = 2 ** (32 - prefix);
  return { network: formatIp(Math.floor(v / size) * size), prefix, netmask: formatIp(2 ** 32 - size) };
}

/** Whether `ip` lies in `cidr`. */
export function inCidr(ip: string, cidr: string): boolean {
  const c = parseCidr(cidr);
  const v = parseIp(ip);
  if (!c || v === undefined) return false;
  const size = 2 ** (32 - c.prefix);
  return Math.floor(v / size) * size === parseIp(c.network);
}

/** The contract's default MAC of a VM NIC: `0a:58:` + the address's four bytes. */
export function macOfIp(ip: string): string {
  const v = parseIp(ip) ?? 0;
  return ['0a', '58', ...[v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}
