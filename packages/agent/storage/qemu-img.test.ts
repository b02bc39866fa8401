/**
 * The qemu-img wrapper against the real binary: argv building, JSON parsing, progress
 * parsing (including records split across chunks), exit-code handling of check/compare.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { QemuImgError } from './errors.ts';
import * as qemuImg from './qemu-img.ts';
import { MiB, makeRawDisk } from './testing.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-qemu-img-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('progressParser handles records split across chunks and ignores repeats', () => {
  const seen: number[] = [];
  const feed = qemuImg.progressParser((p) => seen.push(p));
  feed('    (0.00/100%)\r    (12.');
  feed('50/100%)\r    (12.50/100%)\r');
  feed('    (100.00/100%)\r\n');
  assert.deepEqual(seen, [0, 12.5, 100]);
});

test('create, info, resize, check, convert with progress, compare', async () => {
  const raw = join(dir, 'a.raw');
  await makeRawDisk(raw, 16 * MiB);
  const q = join(dir, 'a.qcow2');
  const seen: number[] = [];
  await qemuImg.convert(raw, q, {
    srcFormat: 'raw',
    outFormat: 'qcow2',
    onProgress: (p) => seen.push(p),
    outOfOrder: true,
    coroutines: 16,
    options: { cluster_size: '65536' },
  });
  assert.equal(seen.at(-1), 100);
  const inf = await qemuImg.info(q, { format: 'qcow2', forceShare: true });
  assert.equal(inf.format, 'qcow2');
  assert.equal(inf.virtualSize, 16 * MiB);
  assert.equal(inf.clusterSize, 65536);
  assert.equal(inf.specificType, 'qcow2');
  assert.deepEqual(await qemuImg.compare(raw, q, { formatA: 'raw', formatB: 'qcow2' }), { identical: true, message: 'Images are identical.' });

  const c = await qemuImg.check(q, { format: 'qcow2' });
  assert.equal(c.exitCode, 0);
  assert.equal(c.corruptions, 0);

  // Linked clone: a qcow2 overlay on the base, written to, then differs from it.
  const overlay = join(dir, 'clone.qcow2');
  await qemuImg.create(overlay, { backingFile: q, backingFormat: 'qcow2' });
  const oi = await qemuImg.info(overlay, { format: 'qcow2' });
  assert.equal(oi.backingFilename, q);
  assert.equal(oi.backingFormat, 'qcow2');
  assert.equal(oi.virtualSize, 16 * MiB);
  await qemuImg.resize(overlay, 32 * MiB, { format: 'qcow2' });
  assert.equal((await qemuImg.info(overlay, { format: 'qcow2' })).virtualSize, 32 * MiB);
  const strict = await qemuImg.compare(q, overlay, { formatA: 'qcow2', formatB: 'qcow2', strict: true });
  assert.equal(strict.identical, false);
  assert.match(strict.message, /size/i);

  const blank = join(dir, 'blank.qcow2');
  await qemuImg.create(blank, { size: MiB, options: { preallocation: 'metadata' } });
  const differ = await qemuImg.compare(raw, blank, { formatA: 'raw', formatB: 'qcow2' });
  assert.equal(differ.identical, false);
});

test('check reports corruption as a result, not a failure', async () => {
  const q = join(dir, 'c.qcow2');
  await qemuImg.create(q, { size: 4 * MiB });
  await qemuImg.convert(q, join(dir, 'c2.qcow2'), { srcFormat: 'qcow2' });
  const fh = await open(q, 'r+');
  await fh.write(Buffer.alloc(65536), 0, 65536, 0x20000); // the refcount block
  await fh.close();
  const r = await qemuImg.check(q, { format: 'qcow2' });
  assert.equal(r.exitCode, 2);
  assert.ok(r.corruptions > 0);
});

test("failures are QemuImgError with qemu-img's reason; a backing file needs its format", async () => {
  await assert.rejects(qemuImg.info(join(dir, 'missing.qcow2')), (e: unknown) => {
    assert.ok(e instanceof QemuImgError);
    assert.equal(e.code, 'QemuImgFailed');
    assert.match(e.message, /Could not open/);
    assert.equal(e.exitCode, 1);
    return true;
  });
  await assert.rejects(qemuImg.create(join(dir, 'x.qcow2'), { backingFile: '/etc/passwd' }), /backingFormat/);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(qemuImg.info(join(dir, 'c2.qcow2'), { signal: ac.signal }), /aborted/);
});
