/**
 * The registry source against Debian's real docker-registry (distribution 2.8) on
 * 127.0.0.1: containerDisk images pushed with the OCI push API are pulled with
 * openRegistryDisk, imported with importDisk, and must equal the original disk
 * (qemu-img compare); missing tags and images without /disk/ must fail clearly.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { EgressPolicy } from './egress.ts';
import { ImportError } from './errors.ts';
import { importDisk } from './import.ts';
import * as qemuImg from './qemu-img.ts';
import { openRegistryDisk, type RegistryDiskOptions } from './registry.ts';
import { MiB, gzipFile, makeRawDisk, sh } from './testing.ts';
import { REGISTRY_BIN, pushDiskImage, pushIndex, startRegistry, type PushedManifest, type TestRegistry } from './testing-registry.ts';

/** The test registries are on loopback, which the importer refuses unless told (see egress.test.ts). */
const LAB: EgressPolicy = { allowLoopback: true };

const SIZE = 64 * MiB;

describe(
  'registry source against docker-registry',
  { skip: existsSync(REGISTRY_BIN) ? false : `${REGISTRY_BIN} is not installed (Debian package docker-registry)` },
  () => {
    let reg: TestRegistry;
    let work: string;
    let original: string;
    let qcow2: string;
    let rawGz: string;
    let qcow2Image: PushedManifest;
    let n = 0;

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'vessel-registry-e2e-'));
      original = join(work, 'disk.raw');
      qcow2 = join(work, 'disk.qcow2');
      rawGz = join(work, 'disk.img.gz');
      await makeRawDisk(original, SIZE);
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', original, qcow2]);
      await gzipFile(original, rawGz, 1);
      reg = await startRegistry();
      qcow2Image = await pushDiskImage(reg.url, 'disks/fedora', 'qcow2', [
        [
          { path: 'disk', type: 'directory' },
          { path: 'disk/disk.qcow2', file: qcow2 },
        ],
      ]);
    });

    after(async () => {
      await reg?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    /** Pulls and imports `url`; returns the imported disk's path and what openRegistryDisk said. */
    async function pullAndImport(url: string, extra: Partial<RegistryDiskOptions> = {}): Promise<{ dest: string; file: string; digest: string }> {
      const d = await openRegistryDisk({ egress: LAB, url, insecure: true, ...extra });
      const dir = join(work, `out${n++}`);
      await mkdir(dir);
      const dest = join(dir, 'disk.qcow2');
      await importDisk({ egress: LAB, source: { kind: 'stream', stream: d.stream, sizeHint: d.size }, dest, maxVirtualSize: 1 << 30 });
      return { dest, file: d.file, digest: d.digest };
    }

    async function assertSameDisk(dest: string): Promise<void> {
      const cmp = await qemuImg.compare(original, dest, { formatA: 'raw', formatB: 'qcow2' });
      assert.ok(cmp.identical, cmp.message);
      // compare without -s treats a longer disk with a zero tail as equal: check the size too.
      assert.equal((await qemuImg.info(dest, { format: 'qcow2' })).virtualSize, SIZE);
    }

    function rejectsWith(code: string, msg: RegExp): (e: unknown) => boolean {
      return (e) => {
        assert.ok(e instanceof ImportError, String(e));
        assert.equal(e.code, code, e.message);
        assert.match(e.message, msg);
        return true;
      };
    }

    test('a qcow2 containerDisk (OCI manifest) imports identical to the original', async () => {
      const r = await pullAndImport(`docker://${reg.url}/disks/fedora:qcow2`);
      assert.equal(r.file, 'disk/disk.qcow2');
      assert.equal(r.digest, qcow2Image.digest);
      await assertSameDisk(r.dest);
    });

    test('a gzipped raw disk inside the layer (disk/disk.img.gz, Docker schema 2 manifest) imports identical', async () => {
      await pushDiskImage(reg.url, 'disks/fedora', 'rawgz', [[{ path: './disk/disk.img.gz', file: rawGz }]], { format: 'docker' });
      const r = await pullAndImport(`docker://${reg.url}/disks/fedora:rawgz`);
      assert.equal(r.file, 'disk/disk.img.gz');
      await assertSameDisk(r.dest);
    });

    test('two layers with the disk in the first (bottom) one', async () => {
      await pushDiskImage(reg.url, 'disks/layered', 'v1', [
        [{ path: 'disk/disk.qcow2', file: qcow2 }],
        [
          { path: 'etc/os-release', data: 'ID=vessel\n' },
          { path: 'usr/share/doc/readme', data: 'x'.repeat(10_000) },
        ],
      ]);
      const r = await pullAndImport(`docker://${reg.url}/disks/layered:v1`);
      assert.equal(r.file, 'disk/disk.qcow2');
      await assertSameDisk(r.dest);
    });

    test('pull by digest', async () => {
      const r = await pullAndImport(`docker://${reg.url}/disks/fedora@${qcow2Image.digest}`);
      assert.equal(r.digest, qcow2Image.digest);
      await assertSameDisk(r.dest);
    });

    test('a multi-platform index resolves to linux/amd64', async () => {
      const arm = await pushDiskImage(reg.url, 'disks/multi', 'arm64', [[{ path: 'etc/motd', data: 'not this one\n' }]], { architecture: 'arm64' });
      const amd = await pushDiskImage(reg.url, 'disks/multi', 'amd64', [[{ path: 'disk/disk.qcow2', file: qcow2 }]]);
      const index = await pushIndex(reg.url, 'disks/multi', 'latest', [
        { ...arm, platform: { os: 'linux', architecture: 'arm64' } },
        { ...amd, platform: { os: 'linux', architecture: 'amd64' } },
      ]);
      const r = await pullAndImport(`docker://${reg.url}/disks/multi:latest`);
      assert.equal(r.digest, index.digest);
      await assertSameDisk(r.dest);
    });

    test('a missing tag fails with a message naming the image', async () => {
      await assert.rejects(
        openRegistryDisk({ egress: LAB, url: `docker://${reg.url}/disks/fedora:nope`, insecure: true }),
        rejectsWith('HttpError', new RegExp(`registry ${reg.url.replace(/\./g, '\\.')} has no image disks/fedora:nope`)),
      );
      await assert.rejects(
        openRegistryDisk({ egress: LAB, url: `docker://${reg.url}/disks/never-pushed:v1`, insecure: true }),
        rejectsWith('HttpError', /has no image disks\/never-pushed:v1/),
      );
    });

    test('an image without /disk/ is not a containerDisk', async () => {
      await pushDiskImage(reg.url, 'apps/nginx', 'v1', [[{ path: 'etc/nginx/nginx.conf', data: 'events {}\n' }], [{ path: 'diskette/readme', data: 'no\n' }]]);
      await assert.rejects(
        openRegistryDisk({ egress: LAB, url: `docker://${reg.url}/apps/nginx:v1`, insecure: true }),
        rejectsWith('UnsupportedFormat', /image apps\/nginx:v1 has no file under \/disk\/: is it a containerDisk\?/),
      );
    });

    test('a whiteout in an upper layer deletes the disk of the layer below', async () => {
      await pushDiskImage(reg.url, 'disks/deleted', 'v1', [[{ path: 'disk/disk.qcow2', file: qcow2 }], [{ path: 'disk/.wh.disk.qcow2', data: '' }]]);
      await assert.rejects(
        openRegistryDisk({ egress: LAB, url: `docker://${reg.url}/disks/deleted:v1`, insecure: true }),
        rejectsWith('UnsupportedFormat', /has no file under \/disk\//),
      );
    });

    test('an HTTPS registry with its own CA: refused without caPem (certConfigMap), imported with it', async () => {
      const secure = await startRegistry({ tls: true });
      try {
        await pushDiskImage(secure.url, 'disks/tls', 'v1', [[{ path: 'disk/disk.qcow2', file: qcow2 }]], { caPem: secure.caPem });
        const url = `docker://${secure.url}/disks/tls:v1`;
        await assert.rejects(
          openRegistryDisk({ egress: LAB, url }),
          rejectsWith('HttpError', /TLS certificate of 127\.0\.0\.1:\d+ is not trusted .*certConfigMap/),
        );
        const r = await pullAndImport(url, { insecure: false, caPem: secure.caPem });
        await assertSameDisk(r.dest);
      } finally {
        await secure.stop();
      }
    });

    test('HTTPS against a plain-HTTP registry says to mark it insecure; nothing is left behind on failure', async () => {
      await assert.rejects(
        openRegistryDisk({ egress: LAB, url: `docker://${reg.url}/disks/fedora:qcow2` }),
        rejectsWith('HttpError', /does not speak TLS.*insecure/),
      );
      // A disk larger than the claim: importDisk refuses it and cleans up as for any source.
      const d = await openRegistryDisk({ egress: LAB, url: `docker://${reg.url}/disks/fedora:qcow2`, insecure: true });
      const dir = join(work, 'small');
      await mkdir(dir);
      await assert.rejects(
        importDisk({ egress: LAB, source: { kind: 'stream', stream: d.stream, sizeHint: d.size }, dest: join(dir, 'disk.qcow2'), maxVirtualSize: 16 * MiB }),
        rejectsWith('TooLarge', /virtual size/),
      );
      assert.deepEqual(await readdir(dir), []);
      assert.ok(d.stream.destroyed);
    });
  },
);
