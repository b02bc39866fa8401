/**
 * Reading an OVA's disk in place (issue 14): the range a package's own tar headers give is
 * converted by qemu-img straight from the archive into a disk identical to the source (compared
 * and checksummed), the manifest digest is checked while it is read, and forged headers, ranges,
 * digests and packages outside the roots are refused with nothing written.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ImportError } from './errors.ts';
import { importDisk } from './import.ts';
import { parseOvaSource, resolveOvaMember, underRoots } from './ova-source.ts';
import * as qemuImg from './qemu-img.ts';
import { MiB, makeRawDisk, sh } from './testing.ts';

let work: string;
let root: string;
let raw: string;
const SIZE = 64 * MiB;

const sha256 = async (path: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

/** An OVA of `name`.ovf, disk.vmdk (streamOptimized, from raw) and a manifest; `mfDigest` overrides the disk's digest. */
async function makeOva(name: string, mfDigest?: string): Promise<string> {
  const dir = join(work, `pkg-${name}`);
  await mkdir(dir);
  await sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, join(dir, 'disk.vmdk')]);
  await writeFile(join(dir, `${name}.ovf`), '<Envelope/>');
  await writeFile(join(dir, `${name}.mf`), `SHA256(disk.vmdk)= ${mfDigest ?? (await sha256(join(dir, 'disk.vmdk')))}\n`);
  const ova = join(root, `${name}.ova`);
  await sh('tar', ['-C', dir, '-cf', ova, `${name}.ovf`, 'disk.vmdk', `${name}.mf`]);
  return ova;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'vessel-ova-src-'));
  root = join(work, 'root');
  await mkdir(root);
  raw = join(work, 'disk.raw');
  await makeRawDisk(raw, SIZE);
});
after(() => rm(work, { recursive: true, force: true }));

test('a disk read in place from the OVA equals the source disk (qemu-img compare and sha256 of the raw bytes)', async () => {
  const ova = await makeOva('good');
  const real = await underRoots(ova, [root]);
  assert.ok(real);
  const m = await resolveOvaMember(real, 'disk.vmdk');
  assert.equal(m.offset % 512, 0);
  assert.equal(m.digest?.algorithm, 'sha256');
  const dest = join(work, 'good.qcow2');
  const r = await importDisk({ source: { kind: 'range', path: m.path, offset: m.offset, size: m.size, digest: m.digest }, dest, maxVirtualSize: SIZE });
  assert.equal(r.sourceFormat, 'vmdk');
  assert.equal(r.virtualSize, SIZE);
  assert.equal(r.checksum, `sha256:${m.digest!.hex}`);
  assert.ok((await qemuImg.compare(raw, dest, { formatA: 'raw', formatB: 'qcow2' })).identical);
  const back = join(work, 'good.raw');
  await sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', dest, back]);
  assert.equal(await sha256(back), await sha256(raw));
  // an unpacked .ovf with its disk beside it: the whole file
  const dir = join(work, 'pkg-good');
  await rm(join(root, 'unpacked'), { recursive: true, force: true });
  await sh('cp', ['-r', dir, join(root, 'unpacked')]);
  const u = await resolveOvaMember((await underRoots(join(root, 'unpacked', 'good.ovf'), [root]))!, 'disk.vmdk');
  assert.equal(u.offset, 0);
  assert.equal(u.digest?.hex, m.digest?.hex);
  const dest2 = join(work, 'unpacked.qcow2');
  await importDisk({ source: { kind: 'range', ...u }, dest: dest2, maxVirtualSize: SIZE });
  assert.ok((await qemuImg.compare(raw, dest2, { formatA: 'raw', formatB: 'qcow2' })).identical);
});

test('a tar header whose size is forged past the end of the archive is refused; so is a forged range', async () => {
  const ova = await makeOva('forged');
  const m = await resolveOvaMember(ova, 'disk.vmdk');
  // The disk entry's header is the 512 bytes before its data: grow its size field, fix the checksum.
  const fh = await open(ova, 'r+');
  try {
    const h = Buffer.alloc(512);
    await fh.read(h, 0, 512, m.offset - 512);
    h.write(`${(m.size * 4).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    await fh.write(h, 0, 512, m.offset - 512);
  } finally {
    await fh.close();
  }
  await assert.rejects(resolveOvaMember(ova, 'disk.vmdk'), (e: unknown) => e instanceof ImportError && e.code === 'Corrupt' && /TarMalformed/.test(e.message));
  // A range past the file's end, given to the importer directly: refused before qemu-img runs.
  const dest = join(work, 'forged.qcow2');
  await assert.rejects(
    importDisk({ source: { kind: 'range', path: ova, offset: m.offset, size: m.size * 4 }, dest, maxVirtualSize: SIZE }),
    (e: unknown) => e instanceof ImportError && e.code === 'InvalidArgument',
  );
  // A range that starts mid-member (not the disk's header): qemu-img cannot open it as an image.
  await assert.rejects(
    importDisk({ source: { kind: 'range', path: ova, offset: m.offset + 512, size: m.size - 512 }, dest, maxVirtualSize: SIZE }),
    (e: unknown) => e instanceof ImportError,
  );
  assert.deepEqual(
    (await readdir(work)).filter((f) => f.startsWith('forged.qcow2')),
    [],
  );
});

test('a manifest digest that does not match, a traversal member, a package outside the roots, a too small claim: refused, nothing written', async () => {
  const ova = await makeOva('badsum', '0'.repeat(64));
  const m = await resolveOvaMember(ova, 'disk.vmdk');
  const dest = join(work, 'badsum.qcow2');
  await assert.rejects(
    importDisk({ source: { kind: 'range', path: m.path, offset: m.offset, size: m.size, digest: m.digest }, dest, maxVirtualSize: SIZE }),
    (e: unknown) => e instanceof ImportError && e.code === 'ChecksumMismatch',
  );
  await assert.rejects(
    importDisk({ source: { kind: 'range', path: m.path, offset: m.offset, size: m.size }, dest, maxVirtualSize: SIZE / 2 }),
    (e: unknown) => e instanceof ImportError && e.code === 'TooLarge',
  );
  assert.deepEqual(
    (await readdir(work)).filter((f) => f.startsWith('badsum.qcow2')),
    [],
  );
  await assert.rejects(resolveOvaMember(ova, '../disk.vmdk'), (e: unknown) => e instanceof ImportError && /PathTraversal/.test(e.message));
  const outside = join(work, 'outside.ova');
  await sh('cp', [ova, outside]);
  assert.equal(await underRoots(outside, [root]), undefined);
  await symlink(outside, join(root, 'link.ova'));
  assert.equal(await underRoots(join(root, 'link.ova'), [root]), undefined, 'a symlink out of the root is resolved and refused');
  assert.equal(parseOvaSource('{"package":"rel.ova","member":"d"}'), undefined);
  assert.deepEqual(parseOvaSource('{"package":"/a.ova","member":"d"}'), { package: '/a.ova', member: 'd' });
});
