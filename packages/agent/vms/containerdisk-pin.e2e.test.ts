// e2e: light
/**
 * A containerDisk pinned to a digest (prepare.ts, docs/migration.md "A containerDisk is pinned
 * to its digest"), with Debian's real docker-registry on loopback and real qemu-img: a start
 * keeps the manifest digest it pulled beside the base (what the VMI records); after the tag
 * moved, a migration's target given that digest pulls the first image's bytes, not the tag's;
 * a base left in a run directory is reused only for its own digest; a base without its digest
 * (an older agent's) is pulled again.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import type { Client } from '@vessel/client';
import { sh } from '../storage/testing.ts';
import { pushDiskImage, startRegistry, type TestRegistry } from '../storage/testing-registry.ts';
import { pinnedImage } from './block-migration.ts';
import { prepareVm, pulledDigests } from './prepare.ts';

let dir: string;
let registry: TestRegistry;
const disks: Record<'a' | 'b', string> = { a: '', b: '' };

/** A 4 MiB qcow2 whose first MiB is `byte`. */
function disk(name: string, byte: number): string {
  const file = join(dir, `${name}.qcow2`);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', file, '4M']);
  sh('qemu-io', ['-c', `write -q -P ${byte} 0 1M`, file]);
  return file;
}

/** Whether the base pulled into `runDir` holds `byte` in its first MiB (qemu-io's pattern check). */
function baseHolds(runDir: string, byte: number): boolean {
  const r = spawnSync('qemu-io', ['-r', '-c', `read -q -P ${byte} 0 1M`, join(runDir, 'root.containerdisk.qcow2')], { encoding: 'utf8' });
  return r.status === 0 && !/Pattern verification failed|error|fail/i.test(`${r.stdout}${r.stderr}`);
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-cdpin-'));
  registry = await startRegistry();
  disks.a = disk('a', 0x11);
  disks.b = disk('b', 0x22);
});
after(async () => {
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
});

const image = () => `${registry.url}/disks/pin:v1`;
const vmi = () => ({
  metadata: { name: 'cd', namespace: 't1', uid: '0b5c2a8e-1111-4222-8333-444455556666' },
  spec: { domain: { devices: {} }, volumes: [{ name: 'root', containerDisk: { image: image() } }] } as unknown as V1VirtualMachineInstanceSpec,
});
const prepare = (runDir: string, images?: Record<string, string>) =>
  prepareVm(vmi(), runDir, {
    client: undefined as unknown as Client,
    claim: () => undefined,
    locate: () => {
      throw new Error('no claims here');
    },
    egress: { allowLoopback: true },
    containerDiskImages: images,
  });
const push = (file: string) => pushDiskImage(registry.url, 'disks/pin', 'v1', [[{ path: 'disk/disk.qcow2', file }]], { gzip: false });

test("a moved tag: the target pinned to the source's digest gets the source's bytes; a base is reused only for its digest", async () => {
  const a = await push(disks.a);
  const source = join(dir, 'source');
  await prepare(source);
  assert.deepEqual(await pulledDigests(vmi().spec, source), { root: a.digest });
  assert.ok(baseHolds(source, 0x11));

  // The tag moves to other bytes.
  const b = await push(disks.b);
  assert.notEqual(b.digest, a.digest);
  // The target, pinned: the first image, although the tag now names the second.
  const target = join(dir, 'target');
  const pinned = pinnedImage(image(), a.digest)!;
  assert.equal(pinned, `${image()}@${a.digest}`);
  await prepare(target, { root: pinned });
  assert.ok(baseHolds(target, 0x11), "the target's base is the source's image");
  assert.equal((await readFile(join(target, 'root.containerdisk.digest'), 'utf8')).trim(), a.digest);
  // Unpinned, the tag would have given the second image (what the pin prevents).
  const unpinned = join(dir, 'unpinned');
  await prepare(unpinned);
  assert.ok(baseHolds(unpinned, 0x22));
  assert.ok(!baseHolds(unpinned, 0x11), 'the check tells the two images apart');

  // A base left in a run directory: kept for its own digest, pulled again for another.
  await prepare(target, { root: pinned });
  assert.ok(baseHolds(target, 0x11));
  await prepare(target, { root: pinnedImage(image(), b.digest)! });
  assert.ok(baseHolds(target, 0x22));
  assert.deepEqual(await pulledDigests(vmi().spec, target), { root: b.digest });

  // A start keeps its base across reboots; one without its digest (an older agent's) is pulled
  // again so the digest can be recorded (here the tag's bytes now).
  await prepare(source);
  assert.ok(baseHolds(source, 0x11), 'a restart keeps the base it has');
  await rm(join(source, 'root.containerdisk.digest'));
  await prepare(source);
  assert.deepEqual(await pulledDigests(vmi().spec, source), { root: b.digest });
  assert.ok(baseHolds(source, 0x22));
});
