import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { applyPatch, checkNesting, MAX_NESTING_DEPTH, mergePatch, NestingError, parsePatchBody, patchTypeOf, strategicMergePatch } from './patch.ts';

describe('merge patch (RFC 7396)', () => {
  it('merges objects, replaces lists and deletes with null', () => {
    assert.deepEqual(mergePatch({ a: 1, b: { c: 2, d: 3 }, l: [1, 2] }, { b: { c: null, e: 4 }, l: [3] }), { a: 1, b: { d: 3, e: 4 }, l: [3] });
    assert.deepEqual(mergePatch({ a: 1 }, 'x'), 'x');
  });
});

describe('strategic merge patch', () => {
  it('merges keyed lists, unions finalizers and honours directives', () => {
    const live = {
      spec: {
        ports: [
          { port: 80, name: 'http' },
          { port: 443, name: 'https' },
        ],
      },
      metadata: { finalizers: ['a'] },
    };
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
    assert.throws(
      () => applyPatch('json', { a: 1 }, [{ op: 'test', path: '/a', value: 2 }]),
      (e: { code?: number }) => e.code === 422,
    );
  });

  it('maps content types to patch types', () => {
    assert.equal(patchTypeOf('application/merge-patch+json; charset=utf-8'), 'merge');
    assert.equal(patchTypeOf('application/apply-patch+yaml'), 'apply');
    assert.throws(() => patchTypeOf('application/json'), /unknown format/);
  });
});

describe('nesting limit', () => {
  const deep = (n: number): unknown => {
    let v: unknown = 'x';
    for (let i = 0; i < n; i++) v = { a: v };
    return v;
  };

  it('refuses bodies nested deeper than the limit before recursing, and names where', () => {
    assert.doesNotThrow(() => checkNesting(deep(MAX_NESTING_DEPTH)));
    assert.throws(
      () => checkNesting({ spec: deep(100_000) }),
      (e: unknown) => e instanceof NestingError && e.field === 'spec.a.a.a.a.a...',
    );
    const body = `{"metadata":{"labels":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}}`;
    for (const type of ['merge', 'strategic', 'apply'] as const) assert.throws(() => parsePatchBody(type, body), NestingError, type);
    assert.throws(() => parsePatchBody('apply', `a: ${'['.repeat(10_000)}${']'.repeat(10_000)}`), NestingError, 'YAML');
    // A JSON patch value counts from the depth its path points at.
    const op = (path: string, n: number) => JSON.stringify([{ op: 'add', path, value: deep(n) }]);
    assert.doesNotThrow(() => parsePatchBody('json', op('/a', 900)));
    assert.throws(() => parsePatchBody('json', op('/a'.repeat(200), 900)), NestingError);
  });
});
