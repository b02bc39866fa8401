/**
 * Test helpers for the registry source: Debian's real docker-registry (distribution 2.8) on
 * a loopback port with a throwaway root directory, a streaming tar writer that can produce
 * every header flavour the reader must understand, and a pusher that uploads containerDisk
 * images through the OCI distribution push API.
 */
import { spawn } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { sh } from './testing.ts';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface TestRegistry {
  /** host:port, e.g. 127.0.0.1:41234 */
  url: string;
  /** With tls: the PEM of the CA that signed the registry's certificate (for caPem). */
  caPem?: string;
  stop(): Promise<void>;
}

/**
 * Starts docker-registry on 127.0.0.1 with a random port and storage in a temporary
 * directory; with `tls`, it serves HTTPS with a certificate from a throwaway CA.
 */
export async function startRegistry(opts: { tls?: boolean } = {}): Promise<TestRegistry> {
  const root = await mkdtemp(join(tmpdir(), 'vessel-registry-'));
  const caPem = opts.tls ? await makeCertificates(root) : undefined;
  const scheme = opts.tls ? 'https' : 'http';
  // The free port can be taken between probe and bind: try a few.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const config = join(root, 'config.yml');
    await writeFile(
      config,
      [
        'version: 0.1',
        'log:',
        '  level: error',
        '  accesslog:',
        '    disabled: true',
        'storage:',
        '  filesystem:',
        `    rootdirectory: ${join(root, 'data')}`,
        '  delete:',
        '    enabled: true',
        '  maintenance:',
        '    uploadpurging:',
        '      enabled: false',
        'http:',
        `  addr: 127.0.0.1:${port}`,
        ...(opts.tls ? ['  tls:', `    certificate: ${join(root, 'server.pem')}`, `    key: ${join(root, 'server.key')}`] : []),
        'health:',
        '  storagedriver:',
        '    enabled: false',
        '',
      ].join('\n'),
    );
    const child = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => {
      if (stderr.length < 8192) stderr += c;
    });
    const exited = new Promise<number | null>((resolve) => {
      child.on('error', () => resolve(-1));
      child.on('exit', (code) => resolve(code));
    });
    let dead = false;
    // A test process that dies without stop() must not leave the registry running.
    const reap = () => child.kill('SIGKILL');
    process.once('exit', reap);
    void exited.then(() => {
      dead = true;
      process.off('exit', reap);
    });
    const url = `127.0.0.1:${port}`;
    const deadline = Date.now() + 10_000;
    while (!dead && Date.now() < deadline) {
      const r = await request('GET', `${scheme}://${url}/v2/`, {}, undefined, caPem).catch(() => undefined); // not listening yet: poll again
      if (r?.status === 200) {
        return {
          url,
          caPem,
          stop: async () => {
            if (!dead) {
              child.kill('SIGTERM');
              const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
              await exited;
              clearTimeout(timer);
            }
            await rm(root, { recursive: true, force: true });
          },
        };
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!dead) {
      child.kill('SIGKILL');
      await exited;
    }
    if (attempt >= 2) {
      await rm(root, { recursive: true, force: true });
      throw new Error(`docker-registry did not start on ${url}: ${stderr.trim() || 'no output'}`);
    }
  }
}

/** A CA and a server certificate for 127.0.0.1 signed by it, in `dir`; returns the CA's PEM. */
async function makeCertificates(dir: string): Promise<string> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const at = (f: string) => join(dir, f);
  sh('openssl', ['req', '-x509', ...ec, '-keyout', at('ca.key'), '-out', at('ca.pem'), '-days', '2', '-subj', '/CN=vessel test CA']);
  sh('openssl', ['req', ...ec, '-keyout', at('server.key'), '-out', at('server.csr'), '-subj', '/CN=127.0.0.1']);
  await writeFile(at('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  sh('openssl', [
    'x509',
    '-req',
    '-in',
    at('server.csr'),
    '-CA',
    at('ca.pem'),
    '-CAkey',
    at('ca.key'),
    '-CAcreateserial',
    '-out',
    at('server.pem'),
    '-days',
    '2',
    '-extfile',
    at('ext.cnf'),
  ]);
  return readFile(at('ca.pem'), 'utf8');
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------
// Tar writer

export interface TarInput {
  /** Path inside the image, e.g. 'disk/disk.qcow2'. */
  path: string;
  /** A local file whose bytes become the entry (streamed, never loaded). */
  file?: string;
  /** Or the bytes themselves. */
  data?: Buffer | string;
  type?: 'file' | 'directory' | 'symlink' | 'hardlink';
  linkname?: string;
  /** How a path over 100 bytes is written: ustar prefix field (default, when it fits), GNU 'L' entry, or pax header. A link target over 100 bytes: GNU 'K' entry with 'gnu', else pax. */
  longName?: 'ustar' | 'gnu' | 'pax';
  /** How the size is written: octal (default), GNU base-256, or only in a pax header (header field 0). */
  sizeAs?: 'octal' | 'base256' | 'pax';
}

const TYPE_FLAG = { file: '0', directory: '5', symlink: '2', hardlink: '1' } as const;

/** A tar archive of `entries`, streamed: file contents are read as the archive is consumed. */
export async function* tarStream(entries: Iterable<TarInput>): AsyncGenerator<Buffer> {
  for (const e of entries) {
    const type = e.type ?? (e.file !== undefined || e.data !== undefined ? 'file' : 'directory');
    const data = typeof e.data === 'string' ? Buffer.from(e.data) : e.data;
    const size = type !== 'file' ? 0 : data ? data.length : e.file !== undefined ? (await stat(e.file)).size : 0;
    const path = Buffer.from(e.path);
    let name = e.path;
    let prefix = '';
    const gnu = e.longName === 'gnu';
    const pax: Record<string, string> = {};
    if (path.length > 100) {
      const split = e.longName === 'ustar' || e.longName === undefined ? ustarSplit(e.path) : undefined;
      if (split) [prefix, name] = split;
      else if (e.longName === 'pax' || e.longName === undefined) {
        pax.path = e.path;
        name = truncate(e.path, 100);
      } else {
        const long = Buffer.concat([path, Buffer.alloc(1)]);
        yield header({ name: '././@LongLink', size: long.length, flag: 'L', gnu: true });
        yield* padded(long);
        name = truncate(e.path, 100);
      }
    }
    const link = Buffer.from(e.linkname ?? '');
    let linkname = e.linkname;
    if (link.length > 100) {
      linkname = truncate(e.linkname ?? '', 100);
      if (gnu) {
        const long = Buffer.concat([link, Buffer.alloc(1)]);
        yield header({ name: '././@LongLink', size: long.length, flag: 'K', gnu: true });
        yield* padded(long);
      } else {
        pax.linkpath = e.linkname ?? '';
      }
    }
    if (e.sizeAs === 'pax') pax.size = String(size);
    if (Object.keys(pax).length) {
      const records = Buffer.from(
        Object.entries(pax)
          .map(([k, v]) => paxRecord(k, v))
          .join(''),
      );
      yield header({ name: truncate(`PaxHeaders/${posix.basename(e.path)}`, 100), size: records.length, flag: 'x' });
      yield* padded(records);
    }
    yield header({ name, prefix, size, flag: TYPE_FLAG[type], linkname, gnu, sizeAs: e.sizeAs });
    if (data) yield* padded(data);
    else if (type === 'file' && e.file !== undefined) {
      let n = 0;
      for await (const c of createReadStream(e.file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
        n += c.length;
        yield c;
      }
      if (n !== size) throw new Error(`${e.file} changed size while it was archived`);
      if (size % 512) yield Buffer.alloc(512 - (size % 512));
    }
  }
  yield Buffer.alloc(1024);
}

function* padded(b: Buffer): Generator<Buffer> {
  if (b.length) yield b;
  if (b.length % 512) yield Buffer.alloc(512 - (b.length % 512));
}

function truncate(s: string, bytes: number): string {
  return Buffer.from(s).subarray(0, bytes).toString('utf8');
}

function ustarSplit(p: string): [string, string] | undefined {
  for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) {
    const prefix = p.slice(0, i);
    const name = p.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100 && name !== '') return [prefix, name];
  }
  return undefined;
}

/** "<len> key=value\n" where len counts itself. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

function header(h: { name: string; prefix?: string; size: number; flag: string; linkname?: string; gnu?: boolean; sizeAs?: TarInput['sizeAs'] }): Buffer {
  const b = Buffer.alloc(512);
  const octal = (v: number, off: number, len: number) => b.write(`${v.toString(8).padStart(len - 1, '0')}\0`, off, len, 'latin1');
  b.write(h.name, 0, 100, 'utf8');
  octal(h.flag === '5' ? 0o755 : 0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  if (h.sizeAs === 'base256') {
    b[124] = 0x80;
    b.writeBigUInt64BE(BigInt(h.size), 128);
  } else if (h.sizeAs === 'pax') {
    octal(0, 124, 12);
  } else {
    octal(h.size, 124, 12);
  }
  octal(1_700_000_000, 136, 12);
  b.fill(0x20, 148, 156);
  b.write(h.flag, 156, 1, 'latin1');
  if (h.linkname) b.write(h.linkname, 157, 100, 'utf8');
  // GNU headers have no prefix field: a reader must not take those bytes for one.
  b.write(h.gnu ? 'ustar  \0' : 'ustar\x0000', 257, 8, 'latin1');
  b.write('root', 265, 32, 'latin1');
  b.write('root', 297, 32, 'latin1');
  if (h.prefix) b.write(h.prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

// ---------------------------------------------------------------------------------------
// Layers and push

export interface LayerBlob {
  /** sha256 of the blob as stored (compressed). */
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar (the config's rootfs.diff_ids). */
  diffId: string;
  mediaType: string;
}

/** Writes the tar of `entries` to `dest`, gzipped unless told not to, hashing on the way. */
export async function writeLayer(entries: TarInput[], dest: string, opts: { gzip?: boolean } = {}): Promise<LayerBlob> {
  const diff = createHash('sha256');
  const blob = createHash('sha256');
  let size = 0;
  const tap = (h: Hash, count: boolean) =>
    async function* (src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
      for await (const c of src) {
        h.update(c);
        if (count) size += c.length;
        yield c;
      }
    };
  const gzip = opts.gzip !== false;
  if (gzip) await pipeline(tarStream(entries), tap(diff, false), createGzip({ level: 1 }), tap(blob, true), createWriteStream(dest));
  else await pipeline(tarStream(entries), tap(blob, true), createWriteStream(dest));
  const blobDigest = `sha256:${blob.digest('hex')}`;
  return {
    digest: blobDigest,
    size,
    diffId: gzip ? `sha256:${diff.digest('hex')}` : blobDigest,
    mediaType: gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar',
  };
}

export interface PushOptions {
  /** Manifest flavour: OCI image manifest (default) or Docker schema 2. */
  format?: 'oci' | 'docker';
  /** Gzip the layers (default true). */
  gzip?: boolean;
  architecture?: string;
  /** The registry serves HTTPS with a certificate from this CA. */
  caPem?: string;
}

export interface PushedManifest {
  digest: string;
  size: number;
  mediaType: string;
}

const MT = {
  oci: {
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    index: 'application/vnd.oci.image.index.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
    tar: 'application/vnd.oci.image.layer.v1.tar',
  },
  docker: {
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
    tar: 'application/vnd.docker.image.rootfs.diff.tar',
  },
} as const;

/**
 * Pushes an image whose layers (first = bottom) hold the given files, and tags it. Each
 * layer is written as a (gzip) tar to a temporary file and uploaded from there.
 */
export async function pushDiskImage(registry: string, repository: string, tag: string, layers: TarInput[][], opts: PushOptions = {}): Promise<PushedManifest> {
  const mt = MT[opts.format ?? 'oci'];
  const dir = await mkdtemp(join(tmpdir(), 'vessel-push-'));
  try {
    const blobs: LayerBlob[] = [];
    for (const [i, entries] of layers.entries()) {
      const file = join(dir, `layer${i}`);
      const blob = await writeLayer(entries, file, { gzip: opts.gzip });
      await pushBlob(registry, repository, file, blob.digest, opts.caPem);
      await unlink(file);
      blobs.push({ ...blob, mediaType: opts.gzip === false ? mt.tar : mt.gzip });
    }
    const config = Buffer.from(
      JSON.stringify({
        architecture: opts.architecture ?? 'amd64',
        os: 'linux',
        config: {},
        rootfs: { type: 'layers', diff_ids: blobs.map((b) => b.diffId) },
      }),
    );
    const configDigest = sha256(config);
    await pushBlob(registry, repository, config, configDigest, opts.caPem);
    const manifest = {
      schemaVersion: 2,
      mediaType: mt.manifest,
      config: { mediaType: mt.config, digest: configDigest, size: config.length },
      layers: blobs.map((b) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size })),
    };
    return await pushManifest(registry, repository, tag, Buffer.from(JSON.stringify(manifest)), mt.manifest, opts.caPem);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Pushes an index (manifest list) over manifests already in the repository. */
export async function pushIndex(
  registry: string,
  repository: string,
  tag: string,
  manifests: (PushedManifest & { platform: { os: string; architecture: string; variant?: string } })[],
  opts: { format?: 'oci' | 'docker'; caPem?: string } = {},
): Promise<PushedManifest> {
  const mt = MT[opts.format ?? 'oci'];
  const body = {
    schemaVersion: 2,
    mediaType: mt.index,
    manifests: manifests.map((m) => ({ mediaType: m.mediaType, digest: m.digest, size: m.size, platform: m.platform })),
  };
  return pushManifest(registry, repository, tag, Buffer.from(JSON.stringify(body)), mt.index, opts.caPem);
}

/** Monolithic upload: POST /v2/<name>/blobs/uploads/, then PUT <location>?digest=. */
export async function pushBlob(registry: string, repository: string, content: string | Buffer, digest: string, caPem?: string): Promise<void> {
  const base = `${caPem ? 'https' : 'http'}://${registry}`;
  const start = await request('POST', `${base}/v2/${repository}/blobs/uploads/`, { 'content-length': '0' }, undefined, caPem);
  if (start.status !== 202 || !start.location) throw new Error(`starting an upload to ${repository} answered ${start.status}: ${start.body.toString()}`);
  const url = new URL(start.location, base);
  url.searchParams.set('digest', digest);
  const size = typeof content === 'string' ? (await stat(content)).size : content.length;
  const put = await request('PUT', url.toString(), { 'content-type': 'application/octet-stream', 'content-length': String(size) }, content, caPem);
  if (put.status !== 201) throw new Error(`uploading ${digest} to ${repository} answered ${put.status}: ${put.body.toString()}`);
}

export async function pushManifest(
  registry: string,
  repository: string,
  reference: string,
  body: Buffer,
  mediaType: string,
  caPem?: string,
): Promise<PushedManifest> {
  const url = `${caPem ? 'https' : 'http'}://${registry}/v2/${repository}/manifests/${reference}`;
  const r = await request('PUT', url, { 'content-type': mediaType, 'content-length': String(body.length) }, body, caPem);
  if (r.status !== 201) throw new Error(`pushing manifest ${repository}:${reference} answered ${r.status}: ${r.body.toString()}`);
  return { digest: sha256(body), size: body.length, mediaType };
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** One HTTP(S) request; `body` is bytes or the path of a file to stream; `caPem` for HTTPS. */
export function request(
  method: string,
  url: string,
  headers: Record<string, string> = {},
  body?: Buffer | string,
  caPem?: string,
): Promise<{ status: number; location?: string; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const lib = url.startsWith('https:') ? https : http;
    const req = lib.request(url, { method, headers, agent: false, ...(caPem ? { ca: caPem } : {}) }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location, headers: res.headers, body: Buffer.concat(parts) }));
    });
    req.on('error', reject);
    if (typeof body === 'string') createReadStream(body).on('error', reject).pipe(req);
    else req.end(body);
  });
}
