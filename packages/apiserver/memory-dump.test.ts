/** The memory dump's size check (guest memory + overhead) and KubeVirt's dump file name. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MEMORY_DUMP_OVERHEAD, memoryDumpFileName, memoryDumpSize } from './memory-dump.ts';

test('a dump needs the guest memory plus 100Mi, from memory.guest, else the requests, else the limits', () => {
  assert.equal(MEMORY_DUMP_OVERHEAD, 100 * 2 ** 20);
  assert.equal(memoryDumpSize({ domain: { resources: { requests: { memory: '128Mi' } } } }), 228 * 2 ** 20);
  assert.equal(memoryDumpSize({ domain: { memory: { guest: '1Gi' }, resources: { requests: { memory: '128Mi' } } } }), 2 ** 30 + 100 * 2 ** 20);
  assert.equal(memoryDumpSize({ domain: { resources: { limits: { memory: '256Mi' } } } }), 356 * 2 ** 20);
});

test("the dump file is named as KubeVirt's: <vm>-<claim>-<yyyymmdd-hhmmss>.memory.dump", () => {
  assert.equal(memoryDumpFileName('web', 'dumps', new Date('2026-12-06T19:05:09.123Z')), 'web-dumps-20261206-190509.memory.dump');
});
