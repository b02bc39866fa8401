import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { applyPatch, mergePatch, patchTypeOf, strategicMergePatch } from './patch.ts';

describe('merge patch (RFC 7396)', () => {
  it('merges objects, replaces lists and deletes with null', () => {
    assert.deepEqual(mergePatch({ a: 1, b: { c: 2, d: 3 }, l: [1, 2] }, { b: { c: null, e: 4 }, l: [3] }), { a: 1, b: { d: 3, e: 4 }, l: [3] });
    assert.deepEqual(mergePatch({ a: 1 }, 'x'), 'x');
  });
});

describe('strategic merge patch', () => {
  it('merges keyed lists, unions finalizers and honours directives', () => {
    const live = { spec: { ports: [{ port: 80, name: 'http' }, { port: 443, name: 'https' }] }, metadata: { finalizers: ['a'] } };
    const out = strategicMergePatch(live, {
      spec: { ports: [{ port: 80, targetPort: 8080 }, { port: 443, $patch: 'delete' }, { port: 22 }], '$setElementOrder/ports': [{ port: 80 }] },
      metadata: { finalizers: ['b'] },
    });
    assert.deepEqual(out, { spec: { ports: [{ port: 80, name: 'http', targetPort: 8080 }, { port: 22 }] }, metadata: { finalizers: ['a', 'b'] } });
    assert.deepEqual(strategicMergePatch({ m: { a: 1, b: 2 } }, { m: { $patch: 'replace', c: 3 } }), { m: { c: 3 } });
    assert.deepEqual(strategicMergePatch({ f: ['a', 'b'] }, { '$deleteFromPrimitiveList/f': ['a'] }), { f: ['b'] });
  });
});

describe('JSON patch', () => {
  it('applies operations and refuses broken ones', () => {
    assert.deepEqual(applyPatch('json', { a: [1] }, [{ op: 'add', path: '/a/-', value: 2 }]), { a: [1, 2] });
    assert.throws(() => applyPatch('json', { a: 1 }, { op: 'add' }), /must be an array/);
    assert.throws(() => applyPatch('json', { a: 1 }, [{ op: 'remove', path: '/missing' }]), /invalid JSON patch/);
    assert.throws(() => applyPatch('json', { a: 1 }, [{ op: 'test', path: '/a', value: 2 }]), (e: { code?: number }) => e.code === 422);
  });

  it('maps content types to patch types', () => {
    assert.equal(patchTypeOf('application/merge-patch+json; charset=utf-8'), 'merge');
    assert.equal(patchTypeOf('application/apply-patch+yaml'), 'apply');
    assert.throws(() => patchTypeOf('application/json'), /unknown format/);
  });
});
