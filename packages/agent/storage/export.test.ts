import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { streamVolume } from './export.ts';

const MiB = 1 << 20;
let dir: string;
let img: string;
const expected = Buffer.alloc(8 * MiB);
expected.fill(0x11, 0, 64 * 1024);
expected.fill(0x22, 5 * MiB, 6 * MiB);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-export-unit-'));
  // A linked clone: the export follows the backing chain.
  const base = join(dir, 'base.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', base]);
  img = join(dir, 'disk.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', base, img]);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 5M 1M', img]);
});
after(() => rm(dir, { recursive: true, force: true }));

async function collect(format: 'raw' | 'gzip'): Promise<{ body: Buffer; headers: Record<string, string> }> {
  const out = new PassThrough();
  let headers: Record<string, string> = {};
  const sink = Object.assign(out, {
    writeHead: (_code: number, h: Record<string, string>) => {
      headers = h;
    },
  });
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await streamVolume(img, format, sink);
  return { body: Buffer.concat(chunks), headers };
}

test('raw is the disk with its backing chain, byte for byte, with its length; gzip unpacks to it; no temporary stays', async () => {
  const raw = await collect('raw');
  assert.equal(raw.headers['Content-Length'], String(8 * MiB));
  assert.equal(sha(raw.body), sha(expected));
  const gz = await collect('gzip');
  assert.equal(gz.headers['Content-Type'], 'application/gzip');
  assert.equal(sha(gunzipSync(gz.body)), sha(expected));
  assert.ok(gz.body.length < 200 * 1024, `gzip of 8 MiB with 1 MiB of a pattern: ${gz.body.length} bytes`);
  assert.deepEqual((await readdir(dir)).sort(), ['base.qcow2', 'disk.qcow2']);
});

test('a file that is not qcow2 fails before any byte is sent, and leaves nothing', async () => {
  const bad = join(dir, 'bad.qcow2');
  execFileSync('dd', ['if=/dev/zero', `of=${bad}`, 'bs=4096', 'count=4', 'status=none']);
  let headers = false;
  const sink = Object.assign(new PassThrough(), { writeHead: () => (headers = true) });
  await assert.rejects(streamVolume(bad, 'raw', sink));
  assert.equal(headers, false);
  await rm(bad);
  assert.deepEqual((await readdir(dir)).sort(), ['base.qcow2', 'disk.qcow2']);
});
