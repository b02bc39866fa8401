import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyManagedFields,
  applyToLive,
  compare,
  fromFieldsV1,
  managerOf,
  membersOf,
  pathString,
  toFieldsV1,
  updateManagedFields,
  type FieldWrite,
} from './managed-fields.ts';
import type { JsonObject } from '@vessel/api';

const t = { name: 'x', kind: 'ConfigMap', group: '' };
const w = (manager: string, extra: Partial<FieldWrite> = {}): FieldWrite => ({ manager, apiVersion: 'v1', statusSubresource: true, ...extra });

describe('field sets', () => {
  it('spell members in FieldsV1: keyed items with `.`, set values, leaves', () => {
    const obj = {
      metadata: { labels: { app: 'web' }, finalizers: ['a'] },
      spec: { ports: [{ port: 80, name: 'http' }], tags: ['x', 'y'], empty: {} },
    };
    assert.deepEqual(toFieldsV1(membersOf(obj)), {
      'f:metadata': { 'f:finalizers': { 'v:"a"': {} }, 'f:labels': { 'f:app': {} } },
      'f:spec': { 'f:ports': { 'k:{"port":80}': { '.': {}, 'f:name': {}, 'f:port': {} } }, 'f:tags': {} },
    });
    const set = membersOf(obj);
    assert.deepEqual([...fromFieldsV1(toFieldsV1(set))].sort(), [...set].sort());
    assert.equal(pathString(['f:spec', 'f:ports', 'k:{"port":80}', 'f:name']), '.spec.ports[port=80].name');
    assert.equal(pathString(['f:metadata', 'f:finalizers', 'v:"a"']), '.metadata.finalizers[="a"]');
  });

  it('compares by item key, not position', () => {
    const c = compare({ spec: { ports: [{ port: 1, name: 'a' }, { port: 2 }] } }, { spec: { ports: [{ port: 2 }, { port: 1, name: 'b' }, { port: 3 }] } });
    assert.deepEqual([...c.modified], ['["f:spec","k:{\\"port\\":1}","f:name"]'.replace('k:', 'f:ports","k:')]);
    assert.deepEqual(new Set(c.added), new Set(['["f:spec","f:ports","k:{\\"port\\":3}"]', '["f:spec","f:ports","k:{\\"port\\":3}","f:port"]']));
    assert.equal(c.removed.size, 0);
  });

  it('names the default manager after the user agent', () => {
    assert.equal(managerOf(undefined, 'kubectl/v1.32.0 (linux/amd64) kubernetes/abc'), 'kubectl');
    assert.equal(managerOf('mine', 'kubectl/v1.32.0'), 'mine');
    assert.equal(managerOf(undefined, undefined), 'vessel-apiserver');
    assert.throws(() => managerOf('x'.repeat(129), undefined), /128/);
  });
});

/** Runs an apply as resources.ts does (merge + prune, then ownership). */
function apply(live: JsonObject, config: JsonObject, manager: string, force = false): JsonObject {
  const merged = applyToLive(live, config, w(manager), t);
  if (live.status !== undefined) merged.status = live.status; // the main resource does not write status
  const managedFields = applyManagedFields(live, merged, config, w(manager), t, force);
  return { ...merged, metadata: { ...(merged.metadata as JsonObject), managedFields: managedFields as unknown as JsonObject[] } };
}

describe('server-side apply', () => {
  const base = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' } };
  const cfg = (data: JsonObject) => ({ ...base, data });

  it('removes what the manager no longer applies, keeps what others own', () => {
    let obj = apply({ ...base }, cfg({ a: '1', b: '2' }), 'one');
    obj = apply(obj, cfg({ a: '1', c: '3' }), 'two');
    obj = apply(obj, cfg({}), 'one');
    assert.deepEqual(obj.data, { a: '1', c: '3' }, "a is still two's; b was only one's");
    obj = apply(obj, cfg({}), 'two');
    assert.equal(obj.data, undefined);
  });

  it('conflicts on a changed value another manager owns, unless forced', () => {
    const obj = apply({ ...base }, cfg({ a: '1' }), 'one');
    assert.throws(
      () => apply(obj, cfg({ a: '2' }), 'two'),
      (e: { code: number; details: { causes: { reason: string; field: string; message: string }[] } }) => {
        assert.equal(e.code, 409);
        assert.deepEqual(e.details.causes, [{ reason: 'FieldManagerConflict', message: 'conflict with "one"', field: '.data.a' }]);
        return true;
      },
    );
    const forced = apply(obj, cfg({ a: '2' }), 'two', true);
    const entries = (forced.metadata as { managedFields: { manager: string; fieldsV1: object }[] }).managedFields;
    assert.deepEqual(
      entries.map((e) => [e.manager, e.fieldsV1]),
      [['two', { 'f:data': { 'f:a': {} } }]],
    );
  });

  it('an Update takes the fields it changes; a later apply of another value conflicts with it', () => {
    const obj = apply({ ...base }, cfg({ a: '1' }), 'one');
    const edited = { ...obj, data: { a: '9' } };
    const entries = updateManagedFields(obj, edited, w('kubectl-edit'), t);
    assert.deepEqual(
      entries.map((e) => [e.manager, e.operation, e.fieldsV1]),
      [['kubectl-edit', 'Update', { 'f:data': { 'f:a': {} } }]],
    );
    const live = { ...edited, metadata: { ...base.metadata, managedFields: entries as unknown as JsonObject[] } };
    assert.throws(() => apply(live, cfg({ a: '1' }), 'one'), /conflict with "kubectl-edit" using v1: \.data\.a/);
  });

  it('owns nothing of status from the main resource, and status writes do not conflict with spec applies', () => {
    const created = { apiVersion: 'v1', kind: 'X', metadata: { name: 'x' }, spec: { a: 1 } };
    const vm = {
      ...created,
      metadata: { name: 'x', managedFields: updateManagedFields(undefined, created, w('maker'), t) as unknown as JsonObject[] },
      status: { s: 1 },
    };
    const entries = updateManagedFields(vm, { ...vm, status: { s: 2 } }, w('ctrl', { subresource: 'status' }), t);
    assert.deepEqual(entries.map((e) => [e.manager, e.subresource, e.fieldsV1]).sort(), [
      ['ctrl', 'status', { 'f:status': { 'f:s': {} } }],
      ['maker', undefined, { 'f:spec': { 'f:a': {} } }],
    ]);
    const live = { ...vm, status: { s: 2 }, metadata: { name: 'x', managedFields: entries as unknown as JsonObject[] } };
    const out = apply(live, { ...created, spec: { a: 2 }, status: { s: 5 } } as JsonObject, 'me', true);
    const mine = (out.metadata as { managedFields: { manager: string; fieldsV1: object }[] }).managedFields.find((e) => e.manager === 'me');
    assert.deepEqual(mine?.fieldsV1, { 'f:spec': { 'f:a': {} } });
  });

  it('on an object without managedFields, before-first-apply keeps the old fields without conflicts', () => {
    const legacy = { ...base, data: { a: '1', b: '2' } };
    assert.deepEqual(updateManagedFields(legacy, { ...legacy, data: { a: '2' } }, w('edit'), t), [], 'updates do not start tracking');
    let obj = apply(legacy, cfg({ a: 'changed' }), 'one');
    assert.deepEqual(obj.data, { a: 'changed', b: '2' });
    const entries = (obj.metadata as { managedFields: { manager: string; fieldsV1: object }[] }).managedFields;
    assert.deepEqual(
      entries.map((e) => [e.manager, e.fieldsV1]),
      [
        ['one', { 'f:data': { 'f:a': {} } }],
        ['before-first-apply', { 'f:data': { 'f:b': {} } }],
      ],
    );
    obj = apply(obj, cfg({}), 'one');
    assert.deepEqual(obj.data, { b: '2' });
  });

  it('merges keyed list items and prunes the items a manager dropped', () => {
    const svc = (ports: JsonObject[]) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'x' }, spec: { ports } });
    let obj = apply(svc([]), svc([{ port: 80, name: 'http' }, { port: 443 }]), 'one');
    obj = apply(obj, svc([{ port: 22 }]), 'two');
    assert.deepEqual((obj.spec as { ports: unknown }).ports, [{ port: 80, name: 'http' }, { port: 443 }, { port: 22 }]);
    obj = apply(obj, svc([{ port: 80, name: 'http' }]), 'one');
    assert.deepEqual((obj.spec as { ports: unknown }).ports, [{ port: 80, name: 'http' }, { port: 22 }]);
  });
});

describe('deep objects', () => {
  it('handles objects as deep as the nesting limit allows', () => {
    let v: JsonObject = { leaf: 'x' };
    for (let i = 0; i < 998; i++) v = { a: v };
    const obj = { metadata: { name: 'x' }, spec: v };
    assert.equal(membersOf(obj).size, 2, 'metadata.name and the leaf');
    assert.equal(compare({}, obj).added.size, 2);
    const applied = apply({ ...base0 }, obj, 'one');
    assert.equal(compare(obj.spec, applied.spec as JsonObject).modified.size, 0);
  });
});
const base0 = { apiVersion: 'v1', kind: 'X', metadata: { name: 'x' } };

describe('managedFields sent by clients', () => {
  const created = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { a: '1' } };
  const entries = updateManagedFields(undefined, created, w('maker'), t);
  const live = { ...created, metadata: { name: 'x', managedFields: entries as unknown as JsonObject[] } };

  it('keeps the live entries when the client sends them back unchanged or not at all', () => {
    assert.deepEqual(updateManagedFields(live, live, w('editor'), t, entries), entries);
    assert.deepEqual(updateManagedFields(live, live, w('editor'), t, undefined), entries);
  });

  it('takes a changed list as the new ownership, and [] or [{}] as none', () => {
    const moved = [{ ...entries[0], manager: 'someone-else' }];
    assert.deepEqual(
      updateManagedFields(live, live, w('editor'), t, moved).map((e) => e.manager),
      ['someone-else'],
    );
    assert.deepEqual(updateManagedFields(live, live, w('editor'), t, [{}]), []);
    assert.deepEqual(updateManagedFields(live, live, w('editor'), t, []), []);
  });

  it('refuses entries it cannot read with the field path', () => {
    assert.throws(
      () => updateManagedFields(live, live, w('editor'), t, [{ manager: 'm', operation: 'Sideways' }]),
      (e: { code: number; details: { causes: { field: string }[] } }) => e.code === 422 && e.details.causes[0].field === 'metadata.managedFields[0]',
    );
    assert.throws(
      () => updateManagedFields(live, live, w('editor'), t, [{ manager: 'm', operation: 'Update', fieldsV1: { 'x:bad': {} } }]),
      /unknown path element/,
    );
  });
});

describe('many writers', () => {
  it('folds the oldest Update entries into ancient-changes beyond ten', () => {
    let obj: JsonObject = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: {} };
    for (let i = 0; i < 14; i++) {
      const next = { ...obj, data: { ...(obj.data as JsonObject), [`k${i}`]: 'v' } };
      const managedFields = updateManagedFields(i === 0 ? undefined : obj, next, w(`writer-${i}`), t);
      obj = { ...next, metadata: { name: 'x', managedFields: managedFields as unknown as JsonObject[] } };
    }
    const entries = (obj.metadata as { managedFields: { manager: string; fieldsV1: { 'f:data': object } }[] }).managedFields;
    assert.equal(entries.length, 10);
    const ancient = entries.find((e) => e.manager === 'ancient-changes');
    assert.ok(ancient);
    assert.equal(Object.keys(ancient.fieldsV1['f:data']).length + entries.length - 1, 14, 'every field is still owned by someone');
  });
});
