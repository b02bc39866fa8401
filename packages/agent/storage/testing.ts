/**
 * Test helpers for the storage data plane: a 64 MiB raw disk with known content at several
 * offsets (so a wrong copy shows up in `qemu-img compare`), its conversions to every input
 * format, and a loopback HTTP server with routes that misbehave on purpose (truncation,
 * slow bodies, redirects, 404).
 */
import { spawnSync } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

export const MiB = 1 << 20;

/** Writes a sparse raw disk of `size` (at least 8 MiB) bytes with distinct data at a few offsets. */
export async function makeRawDisk(path: string, size = 64 * MiB): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    const offsets = [0, MiB + 123, Math.floor(size / 16), Math.floor(size / 2) + 7, size - 4096];
    for (const [i, off] of offsets.entries()) {
      const block = Buffer.alloc(i === 2 ? 3 * MiB : 4096);
      for (let j = 0; j < block.length; j++) block[j] = (j * 31 + i * 7 + (j >> 9)) & 0xff;
      block.write(`vessel test block ${i} at ${off}`, 0);
      await fh.write(block, 0, block.length, off);
    }
  } finally {
    await fh.close();
  }
}

/** qemu-img or xz, synchronously, throwing with stderr on failure (test setup only). */
export function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error?.message}`);
  return r.stdout;
}

export async function gzipFile(src: string, dest: string, level = 6): Promise<void> {
  await pipeline(createReadStream(src), createGzip({ level }), createWriteStream(dest));
}

export function xzFile(src: string, dest: string): void {
  sh('sh', ['-c', 'xz -T0 -0 -c -- "$1" > "$2"', 'xz', src, dest]);
}

export interface TestServer {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** URL of a file in the served directory. Routes: /files, /truncate, /slow, /redirect, /chunked. */
  file(name: string, route?: 'files' | 'truncate' | 'slow' | 'redirect' | 'chunked'): string;
  close(): Promise<void>;
}

/**
 * Serves `dir` on 127.0.0.1:0.
 *  /files/<n>     the file, with Content-Length
 *  /chunked/<n>   the file, chunked (no length)
 *  /truncate/<n>  announces the full length, sends half, then drops the connection
 *  /slow/<n>      64 KiB every 20 ms (for aborts mid-transfer)
 *  /redirect/<n>  302 to /files/<n>
 */
export async function startServer(dir: string): Promise<TestServer> {
  const server = http.createServer((req, res) => {
    void (async () => {
      const [, route, name] = (req.url ?? '').split('/');
      const path = join(dir, basename(decodeURIComponent(name ?? '')));
      const st = await stat(path).catch(() => undefined); // any unreadable file is a 404 to this test server
      if (!st || !st.isFile()) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found\n');
        return;
      }
      if (route === 'redirect') {
        res.writeHead(302, { location: `/files/${name}` });
        res.end();
        return;
      }
      if (route === 'files') {
        res.writeHead(200, { 'content-length': st.size });
        await pipeline(createReadStream(path), res);
      } else if (route === 'chunked') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        await pipeline(createReadStream(path), res);
      } else if (route === 'truncate') {
        res.writeHead(200, { 'content-length': st.size });
        await pipeline(createReadStream(path, { end: Math.floor(st.size / 2) - 1 }), res, { end: false });
        res.socket?.destroy();
      } else if (route === 'slow') {
        res.writeHead(200, { 'content-length': st.size });
        for await (const chunk of createReadStream(path, { highWaterMark: 64 << 10 })) {
          if (res.destroyed) return;
          res.write(chunk);
          await new Promise((r) => setTimeout(r, 20));
        }
        res.end();
      } else {
        res.writeHead(404);
        res.end();
      }
    })().catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    file: (name, route = 'files') => `${url}/${route}/${encodeURIComponent(name)}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
