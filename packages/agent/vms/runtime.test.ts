/** What a VMI that cannot start says: the message the VM's CrashLoopBackOff condition shows. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { parse } from 'yaml';
import { buildQemuArgv, type QemuInput } from '../qemu/argv.ts';
import { PrepareError } from './prepare.ts';
import { startFailure } from './runtime.ts';

const minimal = (): QemuInput => parse(readFileSync(new URL('../qemu/testdata/minimal.yaml', import.meta.url), 'utf8')) as QemuInput;

function failureOf(mutate: (spec: Record<string, unknown>) => void): { reason: string; message: string } {
  const input = minimal();
  mutate(input.vmi.spec as unknown as Record<string, unknown>);
  try {
    buildQemuArgv(input);
  } catch (e) {
    return startFailure(e);
  }
  assert.fail('the spec was expected to be refused');
}

const occurrences = (text: string, what: string) => text.split(what).length - 1;

test('a spec the argv builder refuses: each cause is named once, with its field', () => {
  const bad = failureOf((spec) => {
    (spec.domain as Record<string, unknown>).resources = { requests: { memory: '128Mi', cpu: '-1' } };
  });
  assert.equal(bad.reason, 'InvalidVmSpec');
  assert.equal(
    bad.message,
    'VirtualMachineInstance default/minimal cannot be started: spec.domain.resources.requests.cpu: Invalid value: "-1": must be a positive quantity',
  );

  const two = failureOf((spec) => {
    const domain = spec.domain as Record<string, Record<string, unknown>>;
    domain.cpu = { model: 'host-passthrough' };
    domain.machine = { type: 'isapc' };
  });
  assert.equal(two.reason, 'UnsupportedVmSpec');
  assert.equal(occurrences(two.message, 'spec.domain.cpu.model'), 1, two.message);
  assert.equal(occurrences(two.message, 'spec.domain.machine.type'), 1, two.message);
  assert.equal(occurrences(two.message, 'cannot be started'), 1, two.message);
});

test('other start failures keep their reason and message', () => {
  assert.deepEqual(startFailure(new PrepareError('PvcNotReady', 'claim root is not ready', false)), {
    reason: 'PvcNotReady',
    message: 'claim root is not ready',
  });
  assert.deepEqual(startFailure(new Error('disk full')), { reason: 'PrepareFailed', message: 'disk full' });
});
