/**
 * The registry source against an in-process fake registry (node:http), for the cases a real
 * registry will not produce on demand: every tar header flavour, whiteouts, digest
 * mismatches, platform indexes, Bearer and Basic auth, storage redirects, truncation,
 * stalls and aborts. The tar reader is also checked against archives made by GNU tar.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import type { EgressPolicy } from './egress.ts';
import { ImportError } from './errors.ts';
import { importDisk } from './import.ts';
import { normalizePath, openRegistryDisk, parseChallenge, parseRegistryUrl, readTar, type RegistryDiskOptions } from './registry.ts';
import { tarStream, type TarInput } from './testing-registry.ts';

/** The test registries are on loopback, which the importer refuses unless told (see egress.test.ts). */
const LAB: EgressPolicy = { allowLoopback: true };

// ---------------------------------------------------------------------------------------
// Fake registry

/** Bytes, or a generator for blobs too large to hold (served with backpressure). */
type Blob = Buffer | { stream: () => Readable; size: number };
interface Seen {
  method: string;
  url: string;
  authorization?: string;
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const GZ = 'application/vnd.oci.image.layer.v1.tar+gzip';

class FakeRegistry {
  server!: http.Server;
  storage!: http.Server;
  host = '';
  storageUrl = '';
  readonly blobs = new Map<string, Blob>();
  /** key: "repo:tag" or "repo@digest" */
  readonly manifests = new Map<string, { body: Buffer; type: string }>();
  readonly seen: Seen[] = [];
  readonly storageSeen: Seen[] = [];
  auth: 'none' | 'bearer' | 'basic' = 'none';
  /** Bearer: the token service requires these Basic credentials (else anonymous tokens). */
  tokenCreds?: string;
  basicCreds = 'user:secret';
  /** Blob GETs redirect to the storage server through this many hops. */
  redirectHops = 0;
  /** Special answers for one path, before the normal routes. */
  hook?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean;
  /** Bytes written for blob bodies (to see backpressure). */
  blobBytesSent = 0;

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.storage = http.createServer((req, res) => this.handleStorage(req, res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    await new Promise<void>((r) => this.storage.listen(0, '127.0.0.1', r));
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    this.storageUrl = `http://127.0.0.1:${(this.storage.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const s of [this.server, this.storage]) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
  }

  reset(): void {
    this.auth = 'none';
    this.tokenCreds = undefined;
    this.redirectHops = 0;
    this.hook = undefined;
    this.seen.length = 0;
    this.storageSeen.length = 0;
    this.blobBytesSent = 0;
  }

  url(ref: string): string {
    return `docker://${this.host}/${ref}`;
  }

  addBlob(content: Buffer): { digest: string; size: number } {
    const digest = sha(content);
    this.blobs.set(digest, content);
    return { digest, size: content.length };
  }

  /** Pushes an image of these layer blobs; returns the manifest digest. */
  addImage(
    repo: string,
    tag: string,
    layers: { digest: string; size: number; mediaType?: string }[],
    type = OCI_MANIFEST,
  ): { digest: string; size: number; mediaType: string } {
    const config = this.addBlob(Buffer.from('{"architecture":"amd64","os":"linux"}'));
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: type,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: layers.map((l) => ({ mediaType: GZ, ...l })),
      }),
    );
    return this.addManifest(repo, tag, body, type);
  }

  addManifest(repo: string, tag: string, body: Buffer, type: string): { digest: string; size: number; mediaType: string } {
    const digest = sha(body);
    this.manifests.set(`${repo}:${tag}`, { body, type });
    this.manifests.set(`${repo}@${digest}`, { body, type });
    return { digest, size: body.length, mediaType: type };
  }

  private authorized(req: http.IncomingMessage, res: http.ServerResponse, repo: string): boolean {
    const a = req.headers.authorization;
    if (this.auth === 'bearer' && a !== `Bearer token-for-${repo}`) {
      res.writeHead(401, {
        'www-authenticate': `Bearer realm="http://${this.host}/token",service="fake-registry",scope="repository:${repo}:pull"`,
        'content-type': 'application/json',
      });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return false;
    }
    if (this.auth === 'basic' && a !== `Basic ${Buffer.from(this.basicCreds).toString('base64')}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"' });
      res.end();
      return false;
    }
    return true;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.seen.push({ method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization });
    if (this.hook?.(req, res)) return;
    const url = new URL(req.url ?? '/', `http://${this.host}`);
    if (url.pathname === '/token') {
      const scope = url.searchParams.get('scope') ?? '';
      const repo = /^repository:(.+):pull$/.exec(scope)?.[1];
      if (url.searchParams.get('service') !== 'fake-registry' || !repo) {
        res.writeHead(400);
        res.end();
        return;
      }
      if (this.tokenCreds && req.headers.authorization !== `Basic ${Buffer.from(this.tokenCreds).toString('base64')}`) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"errors":[{"code":"UNAUTHORIZED","message":"incorrect username or password"}]}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: `token-for-${repo}`, expires_in: 300 }));
      return;
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    if (!m) {
      res.writeHead(404);
      res.end();
      return;
    }
    const [, repo, kind, ref] = m;
    if (!this.authorized(req, res, repo)) return;
    if (kind === 'manifests') {
      const man = this.manifests.get(`${repo}${ref.includes(':') ? '@' : ':'}${ref}`);
      if (!man) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}');
        return;
      }
      res.writeHead(200, { 'content-type': man.type, 'docker-content-digest': sha(man.body) });
      res.end(man.body);
      return;
    }
    if (this.redirectHops > 0) {
      res.writeHead(307, { location: `${this.storageUrl}/hop/${this.redirectHops - 1}/${ref}?X-Amz-Signature=abc` });
      res.end();
      return;
    }
    this.sendBlob(ref, res);
  }

  private handleStorage(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.storageSeen.push({ method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization });
    const m = /^\/hop\/(\d+)\/([^/?]+)/.exec(req.url ?? '');
    if (!m) {
      res.writeHead(404);
      res.end();
      return;
    }
    const n = Number(m[1]);
    if (n > 0) {
      res.writeHead(302, { location: `/hop/${n - 1}/${m[2]}` });
      res.end();
      return;
    }
    this.sendBlob(m[2], res);
  }

  private sendBlob(digest: string, res: http.ServerResponse): void {
    const blob = this.blobs.get(digest);
    if (!blob) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}');
      return;
    }
    if (Buffer.isBuffer(blob)) {
      res.writeHead(200, { 'content-length': blob.length, 'content-type': 'application/octet-stream' });
      res.end(blob);
      this.blobBytesSent += blob.length;
      return;
    }
    res.writeHead(200, { 'content-length': blob.size });
    const src = blob.stream();
    src.on('data', (c) => {
      this.blobBytesSent += c.length;
    });
    src.pipe(res);
    res.on('close', () => src.destroy());
  }
}

async function tarBuffer(entries: TarInput[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of tarStream(entries)) parts.push(c);
  return Buffer.concat(parts);
}

/** A gzip tar layer blob in the fake registry. */
async function layer(
  fake: FakeRegistry,
  entries: TarInput[],
  opts: { gzip?: boolean; mediaType?: string } = {},
): Promise<{ digest: string; size: number; mediaType: string }> {
  const tar = await tarBuffer(entries);
  const blob = opts.gzip === false ? tar : gzipSync(tar);
  return { ...fake.addBlob(blob), mediaType: opts.mediaType ?? GZ };
}

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function pull(opts: Partial<RegistryDiskOptions> & { url: string }): Promise<{ file: string; size: number; digest: string; data: Buffer }> {
  const d = await openRegistryDisk({ egress: LAB, insecure: true, ...opts });
  return { file: d.file, size: d.size, digest: d.digest, data: await readAll(d.stream) };
}

function isImportError(code: string, msg?: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof ImportError, `expected ImportError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (msg) assert.match(e.message, msg);
    return true;
  };
}

const DISK = Buffer.from('QFI\xfb pretend disk bytes '.repeat(300), 'latin1');

// ---------------------------------------------------------------------------------------

describe('parseRegistryUrl', () => {
  test('splits host, repository and tag or digest, with Docker Hub defaults', () => {
    const d = `sha256:${'a'.repeat(64)}`;
    const cases: [string, ReturnType<typeof parseRegistryUrl>][] = [
      ['docker://127.0.0.1:5000/disks/fedora:40', { registry: '127.0.0.1:5000', repository: 'disks/fedora', reference: '40' }],
      ['docker://quay.io/containerdisks/fedora', { registry: 'quay.io', repository: 'containerdisks/fedora', reference: 'latest' }],
      [`docker://quay.io/containerdisks/fedora@${d}`, { registry: 'quay.io', repository: 'containerdisks/fedora', reference: d }],
      [`docker://quay.io/containerdisks/fedora:40@${d}`, { registry: 'quay.io', repository: 'containerdisks/fedora', reference: d }],
      ['docker://localhost:5000/a_b/c-d.e:v1.2-rc_3', { registry: 'localhost:5000', repository: 'a_b/c-d.e', reference: 'v1.2-rc_3' }],
      ['docker://localhost/x', { registry: 'localhost', repository: 'x', reference: 'latest' }],
      [
        'docker://kubevirt/fedora-cloud-container-disk-demo',
        { registry: 'docker.io', repository: 'kubevirt/fedora-cloud-container-disk-demo', reference: 'latest' },
      ],
      ['docker://busybox:1.36', { registry: 'docker.io', repository: 'library/busybox', reference: '1.36' }],
      ['docker://index.docker.io/busybox', { registry: 'docker.io', repository: 'library/busybox', reference: 'latest' }],
      ['docker://[::1]:5000/x:y', { registry: '[::1]:5000', repository: 'x', reference: 'y' }],
    ];
    for (const [url, want] of cases) assert.deepEqual(parseRegistryUrl(url), want, url);
  });

  test('refuses anything that is not a valid docker:// reference', () => {
    for (const url of [
      'http://quay.io/x',
      'oci-archive:///tmp/x.tar',
      'quay.io/x:1',
      'docker://',
      'docker://quay.io/',
      'docker://quay.io/Fedora:1',
      'docker://quay.io/x:bad tag',
      'docker://quay.io/x@sha256:abc',
      'docker://quay.io/x:-tag',
      'docker://host:99999/x',
      'docker://quay.io//x',
      'docker://quay.io/x/',
      'docker://ho st/x',
      `docker://quay.io/x:${'t'.repeat(129)}`,
    ]) {
      assert.throws(() => parseRegistryUrl(url), isImportError('InvalidArgument', /docker:\/\//), url);
    }
  });
});

test('parseChallenge reads Bearer and Basic challenges', () => {
  assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"'), {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull' },
  });
  assert.deepEqual(parseChallenge('Basic realm="Registry Realm"'), { scheme: 'basic', params: { realm: 'Registry Realm' } });
  assert.deepEqual(parseChallenge('Bearer realm=https://x/t, service=s'), { scheme: 'bearer', params: { realm: 'https://x/t', service: 's' } });
});

test('normalizePath treats ./disk, /disk and disk alike', () => {
  assert.equal(normalizePath('./disk/disk.img'), 'disk/disk.img');
  assert.equal(normalizePath('/disk/disk.img'), 'disk/disk.img');
  assert.equal(normalizePath('disk//x/'), 'disk/x');
  assert.equal(normalizePath('./'), '');
  assert.equal(normalizePath('../disk/x'), '../disk/x');
});

describe('readTar', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vessel-tar-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function entries(
    src: AsyncIterable<Buffer> | Iterable<Buffer>,
  ): Promise<{ path: string; type: string; size: number; linkname: string; data: string }[]> {
    const out = [];
    for await (const e of readTar(src)) {
      const parts: Buffer[] = [];
      for await (const c of e.body) parts.push(c);
      out.push({ path: e.path, type: e.type, size: e.size, linkname: e.linkname, data: Buffer.concat(parts).toString() });
    }
    return out;
  }

  test('reads every header flavour our writer produces (ustar prefix, GNU L/K, pax path/linkpath/size, base-256)', async () => {
    const long = `disk/${'a'.repeat(80)}/${'b'.repeat(90)}.img`;
    const longer = `disk/${'c'.repeat(200)}.img`;
    const tar = await tarBuffer([
      { path: 'disk', type: 'directory' },
      { path: long, data: 'ustar' },
      { path: longer, data: 'gnu', longName: 'gnu' },
      { path: `${longer}.pax`, data: 'pax and size', longName: 'pax', sizeAs: 'pax' },
      { path: 'disk/b256', data: 'base-256 size', sizeAs: 'base256' },
      { path: 'disk/link', type: 'symlink', linkname: 'b256' },
      { path: 'disk/hard', type: 'hardlink', linkname: `${longer}.pax` },
      { path: 'disk/gnulink', type: 'symlink', linkname: `${longer}.pax`, longName: 'gnu' },
    ]);
    // Split into odd-sized chunks so headers straddle chunk boundaries.
    async function* chunked(): AsyncGenerator<Buffer> {
      for (let i = 0; i < tar.length; i += 333) yield tar.subarray(i, i + 333);
    }
    assert.deepEqual(await entries(chunked()), [
      { path: 'disk', type: 'directory', size: 0, linkname: '', data: '' },
      { path: long, type: 'file', size: 5, linkname: '', data: 'ustar' },
      { path: longer, type: 'file', size: 3, linkname: '', data: 'gnu' },
      { path: `${longer}.pax`, type: 'file', size: 12, linkname: '', data: 'pax and size' },
      { path: 'disk/b256', type: 'file', size: 13, linkname: '', data: 'base-256 size' },
      { path: 'disk/link', type: 'symlink', size: 0, linkname: 'b256', data: '' },
      { path: 'disk/hard', type: 'hardlink', size: 0, linkname: `${longer}.pax`, data: '' },
      { path: 'disk/gnulink', type: 'symlink', size: 0, linkname: `${longer}.pax`, data: '' },
    ]);
    // GNU tar agrees with our writer.
    await writeFile(join(dir, 'ours.tar'), tar);
    const listed = spawnSync('tar', ['-tf', join(dir, 'ours.tar')], { encoding: 'utf8' });
    assert.equal(listed.status, 0, listed.stderr);
    assert.deepEqual(listed.stdout.trim().split('\n'), ['disk', long, longer, `${longer}.pax`, 'disk/b256', 'disk/link', 'disk/hard', 'disk/gnulink']);
  });

  test('reads archives made by GNU tar in gnu, oldgnu, ustar and pax formats', async () => {
    const deep = `disk/${'d'.repeat(99)}`;
    const name = `${deep}/${'e'.repeat(60)}.img`;
    await mkdir(join(dir, 'src', deep), { recursive: true });
    await writeFile(join(dir, 'src', name), 'hello from GNU tar\n');
    for (const format of ['gnu', 'oldgnu', 'ustar', 'pax']) {
      const out = join(dir, `${format}.tar`);
      const r = spawnSync('tar', [`--format=${format}`, '-C', join(dir, 'src'), '-cf', out, './disk'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const got = await entries(createReadStream(out));
      const file = got.find((e) => e.type === 'file');
      assert.deepEqual(file, { path: `./${name}`, type: 'file', size: 19, linkname: '', data: 'hello from GNU tar\n' }, format);
      assert.deepEqual(
        got.filter((e) => e.type === 'directory').map((e) => e.path.replace(/\/$/, '')),
        ['./disk', `./${deep}`],
        format,
      );
    }
  });

  test('refuses a header with a wrong checksum and an archive cut inside an entry', async () => {
    const tar = await tarBuffer([{ path: 'disk/x', data: 'x'.repeat(2000) }]);
    const bad = Buffer.from(tar);
    bad[0] ^= 1;
    await assert.rejects(entries([bad]), isImportError('Corrupt', /checksum/));
    await assert.rejects(entries([tar.subarray(0, 1000)]), isImportError('Truncated'));
    await assert.rejects(entries([tar.subarray(0, 300)]), isImportError('Corrupt', /inside a header/));
  });

  test('refuses a metadata entry (pax header, long name) larger than 4 MiB instead of holding it', async () => {
    const huge = `disk/${'h'.repeat(5 << 20)}`;
    for (const longName of ['pax', 'gnu'] as const) {
      const tar = await tarBuffer([{ path: huge, data: 'x', longName }]);
      await assert.rejects(entries([tar]), isImportError('Corrupt', /a metadata entry is larger than 4 MiB/), longName);
    }
  });
});

describe('openRegistryDisk against a fake registry', () => {
  const fake = new FakeRegistry();
  let work: string;
  before(async () => {
    await fake.start();
    work = await mkdtemp(join(tmpdir(), 'vessel-registry-unit-'));
  });
  after(async () => {
    await fake.stop();
    await rm(work, { recursive: true, force: true });
  });

  test('finds the disk under a GNU long name, returns its bytes, size, path and the manifest digest', async () => {
    fake.reset();
    const path = `./disk/${'x'.repeat(150)}.qcow2`;
    const l = await layer(fake, [
      { path: './disk/', type: 'directory' },
      { path, data: DISK, longName: 'gnu' },
    ]);
    const m = fake.addImage('long/names', 'v1', [l]);
    const got = await pull({ url: fake.url('long/names:v1') });
    assert.equal(got.file, normalizePath(path));
    assert.equal(got.size, DISK.length);
    assert.equal(got.digest, m.digest);
    assert.ok(got.data.equals(DISK));
  });

  test('pax path and size, absolute paths, and a Docker schema 2 manifest', async () => {
    fake.reset();
    const l = await layer(fake, [{ path: `/disk/${'p'.repeat(120)}.img`, data: DISK, longName: 'pax', sizeAs: 'pax' }], {
      mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
    });
    fake.addImage('pax/img', 'v1', [l], 'application/vnd.docker.distribution.manifest.v2+json');
    const got = await pull({ url: fake.url('pax/img:v1') });
    assert.equal(got.file, `disk/${'p'.repeat(120)}.img`);
    assert.ok(got.data.equals(DISK));
  });

  test('walks layers from the top: the disk in the bottom layer is found, a newer disk wins', async () => {
    fake.reset();
    const bottom = await layer(fake, [{ path: 'disk/disk.img', data: 'old disk' }]);
    const middle = await layer(fake, [
      { path: 'etc/motd', data: 'hi' },
      { path: 'usr/share/x', data: 'y'.repeat(5000) },
    ]);
    fake.addImage('layers/a', 'v1', [bottom, middle]);
    assert.equal((await pull({ url: fake.url('layers/a:v1') })).data.toString(), 'old disk');
    const top = await layer(fake, [{ path: 'disk/disk.img', data: 'new disk' }]);
    fake.addImage('layers/a', 'v2', [bottom, middle, top]);
    assert.equal((await pull({ url: fake.url('layers/a:v2') })).data.toString(), 'new disk');
  });

  test('whiteouts in upper layers hide lower disks; unrelated whiteouts do not', async () => {
    fake.reset();
    const bottom = await layer(fake, [{ path: 'disk/disk.img', data: 'disk' }]);
    const cases: [TarInput[], boolean][] = [
      [[{ path: 'disk/.wh.disk.img', data: '' }], false],
      [[{ path: 'disk/.wh..wh..opq', data: '' }], false],
      [[{ path: '.wh.disk', data: '' }], false],
      [[{ path: 'disk', type: 'symlink', linkname: '/elsewhere' }], false],
      [
        [
          { path: 'disk/.wh.other.img', data: '' },
          { path: 'etc/.wh..wh..opq', data: '' },
        ],
        true,
      ],
    ];
    for (const [i, [entries, visible]] of cases.entries()) {
      const upper = await layer(fake, entries);
      fake.addImage('wh/img', `c${i}`, [bottom, upper]);
      const p = pull({ url: fake.url(`wh/img:c${i}`) });
      if (visible) assert.equal((await p).data.toString(), 'disk');
      else await assert.rejects(p, isImportError('UnsupportedFormat', /has no file under \/disk\/: is it a containerDisk\?/), JSON.stringify(entries));
    }
    // A disk added above the opaque whiteout's layer is still there.
    const opq = await layer(fake, [
      { path: 'disk/.wh..wh..opq', data: '' },
      { path: 'disk/new.img', data: 'new' },
    ]);
    fake.addImage('wh/img', 'opq-new', [bottom, opq]);
    assert.equal((await pull({ url: fake.url('wh/img:opq-new') })).data.toString(), 'new');
  });

  test('an image without a disk file says it is not a containerDisk, and names skipped links', async () => {
    fake.reset();
    const l = await layer(fake, [
      { path: 'etc/motd', data: 'hi' },
      { path: 'disk', type: 'directory' },
    ]);
    fake.addImage('nodisk/img', 'v1', [l]);
    await assert.rejects(
      pull({ url: fake.url('nodisk/img:v1') }),
      isImportError('UnsupportedFormat', /image nodisk\/img:v1 has no file under \/disk\/: is it a containerDisk\?/),
    );
    const links = await layer(fake, [
      { path: 'disk/disk.img', type: 'symlink', linkname: '/data/disk.img' },
      { path: 'data/disk.img', data: 'x' },
    ]);
    fake.addImage('nodisk/img', 'v2', [links]);
    await assert.rejects(
      pull({ url: fake.url('nodisk/img:v2') }),
      isImportError('UnsupportedFormat', /skipped disk\/disk\.img \(symlink\): only regular files are read, links are not followed/),
    );
  });

  test('uncompressed layers, and gzip layers whose media type says plain tar', async () => {
    fake.reset();
    const plain = await layer(fake, [{ path: 'disk/disk.img', data: DISK }], { gzip: false, mediaType: 'application/vnd.oci.image.layer.v1.tar' });
    fake.addImage('tar/img', 'plain', [plain]);
    assert.ok((await pull({ url: fake.url('tar/img:plain') })).data.equals(DISK));
    const lying = await layer(fake, [{ path: 'disk/disk.img', data: DISK }], { mediaType: 'application/vnd.oci.image.layer.v1.tar' });
    fake.addImage('tar/img', 'lying', [lying]);
    assert.ok((await pull({ url: fake.url('tar/img:lying') })).data.equals(DISK));
  });

  test('a disk layer whose digest does not match fails the stream at its end, and importDisk leaves nothing', async () => {
    fake.reset();
    // The manifest gives the evil blob's size but the good blob's digest: only the digest can tell.
    const good = gzipSync(await tarBuffer([{ path: 'disk/disk.img', data: DISK }]));
    const evil = gzipSync(await tarBuffer([{ path: 'disk/disk.img', data: Buffer.from(DISK).fill(0x41, 100, 200) }]));
    const digest = sha(good);
    fake.blobs.set(digest, evil);
    fake.addImage('bad/digest', 'v1', [{ digest, size: evil.length }]);
    // A small gzip layer is read ahead whole, so the mismatch may already fail the open.
    await assert.rejects(pull({ url: fake.url('bad/digest:v1') }), isImportError('ChecksumMismatch', /arrived with digest sha256:/));

    // An uncompressed layer altered inside the disk file's data, through importDisk.
    const tar = await tarBuffer([{ path: 'disk/disk.img', data: DISK }]);
    const flipped = Buffer.from(tar);
    flipped[600] ^= 0xff; // inside the disk file's data
    const d2 = fake.addBlob(tar).digest;
    fake.blobs.set(d2, flipped);
    fake.addImage('bad/digest', 'v2', [{ digest: d2, size: tar.length, mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
    const dest = join(work, 'bad-digest');
    await mkdir(dest);
    const disk = await openRegistryDisk({ egress: LAB, url: fake.url('bad/digest:v2'), insecure: true });
    await assert.rejects(
      importDisk({
        egress: LAB,
        source: { kind: 'stream', stream: disk.stream, sizeHint: disk.size },
        dest: join(dest, 'disk.qcow2'),
        maxVirtualSize: 1 << 30,
      }),
      isImportError('ChecksumMismatch', /arrived with digest sha256:/),
    );
    assert.deepEqual(await readdir(dest), []);
  });

  test('a wrong digest in a layer above the disk fails the pull itself', async () => {
    fake.reset();
    const bottom = await layer(fake, [{ path: 'disk/disk.img', data: DISK }]);
    const tar = await tarBuffer([{ path: 'etc/motd', data: 'hello' }]);
    const digest = sha(tar);
    const altered = Buffer.from(tar);
    altered[512] = 0x4a; // "jello"
    fake.blobs.set(digest, altered);
    fake.addImage('bad/upper', 'v1', [bottom, { digest, size: tar.length, mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
    await assert.rejects(pull({ url: fake.url('bad/upper:v1') }), isImportError('ChecksumMismatch'));
  });

  test('pulling by digest checks the manifest digest', async () => {
    fake.reset();
    const l = await layer(fake, [{ path: 'disk/disk.img', data: DISK }]);
    const m = fake.addImage('by/digest', 'v1', [l]);
    const got = await pull({ url: fake.url(`by/digest@${m.digest}`) });
    assert.equal(got.digest, m.digest);
    assert.ok(got.data.equals(DISK));
    const other = `sha256:${'0'.repeat(64)}`;
    fake.manifests.set(`by/digest@${other}`, fake.manifests.get('by/digest:v1')!);
    await assert.rejects(pull({ url: fake.url(`by/digest@${other}`) }), isImportError('ChecksumMismatch', /manifest .* whose digest is/));
  });

  test('an index picks linux/amd64 (plain variant first); no amd64 lists what there is', async () => {
    fake.reset();
    const arm = fake.addImage('multi/img', 'arm', [await layer(fake, [{ path: 'disk/disk.img', data: 'arm64 disk' }])]);
    const v3 = fake.addImage('multi/img', 'v3', [await layer(fake, [{ path: 'disk/disk.img', data: 'amd64 v3 disk' }])]);
    const amd = fake.addImage('multi/img', 'amd', [await layer(fake, [{ path: 'disk/disk.img', data: 'amd64 disk' }])]);
    const att = fake.addImage('multi/img', 'att', [await layer(fake, [{ path: 'attestation.json', data: '{}' }])]);
    for (const type of [OCI_INDEX, 'application/vnd.docker.distribution.manifest.list.v2+json']) {
      const index = fake.addManifest(
        'multi/img',
        'latest',
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: type,
            manifests: [
              { ...arm, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
              { ...v3, platform: { os: 'linux', architecture: 'amd64', variant: 'v3' } },
              { ...amd, platform: { os: 'linux', architecture: 'amd64' } },
              { ...att, platform: { os: 'unknown', architecture: 'unknown' } },
            ],
          }),
        ),
        type,
      );
      const got = await pull({ url: fake.url('multi/img:latest') });
      assert.equal(got.data.toString(), 'amd64 disk', type);
      assert.equal(got.digest, index.digest, 'the digest is the index the URL names');
      assert.equal((await pull({ url: fake.url('multi/img:latest'), architecture: 'arm64' })).data.toString(), 'arm64 disk');
    }
    fake.addManifest(
      'multi/img',
      'armonly',
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [{ ...arm, platform: { os: 'linux', architecture: 'arm64' } }],
        }),
      ),
      OCI_INDEX,
    );
    await assert.rejects(pull({ url: fake.url('multi/img:armonly') }), isImportError('UnsupportedFormat', /no linux\/amd64 variant \(it has: linux\/arm64\)/));
  });

  test('Bearer tokens: anonymous, with credentials, and refused credentials', async () => {
    fake.reset();
    fake.addImage('private/img', 'v1', [await layer(fake, [{ path: 'disk/disk.img', data: DISK }])]);
    fake.auth = 'bearer';
    assert.ok((await pull({ url: fake.url('private/img:v1') })).data.equals(DISK));
    const tokenReq = fake.seen.find((s) => s.url.startsWith('/token'));
    assert.ok(tokenReq);
    assert.equal(new URL(tokenReq.url, 'http://x').searchParams.get('scope'), 'repository:private/img:pull');
    assert.equal(tokenReq.authorization, undefined, 'anonymous token request');
    // Anonymous first, then every later request carries the token: one challenge per pull.
    assert.equal(fake.seen.filter((s) => s.url.startsWith('/token')).length, 1);
    assert.ok(fake.seen.filter((s) => s.url.includes('/blobs/')).every((s) => s.authorization === 'Bearer token-for-private/img'));

    fake.seen.length = 0;
    fake.tokenCreds = 'alice:s3cret';
    assert.ok((await pull({ url: fake.url('private/img:v1'), credentials: { username: 'alice', password: 's3cret' } })).data.equals(DISK));
    assert.equal(fake.seen.find((s) => s.url.startsWith('/token'))?.authorization, `Basic ${Buffer.from('alice:s3cret').toString('base64')}`);
    await assert.rejects(
      pull({ url: fake.url('private/img:v1'), credentials: { username: 'alice', password: 'wrong' } }),
      isImportError('HttpError', /refused the credentials from secretRef .*check accessKeyId and secretKey/),
    );
    await assert.rejects(pull({ url: fake.url('private/img:v1') }), isImportError('HttpError', /requires a user name and password .*secretRef/));
  });

  test('Basic auth: credentials are sent after the challenge; without them the error says to set secretRef', async () => {
    fake.reset();
    fake.addImage('basic/img', 'v1', [await layer(fake, [{ path: 'disk/disk.img', data: DISK }])]);
    fake.auth = 'basic';
    assert.ok((await pull({ url: fake.url('basic/img:v1'), credentials: { username: 'user', password: 'secret' } })).data.equals(DISK));
    await assert.rejects(pull({ url: fake.url('basic/img:v1') }), isImportError('HttpError', /secretRef/));
    await assert.rejects(
      pull({ url: fake.url('basic/img:v1'), credentials: { username: 'user', password: 'nope' } }),
      isImportError('HttpError', /refused the credentials/),
    );
  });

  test('blob downloads follow redirects to storage (without the registry token) up to 5 hops', async () => {
    fake.reset();
    fake.addImage('redir/img', 'v1', [await layer(fake, [{ path: 'disk/disk.img', data: DISK }])]);
    fake.auth = 'bearer';
    fake.redirectHops = 5;
    assert.ok((await pull({ url: fake.url('redir/img:v1') })).data.equals(DISK));
    assert.ok(fake.storageSeen.length >= 5);
    assert.ok(
      fake.storageSeen.every((s) => s.authorization === undefined),
      'the token stays with the registry',
    );
    fake.redirectHops = 6;
    await assert.rejects(pull({ url: fake.url('redir/img:v1') }), isImportError('HttpError', /redirects .* more than 5 times/));
  });

  test('clear errors: missing tag, missing blob, schema 1, zstd layers, refused connection', async () => {
    fake.reset();
    await assert.rejects(
      pull({ url: fake.url('nothing/here:v9') }),
      isImportError('HttpError', new RegExp(`registry ${fake.host.replace(/\./g, '\\.')} has no image nothing/here:v9`)),
    );
    fake.addImage('gone/blob', 'v1', [{ digest: `sha256:${'1'.repeat(64)}`, size: 10 }]);
    await assert.rejects(pull({ url: fake.url('gone/blob:v1') }), isImportError('HttpError', /has no layer sha256:1+ .*push it again/));
    fake.addManifest(
      'old/img',
      'v1',
      Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'old/img', tag: 'v1', fsLayers: [] })),
      'application/vnd.docker.distribution.manifest.v1+prettyjws',
    );
    await assert.rejects(pull({ url: fake.url('old/img:v1') }), isImportError('UnsupportedFormat', /schema 1/));
    const z = fake.addBlob(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4]));
    fake.addImage('zstd/img', 'v1', [{ ...z, mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
    await assert.rejects(pull({ url: fake.url('zstd/img:v1') }), isImportError('UnsupportedFormat', /zstd/));
    const srv = http.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    await assert.rejects(
      pull({ url: `docker://127.0.0.1:${port}/x:y` }),
      isImportError('Unreachable', /cannot connect to http:\/\/127\.0\.0\.1:\d+\/v2\/x\/manifests\/y: the host does not resolve, does not answer/),
    );
  });

  test('a layer cut short by the registry fails the stream as Truncated', async () => {
    fake.reset();
    const blob = gzipSync(await tarBuffer([{ path: 'disk/disk.img', data: Buffer.alloc(1 << 20, 9) }]), { level: 0 });
    const l = { ...fake.addBlob(blob), mediaType: GZ };
    fake.addImage('cut/img', 'v1', [l]);
    fake.hook = (req, res) => {
      if (!req.url?.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': blob.length });
      res.write(blob.subarray(0, blob.length >> 1), () => res.socket?.destroy());
      return true;
    };
    const d = await openRegistryDisk({ egress: LAB, url: fake.url('cut/img:v1'), insecure: true });
    await assert.rejects(readAll(d.stream), isImportError('Truncated'));
  });

  test('a stalled registry times out; an abort stops the stream with Aborted', async () => {
    fake.reset();
    const blob = gzipSync(await tarBuffer([{ path: 'disk/disk.img', data: Buffer.alloc(1 << 20, 9) }]), { level: 0 });
    fake.addImage('stall/img', 'v1', [{ ...fake.addBlob(blob), mediaType: GZ }]);
    fake.hook = (req, res) => {
      if (!req.url?.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': blob.length });
      res.write(blob.subarray(0, 200 << 10));
      return true; // and never more
    };
    const d = await openRegistryDisk({ egress: LAB, url: fake.url('stall/img:v1'), insecure: true, idleTimeoutMs: 300 });
    await assert.rejects(readAll(d.stream), isImportError('HttpError', /no data from .* for 0\.3 s/));

    const ac = new AbortController();
    const d2 = await openRegistryDisk({ egress: LAB, url: fake.url('stall/img:v1'), insecure: true, signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(readAll(d2.stream), isImportError('Aborted'));
    await assert.rejects(openRegistryDisk({ egress: LAB, url: fake.url('stall/img:v1'), insecure: true, signal: ac.signal }), isImportError('Aborted'));
  });

  test('backpressure: a consumer that does not read stops the download (memory stays flat)', async () => {
    fake.reset();
    const big = join(work, 'big.img');
    await writeFile(big, '');
    await truncate(big, 128 << 20); // sparse: reading it costs no disk
    const tar = () => Readable.from(tarStream([{ path: 'disk/disk.img', file: big }]), { objectMode: false });
    const hash = createHash('sha256');
    let size = 0;
    for await (const c of tar()) {
      hash.update(c as Buffer);
      size += (c as Buffer).length;
    }
    const digest = `sha256:${hash.digest('hex')}`;
    fake.blobs.set(digest, { stream: tar, size });
    fake.addImage('big/img', 'v1', [{ digest, size, mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
    const d = await openRegistryDisk({ egress: LAB, url: fake.url('big/img:v1'), insecure: true });
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(fake.blobBytesSent < 32 << 20, `the registry sent ${fake.blobBytesSent} bytes to a consumer that reads nothing`);
    let n = 0;
    for await (const c of d.stream) n += (c as Buffer).length;
    assert.equal(n, 128 << 20);
  });
});
