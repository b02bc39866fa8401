/**
 * claimVolumePath with the agent's real check (Pool.containedPath): a claim's recorded
 * vessel.io/volume-path is only used inside its own namespace's directory. Decoy files only.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject } from '@vessel/client';
import { containedPath, Pool } from '../storage/pools.ts';
import { claimVolumePath, PrepareError } from './prepare.ts';

let root: string;
let pool: Pool;
const locate = (ns: string, path: string) => containedPath([pool], ns, path, 'vessel.io/volume-path').path;

const claim = (path: string): KubeObject => ({
  apiVersion: 'v1',
  kind: 'PersistentVolumeClaim',
  metadata: { name: 'disk', namespace: 't1', annotations: { 'vessel.io/volume-path': path } },
  status: { phase: 'Bound' },
});

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vessel-prepare-'));
  pool = new Pool('local', join(root, 'local'), false);
  await pool.ensureNamespaceDir('t1');
  await pool.ensureNamespaceDir('t2');
  await writeFile(join(pool.dir, 't1', 'disk.qcow2'), 'decoy');
  await writeFile(join(pool.dir, 't2', 'other.qcow2'), 'decoy');
  await symlink(join(pool.dir, 't2', 'other.qcow2'), join(pool.dir, 't1', 'link.qcow2'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

test("the claim's own file is used", () => {
  assert.equal(claimVolumePath('t1', 'disk', 'root', claim(join(pool.dir, 't1', 'disk.qcow2')), locate), join(pool.dir, 't1', 'disk.qcow2'));
});

test('a volume-path into another namespace (.. or a symlink) fails the VMI with VolumeError', () => {
  for (const path of [`${pool.dir}/t1/../t2/other.qcow2`, join(pool.dir, 't1', 'link.qcow2')]) {
    assert.throws(
      () => claimVolumePath('t1', 'disk', 'root', claim(path), locate),
      (e: unknown) => e instanceof PrepareError && e.reason === 'VolumeError' && !e.retry && /namespace t1/.test(e.message),
      path,
    );
  }
});

test("a file in no pool of this node is another node's volume", () => {
  assert.throws(
    () => claimVolumePath('t1', 'disk', 'root', claim(join(root, 'elsewhere.qcow2')), locate),
    (e: unknown) => e instanceof PrepareError && e.reason === 'VolumeNotOnNode',
  );
});
