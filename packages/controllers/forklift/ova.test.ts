/** The OVA reader: OVF parsing, tar reading in place, manifests, and hostile packages refused with nothing written. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { allocationUnits, OvaError, ovaPath, parseManifest, parseOvf, readInventory, readPackage } from './ova.ts';
import { manifest, ovf, tar } from './testdata.ts';

const GiB = 1024 ** 3;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ova-test-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function refused(p: Promise<unknown>, code: string, re?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof OvaError, String(e));
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  });
}

test('parseOvf: name, CPUs, memory, firmware, disks with capacity and file, NICs with networks, OS type', () => {
  const [vm] = parseOvf(
    ovf([
      {
        name: 'Web Server',
        cpus: 2,
        memoryMB: 1024,
        firmware: 'efi',
        networks: ['VM Network', 'backend'],
        disks: [{ file: 'web-disk1.vmdk', capacity: 2 * GiB }],
      },
    ]),
  );
  assert.equal(vm.name, 'Web Server');
  assert.equal(vm.cpus, 2);
  assert.equal(vm.memoryMB, 1024);
  assert.equal(vm.firmware, 'efi');
  assert.equal(vm.osType, 'debian10_64Guest');
  assert.deepEqual(vm.disks, [
    {
      id: 'disk-web-disk1.vmdk',
      file: 'web-disk1.vmdk',
      capacity: 2 * GiB,
      format: 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized',
    },
  ]);
  assert.deepEqual(
    vm.nics.map((n) => [n.network, n.model]),
    [
      ['VM Network', 'VmxNet3'],
      ['backend', 'VmxNet3'],
    ],
  );
  assert.equal(parseOvf(ovf([{ name: 'a' }]))[0].firmware, 'bios');
  assert.equal(parseOvf(ovf([{ name: 'a' }, { name: 'b' }])).length, 2, 'a VirtualSystemCollection');
  assert.equal(allocationUnits('byte * 2^30', 1), GiB);
  assert.equal(allocationUnits('MegaBytes', 1), 1024 * 1024);
  assert.equal(ovaPath('ova:///srv/ova'), '/srv/ova');
});

test('parseOvf refuses DTDs (entity bombs, external entities), malformed XML and hrefs leaving the package', () => {
  assert.throws(
    () => parseOvf('<!DOCTYPE x [<!ENTITY a "aaaa">]><Envelope/>'),
    (e: OvaError) => e.code === 'OvfMalformed',
  );
  assert.throws(
    () => parseOvf('<Envelope><References></Envelope>'),
    (e: OvaError) => e.code === 'OvfMalformed',
  );
  assert.throws(
    () => parseOvf(ovf([{ name: 'x', disks: [{ file: '../../etc/passwd', capacity: 1 }] }])),
    (e: OvaError) => e.code === 'PathTraversal',
  );
  assert.throws(
    () => parseOvf(ovf([{ name: 'x', disks: [{ file: '/etc/passwd', capacity: 1 }] }])),
    (e: OvaError) => e.code === 'PathTraversal',
  );
  assert.throws(
    () => parseManifest('MD5(x)= 00'),
    (e: OvaError) => e.code === 'ManifestInvalid',
  );
});

test('an OVA made by tar with a streamOptimized VMDK: read in place, manifest verified, inventory listed', async () => {
  await withDir(async (dir) => {
    const root = join(dir, 'root');
    const src = join(dir, 'src');
    await mkdir(join(root, 'sub'), { recursive: true });
    await mkdir(src);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(src, 'd.qcow2'), '64M']);
    execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(src, 'd.qcow2'), join(src, 'web-disk1.vmdk')]);
    const desc = ovf([{ name: 'web', cpus: 2, memoryMB: 512, networks: ['VM Network'], disks: [{ file: 'web-disk1.vmdk', capacity: 64 * 1024 * 1024 }] }]);
    await writeFile(join(src, 'web.ovf'), desc);
    const { readFileSync } = await import('node:fs');
    await writeFile(join(src, 'web.mf'), manifest({ 'web.ovf': desc, 'web-disk1.vmdk': readFileSync(join(src, 'web-disk1.vmdk')) }, 'sha1'));
    execFileSync('tar', ['-cf', join(root, 'sub', 'web.ova'), '-C', src, 'web.ovf', 'web.mf', 'web-disk1.vmdk']);
    // The same VM unpacked: an .ovf with its disk beside it.
    await mkdir(join(root, 'unpacked'));
    for (const f of ['web.ovf', 'web.mf', 'web-disk1.vmdk']) execFileSync('cp', [join(src, f), join(root, 'unpacked', f)]);
    const inv = await readInventory(root, [root]);
    assert.deepEqual(inv.errors, []);
    assert.deepEqual(
      inv.vms.map((v) => [v.source, v.name, v.cpus, v.memoryMB, v.disks[0].capacity]),
      [
        ['sub/web.ova', 'web', 2, 512, 64 * 1024 * 1024],
        ['unpacked/web.ovf', 'web', 2, 512, 64 * 1024 * 1024],
      ],
    );
    assert.deepEqual(inv.networks, [{ id: 'VM Network', name: 'VM Network' }]);
    assert.deepEqual(
      inv.datastores.map((d) => d.id),
      ['sub/web.ova', 'unpacked/web.ovf'],
    );
    assert.notEqual(inv.vms[0].id, inv.vms[1].id);
    // A smaller declared capacity than the VMDK's own: refused.
    const small = ovf([{ name: 'web', disks: [{ file: 'web-disk1.vmdk', capacity: 1024 * 1024 }] }]);
    await writeFile(join(root, 'unpacked', 'web.ovf'), small);
    await rm(join(root, 'unpacked', 'web.mf'));
    await refused(readPackage(join(root, 'unpacked', 'web.ovf'), 'unpacked/web.ovf'), 'DiskLargerThanDeclared');
    // Outside the allowed roots, or through a symlink leading out: refused.
    await refused(readInventory(src, [root]), 'PathNotAllowed');
    await symlink(src, join(root, 'escape'));
    await refused(readInventory(join(root, 'escape'), [root]), 'PathNotAllowed');
  });
});

test('hostile OVAs are refused with a clear error and nothing is written', async () => {
  await withDir(async (dir) => {
    const decoy = join(dir, 'decoy.txt');
    await writeFile(decoy, 'decoy: not part of any package\n');
    const desc = (file: string) => ovf([{ name: 'h', disks: [{ file, capacity: 1024 }] }]);
    const cases: [string, Buffer, string, RegExp?][] = [
      [
        'traversal.ova',
        tar([
          { name: 'h.ovf', data: desc('d.vmdk') },
          { name: '../../decoy.txt', data: 'x' },
        ]),
        'PathTraversal',
      ],
      [
        'absolute.ova',
        tar([
          { name: 'h.ovf', data: desc('d.vmdk') },
          { name: '/tmp/x', data: 'x' },
        ]),
        'PathTraversal',
      ],
      [
        'symlink.ova',
        tar([
          { name: 'h.ovf', data: desc('d.vmdk') },
          { name: 'd.vmdk', type: '2', linkname: decoy },
        ]),
        'LinkNotAllowed',
      ],
      [
        'hardlink.ova',
        tar([
          { name: 'h.ovf', data: desc('d.vmdk') },
          { name: 'd.vmdk', type: '1', linkname: 'h.ovf' },
        ]),
        'LinkNotAllowed',
      ],
      ['href-outside.ova', tar([{ name: 'h.ovf', data: desc('../decoy.txt') }]), 'PathTraversal'],
      ['href-missing.ova', tar([{ name: 'h.ovf', data: desc('d.vmdk') }]), 'FileNotFound'],
      [
        'bad-sum.ova',
        tar([
          { name: 'h.ovf', data: desc('d.vmdk') },
          { name: 'h.mf', data: manifest({ 'h.ovf': 'something else' }) },
          { name: 'd.vmdk', data: 'disk' },
        ]),
        'ManifestMismatch',
        /SHA256 of "h.ovf"/,
      ],
      ['oversize.ova', tar([{ name: 'h.ovf', data: desc('d.vmdk'), declaredSize: 1 << 30 }]), 'TarMalformed', /past the end/],
      [
        'dup.ova',
        tar([
          { name: 'h.ovf', data: desc('d.vmdk') },
          { name: 'd.vmdk', data: 'a' },
          { name: './d.vmdk', data: 'b' },
        ]),
        'TarMalformed',
        /twice/,
      ],
    ];
    const pkg = join(dir, 'pkgs');
    await mkdir(pkg);
    for (const [name, bytes, code, re] of cases) {
      await writeFile(join(pkg, name), bytes);
      await refused(readPackage(join(pkg, name), name), code, re);
    }
    // An OVF descriptor larger than allowed (limits apply to what is read into memory).
    await writeFile(
      join(pkg, 'big.ova'),
      tar([
        { name: 'h.ovf', data: desc('d.vmdk') + ' '.repeat(5000) },
        { name: 'd.vmdk', data: 'x' },
      ]),
    );
    await refused(readPackage(join(pkg, 'big.ova'), 'big.ova', { maxDescriptorBytes: 4096 }), 'OversizeEntry');
    // A disk entry larger than allowed.
    await writeFile(
      join(pkg, 'bigdisk.ova'),
      tar([
        { name: 'h.ovf', data: desc('d.vmdk') },
        { name: 'd.vmdk', data: Buffer.alloc(8192) },
      ]),
    );
    await refused(readPackage(join(pkg, 'bigdisk.ova'), 'bigdisk.ova', { maxDiskBytes: 4096 }), 'OversizeEntry');
    // An unpacked OVF whose disk is a symlink to the decoy.
    await mkdir(join(pkg, 'u'));
    await writeFile(join(pkg, 'u', 'h.ovf'), desc('d.vmdk'));
    await symlink(decoy, join(pkg, 'u', 'd.vmdk'));
    await refused(readPackage(join(pkg, 'u', 'h.ovf'), 'u/h.ovf'), 'PathTraversal');
    // The inventory lists every refusal and no VM; nothing was extracted or written.
    const inv = await readInventory(pkg, [dir]);
    assert.deepEqual(inv.vms.map((v) => v.source).sort(), ['big.ova', 'bigdisk.ova'], 'valid under the default limits');
    assert.deepEqual(inv.errors.map((e) => e.source).sort(), [...cases.map((c) => c[0]), 'u/h.ovf'].sort());
    assert.deepEqual((await readdir(dir)).sort(), ['decoy.txt', 'pkgs']);
    assert.equal((await readdir(pkg)).length, cases.length + 3);
  });
});

test('a manifest digest is computed once per file, and again when the file changes (same size)', async () => {
  await withDir(async (dir) => {
    const disk = Buffer.alloc(64 * 1024, 0x11);
    const desc = ovf([{ name: 'cached', disks: [{ file: 'cached-disk1.vmdk', capacity: disk.length }] }]);
    const files = { 'cached.ovf': desc, 'cached-disk1.vmdk': disk };
    await writeFile(join(dir, 'cached.ovf'), desc);
    await writeFile(join(dir, 'cached-disk1.vmdk'), disk);
    await writeFile(join(dir, 'cached.mf'), manifest(files));
    assert.equal((await readPackage(join(dir, 'cached.ovf'), 'cached.ovf')).length, 1);
    assert.equal((await readPackage(join(dir, 'cached.ovf'), 'cached.ovf')).length, 1, 'the cached digest still matches');
    // The same size, other bytes: a new ctime, so the digest is computed again and refused.
    await writeFile(join(dir, 'cached-disk1.vmdk'), Buffer.alloc(disk.length, 0x22));
    await refused(readPackage(join(dir, 'cached.ovf'), 'cached.ovf'), 'ManifestMismatch', /cached-disk1\.vmdk/);
  });
});
