/** Quantity parsing against the Kubernetes grammar. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseQuantity, tryParseQuantity } from './quantity.ts';

test('binary, decimal and exponent suffixes', () => {
  assert.equal(parseQuantity('64Mi'), 64 * 1024 * 1024);
  assert.equal(parseQuantity('2Gi'), 2 * 1024 ** 3);
  assert.equal(parseQuantity('1.5Gi'), 1.5 * 1024 ** 3);
  assert.equal(parseQuantity('1Ki'), 1024);
  assert.equal(parseQuantity('1k'), 1000);
  assert.equal(parseQuantity('1M'), 1e6);
  assert.equal(parseQuantity('500m'), 0.5);
  assert.equal(parseQuantity('2'), 2);
  assert.equal(parseQuantity('1e3'), 1000);
  assert.equal(parseQuantity('1E-3'), 0.001);
  assert.equal(parseQuantity('.5'), 0.5);
  assert.equal(parseQuantity('5.'), 5);
  assert.equal(parseQuantity('+1Gi'), 1024 ** 3);
  assert.equal(parseQuantity('-1'), -1);
});

test('numbers pass through (JSON numbers are quantities too)', () => {
  assert.equal(parseQuantity(1073741824), 1073741824);
  assert.equal(parseQuantity(0.5), 0.5);
});

test('malformed quantities are rejected with the Kubernetes message', () => {
  for (const bad of ['', '2GG', '64MB', 'Mi', '1 Gi', '1.2.3', 'abc', '1Gi ', '--1', '.', '1e']) {
    assert.equal(tryParseQuantity(bad), undefined, bad);
    assert.throws(() => parseQuantity(bad), /quantities must match the regular expression/);
  }
  assert.equal(tryParseQuantity(null), undefined);
  assert.equal(tryParseQuantity(Number.NaN), undefined);
});
