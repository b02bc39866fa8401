/**
 * The DataImportCron's digest poll: what image a `registry` or `http` source names right now,
 * asked from the controller process (CDI polls registry URLs from a CronJob pod; Vessel has no
 * pods and the server is where the controllers run). Registry: HEAD (then GET) of the
 * manifest with the OCI and Docker v2 Accept types, `Docker-Content-Digest` or the sha256 of
 * the manifest; anonymous Bearer tokens and Basic credentials (the template's secretRef).
 * http: a sha256 over ETag, Last-Modified and Content-Length, or over the content when the
 * server sends neither. Every connection is checked like the importer's (no link-local,
 * multicast or unspecified addresses; loopback only when the administrator allows it), and
 * no redirect is followed: a poll only reads headers of the URL the user wrote.
 * The registry URL parser is a small copy of the agent's rules (controllers may not import
 * the agent); the importer validates the URL again when it pulls.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { rootCertificates } from 'node:tls';
import { ImageUrlError, parseImageUrl as parseUrl, type ImageRef } from '@vessel/api';
import { checkedLookup, isAllowedPair, isLoopback, pollRefusal, type AllowedPair } from './egress.ts';

export { pollRefusal };

export interface PollSource {
  /** The template's source: registry.url (docker://...) or http.url. */
  registry?: { url?: string };
  http?: { url?: string };
}

export interface PollOptions {
  /** Loopback registries and http servers (labs and tests; plain http for a loopback registry, as the importer). */
  allowLoopback?: boolean;
  /** Loopback address and port pairs reachable without allowLoopback (plain http): `vessel up`'s local registry. */
  allowed?: readonly AllowedPair[];
  credentials?: { username: string; password: string };
  /** Extra CA (PEM) besides the system roots: the template's certConfigMap. */
  caPem?: string;
  timeoutMs?: number;
}

/** How the controller asks for a digest; tests give a fake. */
export type DigestPoller = (source: PollSource, opts: PollOptions) => Promise<string>;

export class PollError extends Error {
  override name = 'PollError';
}

const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

/** docker://host[:port]/repo[:tag|@sha256:...] → parts (@vessel/api's parser, its refusal as a PollError). */
export function parseImageUrl(url: string): ImageRef {
  try {
    return parseUrl(url);
  } catch (e) {
    if (e instanceof ImageUrlError) throw new PollError(e.message);
    throw e;
  }
}

/** The URL the DataVolume imports: the tag replaced by the digest (CDI's untagDigestedDockerURL). */
export function pinnedImageUrl(url: string, digest: string): string {
  const ref = parseImageUrl(url);
  const at = url.indexOf('@');
  const base = at >= 0 ? url.slice(0, at) : url;
  const slash = base.lastIndexOf('/');
  const colon = base.lastIndexOf(':');
  const untagged = colon > slash && ref.reference !== digest ? base.slice(0, colon) : base;
  return `${untagged}@${digest}`;
}

/**
 * One message for a refused address, a closed port, a name that does not resolve and a
 * timeout, as the importer's egress policy gives (agent/storage/egress.ts): the poll runs on
 * the control plane's host, and distinct errors would let a tenant map what it reaches. The
 * reason stays in `cause` (the controller's log).
 */
function unreachable(url: URL, cause: Error): PollError {
  return new PollError(
    `${url.host} is unreachable from the poller: no registry answered there (a refused or private address of the control plane's host, a closed port, no such name, or no answer)`,
    { cause },
  );
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body?: Buffer;
  hash?: string;
}

function request(url: URL, method: 'HEAD' | 'GET', headers: Record<string, string>, opts: PollOptions, mode: 'body' | 'hash' | 'none'): Promise<Reply> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (isIP(host) && !isAllowedPair(host, portOf(url), opts.allowed)) {
    const why = pollRefusal(host, !!opts.allowLoopback);
    if (why) return Promise.reject(unreachable(url, new Error(why)));
  }
  const lib = url.protocol === 'https:' ? https : http;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const req = lib.request(
      url,
      {
        method,
        headers: { 'user-agent': 'vessel-dataimportcron', ...headers },
        lookup: checkedLookup(!!opts.allowLoopback) as never,
        ...(url.protocol === 'https:' && opts.caPem ? { ca: [...rootCertificates, opts.caPem] } : {}),
      },
      (res) => {
        const status = res.statusCode ?? 0;
        if (mode === 'none' || method === 'HEAD' || status >= 300) {
          res.resume();
          res.on('end', () => resolve({ status, headers: res.headers }));
          res.on('error', reject);
          return;
        }
        const h = createHash('sha256');
        const parts: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => {
          h.update(c);
          if (mode === 'body') {
            n += c.length;
            if (n > 4 << 20) req.destroy(new PollError(`${url.host} sent a manifest over 4 MiB`));
            else parts.push(c);
          }
        });
        res.on('end', () => resolve({ status, headers: res.headers, body: Buffer.concat(parts), hash: `sha256:${h.digest('hex')}` }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer for ${timeoutMs / 1000} s`)));
    req.on('error', (e) => reject(e instanceof PollError ? e : unreachable(url, e)));
    req.end();
  });
}

function parseChallenge(header: string): { scheme: string; params: Record<string, string> } | undefined {
  const m = /^\s*([A-Za-z][\w-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))/g;
  for (let p = re.exec(m[2]); p; p = re.exec(m[2])) params[p[1].toLowerCase()] = p[2] ?? p[3];
  return { scheme: m[1].toLowerCase(), params };
}

async function authorization(challenge: string | undefined, ref: ImageRef, opts: PollOptions): Promise<string> {
  const ch = challenge ? parseChallenge(challenge) : undefined;
  const basic = opts.credentials ? `Basic ${Buffer.from(`${opts.credentials.username}:${opts.credentials.password}`).toString('base64')}` : undefined;
  if (ch?.scheme === 'basic' && basic) return basic;
  if (ch?.scheme !== 'bearer' || !ch.params.realm)
    throw new PollError(`registry ${ref.registry} requires credentials it cannot be given: set the template's secretRef`);
  const realm = new URL(ch.params.realm);
  if (ch.params.service) realm.searchParams.set('service', ch.params.service);
  realm.searchParams.set('scope', ch.params.scope ?? `repository:${ref.repository}:pull`);
  const res = await request(realm, 'GET', basic ? { authorization: basic } : {}, opts, 'body');
  if (res.status !== 200) throw new PollError(`the token service of ${ref.registry} answered HTTP ${res.status}`);
  const body = JSON.parse(res.body!.toString('utf8')) as { token?: string; access_token?: string };
  const token = body.token ?? body.access_token;
  if (!token) throw new PollError(`the token service of ${ref.registry} gave no token`);
  return `Bearer ${token}`;
}

/** The digest of the manifest (or index) a registry URL's tag names now. */
export async function registryDigest(url: string, opts: PollOptions): Promise<string> {
  const ref = parseImageUrl(url);
  if (DIGEST_RE.test(ref.reference)) return ref.reference; // pinned: nothing can change
  const host = ref.registry === 'docker.io' ? 'registry-1.docker.io' : ref.registry;
  const m = /^(.*):(\d+)$/.exec(host);
  const allowedPair = !!m && isAllowedPair(m[1], Number(m[2]), opts.allowed);
  const scheme = allowedPair || (opts.allowLoopback && isLoopbackHost(host)) ? 'http' : 'https';
  const manifest = new URL(`${scheme}://${host}/v2/${ref.repository}/manifests/${ref.reference}`);
  let auth: string | undefined;
  for (const method of ['HEAD', 'GET'] as const) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await request(manifest, method, { accept: ACCEPT, ...(auth ? { authorization: auth } : {}) }, opts, 'body');
      if (res.status === 401 && !auth) {
        const h = res.headers['www-authenticate'];
        auth = await authorization(Array.isArray(h) ? h[0] : h, ref, opts);
        continue;
      }
      if (res.status === 404) throw new PollError(`registry ${ref.registry} has no image ${ref.repository}:${ref.reference}`);
      if (res.status !== 200) throw new PollError(`registry ${ref.registry} answered HTTP ${res.status} for ${ref.repository}:${ref.reference}`);
      const header = String(res.headers['docker-content-digest'] ?? '');
      if (DIGEST_RE.test(header)) return header;
      if (method === 'GET' && res.hash) return res.hash;
      break; // HEAD without the header: GET the manifest and hash it
    }
  }
  throw new PollError(`registry ${ref.registry} gave no digest for ${ref.repository}:${ref.reference}`);
}

function portOf(url: URL): number {
  return url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
}

function isLoopbackHost(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return h === 'localhost' || isLoopback(h);
}

/** A version of an http source: sha256 of its validators, or of its content when it has none. */
export async function httpDigest(url: string, opts: PollOptions): Promise<string> {
  const u = new URL(url);
  const head = await request(u, 'HEAD', {}, opts, 'none');
  if (head.status === 200) {
    const etag = String(head.headers.etag ?? '');
    const modified = String(head.headers['last-modified'] ?? '');
    if (etag || modified) {
      return `sha256:${createHash('sha256')
        .update(`${url}\n${etag}\n${modified}\n${head.headers['content-length'] ?? ''}`)
        .digest('hex')}`;
    }
  } else if (head.status !== 405) {
    throw new PollError(`${u.host} answered HTTP ${head.status} for ${u.pathname}`);
  }
  const res = await request(u, 'GET', {}, opts, 'hash');
  if (res.status !== 200) throw new PollError(`${u.host} answered HTTP ${res.status} for ${u.pathname}`);
  return res.hash!;
}

/** The real poller: registry or http. */
export const pollDigest: DigestPoller = (source, opts) => {
  if (source.registry?.url) return registryDigest(source.registry.url, opts);
  if (source.http?.url) return httpDigest(source.http.url, opts);
  return Promise.reject(new PollError('the template has neither source.registry.url nor source.http.url'));
};
