/** Node accounting: kubelet's --system-reserved syntax and allocatable = capacity less it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_SYSTEM_RESERVED, nodeResources, parseSystemReserved } from './node.ts';

const Mi = 2 ** 20;

test('parses cpu=QUANTITY,memory=QUANTITY (either may be left out) and refuses anything else', () => {
  assert.deepEqual(parseSystemReserved(DEFAULT_SYSTEM_RESERVED), { cpuMillis: 100, memoryBytes: 256 * Mi });
  assert.deepEqual(parseSystemReserved('memory=1Gi'), { memoryBytes: 1024 * Mi });
  assert.deepEqual(parseSystemReserved('cpu=1.5'), { cpuMillis: 1500 });
  assert.deepEqual(parseSystemReserved(''), {});
  assert.throws(() => parseSystemReserved('disk=1Gi'), /"disk=1Gi" is not cpu=QUANTITY or memory=QUANTITY/);
  assert.throws(() => parseSystemReserved('memory=lots'), /memory=lots/);
});

test('allocatable is capacity less the reservation, never below zero', () => {
  assert.deepEqual(nodeResources(2, 4096 * Mi, { cpuMillis: 100, memoryBytes: 256 * Mi }), {
    capacity: { cpu: '2', memory: `${4096 * 1024}Ki` },
    allocatable: { cpu: '1900m', memory: `${3840 * 1024}Ki` },
  });
  assert.deepEqual(nodeResources(2, 4096 * Mi).allocatable, { cpu: '2', memory: `${4096 * 1024}Ki` });
  assert.deepEqual(nodeResources(1, 100 * Mi, { cpuMillis: 5000, memoryBytes: 200 * Mi }).allocatable, { cpu: '0', memory: '0Ki' });
});
