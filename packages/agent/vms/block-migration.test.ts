/**
 * The target's handling of a file already at a moving claim's path (vms/block-migration.ts): a
 * leftover of an earlier incoming migration is replaced, the claim's own volume or a file a QEMU
 * holds is refused and left as it is. Which claims a node repairs after a migration to it
 * whose target agent stopped before it recorded them.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  claimsToRepair,
  createTargetVolumes,
  notLeftover,
  postcopyKeptMessage,
  postcopyKeptPath,
  qemusHolding,
  withKeptCopies,
  type MovingDisk,
} from './block-migration.ts';

const claim = (node?: string, path?: string) => ({
  metadata: {
    annotations: { ...(node ? { 'volume.kubernetes.io/selected-node': node } : {}), ...(path ? { 'vessel.io/volume-path': path } : {}) },
  },
});

test('a file at the target path is a leftover unless it is the claim volume here or a QEMU holds it', () => {
  const p = '/pools/local/ns/data-uid.qcow2';
  // The claim still names the source node (the migration never finished): a leftover.
  assert.equal(notLeftover(p, claim('node-0', '/other/node-0/data-uid.qcow2'), 'node-1', []), undefined);
  assert.equal(notLeftover(p, undefined, 'node-1', []), undefined);
  // The claim lives here at that path: the guest's disk, never replaced.
  assert.match(notLeftover(p, claim('node-1', p), 'node-1', []) ?? '', /claim's volume on node-1/);
  // Another node's path with this node's name is not this file: only the QEMU check counts.
  assert.equal(notLeftover(p, claim('node-1', '/elsewhere.qcow2'), 'node-1', []), undefined);
  assert.match(notLeftover(p, claim('node-0'), 'node-1', [42]) ?? '', /QEMU process 42 uses it/);
});

test('createTargetVolumes replaces a leftover and refuses anything else', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-blockmig-unit-'));
  try {
    const v = { volume: 'data', claim: 'data', path: join(dir, 'data.qcow2'), size: 1024 * 1024 };
    await writeFile(v.path, 'stale bytes of an earlier attempt');
    // No judge: an existing file is never touched.
    await assert.rejects(createTargetVolumes([v], []), /already at the target's path for claim data \(it may be in use\)/);
    await assert.rejects(
      createTargetVolumes([v], [], async () => 'QEMU process 7 uses it'),
      /QEMU process 7 uses it/,
    );
    assert.equal(await readFile(v.path, 'utf8'), 'stale bytes of an earlier attempt');
    const made: string[] = [];
    await createTargetVolumes([v], made, async () => undefined);
    assert.deepEqual(made, [v.path]);
    // A fresh qcow2 now.
    assert.equal((await readFile(v.path)).subarray(0, 4).toString('latin1'), 'QFI\xfb');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a copy kept after a failed post-copy is beside the claim path: a later incoming migration makes its own file and never replaces it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-blockmig-unit-'));
  try {
    const uid = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
    const v = { volume: 'data', claim: 'data', path: join(dir, 'data-1234.qcow2'), size: 1024 * 1024 };
    const kept = postcopyKeptPath(v.path, uid);
    assert.equal(kept, `${v.path}.postcopy-${uid}`);
    // Only a uid's characters: a hostile uid cannot make the name leave the directory.
    assert.equal(postcopyKeptPath(v.path, '../../etc/x'), `${v.path}.postcopy-etcx`);
    assert.equal(postcopyKeptPath(v.path, '/'), `${v.path}.postcopy-unknown`);
    await writeFile(kept, 'the guest wrote this during post-copy');
    const made: string[] = [];
    // The claim's path is free: the new migration's volume is made there, the kept copy untouched.
    await createTargetVolumes([v], made, async () => undefined);
    assert.deepEqual(made, [v.path]);
    assert.equal(await readFile(kept, 'utf8'), 'the guest wrote this during post-copy');
    const msg = postcopyKeptMessage('node-b', uid, [{ claim: 'data', file: `data-1234.qcow2.postcopy-${uid}` }]);
    assert.match(msg, new RegExp(`^Post-copy migration ${uid} did not complete: node node-b kept its copy`));
    assert.match(msg, /claim data: data-1234\.qcow2\.postcopy-/);
    assert.ok(!msg.includes(dir), 'no host path in the event');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('withKeptCopies: the claim lists every kept copy once, other nodes’ entries stay, a hand-written value is replaced', () => {
  const a = { node: 'node-a', file: 'data-1.qcow2.postcopy-m1', migration: 'm1' };
  const b = { node: 'node-b', file: 'data-1.qcow2.postcopy-m2', migration: 'm2' };
  const one = withKeptCopies(undefined, [a]);
  assert.deepEqual(JSON.parse(one), [a]);
  assert.deepEqual(JSON.parse(withKeptCopies(one, [b, a])), [a, b]);
  assert.deepEqual(JSON.parse(withKeptCopies('not json', [b])), [b]);
  assert.deepEqual(JSON.parse(withKeptCopies('[{"node":1},"x"]', [b])), [b]);
  assert.match(postcopyKeptMessage('node-b', 'm2', [{ claim: 'data', file: b.file }]), /removes it when the claim is deleted/);
});

test('qemusHolding finds a QEMU by an open file or its command line, not other processes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-blockmig-proc-'));
  try {
    // A fake /proc: 10 is a QEMU with the file open, 11 a QEMU naming it, 12 another program with it open.
    const file = '/pools/local/ns/data-uid.qcow2';
    const proc = async (pid: number, cmd: string, fds: Record<string, string>) => {
      await mkdir(join(dir, String(pid), 'fd'), { recursive: true });
      await writeFile(join(dir, String(pid), 'cmdline'), cmd.split(' ').join('\0'));
      for (const [fd, target] of Object.entries(fds)) await symlink(target, join(dir, String(pid), 'fd', fd));
    };
    await proc(10, 'qemu-system-x86_64 -name guest=a', { '3': '/dev/null', '9': file });
    await proc(11, `/usr/bin/qemu-system-x86_64 -blockdev driver=file,filename=${file}`, {});
    await proc(12, 'cat', { '3': file });
    await mkdir(join(dir, 'self'));
    assert.deepEqual((await qemusHolding(file, dir)).sort(), [10, 11]);
    assert.deepEqual(await qemusHolding('/nothing', dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('claimsToRepair: the moving claims that do not name this node and its file', () => {
  const disks: MovingDisk[] = [
    { volume: 'root', kind: 'claim', claim: 'root', sync: 'full' },
    { volume: 'data', kind: 'claim', claim: 'data', sync: 'full' },
    { volume: 'scratch', kind: 'emptyDisk', sync: 'full' },
    { volume: 'gone', kind: 'claim', claim: 'gone', sync: 'full' },
  ];
  const file = (c: string) => (c === 'nopool' ? undefined : `/n1/pools/local/ns/${c}-uid.qcow2`);
  const claims: Record<string, ReturnType<typeof claim>> = {
    // Still the source's (the target agent stopped after the switch).
    root: claim('node-0', '/n0/pools/local/ns/root-uid.qcow2'),
    // Recorded already.
    data: claim('node-1', '/n1/pools/local/ns/data-uid.qcow2'),
  };
  assert.deepEqual(
    claimsToRepair(disks, (c) => claims[c], file, 'node-1').map((d) => d.volume),
    ['root'],
  );
  // This node with another path (a stale annotation) is repaired too; a claim not in the cache or without a pool here is not.
  claims.data = claim('node-1', '/n1/elsewhere.qcow2');
  assert.deepEqual(
    claimsToRepair(
      [...disks, { volume: 'np', kind: 'claim', claim: 'nopool', sync: 'full' }],
      (c) => claims[c] ?? (c === 'nopool' ? claim('node-0') : undefined),
      file,
      'node-1',
    ).map((d) => d.volume),
    ['root', 'data'],
  );
});
