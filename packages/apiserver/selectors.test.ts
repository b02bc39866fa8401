import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseFieldSelector, parseLabelSelector } from './selectors.ts';

const obj = (labels: Record<string, string>, extra: Record<string, unknown> = {}) => ({ metadata: { name: 'x', labels }, ...extra });

describe('label selectors', () => {
  it('matches equality, inequality, sets and existence', () => {
    const m = parseLabelSelector('app=web,tier!=db,env in (prod, staging),!legacy,zone')!;
    assert.equal(m(obj({ app: 'web', tier: 'fe', env: 'prod', zone: 'a' })), true);
    assert.equal(m(obj({ app: 'web', tier: 'db', env: 'prod', zone: 'a' })), false);
    assert.equal(m(obj({ app: 'web', env: 'dev', zone: 'a' })), false);
    assert.equal(m(obj({ app: 'web', env: 'prod', zone: 'a', legacy: 'y' })), false);
    assert.equal(m(obj({ app: 'web', env: 'prod' })), false);
    assert.equal(parseLabelSelector('a notin (x)')!(obj({})), true);
    assert.equal(parseLabelSelector('a==b')!(obj({ a: 'b' })), true);
    assert.equal(parseLabelSelector(''), undefined);
  });

  it('names the bad part of a malformed selector', () => {
    for (const bad of ['a in (b', 'a notin ()', 'a=b=c', '-bad=x', 'a=' + 'x'.repeat(64)]) {
      assert.throws(
        () => parseLabelSelector(bad),
        (e: Error) => /unable to parse requirement/.test(e.message) && e.message.includes('"'),
        bad,
      );
    }
  });
});

describe('field selectors', () => {
  it('compares dotted paths, absent fields as empty', () => {
    const m = parseFieldSelector('metadata.name=x,status.phase!=Running')!;
    assert.equal(m(obj({}, { status: { phase: 'Pending' } })), true);
    assert.equal(m(obj({}, { status: { phase: 'Running' } })), false);
    assert.equal(parseFieldSelector('spec.nodeName=')!(obj({})), true);
    assert.throws(() => parseFieldSelector('nonsense'), /invalid field selector/);
  });
});
