/** The delay points of faults.ts: only the named point waits, for VESSEL_DELAY_MS. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { faultDelay } from './faults.ts';

test('faultDelay waits at the named point only', async () => {
  process.env.VESSEL_DELAY_AT = 'here';
  process.env.VESSEL_DELAY_MS = '200';
  try {
    let t0 = Date.now();
    await faultDelay('elsewhere');
    assert.ok(Date.now() - t0 < 100, 'another point does not wait');
    t0 = Date.now();
    await faultDelay('here');
    assert.ok(Date.now() - t0 >= 190, 'the named point waits VESSEL_DELAY_MS');
  } finally {
    delete process.env.VESSEL_DELAY_AT;
    delete process.env.VESSEL_DELAY_MS;
  }
});
