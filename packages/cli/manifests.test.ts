/** Tests for reading apply/delete manifests: documents, Lists, directories, errors. */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClientError } from '@vessel/client';
import { parseManifests, readManifests } from './manifests.ts';

const vm = (name: string) => `apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: ${name}\nspec:\n  runStrategy: Halted\n`;

test('multi-document YAML splits into objects; empty documents are skipped', () => {
  const text = `---\n${vm('a')}---\n# only a comment\n---\n${vm('b')}---\n`;
  const manifests = parseManifests(text, 'vms.yaml');
  assert.deepEqual(
    manifests.map((m) => [m.object.metadata?.name, m.document]),
    [
      ['a', 1],
      ['b', 3],
    ],
  );
  assert.equal(manifests[0].source, 'vms.yaml');
  assert.equal(parseManifests('', 'empty.yaml').length, 0);
});

test('JSON documents and kind: List are accepted', () => {
  const list = JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ns1' } }] });
  assert.deepEqual(
    parseManifests(list, 'l.json').map((m) => m.object.kind),
    ['Namespace'],
  );
});

test('bad documents name the file and document', () => {
  assert.throws(
    () => parseManifests(`${vm('a')}---\nkind: VirtualMachine\nmetadata: {}\n`, 'x.yaml'),
    (e: unknown) => e instanceof ClientError && e.code === 'BadManifest' && e.message === 'x.yaml (document 2): missing apiVersion, metadata.name',
  );
  assert.throws(() => parseManifests('a: [1,\n', 'y.yaml'), /y.yaml \(document 1\): not valid YAML/);
  assert.throws(() => parseManifests('- 1\n- 2\n', 'z.yaml'), /expected a Kubernetes object/);
});

const made: string[] = [];
after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

test('directories: manifest files in name order, subdirectories only with recursive; - reads stdin', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vessel-manifests-'));
  made.push(dir);
  writeFileSync(join(dir, 'b.yaml'), vm('b'));
  writeFileSync(join(dir, 'a.yml'), vm('a'));
  writeFileSync(join(dir, 'notes.txt'), 'not a manifest');
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'c.json'), JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'c' } }));
  const names = (recursive: boolean) => readManifests([dir], { recursive }).map((m) => m.object.metadata?.name);
  assert.deepEqual(names(false), ['a', 'b']);
  assert.deepEqual(names(true), ['a', 'b', 'c']);
  assert.deepEqual(
    readManifests(['-'], { readStdin: () => vm('s') }).map((m) => [m.source, m.object.metadata?.name]),
    [['-', 's']],
  );
  assert.throws(() => readManifests([join(dir, 'nope.yaml')]), /does not exist/);
});
