/**
 * The DataVolume `registry` source: pulls a KubeVirt containerDisk (an image whose layers
 * hold a disk image file under /disk/) over the OCI distribution API, without docker or
 * skopeo. Layers are read newest first and streamed through sha256, gunzip and tar-stream's
 * parser, so memory stays flat whatever the image size; the disk file's bytes go to
 * importDisk as a stream that fails if its layer's digest turns out wrong at the end.
 */
import { createHash, type Hash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { posix } from 'node:path';
import { Readable, pipeline } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { createGunzip } from 'node:zlib';
import { extract as tarExtract, type Extract as TarExtract, type Header as TarHeader } from 'tar-stream';
import { checkedRequestOptions, isAllowedPair, type EgressPolicy } from './egress.ts';
import { ImportError } from './errors.ts';
import { IMAGE_DIGEST_RE, ImageUrlError, parseImageUrl, type ImageRef } from '@vessel/api';

export type RegistryRef = ImageRef;

export interface RegistryDiskOptions {
  /** docker://host[:port]/repo[:tag|@sha256:digest] */
  url: string;
  /** Plain HTTP instead of HTTPS. */
  insecure?: boolean;
  /** Extra CA certificates (PEM) trusted besides the system ones: CDI's certConfigMap. */
  caPem?: string;
  /** From the DataVolume's secretRef (accessKeyId / secretKey). */
  credentials?: { username: string; password: string };
  signal?: AbortSignal;
  /** Architecture chosen from a multi-platform index; default amd64. */
  architecture?: string;
  /** A request with no bytes for this long fails, ms. Default 60 s. */
  idleTimeoutMs?: number;
  /**
   * Which addresses the registry, its token service and its storage redirects may be on;
   * default: no loopback, link-local, node or API server addresses (see egress.ts).
   */
  egress?: EgressPolicy;
}

export interface RegistryDisk {
  /** The disk file's bytes as stored in the image (maybe gz/xz); errors (ImportError) if the layer's digest is wrong. */
  stream: Readable;
  /** Size of the disk file in bytes. */
  size: number;
  /** Digest of the manifest (or index) the URL names: pin it with docker://...@<digest>. */
  digest: string;
  /** Path of the disk file inside the image, e.g. disk/disk.qcow2. */
  file: string;
}

const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;
const ACCEPT = [MEDIA.ociManifest, MEDIA.ociIndex, MEDIA.dockerManifest, MEDIA.dockerList].join(', ');
const MAX_MANIFEST = 4 << 20;
const MAX_REDIRECTS = 5;
const DIGEST_RE = IMAGE_DIGEST_RE;

// ---------------------------------------------------------------------------------------
// URL

/** parseImageUrl (@vessel/api) with the importer's error: InvalidArgument, saying how to write it. */
export function parseRegistryUrl(url: string): RegistryRef {
  try {
    return parseImageUrl(url);
  } catch (e) {
    if (e instanceof ImageUrlError) throw new ImportError('InvalidArgument', e.message);
    throw e;
  }
}

function imageName(ref: RegistryRef): string {
  return DIGEST_RE.test(ref.reference) ? `${ref.repository}@${ref.reference}` : `${ref.repository}:${ref.reference}`;
}

// ---------------------------------------------------------------------------------------
// Pull

interface Ctx {
  ref: RegistryRef;
  base: string;
  display: string;
  opts: RegistryDiskOptions;
  idleMs: number;
  /** The Authorization header that works, once a challenge was answered. */
  auth?: string;
  /** Set when a request was cut for idling, so the stream error says so. */
  stalled?: string;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

/**
 * Finds the disk file of a containerDisk image and returns a stream of its bytes. Throws
 * ImportError when the image cannot be fetched or has no file under /disk/; the stream
 * fails with ImportError if the transfer breaks or a digest does not match.
 */
export async function openRegistryDisk(opts: RegistryDiskOptions): Promise<RegistryDisk> {
  const ref = parseRegistryUrl(opts.url);
  const host = ref.registry === 'docker.io' ? 'registry-1.docker.io' : ref.registry;
  const ctx: Ctx = { ref, base: `${opts.insecure ? 'http' : 'https'}://${host}`, display: ref.registry, opts, idleMs: opts.idleTimeoutMs ?? 60_000 };
  throwIfAborted(opts.signal);
  const name = imageName(ref);
  const top = await fetchManifest(ctx, ref.reference);
  let manifest = top;
  for (let depth = 0; manifest.kind === 'index'; depth++) {
    if (depth >= 2) throw new ImportError('UnsupportedFormat', `image ${name} nests indexes more than two deep: push a plain image or a one-level index`);
    const chosen = choosePlatform(manifest.json, opts.architecture ?? 'amd64', name);
    manifest = await fetchManifest(ctx, chosen.digest);
  }
  const layers = manifestLayers(manifest.json, name);

  // Whiteouts and non-directories in an upper layer hide paths in the layers below it.
  const hidden: Mask[] = [];
  const skipped: string[] = [];
  for (let i = layers.length - 1; i >= 0; i--) {
    const layer = await openLayer(ctx, layers[i], name);
    try {
      const masks: Mask[] = [];
      for (;;) {
        const r = await layer.entries.next();
        if (r.done) break;
        const entry = r.value;
        const path = normalizePath(entry.path);
        const wh = whiteoutMask(path);
        if (wh) {
          masks.push(wh);
          continue;
        }
        if (path === 'disk' && entry.type !== 'directory') {
          masks.push({ path, opaque: false });
          continue;
        }
        if (!path.startsWith('disk/') || isHidden(path, hidden) || entry.type === 'directory') continue;
        if (entry.type === 'file') {
          return { stream: diskStream(ctx, layer, entry.body, layers[i].digest), size: entry.size, digest: top.digest, file: path };
        }
        if (entry.type === 'sparse') {
          throw new ImportError(
            'UnsupportedFormat',
            `${path} in image ${name} is stored as a sparse (or another GNU-only) tar entry, which Vessel cannot read: build the image without sparse files (e.g. COPY of a plain file)`,
          );
        }
        skipped.push(`${path} (${entry.type})`);
        masks.push({ path, opaque: false });
      }
      await layer.finish();
      hidden.push(...masks);
    } catch (e) {
      layer.destroy();
      throw streamError(e, ctx, layers[i].digest);
    }
  }
  const links = skipped.length ? ` (skipped ${skipped.slice(0, 3).join(', ')}: only regular files are read, links are not followed)` : '';
  throw new ImportError(
    'UnsupportedFormat',
    `image ${name} has no file under /disk/: is it a containerDisk? Build one with a disk image at /disk/disk.img or /disk/disk.qcow2${links}`,
  );
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw aborted(signal);
}

function aborted(signal: AbortSignal): ImportError {
  return new ImportError('Aborted', 'the import was cancelled; nothing was written', { cause: signal.reason });
}

interface Manifest {
  kind: 'index' | 'manifest';
  json: Record<string, unknown>;
  digest: string;
}

async function fetchManifest(ctx: Ctx, reference: string): Promise<Manifest> {
  const name = imageName({ ...ctx.ref, reference });
  const res = await registryGet(ctx, `/v2/${ctx.ref.repository}/manifests/${reference}`, ACCEPT);
  const status = res.statusCode ?? 0;
  if (status !== 200) {
    const detail = await errorDetail(res);
    if (status === 404) {
      throw new ImportError(
        'HttpError',
        `registry ${ctx.display} has no image ${name}${paren(detail)}: check the repository and tag in the URL, and that the image was pushed`,
      );
    }
    throw statusError(ctx, status, detail, `image ${name}`);
  }
  const body = await readBody(res, MAX_MANIFEST, `the manifest of ${name}`);
  const algo = reference.startsWith('sha512:') ? 'sha512' : 'sha256';
  const digest = `${algo}:${createHash(algo).update(body).digest('hex')}`;
  if (DIGEST_RE.test(reference) && digest !== reference) {
    throw new ImportError(
      'ChecksumMismatch',
      `registry ${ctx.display} sent a manifest for ${name} whose digest is ${digest}: it was altered on the way or by the registry; retry, or push the image again`,
    );
  }
  let json: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
    json = parsed as Record<string, unknown>;
  } catch (e) {
    throw new ImportError('Corrupt', `the manifest of ${name} is not valid JSON (${(e as Error).message}): push the image again`, { cause: e });
  }
  const type =
    typeof json.mediaType === 'string'
      ? json.mediaType
      : String(res.headers['content-type'] ?? '')
          .split(';')[0]
          .trim();
  if (json.schemaVersion === 1 || /^application\/vnd\.docker\.distribution\.manifest\.v1\+(prettyjws|json)$/.test(type)) {
    throw new ImportError(
      'UnsupportedFormat',
      `image ${name} has a Docker schema 1 manifest, which Vessel does not read: push it again with a current docker, podman or buildah (schema 2 or OCI)`,
    );
  }
  if (type === MEDIA.ociIndex || type === MEDIA.dockerList || (type !== MEDIA.ociManifest && type !== MEDIA.dockerManifest && Array.isArray(json.manifests))) {
    return { kind: 'index', json, digest };
  }
  if (type === MEDIA.ociManifest || type === MEDIA.dockerManifest || Array.isArray(json.layers)) return { kind: 'manifest', json, digest };
  throw new ImportError('UnsupportedFormat', `${name} is a "${type || 'unknown'}" manifest, not a container image: check the URL`);
}

function descriptor(v: unknown, what: string): Descriptor {
  const d = (v ?? {}) as Record<string, unknown>;
  if (typeof d.digest !== 'string' || !DIGEST_RE.test(d.digest) || typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new ImportError('Corrupt', `${what} has an invalid descriptor (${JSON.stringify(v)?.slice(0, 200)}): push the image again`);
  }
  const p = d.platform as Descriptor['platform'] | undefined;
  return {
    mediaType: typeof d.mediaType === 'string' ? d.mediaType : '',
    digest: d.digest,
    size: d.size,
    platform: p && typeof p === 'object' ? p : undefined,
  };
}

function choosePlatform(index: Record<string, unknown>, arch: string, name: string): Descriptor {
  const list = Array.isArray(index.manifests) ? index.manifests.map((m, i) => descriptor(m, `entry ${i} of the index of ${name}`)) : [];
  const match = list.filter((m) => m.platform?.os === 'linux' && m.platform.architecture === arch);
  // Prefer the plain variant (amd64 has v2/v3 variants in some indexes).
  const chosen = match.find((m) => !m.platform?.variant) ?? match[0];
  if (chosen) return chosen;
  const have = [...new Set(list.map((m) => `${m.platform?.os ?? '?'}/${m.platform?.architecture ?? '?'}`))].join(', ') || 'none';
  throw new ImportError('UnsupportedFormat', `image ${name} has no linux/${arch} variant (it has: ${have}): push a linux/${arch} containerDisk under this tag`);
}

function manifestLayers(m: Record<string, unknown>, name: string): Descriptor[] {
  if (!Array.isArray(m.layers)) throw new ImportError('Corrupt', `the manifest of ${name} lists no layers: push the image again`);
  return m.layers.map((l, i) => descriptor(l, `layer ${i} of ${name}`));
}

// ---------------------------------------------------------------------------------------
// HTTP and auth

/** GET on the registry: answers an auth challenge once, follows redirects (blobs live on storage hosts). */
async function registryGet(ctx: Ctx, path: string, accept?: string): Promise<http.IncomingMessage> {
  let url = new URL(path, ctx.base);
  let challenged = false;
  let sameOrigin = true;
  for (let hop = 0; ;) {
    const headers: Record<string, string> = {};
    if (accept) headers.accept = accept;
    // Credentials stay with the registry: storage redirects carry their own signature, and S3 refuses both.
    if (ctx.auth && sameOrigin) headers.authorization = ctx.auth;
    const res = await send(ctx, url, headers);
    const status = res.statusCode ?? 0;
    if (status === 401 && sameOrigin && !challenged) {
      const challenge = res.headers['www-authenticate'];
      res.resume();
      challenged = true;
      await authenticate(ctx, Array.isArray(challenge) ? challenge[0] : challenge);
      continue;
    }
    if (status >= 300 && status < 400 && res.headers.location) {
      res.resume();
      if (++hop > MAX_REDIRECTS)
        throw new ImportError(
          'HttpError',
          `registry ${ctx.display} redirects ${path} more than ${MAX_REDIRECTS} times: the registry or its storage is misconfigured`,
        );
      url = new URL(res.headers.location, url);
      sameOrigin = url.origin === new URL(ctx.base).origin;
      continue;
    }
    return res;
  }
}

function send(ctx: Ctx, url: URL, headers: Record<string, string>): Promise<http.IncomingMessage> {
  const signal = ctx.opts.signal;
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return Promise.reject(new ImportError('HttpError', `registry ${ctx.display} sent Vessel to ${url.protocol} URL, which it cannot follow`));
  }
  return new Promise((resolve, reject) => {
    const lib = url.protocol === 'https:' ? https : http;
    // node's `ca` replaces the system roots: add the certConfigMap's CAs to them instead.
    const tls = url.protocol === 'https:' ? (ctx.opts.caPem ? { ca: [...rootCertificates, ctx.opts.caPem] } : {}) : undefined;
    // Every request (manifests, token service, blob redirects) connects through the egress check.
    const req = lib.get(
      url,
      {
        headers: { 'user-agent': 'vessel-importer', ...headers },
        signal,
        ...checkedRequestOptions(url, { policy: ctx.opts.egress, tls, timeoutMs: ctx.idleMs, signal, display: `${url.protocol}//${url.host}${url.pathname}` }),
      },
      resolve,
    );
    req.setTimeout(ctx.idleMs, () => {
      ctx.stalled = url.host;
      req.destroy(new ImportError('HttpError', `no data from ${url.host} for ${ctx.idleMs / 1000} s: the registry is stuck or unreachable; retry the import`));
    });
    req.on('error', (e) => reject(netError(e, url, ctx)));
  });
}

function netError(e: unknown, url: URL, ctx: Ctx): ImportError {
  if (ctx.opts.signal?.aborted) return aborted(ctx.opts.signal);
  if (e instanceof ImportError) return e;
  const err = e as NodeJS.ErrnoException;
  const code = err?.code ?? '';
  const msg = err?.message ?? String(e);
  const host = url.host;
  // Refused, closed, unresolvable and silent hosts never get here: the egress check answers
  // them all with one Unreachable error (egress.ts), so a tenant cannot tell them apart.
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(code)) {
    return new ImportError('HttpError', `the TLS certificate of ${host} is not trusted (${code}): add its CA with certConfigMap`, { cause: e });
  }
  if (/wrong version number|packet length too long|http request/i.test(msg)) {
    return new ImportError(
      'HttpError',
      `registry ${host} does not speak TLS (it seems to serve plain HTTP): mark it insecure, or give the registry a TLS certificate`,
      { cause: e },
    );
  }
  if (code === 'EPROTO' || code.startsWith('ERR_SSL')) {
    // OpenSSL's text is "...:SSL routines:<function>:<reason>:<file>:<line>:": keep the reason.
    const reason = /routines:[^:]*:([^:]+)/.exec(msg)?.[1] ?? msg.split('\n')[0];
    return new ImportError(
      'HttpError',
      `TLS with registry ${host} failed (${reason}): check that it serves HTTPS on this port, or mark it insecure if it serves plain HTTP`,
      { cause: e },
    );
  }
  return new ImportError('HttpError', `cannot reach registry ${host}: ${msg}`, { cause: e });
}

interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses one WWW-Authenticate challenge: `Bearer realm="...",service="...",scope="..."`. */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z][\w-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))/g;
  for (let p = re.exec(m[2]); p; p = re.exec(m[2])) {
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  }
  return { scheme: m[1].toLowerCase(), params };
}

async function authenticate(ctx: Ctx, header: string | undefined): Promise<void> {
  const creds = ctx.opts.credentials;
  const needCreds = `registry ${ctx.display} requires a user name and password for ${ctx.ref.repository}: set the DataVolume's secretRef to a Secret with accessKeyId and secretKey`;
  const ch = header ? parseChallenge(header) : undefined;
  if (!ch)
    throw new ImportError(
      'HttpError',
      creds ? `registry ${ctx.display} refused the request (HTTP 401) without saying how to log in: check the URL` : needCreds,
    );
  const basic = creds ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}` : undefined;
  if (ch.scheme === 'basic') {
    if (!basic) throw new ImportError('HttpError', needCreds);
    ctx.auth = basic;
    return;
  }
  if (ch.scheme !== 'bearer' || !ch.params.realm) {
    throw new ImportError(
      'HttpError',
      `registry ${ctx.display} asks for "${ch.scheme}" authentication, which Vessel does not speak (only Basic and Bearer tokens)`,
    );
  }
  let realm: URL;
  try {
    realm = new URL(ch.params.realm);
  } catch {
    throw new ImportError('HttpError', `registry ${ctx.display} names an invalid token service "${ch.params.realm}": the registry is misconfigured`);
  }
  if (ch.params.service) realm.searchParams.set('service', ch.params.service);
  realm.searchParams.set('scope', ch.params.scope ?? `repository:${ctx.ref.repository}:pull`);
  const res = await send(ctx, realm, basic ? { authorization: basic } : {});
  const status = res.statusCode ?? 0;
  if (status !== 200) {
    const detail = await errorDetail(res);
    if (status === 401 || status === 403) {
      throw new ImportError(
        'HttpError',
        basic
          ? `the token service of ${ctx.display} refused the credentials from secretRef ${httpStatus(status, detail)}: check accessKeyId and secretKey in the Secret`
          : needCreds,
      );
    }
    throw new ImportError('HttpError', `the token service of ${ctx.display} (${realm.host}) answered HTTP ${status}${paren(detail)}: retry later`);
  }
  let token: unknown;
  try {
    const body = JSON.parse((await readBody(res, 1 << 20, 'the token')).toString('utf8')) as Record<string, unknown>;
    token = body.token ?? body.access_token;
  } catch (e) {
    if (e instanceof ImportError) throw e;
    throw new ImportError('HttpError', `the token service of ${ctx.display} answered something that is not JSON: the registry is misconfigured`, { cause: e });
  }
  if (typeof token !== 'string' || token === '')
    throw new ImportError('HttpError', `the token service of ${ctx.display} gave no token: the registry is misconfigured`);
  ctx.auth = `Bearer ${token}`;
}

function statusError(ctx: Ctx, status: number, detail: string, what: string): ImportError {
  if (status === 401) {
    return new ImportError(
      'HttpError',
      ctx.opts.credentials
        ? `registry ${ctx.display} refused the credentials from secretRef for ${what} ${httpStatus(401, detail)}: check accessKeyId and secretKey in the Secret`
        : `registry ${ctx.display} requires credentials for ${what}${paren(detail)}: set the DataVolume's secretRef to a Secret with accessKeyId and secretKey`,
    );
  }
  if (status === 403)
    return new ImportError(
      'HttpError',
      `registry ${ctx.display} denies access to ${what} ${httpStatus(403, detail)}: check that the account in secretRef may pull it`,
    );
  if (status === 429)
    return new ImportError('HttpError', `registry ${ctx.display} is rate-limiting pulls ${httpStatus(429, detail)}: retry later, or log in with secretRef`);
  return new ImportError('HttpError', `registry ${ctx.display} answered HTTP ${status} for ${what}${paren(detail)}: retry later, or check the registry`);
}

/** The registry's own reason from an error body ({"errors":[{"code","message"}]}), or "". */
async function errorDetail(res: http.IncomingMessage): Promise<string> {
  try {
    const body = await readBody(res, 64 << 10, 'error');
    const json = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] };
    const first = json.errors?.[0];
    return String(first?.message || first?.code || '');
  } catch {
    return '';
  }
}

function paren(detail: string): string {
  return detail ? ` (${detail})` : '';
}

function httpStatus(status: number, detail: string): string {
  return `(HTTP ${status}${detail ? `: ${detail}` : ''})`;
}

async function readBody(res: http.IncomingMessage, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) {
      res.destroy();
      throw new ImportError('Corrupt', `${what} is larger than ${max} bytes: this is not a container image manifest`);
    }
    parts.push(c);
  }
  return Buffer.concat(parts, n);
}

// ---------------------------------------------------------------------------------------
// Layers

interface OpenLayer {
  entries: AsyncGenerator<TarEntry>;
  /** Reads the rest of the blob; rejects if its digest or size is wrong. */
  finish(): Promise<void>;
  destroy(): void;
}

async function openLayer(ctx: Ctx, layer: Descriptor, name: string): Promise<OpenLayer> {
  const res = await registryGet(ctx, `/v2/${ctx.ref.repository}/blobs/${layer.digest}`);
  const status = res.statusCode ?? 0;
  if (status !== 200) {
    const detail = await errorDetail(res);
    if (status === 404)
      throw new ImportError(
        'HttpError',
        `registry ${ctx.display} has no layer ${layer.digest} of image ${name}${paren(detail)}: the image is incomplete in the registry; push it again`,
      );
    throw statusError(ctx, status, detail, `layer ${layer.digest} of ${name}`);
  }
  if (/\+zstd$/.test(layer.mediaType)) throw zstd(name);
  const algo = layer.digest.slice(0, layer.digest.indexOf(':'));
  const hash: Hash = createHash(algo);
  let count = 0;
  let verified = false;
  async function* raw(): AsyncGenerator<Buffer> {
    for await (const c of res as AsyncIterable<Buffer>) {
      count += c.length;
      if (count > layer.size) {
        throw new ImportError(
          'ChecksumMismatch',
          `layer ${layer.digest} of image ${name} is larger than the ${layer.size} bytes its manifest says: the registry sent something else; push the image again`,
        );
      }
      hash.update(c);
      yield c;
    }
    if (count < layer.size) {
      throw new ImportError(
        'Truncated',
        `layer ${layer.digest} of image ${name} ended after ${count} of ${layer.size} bytes: the registry closed the connection early; retry the import`,
      );
    }
    const got = `${algo}:${hash.digest('hex')}`;
    if (got !== layer.digest) {
      throw new ImportError(
        'ChecksumMismatch',
        `layer ${layer.digest} of image ${name} arrived with digest ${got}: it was altered in the registry or on the way; retry, or push the image again`,
      );
    }
    verified = true;
  }
  const rawIt = raw();
  // Compression is decided by the bytes, not the media type, which some tools get wrong.
  const head: Buffer[] = [];
  let headLen = 0;
  while (headLen < 4) {
    const r = await rawIt.next().catch((e: unknown) => {
      res.destroy();
      throw streamError(e, ctx, layer.digest);
    });
    if (r.done) break;
    head.push(r.value);
    headLen += r.value.length;
  }
  const first = Buffer.concat(head, headLen);
  if (first.length >= 4 && first.readUInt32BE(0) === 0x28b52ffd) {
    res.destroy();
    throw zstd(name);
  }
  async function* all(): AsyncGenerator<Buffer> {
    if (first.length) yield first;
    yield* rawIt;
  }
  let source: AsyncIterable<Buffer> = all();
  let gunzipped: Promise<void> | undefined;
  let gunzip: ReturnType<typeof createGunzip> | undefined;
  if (first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b) {
    gunzip = createGunzip({ chunkSize: 1 << 20 });
    const g = gunzip;
    gunzipped = new Promise((resolve, reject) => {
      pipeline(source, g, (err) => (err ? reject(err) : resolve()));
    });
    gunzipped.catch(() => undefined); // surfaced through the gunzip stream or finish()
    source = g;
  }
  const tar = tarReader(source);
  const entries = tar.entries;
  return {
    entries,
    async finish() {
      for (;;) if ((await entries.next()).done) break;
      await tar.fed;
      await gunzipped;
      if (!verified) throw new ImportError('Corrupt', `layer ${layer.digest} of image ${name} has data after its end: push the image again`);
    },
    destroy() {
      res.destroy();
      gunzip?.destroy();
      tar.destroy();
    },
  };
}

function zstd(name: string): ImportError {
  return new ImportError(
    'UnsupportedFormat',
    `image ${name} has zstd-compressed layers, which Vessel cannot read yet: push the containerDisk with gzip (or uncompressed) layers`,
  );
}

/** The disk entry's bytes, then the rest of its layer, so the digest is checked before the stream ends. */
function diskStream(ctx: Ctx, layer: OpenLayer, body: AsyncIterable<Buffer>, digest: string): Readable {
  async function* bytes(): AsyncGenerator<Buffer> {
    try {
      yield* body;
      await layer.finish();
    } catch (e) {
      throw streamError(e, ctx, digest);
    } finally {
      layer.destroy();
    }
  }
  const stream = Readable.from(bytes(), { objectMode: false, highWaterMark: 1 << 20 });
  // A consumer that gives up must not leave the generator waiting on a stalled socket.
  stream.once('close', () => layer.destroy());
  return stream;
}

function streamError(e: unknown, ctx: Ctx, digest: string): ImportError {
  if (ctx.opts.signal?.aborted) return aborted(ctx.opts.signal);
  if (e instanceof ImportError) return e;
  const err = e as NodeJS.ErrnoException;
  const code = err?.code ?? '';
  const msg = err?.message ?? String(e);
  if (ctx.stalled)
    return new ImportError(
      'HttpError',
      `no data from ${ctx.stalled} for ${ctx.idleMs / 1000} s while reading layer ${digest}: the registry is stuck or unreachable; retry the import`,
      { cause: e },
    );
  if (code === 'Z_BUF_ERROR' || /unexpected end of file/i.test(msg)) {
    return new ImportError('Truncated', `the gzip data of layer ${digest} ends early: the layer is incomplete in the registry; push the image again`, {
      cause: e,
    });
  }
  if (code.startsWith('Z_')) return new ImportError('Corrupt', `layer ${digest} cannot be decompressed (${msg}): push the image again`, { cause: e });
  if (code === 'ECONNRESET' || msg === 'aborted' || code === 'ERR_STREAM_PREMATURE_CLOSE') {
    return new ImportError('Truncated', `the registry closed the connection while sending layer ${digest}: retry the import`, { cause: e });
  }
  return new ImportError('HttpError', `reading layer ${digest} failed: ${msg}`, { cause: e });
}

// ---------------------------------------------------------------------------------------
// Paths and whiteouts

interface Mask {
  path: string;
  opaque: boolean;
}

/** "./disk//x", "/disk/x" and "disk/x" are the same file. */
export function normalizePath(p: string): string {
  let n = posix.normalize(p);
  while (n.startsWith('/') || n.startsWith('./')) n = n.startsWith('/') ? n.slice(1) : n.slice(2);
  if (n.endsWith('/')) n = n.slice(0, -1);
  return n === '.' ? '' : n;
}

/** An OCI whiteout: ".wh.<name>" deletes name below; ".wh..wh..opq" empties its directory below. */
function whiteoutMask(path: string): Mask | undefined {
  const base = posix.basename(path);
  if (!base.startsWith('.wh.')) return undefined;
  const dir = posix.dirname(path);
  const parent = dir === '.' ? '' : dir;
  if (base === '.wh..wh..opq') return { path: parent, opaque: true };
  const target = base.slice('.wh.'.length);
  return { path: parent ? `${parent}/${target}` : target, opaque: false };
}

function isHidden(path: string, masks: Mask[]): boolean {
  return masks.some((m) => (m.opaque ? m.path === '' : path === m.path) || path.startsWith(`${m.path}/`));
}

// ---------------------------------------------------------------------------------------
// Tar

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'sparse' | 'other';

export interface TarEntry {
  /** The name as stored (pax path, GNU long name, or ustar prefix/name). */
  path: string;
  type: TarEntryType;
  size: number;
  linkname: string;
  /** The entry's bytes; read it to its end (or not at all) before asking for the next entry. */
  body: AsyncGenerator<Buffer>;
}

/** The entry being read, and how many of its bytes have not been. */
interface TarPosition {
  size: number;
  left: number;
}

interface TarReader {
  entries: AsyncGenerator<TarEntry>;
  /** Settles once every source chunk was handed to the parser; rejects with the source's error. */
  fed: Promise<void>;
  destroy(): void;
}

/** Streams the entries of a tar archive (ustar, GNU long names, pax; tar-stream parses them). */
export function readTar(source: AsyncIterable<Buffer> | Iterable<Buffer>): AsyncGenerator<TarEntry> {
  return tarReader(source).entries;
}

function tarReader(source: AsyncIterable<Buffer> | Iterable<Buffer>): TarReader {
  // Old (v7) headers without ustar/GNU magic are still read, as tar itself does (an option
  // tar-stream's typings leave out).
  const ex = tarExtract({ allowUnknownFormat: true } as Parameters<typeof tarExtract>[0]);
  let sourceError: unknown;
  // Chunks go in only as fast as entries are read, so a whole layer is never held in memory.
  const fed = (async () => {
    try {
      for await (const chunk of source) {
        if (ex.destroyed) return;
        if (!ex.write(chunk)) await drainedOrClosed(ex);
      }
      ex.end(undefined);
    } catch (e) {
      sourceError = e;
      ex.destroy(e as Error);
      throw e;
    }
  })();
  fed.catch(() => undefined); // surfaced through the entries or by whoever awaits fed

  async function* entries(): AsyncGenerator<TarEntry> {
    let current: TarPosition | undefined;
    try {
      for await (const src of ex) {
        const h = src.header;
        const entry: TarPosition = { size: h.size, left: h.size };
        current = entry;
        async function* body(): AsyncGenerator<Buffer> {
          try {
            for await (const c of src as AsyncIterable<Buffer>) {
              entry.left -= c.length;
              yield c;
            }
          } catch (e) {
            throw failure(e, entry);
          }
        }
        const gen = body();
        yield { path: h.name, type: entryType(h), size: h.size, linkname: h.linkname ?? '', body: gen }; // linkname: null when empty, whatever the typings say
        // What the caller did not read is read here: the parser moves on only past the data.
        while (!(await gen.next()).done);
        current = undefined;
      }
    } catch (e) {
      throw failure(e, current);
    }
  }
  const failure = (e: unknown, current: TarPosition | undefined) => (e === sourceError || e instanceof ImportError ? e : tarError(e, current));
  return { entries: entries(), fed, destroy: () => ex.destroy() };
}

function drainedOrClosed(ex: TarExtract): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      ex.off('drain', done);
      ex.off('close', done);
      resolve();
    };
    ex.on('drain', done);
    ex.on('close', done);
  });
}

function entryType(h: TarHeader): TarEntryType {
  const pax = (h.pax ?? {}) as Record<string, unknown>;
  if (pax['GNU.sparse.major'] !== undefined || pax['GNU.sparse.map'] !== undefined) return 'sparse';
  switch (h.type) {
    case 'file':
    case 'contiguous-file':
      return 'file';
    case 'directory':
      return 'directory';
    case 'symlink':
      return 'symlink';
    case 'link':
      return 'hardlink';
    // tar-stream names no GNU-only type (its type is null): 'S' (old GNU sparse) is one; none is readable data.
    case null:
      return 'sparse';
    default:
      return 'other';
  }
}

/** tar-stream's plain Errors, as ImportErrors that say what to do. */
function tarError(e: unknown, current: TarPosition | undefined): ImportError {
  const msg = (e as Error)?.message ?? String(e);
  if (/unexpected end of data/i.test(msg)) {
    if (current && current.left > 0) {
      return new ImportError(
        'Truncated',
        `a tar entry of ${current.size} bytes ends after ${current.size - current.left}: the layer is incomplete; push the image again`,
        { cause: e },
      );
    }
    return corruptTar('the archive ends inside a header', e);
  }
  if (/Invalid tar header\. Maybe/.test(msg)) return corruptTar('a header checksum does not match', e);
  // tar-stream holds a long name or pax header whole, up to 4 MiB: a bigger one is hostile.
  if (/exceeds max size/.test(msg)) return corruptTar('a metadata entry is larger than 4 MiB', e);
  return corruptTar(msg.replace(/\.$/, ''), e);
}

function corruptTar(why: string, cause?: unknown): ImportError {
  return new ImportError('Corrupt', `a layer is not a valid tar archive (${why}): push the image again`, { cause });
}

/**
 * Docker's rule: registries on loopback speak plain HTTP unless told otherwise. Only
 * meaningful where the egress policy allows loopback (see registryInsecure); elsewhere a
 * loopback registry is refused whatever its scheme.
 */
export function isLoopbackRegistry(url: string): boolean {
  let registry: string;
  try {
    registry = parseRegistryUrl(url).registry;
  } catch {
    return false;
  }
  const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || (isIP(host) === 4 && host.startsWith('127.')) || host === '::1';
}

/**
 * Plain HTTP for a registry on loopback, and only when the policy lets the importer reach
 * loopback at all, or that registry's address and port (`allowed`: vessel up's local registry).
 */
export function registryInsecure(url: string, egress: EgressPolicy | undefined): boolean {
  if (!isLoopbackRegistry(url)) return false;
  if (egress?.allowLoopback) return true;
  const m = /^(.*):(\d+)$/.exec(parseRegistryUrl(url).registry);
  return !!m && isAllowedPair(m[1].replace(/^\[|\]$/g, ''), Number(m[2]), egress);
}
