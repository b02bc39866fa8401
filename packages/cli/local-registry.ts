/**
 * The local registry `vessel up` serves the tiny golden image from, so that the image reaches
 * `vessel-images/tiny` through the same pipeline as any golden image (a DataImportCron polls
 * it, the agent imports it). A read-only OCI distribution endpoint in this process, on
 * 127.0.0.1 only: one repository, one tag, one image whose single uncompressed layer is the
 * containerDisk layout (the disk file under /disk/). GET and HEAD of /v2/, of the manifest (by
 * tag or digest) and of the two blobs; any other method is 405 UNSUPPORTED, anything else 404.
 * Uncompressed, because the disk is a small qcow2 and gunzip would cost the importer more than
 * loopback bytes do. The digests depend only on the disk file's bytes (fixed tar header, fixed
 * config), so the same disk gives the same digest on every start and a poll imports nothing new.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename } from 'node:path';

export const LOCAL_REGISTRY_ADDRESS = '127.0.0.1';

const MT = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
} as const;

export interface LocalRegistryOptions {
  /** The disk image file served as the image's /disk/<name>. */
  disk: string;
  /** Repository and tag, e.g. vessel/tiny and latest. */
  repository: string;
  tag: string;
  /** The port to listen on; 0 or absent: any free port. */
  port?: number;
}

export interface LocalRegistry {
  address: string;
  port: number;
  /** The image's URL as a DataVolume or DataImportCron names it: docker://127.0.0.1:PORT/repo:tag. */
  url: string;
  /** The manifest's digest (sha256:...), what a poll of the tag returns. */
  digest: string;
  close(): Promise<void>;
}

/** A ustar header for one regular file (fixed mode, owner and mtime: the bytes depend on name and size only). */
export function tarHeader(name: string, size: number): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name over 100 bytes: ${name}`);
  if (size >= 8 * 1024 ** 3) throw new Error('the local registry serves disks under 8 GiB (ustar size field)');
  const b = Buffer.alloc(512);
  const octal = (v: number, off: number, len: number) => b.write(`${v.toString(8).padStart(len - 1, '0')}\0`, off, len, 'latin1');
  b.write(name, 0, 100, 'utf8');
  octal(0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  octal(size, 124, 12);
  octal(0, 136, 12);
  b.fill(0x20, 148, 156);
  b.write('0', 156, 1, 'latin1');
  b.write('ustar\x0000', 257, 8, 'latin1');
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

/** The layer's bytes after the file's: padding to 512 and the two zero blocks that end a tar. */
function tarTrailer(size: number): Buffer {
  return Buffer.alloc((size % 512 ? 512 - (size % 512) : 0) + 1024);
}

/** The image (its manifest and config) for a layer of this digest and size, as fixed JSON. */
export function imageFor(layer: { digest: string; size: number }): { manifest: Buffer; config: Buffer } {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [layer.digest] } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.manifest,
      config: { mediaType: MT.config, digest: sha256(config), size: config.length },
      layers: [{ mediaType: MT.layer, digest: layer.digest, size: layer.size }],
    }),
  );
  return { manifest, config };
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** Starts the registry; the disk file is read once for its digest, then streamed per blob request. */
export async function startLocalRegistry(opts: LocalRegistryOptions): Promise<LocalRegistry> {
  const { size, mtimeMs } = await stat(opts.disk);
  const header = tarHeader(`disk/${basename(opts.disk)}`, size);
  const trailer = tarTrailer(size);
  const h = createHash('sha256').update(header);
  for await (const c of createReadStream(opts.disk, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) h.update(c);
  h.update(trailer);
  const layer = { digest: `sha256:${h.digest('hex')}`, size: header.length + size + trailer.length };
  const { manifest, config } = imageFor(layer);
  const digest = sha256(manifest);
  const prefix = `/v2/${opts.repository}/`;

  const server = http.createServer((req, res) => {
    const reply = (status: number, headers: Record<string, string | number>, body?: Buffer) => {
      res.writeHead(status, { 'docker-distribution-api-version': 'registry/2.0', ...headers });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const error = (status: number, code: string, message: string) => {
      const body = Buffer.from(JSON.stringify({ errors: [{ code, message }] }));
      reply(status, { 'content-type': 'application/json', 'content-length': body.length }, body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return error(405, 'UNSUPPORTED', 'this registry is read-only');
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path === '/v2/' || path === '/v2') return reply(200, { 'content-type': 'application/json', 'content-length': 2 }, Buffer.from('{}'));
    if (!path.startsWith(prefix)) return error(404, 'NAME_UNKNOWN', 'repository name not known to registry');
    const [kind, ref, ...rest] = path.slice(prefix.length).split('/');
    if (rest.length) return error(404, 'NAME_UNKNOWN', 'repository name not known to registry');
    if (kind === 'manifests' && (ref === opts.tag || ref === digest)) {
      return reply(200, { 'content-type': MT.manifest, 'content-length': manifest.length, 'docker-content-digest': digest }, manifest);
    }
    if (kind === 'manifests') return error(404, 'MANIFEST_UNKNOWN', 'manifest unknown');
    if (kind === 'blobs' && ref === sha256(config)) {
      return reply(200, { 'content-type': 'application/octet-stream', 'content-length': config.length, 'docker-content-digest': ref }, config);
    }
    if (kind !== 'blobs' || ref !== layer.digest) return error(404, 'BLOB_UNKNOWN', 'blob unknown to registry');
    res.writeHead(200, {
      'docker-distribution-api-version': 'registry/2.0',
      'content-type': 'application/octet-stream',
      'content-length': layer.size,
      'docker-content-digest': layer.digest,
    });
    if (req.method === 'HEAD') return res.end();
    void streamLayer(res, opts.disk, header, trailer, size, mtimeMs);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, LOCAL_REGISTRY_ADDRESS, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    address: LOCAL_REGISTRY_ADDRESS,
    port,
    url: `docker://${LOCAL_REGISTRY_ADDRESS}:${port}/${opts.repository}:${opts.tag}`,
    digest,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** The layer: header, the file (which must not have changed since its digest was taken), trailer. */
async function streamLayer(res: http.ServerResponse, file: string, header: Buffer, trailer: Buffer, size: number, mtimeMs: number): Promise<void> {
  try {
    const now = await stat(file);
    // A changed file would no longer match the digest the client verifies: cut the response so it retries, rather than lie.
    if (now.size !== size || now.mtimeMs !== mtimeMs) throw new Error(`${file} changed since the registry started`);
    res.write(header);
    for await (const c of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
      if (!res.write(c))
        await new Promise<void>((resolve) => {
          const done = () => {
            res.off('drain', done);
            res.off('close', done);
            resolve();
          };
          res.on('drain', done);
          res.on('close', done);
        });
      if (res.destroyed) return;
    }
    res.end(trailer);
  } catch {
    res.destroy();
  }
}
