/**
 * The importer's egress policy. http and registry DataVolume sources are URLs a tenant
 * chooses, fetched by the agent on the node: without a policy a tenant can read services that
 * listen only on the host's loopback, the cloud metadata service (169.254.169.254), the API
 * server, and scan ports by the errors they get. Every connection the importer makes goes
 * through connectChecked(), which resolves the name itself, refuses forbidden addresses,
 * connects to the checked address (no second resolution, so DNS rebinding cannot swap it)
 * and checks the connected socket's remote address again before any byte is sent. Redirects
 * open a new connection, so every hop is checked.
 *
 * Refused: loopback (127/8, ::1), link-local (169.254/16, fe80::/10), unspecified and
 * "this network" (0/8, ::), multicast and broadcast, those forms embedded in IPv6
 * (::ffff:a.b.c.d, ::a.b.c.d, 64:ff9b::a.b.c.d), every address of this node's interfaces, and
 * the API server's addresses. `allowLoopback` (vessel agent --allow-loopback-imports) lets
 * loopback through, for labs and tests; `allowed` lets exactly one loopback address and port
 * through (the read-only registry `vessel up` serves the tiny golden image from).
 *
 * Every refused or unreachable target fails with the same ImportError (code Unreachable, one
 * message): a closed port, a refused address, a name that does not resolve and a timeout
 * look alike, so the errors tell a tenant nothing about the host. The precise reason is kept
 * in the error's `cause` for the agent's log.
 */
import { lookup } from 'node:dns/promises';
import type http from 'node:http';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import tls from 'node:tls';
import { ImportError } from './errors.ts';

export interface EgressPolicy {
  /** Allow loopback sources (127.0.0.0/8, ::1). For labs and tests: a tenant could reach host-only services. */
  allowLoopback?: boolean;
  /**
   * Addresses never connected to, besides the built-in ranges: the API server's. With a port,
   * only that port of the address; without, the whole address.
   */
  denied?: readonly { address: string; port?: number }[];
  /**
   * Loopback address and port pairs always allowed, whatever allowLoopback says: the local
   * registry `vessel up` serves (packages/cli/local-registry.ts). Nothing but loopback can be
   * allowed this way, and only the port named.
   */
  allowed?: readonly { address: string; port: number }[];
}

/** Whether `address`:`port` is one of the policy's allowed loopback pairs. */
export function isAllowedPair(address: string, port: number | undefined, policy: EgressPolicy = DEFAULT_EGRESS): boolean {
  if (port === undefined || !policy.allowed?.length || !isLoopbackAddress(address)) return false;
  const b = ipBytes(address);
  if (!b) return false;
  return policy.allowed.some((a) => {
    const ab = ipBytes(a.address);
    return !!ab && a.port === port && canonical(ab) === canonical(b);
  });
}

/** The policy when none is given: nothing but the built-in refusals. */
export const DEFAULT_EGRESS: EgressPolicy = Object.freeze({});

/**
 * Why `address` (an IP literal) may not be connected to under `policy`, or undefined when it
 * may. `port` matters only for denied entries that name one.
 */
export function refusalReason(address: string, port: number | undefined, policy: EgressPolicy = DEFAULT_EGRESS): string | undefined {
  const bytes = ipBytes(address);
  if (!bytes) return `"${address}" is not an IP address`;
  const v4 = embeddedV4(bytes);
  const cls = v4 ? classifyV4(v4) : classifyV6(bytes);
  if (isAllowedPair(address, port, policy)) return undefined;
  if (cls === 'loopback' && !policy.allowLoopback) return 'a loopback address';
  if (cls !== undefined && cls !== 'loopback') return `a ${cls} address`;
  const key = canonical(bytes);
  for (const d of policy.denied ?? []) {
    const db = ipBytes(d.address);
    if (db && canonical(db) === key && (d.port === undefined || d.port === port))
      return d.port === undefined ? 'a denied address' : 'a denied address and port';
  }
  // The node's own addresses: a server bound to 0.0.0.0 answers on each of them. Loopback
  // addresses among them were decided above.
  if (cls !== 'loopback') {
    for (const list of Object.values(networkInterfaces())) {
      for (const i of list ?? []) {
        const ib = ipBytes(i.address.replace(/%.*$/, ''));
        if (ib && canonical(ib) === key) return "an address of this node's own interfaces";
      }
    }
  }
  return undefined;
}

export interface ConnectOptions {
  /** Host name or IP literal as in the URL (IPv6 with or without brackets). */
  host: string;
  port: number;
  /** TLS options (ca, rejectUnauthorized, ...) when the URL is https; servername is set from host. */
  tls?: tls.ConnectionOptions;
  policy?: EgressPolicy;
  /** How long resolving plus connecting (plus the TLS handshake) may take. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** What the error message names: the URL without credentials or query. */
  display: string;
}

/**
 * Resolves, checks, connects to a checked address and checks the connected socket: the
 * socket (TLS when asked) is returned only when its remote address is allowed. Throws
 * unreachable(display) for anything that keeps it from connecting; TLS failures after a
 * permitted connection come through as they are (the address was allowed, so they reveal
 * nothing about the host).
 */
export async function connectChecked(o: ConnectOptions): Promise<net.Socket> {
  const policy = o.policy ?? DEFAULT_EGRESS;
  const host = o.host.replace(/^\[|\]$/g, '');
  const deadline = Date.now() + o.timeoutMs;
  const fail = (why: string, cause?: unknown) => unreachable(o.display, new Error(why, { cause }));
  let candidates: string[];
  if (net.isIP(host)) {
    candidates = [host];
  } else {
    try {
      candidates = (await withTimeout(lookup(host, { all: true, verbatim: true }), deadline, o.signal)).map((a) => a.address);
    } catch (e) {
      throw fail(`cannot resolve ${host}`, e);
    }
  }
  const reasons = candidates.map((a) => refusalReason(a, o.port, policy));
  const allowed = candidates.filter((_, i) => reasons[i] === undefined);
  if (!allowed.length) throw fail(`${host} resolves only to refused addresses (${candidates.map((a, i) => `${a}: ${reasons[i]}`).join('; ') || 'none'})`);
  let last: unknown;
  let socket: net.Socket | undefined;
  for (const address of allowed) {
    if (o.signal?.aborted) throw o.signal.reason;
    const s = net.connect({ host: address, port: o.port });
    try {
      await withTimeout(once(s, 'connect'), deadline, o.signal);
      // The address connected to, as the kernel reports it: the last word on where bytes go.
      const remote = s.remoteAddress ?? '';
      const why = refusalReason(remote, s.remotePort, policy);
      if (why) throw new Error(`connected to ${remote}, ${why}`);
      socket = s;
      break;
    } catch (e) {
      s.destroy();
      if (o.signal?.aborted) throw o.signal.reason;
      last = e;
    }
  }
  if (!socket) throw fail(`no allowed address of ${host} could be connected to`, last);
  if (!o.tls) return socket;
  const secure = tls.connect({ ...o.tls, socket, host, ...(net.isIP(host) ? {} : { servername: host }) });
  try {
    await withTimeout(once(secure, 'secureConnect'), deadline, o.signal);
  } catch (e) {
    secure.destroy();
    if (o.signal?.aborted) throw o.signal.reason;
    if (e instanceof TimeoutError) throw fail('the TLS handshake timed out', e);
    throw e; // a certificate or protocol error of a permitted server: it tells nothing about the host
  }
  return secure;
}

/**
 * http(s).request options that open the connection through connectChecked: each request
 * gets its own checked connection (no pooled socket of another request is reused).
 */
export function checkedRequestOptions(url: URL, o: Omit<ConnectOptions, 'host' | 'port'>): Pick<http.RequestOptions, 'createConnection'> {
  const port = url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  const createConnection = (_opts: unknown, oncreate: (err: Error | null, socket?: net.Socket) => void): undefined => {
    connectChecked({ ...o, host: url.hostname, port }).then(
      (s) => {
        // http attaches its own handlers a tick later; until then an error must not crash the agent.
        s.on('error', () => undefined);
        oncreate(null, s);
      },
      (e: Error) => oncreate(e),
    );
    return undefined;
  };
  // No `agent`: node then opens each request's connection with createConnection (agent: false would not).
  return { createConnection: createConnection as unknown as http.RequestOptions['createConnection'] };
}

/** The one error for every target the importer does not reach. */
export function unreachable(display: string, cause?: unknown): ImportError {
  return new ImportError(
    'Unreachable',
    `cannot connect to ${display}: the host does not resolve, does not answer, or is an address the importer may not fetch from (loopback, link-local, this node's or the API server's addresses); check the URL and that the server is reachable from the node`,
    { cause },
  );
}

class TimeoutError extends Error {}

function once(emitter: net.Socket | tls.TLSSocket, event: 'connect' | 'secureConnect'): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => {
      emitter.off(event, onOk);
      reject(e);
    };
    const onOk = () => {
      emitter.off('error', onError);
      resolve();
    };
    emitter.once(event, onOk);
    emitter.once('error', onError);
  });
}

function withTimeout<T>(p: Promise<T>, deadline: number, signal: AbortSignal | undefined): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError('timed out')), Math.max(0, deadline - Date.now()));
    const onAbort = () => reject(signal!.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    });
  });
}

// ---------------------------------------------------------------------------------------
// Address arithmetic

/** The bytes of an IPv4 (4) or IPv6 (16) literal, or undefined. */
export function ipBytes(address: string): number[] | undefined {
  const a = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  const kind = net.isIP(a);
  if (kind === 4) return a.split('.').map(Number);
  if (kind !== 6) return undefined;
  let head = a,
    tail = '';
  const dbl = a.indexOf('::');
  if (dbl >= 0) {
    head = a.slice(0, dbl);
    tail = a.slice(dbl + 2);
  }
  const words = (s: string): number[] => {
    if (s === '') return [];
    const out: number[] = [];
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const v4 = part.split('.').map(Number);
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else out.push(parseInt(part, 16));
    }
    return out;
  };
  const h = words(head),
    t = words(tail);
  const all = dbl >= 0 ? [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t] : h;
  return all.flatMap((w) => [w >> 8, w & 0xff]);
}

/** The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64), or the IPv4 itself. */
function embeddedV4(b: number[]): number[] | undefined {
  if (b.length === 4) return b;
  const zeros = (from: number, to: number) => b.slice(from, to).every((x) => x === 0);
  if (zeros(0, 10) && b[10] === 0xff && b[11] === 0xff) return b.slice(12); // ::ffff:a.b.c.d
  // ::a.b.c.d (deprecated IPv4-compatible), but not :: and ::1 themselves.
  if (zeros(0, 12) && !(zeros(12, 15) && b[15] <= 1)) return b.slice(12);
  // 64:ff9b::/96, the NAT64 prefix: a translator would connect to the embedded address.
  if (b[0] === 0 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && zeros(4, 12)) return b.slice(12);
  return undefined;
}

type AddressClass = 'loopback' | 'link-local' | 'unspecified' | 'multicast' | 'broadcast';

function classifyV4(b: number[]): AddressClass | undefined {
  if (b[0] === 127) return 'loopback';
  if (b[0] === 169 && b[1] === 254) return 'link-local';
  if (b[0] === 0) return 'unspecified'; // 0.0.0.0/8: "this host on this network", reaches local services on Linux
  if (b[0] >= 224 && b[0] <= 239) return 'multicast';
  if (b.every((x) => x === 255)) return 'broadcast';
  return undefined;
}

function classifyV6(b: number[]): AddressClass | undefined {
  if (b.slice(0, 15).every((x) => x === 0)) return b[15] === 1 ? 'loopback' : b[15] === 0 ? 'unspecified' : undefined;
  if (b[0] === 0xfe && (b[1] & 0xc0) === 0x80) return 'link-local';
  if (b[0] === 0xff) return 'multicast';
  return undefined;
}

/** One spelling per address, IPv4-mapped IPv6 folded to IPv4, for comparisons. */
function canonical(b: number[]): string {
  const v4 = b.length === 16 && b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff ? b.slice(12) : b;
  return v4.join('.');
}

/** Whether `address` is a loopback address (127/8, ::1, or one of those embedded in IPv6). */
export function isLoopbackAddress(address: string): boolean {
  const b = ipBytes(address);
  if (!b) return false;
  const v4 = embeddedV4(b);
  return (v4 ? classifyV4(v4) : classifyV6(b)) === 'loopback';
}

/**
 * The agent's policy: loopback only when an administrator allows it, and never the API
 * server: its port on every address it resolves to, and the whole address unless that is a
 * loopback address the administrator allowed (vessel up runs the server on 127.0.0.1).
 */
export async function agentEgressPolicy(opts: {
  allowLoopback: boolean;
  apiServerUrl?: string;
  allowed?: readonly { address: string; port: number }[];
}): Promise<EgressPolicy> {
  const denied: { address: string; port?: number }[] = [];
  if (opts.apiServerUrl) {
    const u = new URL(opts.apiServerUrl);
    const port = u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
    for (const address of await resolveAll(u.hostname)) {
      denied.push({ address, port });
      if (!(opts.allowLoopback && isLoopbackAddress(address))) denied.push({ address });
    }
  }
  return { allowLoopback: opts.allowLoopback, denied, ...(opts.allowed?.length ? { allowed: opts.allowed } : {}) };
}

/** The addresses `host` (name or literal) resolves to now, for the policy's `denied` list; [] when it does not resolve. */
export async function resolveAll(host: string): Promise<string[]> {
  const h = host.replace(/^\[|\]$/g, '');
  if (net.isIP(h)) return [h];
  return lookup(h, { all: true, verbatim: true }).then(
    (r) => r.map((a) => a.address),
    () => [],
  );
}
