/** Query parameter parsing: booleans as Go's strconv.ParseBool, resourceVersions as decimal integers. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError } from './errors.ts';
import { parseBool, parseResourceVersion } from './query.ts';

test('parseBool accepts exactly what strconv.ParseBool accepts', () => {
  for (const t of ['1', 't', 'T', 'TRUE', 'true', 'True']) assert.equal(parseBool('watch', t), true, t);
  for (const f of ['0', 'f', 'F', 'FALSE', 'false', 'False']) assert.equal(parseBool('watch', f), false, f);
  assert.equal(parseBool('watch', undefined), undefined);
  assert.equal(parseBool('watch', ''), undefined);
  for (const bad of ['yes', 'tRUE', 'on', ' true', '2']) {
    assert.throws(
      () => parseBool('watch', bad),
      (e: unknown) => e instanceof ApiError && e.code === 400 && e.details?.causes?.[0]?.field === 'watch',
      bad,
    );
  }
});

test('parseResourceVersion takes decimal integers only', () => {
  assert.equal(parseResourceVersion(undefined), undefined);
  assert.equal(parseResourceVersion(''), undefined);
  assert.equal(parseResourceVersion('0'), 0);
  assert.equal(parseResourceVersion('12345'), 12345);
  for (const bad of ['abc', '-5', '1e3', '12x', ' 1', '99999999999999999999']) {
    assert.throws(
      () => parseResourceVersion(bad, 'metadata.resourceVersion'),
      (e: unknown) => e instanceof ApiError && e.code === 400 && e.reason === 'BadRequest' && e.details?.causes?.[0]?.field === 'metadata.resourceVersion',
      bad,
    );
  }
});
