/**
 * Where the controller manager may connect on a tenant's behalf (DataImportCron polls, Forklift
 * URL hooks): never link-local, multicast or unspecified addresses, and neither loopback nor this
 * host's own addresses (the control plane's services) unless the administrator allows loopback
 * (labs and tests). IP literals are checked before connecting; names through `checkedLookup`.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';

/** This host's own addresses: services listening on them are the control plane's, not a registry's. */
function ownAddresses(): Set<string> {
  return new Set(
    Object.values(networkInterfaces())
      .flat()
      .map((i) => i?.address.toLowerCase())
      .filter((a): a is string => !!a),
  );
}

export function isLoopback(address: string): boolean {
  return /^127\./.test(address) || address === '::1' || /^::ffff:127\./i.test(address);
}

/** A loopback address and port the controllers may always reach: the read-only registry `vessel up` serves. */
export interface AllowedPair {
  address: string;
  port: number;
}

/** Whether `address`:`port` is one of `allowed` (loopback pairs only: nothing else can be let through this way). */
export function isAllowedPair(address: string, port: number, allowed: readonly AllowedPair[] | undefined): boolean {
  const a = address
    .replace(/^\[|\]$/g, '')
    .replace(/^::ffff:/i, '')
    .toLowerCase();
  return isLoopback(a) && !!allowed?.some((p) => p.port === port && p.address.replace(/^::ffff:/i, '').toLowerCase() === a);
}

/** Why the controllers may not connect to `address`, or undefined. */
export function pollRefusal(address: string, allowLoopback: boolean): string | undefined {
  const v4 = address.replace(/^::ffff:/i, '');
  if (isLoopback(address)) return allowLoopback ? undefined : 'a loopback address';
  if (!allowLoopback && ownAddresses().has(v4.toLowerCase())) return "an address of the control plane's host";
  if (isIP(v4) === 4) {
    const [a, b] = v4.split('.').map(Number);
    if (a === 0) return 'an unspecified address';
    if (a === 169 && b === 254) return 'a link-local address';
    if (a >= 224) return 'a multicast or reserved address';
    return undefined;
  }
  const lower = address.toLowerCase();
  if (lower === '::') return 'an unspecified address';
  if (/^fe[89ab]/.test(lower)) return 'a link-local address';
  if (/^ff/.test(lower)) return 'a multicast address';
  return undefined;
}

type LookupCb = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/** A `lookup` for http.request that refuses what pollRefusal refuses (IP literals are checked before the request). */
export function checkedLookup(allowLoopback: boolean) {
  return (hostname: string, options: { all?: boolean }, cb: LookupCb) => {
    dnsLookup(hostname, { all: true }, (err, addresses) => {
      if (err) return cb(err, []);
      const ok = addresses.filter((a) => !pollRefusal(a.address, allowLoopback));
      if (ok.length === 0) return cb(Object.assign(new Error(`${hostname} resolves only to refused addresses`), { code: 'EREFUSED' }), []);
      if (options.all) return cb(null, ok);
      cb(null, ok[0].address, ok[0].family);
    });
  };
}
