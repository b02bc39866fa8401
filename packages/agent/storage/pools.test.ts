/**
 * Pool.containedPath: the one check every path the agent takes from an object goes through.
 * Hostile paths point only at decoy files this test makes in a temporary directory.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ANY_NAMESPACE, containedPath, PathError, Pool } from './pools.ts';

let root: string;
let pool: Pool;
let other: Pool;
let t1File: string;
let t2File: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vessel-pools-'));
  pool = new Pool('local', join(root, 'local'), false);
  other = new Pool('shared', join(root, 'shared'), true);
  await pool.init();
  await other.init();
  for (const ns of ['t1', 't2']) await pool.ensureNamespaceDir(ns);
  t1File = join(pool.dir, 't1', 'disk-1.qcow2');
  t2File = join(pool.dir, 't2', 'secret-2.qcow2');
  await writeFile(t1File, 'decoy of t1');
  await writeFile(t2File, 'decoy of t2');
  await writeFile(join(root, 'outside.qcow2'), 'decoy outside every pool');
  // Symlinks in t1's directory to t2's file, to a directory of t2, and to a file that does not exist yet in t2's.
  await symlink(t2File, join(pool.dir, 't1', 'link.qcow2'));
  await symlink(join(pool.dir, 't2'), join(pool.dir, 't1', 'dir'));
  await symlink(join(pool.dir, 't2', 'not-yet.qcow2'), join(pool.dir, 't1', 'dangling.qcow2'));
  await symlink(t1File, join(pool.dir, 't1', 'own.qcow2'));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

const refused = (code: string) => (e: unknown) => e instanceof PathError && e.code === code;

test('a file of the namespace is accepted, as is a file not made yet', () => {
  assert.equal(pool.containedPath('t1', t1File), t1File);
  assert.equal(pool.containedPath('t1', join(pool.dir, 't1', 'new.qcow2')), join(pool.dir, 't1', 'new.qcow2'));
  assert.equal(pool.containedPath('t1', join(pool.dir, 't1', '.', 'disk-1.qcow2')), t1File, 'normalized');
  assert.equal(pool.containedPath('t1', join(pool.dir, 't1', 'own.qcow2')), join(pool.dir, 't1', 'own.qcow2'), 'a symlink within the namespace');
});

test('.. out of the namespace is refused, whatever the prefix says', () => {
  const traversal = `${pool.dir}/t1/../t2/secret-2.qcow2`;
  assert.ok(traversal.startsWith(`${pool.dir}/t1/`), 'the raw prefix check this replaces would have passed it');
  assert.throws(() => pool.containedPath('t1', traversal), refused('PathOutsideNamespace'));
  assert.throws(() => pool.containedPath('t1', `${pool.dir}/t1/../../outside.qcow2`), refused('PathNotInPool'));
  assert.throws(() => pool.containedPath('t1', `${pool.dir}/t1`), refused('PathOutsideNamespace'), 'the directory itself');
  assert.throws(() => pool.containedPath('t1', `${pool.dir}/t1x/disk.qcow2`), refused('PathOutsideNamespace'), 'a namespace whose name starts alike');
});

test("a symlink in the namespace to another namespace's file or directory is refused", () => {
  assert.throws(() => pool.containedPath('t1', join(pool.dir, 't1', 'link.qcow2')), refused('PathOutsideNamespace'));
  assert.throws(() => pool.containedPath('t1', join(pool.dir, 't1', 'dir', 'secret-2.qcow2')), refused('PathOutsideNamespace'));
  assert.throws(() => pool.containedPath('t1', join(pool.dir, 't1', 'dir', 'new.qcow2')), refused('PathOutsideNamespace'), 'a file to be made through it');
  assert.throws(() => pool.containedPath('t1', join(pool.dir, 't1', 'dangling.qcow2')), refused('PathOutsideNamespace'), 'a dangling symlink');
});

test('absolute paths elsewhere and relative paths are refused', () => {
  assert.throws(() => pool.containedPath('t1', join(root, 'outside.qcow2')), refused('PathNotInPool'));
  assert.throws(() => pool.containedPath('t1', 'disk-1.qcow2'), refused('PathNotInPool'));
  assert.throws(() => pool.containedPath('t1', 't1/disk-1.qcow2'), refused('PathNotInPool'));
  assert.throws(() => pool.containedPath('t1', `${t1File}\0`), refused('PathNotInPool'));
  assert.throws(() => pool.containedPath('t1', ''), refused('PathNotInPool'));
});

test('ANY_NAMESPACE (golden images): any namespace directory of the pool, never outside or at its top', () => {
  assert.equal(pool.containedPath(ANY_NAMESPACE, t2File), t2File);
  assert.throws(() => pool.containedPath(ANY_NAMESPACE, join(pool.dir, 'top.qcow2')), refused('PathOutsideNamespace'));
  assert.throws(() => pool.containedPath(ANY_NAMESPACE, `${pool.dir}/t1/../../outside.qcow2`), refused('PathNotInPool'));
});

test('containedPath over several pools names the pool, and says what was refused', async () => {
  await other.ensureNamespaceDir('t1');
  const shared = join(other.dir, 't1', 'x.qcow2');
  assert.deepEqual(containedPath([pool, other], 't1', shared, 'vessel.io/volume-path'), { pool: other, path: shared });
  assert.throws(
    () => containedPath([pool, other], 't1', `${pool.dir}/t1/../t2/secret-2.qcow2`, 'vessel.io/restore-source'),
    (e: unknown) => e instanceof PathError && e.code === 'PathOutsideNamespace' && /^vessel\.io\/restore-source: .*namespace t1.*refused$/.test(e.message),
  );
  assert.throws(() => containedPath([pool, other], 't1', join(root, 'outside.qcow2'), 'x'), refused('PathNotInPool'));
});
