import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource } from '@vessel/api';
import { age, evalPath, toTable, wantsTable } from './table.ts';

describe('printer columns', () => {
  const vm = {
    apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine',
    metadata: { name: 'demo', creationTimestamp: new Date(Date.now() - 90_000).toISOString() },
    status: { printableStatus: 'Running', conditions: [{ type: 'Paused', status: 'False' }, { type: 'Ready', status: 'True' }] },
  };

  it('evaluates the JSONPath subset kubectl columns use', () => {
    assert.deepEqual(evalPath(vm, ".status.conditions[?(@.type=='Ready')].status"), ['True']);
    assert.deepEqual(evalPath(vm, '.status.conditions[*].type'), ['Paused', 'Ready']);
    assert.deepEqual(evalPath(vm, '.status.conditions[1].type'), ['Ready']);
    assert.deepEqual(evalPath(vm, '.status.missing.deeper'), []);
  });

  it('builds the Table kubectl prints', () => {
    const t = toTable(findByResource('kubevirt.io', 'v1', 'virtualmachines')!, [vm as never], { resourceVersion: '7' }, undefined);
    assert.deepEqual(t.columnDefinitions.map((c) => c.name), ['Name', 'Age', 'Status', 'Ready']);
    assert.deepEqual(t.rows[0].cells, ['demo', '90s', 'Running', 'True']);
    assert.equal((t.rows[0].object as { kind: string }).kind, 'PartialObjectMetadata');
  });

  it('formats ages like kubectl and detects Table requests', () => {
    const now = Date.parse('2026-01-10T00:00:00Z');
    assert.equal(age('2026-01-09T23:59:15Z', now), '45s');
    assert.equal(age('2026-01-09T23:55:30Z', now), '4m30s');
    assert.equal(age('2026-01-09T21:00:00Z', now), '3h');
    assert.equal(age('2026-01-09T20:40:00Z', now), '3h20m');
    assert.equal(age('2026-01-07T00:00:00Z', now), '3d');
    assert.equal(age('2026-01-06T20:00:00Z', now), '3d4h');
    assert.equal(age('2025-11-01T00:00:00Z', now), '70d');
    assert.equal(wantsTable('application/json;as=Table;v=v1;g=meta.k8s.io,application/json'), true);
    assert.equal(wantsTable('application/json'), false);
  });
});
