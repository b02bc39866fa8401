/** The watchdog's timeout against the control plane's failover (watchdog.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { watchdogTimeoutMs } from './watchdog.ts';

test('ends a heartbeat and a kill margin before the failover the control plane published', () => {
  // The defaults: grace 8 s + fencing 8 s + margin 4 s; heartbeats every 2 s.
  assert.equal(watchdogTimeoutMs({ failoverAfterMs: 20_000, heartbeatMs: 2000, fencingMs: 8000 }), 15_000);
  // A control plane with Kubernetes' 40 s grace leaves a restarting agent much longer.
  assert.equal(watchdogTimeoutMs({ failoverAfterMs: 52_000, heartbeatMs: 5000, fencingMs: 8000 }), 44_000);
});

test('before the control plane has said anything: fencing timeout + 4 s, within the default failover', () => {
  assert.equal(watchdogTimeoutMs({ heartbeatMs: 2000, fencingMs: 8000 }), 12_000);
  assert.ok(watchdogTimeoutMs({ heartbeatMs: 2000, fencingMs: 8000 }) < 20_000 - 2000);
});

test('never below a second, whatever the published failover', () => {
  assert.equal(watchdogTimeoutMs({ failoverAfterMs: 3000, heartbeatMs: 2000, fencingMs: 1000 }), 1000);
});
