/** The controllers' egress: an allowed pair lets exactly one loopback address and port through, nothing else. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAllowedPair, pollRefusal } from './egress.ts';

test('an allowed pair is one loopback address and port; other ports, addresses and non-loopback pairs stay refused', () => {
  const allowed = [{ address: '127.0.0.1', port: 5000 }];
  assert.equal(isAllowedPair('127.0.0.1', 5000, allowed), true);
  assert.equal(isAllowedPair('::ffff:127.0.0.1', 5000, allowed), true);
  assert.equal(isAllowedPair('127.0.0.1', 5001, allowed), false);
  assert.equal(isAllowedPair('127.0.0.2', 5000, allowed), false);
  assert.equal(isAllowedPair('127.0.0.1', 5000, undefined), false);
  // Only loopback can be allowed this way: a link-local pair given by mistake is still refused.
  assert.equal(isAllowedPair('169.254.169.254', 80, [{ address: '169.254.169.254', port: 80 }]), false);
  assert.equal(pollRefusal('127.0.0.1', false), 'a loopback address');
});
