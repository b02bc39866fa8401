/** Tests for describe's human view and events table. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { describeEvents, describeObject, smartLabel } from './describe.ts';

test('smartLabel spells camelCase keys as words, initialisms upper-case', () => {
  assert.equal(smartLabel('runStrategy'), 'Run Strategy');
  assert.equal(smartLabel('apiVersion'), 'API Version');
  assert.equal(smartLabel('uid'), 'UID');
  assert.equal(smartLabel('kubevirt.io/vm'), 'kubevirt.io/vm');
});

test('describeObject: header fields, then the rest with nested indentation', () => {
  const text = describeObject({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: {
      name: 'demo',
      namespace: 'default',
      uid: 'u1',
      labels: { app: 'demo', tier: 'x' },
      annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{}' },
    },
    spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {} } } } },
    status: { conditions: [{ type: 'Ready', status: 'False' }] },
  });
  assert.equal(
    text,
    [
      'Name:         demo',
      'Namespace:    default',
      'Labels:       app=demo',
      '              tier=x',
      'Annotations:  <none>',
      'API Version:  kubevirt.io/v1',
      'Kind:         VirtualMachine',
      'Metadata:',
      '  UID:  u1',
      'Spec:',
      '  Run Strategy:  Halted',
      '  Template:',
      '    Spec:',
      '      Domain:',
      '        Devices:',
      'Status:',
      '  Conditions:',
      '    Status:  False',
      '    Type:    Ready',
      '',
    ].join('\n'),
  );
});

test('describeEvents: a table oldest first, repeated events counted, <none> when empty', () => {
  const now = Date.parse('2024-01-01T00:10:00Z');
  assert.equal(describeEvents([], now), 'Events:  <none>\n');
  const text = describeEvents(
    [
      {
        type: 'Warning',
        reason: 'FailedCreate',
        message: 'no node',
        count: 3,
        firstTimestamp: '2024-01-01T00:00:00Z',
        lastTimestamp: '2024-01-01T00:09:00Z',
        source: { component: 'virt-controller' },
      },
      { type: 'Normal', reason: 'Created', message: 'created', lastTimestamp: '2024-01-01T00:05:00Z', reportingController: 'vessel' },
    ],
    now,
  );
  assert.equal(
    text,
    [
      'Events:',
      '  Type      Reason         Age                 From              Message',
      '  ----      ------         ----                ----              -------',
      '  Normal    Created        5m                  vessel            created',
      '  Warning   FailedCreate   60s (x3 over 10m)   virt-controller   no node',
      '',
    ].join('\n'),
  );
});
