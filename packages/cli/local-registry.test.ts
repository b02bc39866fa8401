/**
 * The local registry `vessel up` serves: the controllers' poll and the agent's importer read
 * it (only through the one allowed loopback pair), the disk comes out byte for byte, the
 * digest is the same on every start, and it refuses writes.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { openRegistryDisk, registryInsecure } from '../agent/storage/registry.ts';
import { refusalReason } from '../agent/storage/egress.ts';
import { registryDigest } from '../controllers/dataimportcron-poll.ts';
import { startLocalRegistry, tarHeader, type LocalRegistry } from './local-registry.ts';

let dir: string;
let disk: string;
let content: Buffer;
let reg: LocalRegistry;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-local-registry-'));
  disk = join(dir, 'tiny.qcow2');
  content = randomBytes(3 * 1024 * 1024 + 77); // not a multiple of 512: the tar padding is exercised
  await writeFile(disk, content);
  reg = await startLocalRegistry({ disk, repository: 'vessel/tiny', tag: 'latest' });
});

after(async () => {
  await reg?.close();
  await rm(dir, { recursive: true, force: true });
});

test('listens on 127.0.0.1 and names its image docker://127.0.0.1:PORT/repo:tag', () => {
  assert.equal(reg.address, '127.0.0.1');
  assert.equal(reg.url, `docker://127.0.0.1:${reg.port}/vessel/tiny:latest`);
  assert.match(reg.digest, /^sha256:[0-9a-f]{64}$/);
});

test('the poll reads its digest through the allowed pair only', async () => {
  const allowed = [{ address: reg.address, port: reg.port }];
  assert.equal(await registryDigest(reg.url, { allowed }), reg.digest);
  await assert.rejects(registryDigest(reg.url, {}), /unreachable from the poller/);
  await assert.rejects(registryDigest(reg.url, { allowed: [{ address: reg.address, port: reg.port + 1 }] }), /unreachable from the poller/);
});

test("the importer's egress lets exactly that pair through, and pulls the disk byte for byte", async () => {
  const egress = { allowed: [{ address: reg.address, port: reg.port }] };
  assert.equal(refusalReason('127.0.0.1', reg.port, egress), undefined);
  assert.equal(refusalReason('127.0.0.1', reg.port + 1, egress), 'a loopback address');
  assert.equal(refusalReason('127.0.0.2', reg.port, egress), 'a loopback address');
  assert.equal(registryInsecure(reg.url, egress), true);
  assert.equal(registryInsecure(reg.url, {}), false);
  const got = await openRegistryDisk({ url: `docker://127.0.0.1:${reg.port}/vessel/tiny@${reg.digest}`, insecure: true, egress });
  assert.equal(got.file, 'disk/tiny.qcow2');
  assert.equal(got.size, content.length);
  assert.equal(got.digest, reg.digest);
  const parts: Buffer[] = [];
  for await (const c of got.stream) parts.push(c as Buffer);
  assert.ok(Buffer.concat(parts).equals(content));
});

test('is read-only: writes are 405, unknown names 404', async () => {
  const base = `http://127.0.0.1:${reg.port}`;
  for (const [method, path] of [
    ['PUT', '/v2/vessel/tiny/manifests/latest'],
    ['POST', '/v2/vessel/tiny/blobs/uploads/'],
    ['DELETE', `/v2/vessel/tiny/manifests/${reg.digest}`],
    ['PATCH', '/v2/vessel/tiny/blobs/uploads/x'],
  ]) {
    const r = await fetch(base + path, { method, body: method === 'DELETE' ? undefined : 'x' });
    assert.equal(r.status, 405, `${method} ${path}`);
  }
  assert.equal((await fetch(`${base}/v2/other/manifests/latest`)).status, 404);
  assert.equal((await fetch(`${base}/v2/vessel/tiny/manifests/v2`)).status, 404);
  assert.equal((await fetch(`${base}/v2/vessel/tiny/blobs/sha256:${'0'.repeat(64)}`)).status, 404);
  assert.equal((await fetch(`${base}/v2/`)).status, 200);
});

test('the same disk gives the same digest on another start (and another port)', async () => {
  const again = await startLocalRegistry({ disk, repository: 'vessel/tiny', tag: 'latest' });
  try {
    assert.equal(again.digest, reg.digest);
  } finally {
    await again.close();
  }
});

test('tar headers carry a valid checksum and the size in octal', () => {
  const h = tarHeader('disk/tiny.qcow2', 12345);
  assert.equal(h.length, 512);
  assert.equal(h.subarray(124, 135).toString('latin1'), (12345).toString(8).padStart(11, '0'));
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
  assert.equal(parseInt(h.subarray(148, 154).toString('latin1'), 8), sum);
  assert.throws(() => tarHeader('x'.repeat(101), 1), /over 100 bytes/);
});
