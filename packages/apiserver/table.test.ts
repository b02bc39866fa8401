import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource } from '@vessel/api';
import { age, evalPath, toTable, wantsTable } from './table.ts';

describe('printer columns', () => {
  const vm = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name: 'demo', creationTimestamp: new Date(Date.now() - 90_000).toISOString() },
    status: {
      printableStatus: 'Running',
      conditions: [
        { type: 'Paused', status: 'False' },
        { type: 'Ready', status: 'True' },
      ],
    },
  };

  it('evaluates the JSONPath subset kubectl columns use', () => {
    assert.deepEqual(evalPath(vm, ".status.conditions[?(@.type=='Ready')].status"), ['True']);
    assert.deepEqual(evalPath(vm, '.status.conditions[*].type'), ['Paused', 'Ready']);
    assert.deepEqual(evalPath(vm, '.status.conditions[1].type'), ['Ready']);
    assert.deepEqual(evalPath(vm, '.status.missing.deeper'), []);
  });

  it('builds the Table kubectl prints', () => {
    const t = toTable(findByResource('kubevirt.io', 'v1', 'virtualmachines')!, [vm as never], { resourceVersion: '7' }, undefined);
    assert.deepEqual(
      t.columnDefinitions.map((c) => c.name),
      ['Name', 'Age', 'Status', 'Ready'],
    );
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

  it('prints Services and EndpointSlices as kubectl does', () => {
    const svc = {
      metadata: { name: 'web' },
      spec: {
        type: 'NodePort',
        clusterIP: '10.96.4.2',
        selector: { tier: 'a', app: 'web' },
        ports: [
          { port: 80, nodePort: 30080, protocol: 'TCP' },
          { port: 53, protocol: 'UDP' },
        ],
      },
    };
    const t = toTable(findByResource('', 'v1', 'services')!, [svc as never], {}, undefined);
    assert.deepEqual(t.columnDefinitions.map((c) => c.name).slice(0, 5), ['Name', 'Type', 'Cluster-IP', 'External-IP', 'Port(s)']);
    assert.deepEqual(t.rows[0].cells.slice(0, 5), ['web', 'NodePort', '10.96.4.2', '<none>', '80:30080/TCP,53/UDP']);
    assert.equal(t.rows[0].cells[6], 'app=web,tier=a');
    const slice = (n: number) => ({
      metadata: { name: 'web-abc' },
      addressType: 'IPv4',
      ports: [{ port: 8080 }],
      endpoints: Array.from({ length: n }, (_, i) => ({ addresses: [`10.244.0.${i + 1}`] })),
    });
    const es = findByResource('discovery.k8s.io', 'v1', 'endpointslices')!;
    assert.deepEqual(toTable(es, [slice(2) as never], {}, undefined).rows[0].cells.slice(0, 4), ['web-abc', 'IPv4', '8080', '10.244.0.1,10.244.0.2']);
    assert.equal(toTable(es, [slice(5) as never], {}, undefined).rows[0].cells[3], '10.244.0.1,10.244.0.2,10.244.0.3 + 2 more...');
    assert.equal(toTable(es, [slice(0) as never], {}, undefined).rows[0].cells[3], '<unset>');
  });

  it("prints a NetworkPolicy's pod selector as kubectl does", () => {
    const np = findByResource('networking.k8s.io', 'v1', 'networkpolicies')!;
    const pol = (podSelector: unknown) => ({ metadata: { name: 'deny', creationTimestamp: new Date().toISOString() }, spec: { podSelector } });
    assert.deepEqual(
      toTable(np, [pol({}) as never], {}, undefined).columnDefinitions.map((c) => c.name),
      ['Name', 'Pod-Selector', 'Age'],
    );
    assert.equal(toTable(np, [pol({}) as never], {}, undefined).rows[0].cells[1], '<none>');
    assert.equal(
      toTable(
        np,
        [
          pol({
            matchLabels: { tier: 'a', app: 'web' },
            matchExpressions: [
              { key: 'env', operator: 'In', values: ['prod', 'dev'] },
              { key: 'x', operator: 'DoesNotExist' },
            ],
          }) as never,
        ],
        {},
        undefined,
      ).rows[0].cells[1],
      'app=web,tier=a,env in (dev,prod),!x',
    );
  });
});
