/**
 * Pool.containedPath: the one check every path the agent takes from an object goes through.
 * Hostile paths point only at decoy files this test makes in a temporary directory. Also which
 * kept post-copy copies go with their deleted claim (orphanedPostcopyCopies, on decoy files).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ANY_NAMESPACE, containedPath, orphanedPostcopyCopies, PathError, Pool } from './pools.ts';

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

const CLAIM = '0b7c3e52-5a9d-4c1e-9f3a-2d6e8b1c4f70';
const OTHER = '7e1f0c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b';

test('orphanedPostcopyCopies: only kept copies (<claim>-<uid>.qcow2.postcopy-<migration>) of claims that no longer exist', () => {
  const files = [
    `data-${CLAIM}.qcow2`,
    `data-${CLAIM}.qcow2.postcopy-9d2e1f3a-0000-4000-8000-000000000001`,
    `data-${OTHER}.qcow2.postcopy-9d2e1f3a-0000-4000-8000-000000000002`,
    `data-${OTHER}.qcow2.tmp-abc123`,
    `data-${OTHER}.qcow2`,
    `data-${OTHER}.qcow2.postcopy-`,
    `data-${OTHER}.qcow2.postcopy-x/y`,
    'notes.txt',
  ];
  // Both claims exist: nothing goes.
  assert.deepEqual(orphanedPostcopyCopies(files, new Set([CLAIM, OTHER])), []);
  // OTHER deleted: its kept copy only (never its volume, an importer's temp file or a malformed name).
  assert.deepEqual(orphanedPostcopyCopies(files, new Set([CLAIM])), [`data-${OTHER}.qcow2.postcopy-9d2e1f3a-0000-4000-8000-000000000002`]);
  // A claim made again under the same name has a new uid: the old claim's copy goes.
  assert.deepEqual(orphanedPostcopyCopies([`data-${CLAIM}.qcow2.postcopy-m1`], new Set([OTHER])), [`data-${CLAIM}.qcow2.postcopy-m1`]);
});

test('Pool.removeOrphanedPostcopyCopies removes the deleted claim’s kept copies in the namespaces asked, nothing else', async () => {
  const p = new Pool('local2', join(root, 'local2'), false);
  await p.init();
  for (const ns of ['t1', 't2']) await p.ensureNamespaceDir(ns);
  const kept1 = join(p.dir, 't1', `data-${OTHER}.qcow2.postcopy-m1`);
  const kept2 = join(p.dir, 't2', `data-${OTHER}.qcow2.postcopy-m2`);
  const live = join(p.dir, 't1', `data-${CLAIM}.qcow2.postcopy-m3`);
  const volume = join(p.dir, 't1', `data-${OTHER}.qcow2`);
  for (const f of [kept1, kept2, live, volume]) await writeFile(f, 'decoy');
  assert.deepEqual(await p.removeOrphanedPostcopyCopies(new Set([CLAIM]), ['t1']), [kept1]);
  assert.deepEqual(await p.removeOrphanedPostcopyCopies(new Set([CLAIM]), ['missing']), []);
  assert.deepEqual(await p.removeOrphanedPostcopyCopies(new Set([CLAIM])), [kept2]);
  assert.deepEqual((await readdir(join(p.dir, 't1'))).sort(), [`data-${CLAIM}.qcow2.postcopy-m3`, `data-${OTHER}.qcow2`].sort());
});
