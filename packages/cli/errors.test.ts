/** Tests for how the CLI words errors. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientError, StatusError } from '@vessel/client';
import { formatError } from './errors.ts';

const invalid = (causes: Array<{ field: string; message: string }>) =>
  new StatusError(
    {
      kind: 'Status',
      code: 422,
      reason: 'Invalid',
      message: `VirtualMachine.kubevirt.io "x" is invalid: ${causes.map((c) => `${c.field}: ${c.message}`).join(', ')}`,
      details: { causes: causes.map((c) => ({ ...c, reason: 'FieldValueInvalid' })) },
    },
    422,
  );

test('one field error stays on one line, with the file as context', () => {
  assert.equal(
    formatError(invalid([{ field: 'spec.foo', message: 'unknown field' }]), 'vm.yaml'),
    'Error: vm.yaml: VirtualMachine.kubevirt.io "x" is invalid: spec.foo: unknown field',
  );
});

test('several field errors go one per line', () => {
  assert.equal(
    formatError(
      invalid([
        { field: 'spec.foo', message: 'unknown field' },
        { field: 'spec.runStrategy', message: 'Unsupported value: "x"' },
      ]),
    ),
    'Error: VirtualMachine.kubevirt.io "x" is invalid:\n  spec.foo: unknown field\n  spec.runStrategy: Unsupported value: "x"',
  );
});

test('causes missing from the message are added; client errors print their message', () => {
  const err = new StatusError({ kind: 'Status', code: 400, message: 'bad request', details: { causes: [{ field: 'a', message: 'b' }] } }, 400);
  assert.equal(formatError(err), 'Error: bad request\n  a: b');
  assert.equal(formatError(new ClientError('NoKubeconfig', 'no kubeconfig found')), 'Error: no kubeconfig found');
  assert.equal(formatError(new Error('boom')), 'Error: boom');
});
