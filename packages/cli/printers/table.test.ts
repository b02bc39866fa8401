/** Tests for kubectl-style table printing and ages. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Table } from '@vessel/client';
import { age, asTable, formatCell, humanDuration, renderRows, renderTable, TableWriter } from './table.ts';

const s = 1000,
  m = 60 * s,
  h = 60 * m,
  d = 24 * h;

test('humanDuration matches kubectl', () => {
  const cases: Array<[number, string]> = [
    [-5 * s, '<invalid>'],
    [-0.5 * s, '0s'],
    [0, '0s'],
    [59 * s, '59s'],
    [119 * s, '119s'],
    [2 * m, '2m'],
    [3 * m + 20 * s, '3m20s'],
    [15 * m, '15m'],
    [179 * m, '179m'],
    [3 * h, '3h'],
    [5 * h + 2 * m, '5h2m'],
    [20 * h, '20h'],
    [3 * d, '3d'],
    [3 * d + 4 * h, '3d4h'],
    [40 * d, '40d'],
    [2 * 365 * d + 30 * d, '2y30d'],
    [9 * 365 * d, '9y'],
  ];
  for (const [ms, want] of cases) assert.equal(humanDuration(ms), want, `${ms}ms`);
  assert.equal(age(undefined), '<unknown>');
  assert.equal(age('2024-01-01T00:00:00Z', Date.parse('2024-01-01T00:00:30Z')), '30s');
});

test('cells: nothing for null, first line only, ages for raw timestamps in date columns', () => {
  assert.equal(formatCell(null), '');
  assert.equal(formatCell('a\nb'), 'a...');
  assert.equal(formatCell(3), '3');
  assert.equal(formatCell(false), 'false');
  assert.equal(formatCell('2024-01-01T00:00:00Z', { name: 'Age', type: 'date' }, Date.parse('2024-01-01T00:05:00Z')), '5m');
  assert.equal(formatCell('5m', { name: 'Age', type: 'date' }), '5m');
});

test('rows align like kubectl: 3 spaces padding, min width 6, last column unpadded', () => {
  assert.equal(
    renderRows([
      ['NAME', 'AGE', 'STATUS'],
      ['demo', '5s', 'Stopped'],
      ['a-longer-name', '10m', ''],
    ]),
    'NAME            AGE   STATUS\n' + 'demo            5s    Stopped\n' + 'a-longer-name   10m\n',
  );
});

const vmTable: Table = {
  kind: 'Table',
  apiVersion: 'meta.k8s.io/v1',
  columnDefinitions: [
    { name: 'Name', type: 'string', format: 'name', priority: 0 },
    { name: 'Age', type: 'date', priority: 0 },
    { name: 'Status', type: 'string', priority: 0 },
    { name: 'Ready', type: 'string', priority: 0 },
    { name: 'Node', type: 'string', priority: 1 },
  ],
  rows: [
    { cells: ['demo', '5s', 'Stopped', 'False', 'node-1'], object: { metadata: { name: 'demo', namespace: 'default' } } },
    { cells: ['web', '2m', 'Running', 'True', null], object: { metadata: { name: 'web', namespace: 'prod' } } },
  ],
};

test('renderTable hides wide columns, adds NAMESPACE and kind prefixes on request', () => {
  assert.equal(renderTable(vmTable), 'NAME   AGE   STATUS    READY\n' + 'demo   5s    Stopped   False\n' + 'web    2m    Running   True\n');
  assert.equal(
    renderTable(vmTable, { wide: true, withNamespace: true, kindPrefix: 'virtualmachine.kubevirt.io' }),
    'NAMESPACE   NAME                              AGE   STATUS    READY   NODE\n' +
      'default     virtualmachine.kubevirt.io/demo   5s    Stopped   False   node-1\n' +
      'prod        virtualmachine.kubevirt.io/web    2m    Running   True\n',
  );
  assert.equal(renderTable(vmTable, { noHeaders: true }).split('\n')[0], 'demo   5s    Stopped   False');
  assert.equal(renderTable({ ...vmTable, rows: [] }), '');
});

test('TableWriter keeps earlier widths so watch rows line up', () => {
  let text = '';
  const writer = new TableWriter((t) => (text += t));
  writer.writeRows([
    ['NAME', 'STATUS'],
    ['a-long-name', 'Stopped'],
  ]);
  writer.writeRows([['b', 'Running']]);
  assert.equal(text, 'NAME          STATUS\na-long-name   Stopped\nb             Running\n');
});

test('asTable turns plain objects and lists into NAME/AGE tables', () => {
  const list = asTable({ kind: 'List', items: [{ metadata: { name: 'x' } }] });
  assert.deepEqual(
    list.columnDefinitions.map((c) => c.name),
    ['Name', 'Age'],
  );
  assert.deepEqual(list.rows[0].cells, ['x', '<unknown>']);
  assert.equal(asTable(vmTable), vmTable);
});
