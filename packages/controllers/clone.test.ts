import assert from 'node:assert/strict';
import { test } from 'node:test';
import { filterKeys, identityPatches } from './clone.ts';

test('filterKeys: * keeps everything, !pattern drops, no match drops', () => {
  const m = { app: 'web', 'team.io/owner': 'a', tier: 'db' };
  assert.deepEqual(filterKeys(m, undefined), m);
  assert.deepEqual(filterKeys(m, ['*', '!team.io/*']), { app: 'web', tier: 'db' });
  assert.deepEqual(filterKeys(m, ['app']), { app: 'web' });
  assert.deepEqual(filterKeys(m, []), {});
});

test('identityPatches: new or no MACs, no firmware UUID, serial replaced, filtered metadata removed key by key', () => {
  const source = {
    metadata: { labels: { app: 'web', 'secret/x': '1' }, annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{}', note: 'n' } },
    spec: {
      template: {
        metadata: { labels: { app: 'web' } },
        spec: {
          domain: {
            firmware: { uuid: 'u', serial: 's' },
            devices: {
              interfaces: [
                { name: 'default', macAddress: '02:00:00:00:00:01' },
                { name: 'b', macAddress: '02:00:00:00:00:02' },
              ],
            },
          },
        },
      },
    },
  };
  const ops = identityPatches(source, { labelFilters: ['*', '!secret/*'], newMacAddresses: { b: '02:aa:00:00:00:02' }, newSMBiosSerial: 'new' }).map(
    (p) => JSON.parse(p) as Record<string, unknown>,
  );
  assert.deepEqual(ops, [
    { op: 'remove', path: '/metadata/labels/secret~1x' },
    { op: 'remove', path: '/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration' },
    { op: 'remove', path: '/spec/template/spec/domain/devices/interfaces/0/macAddress' },
    { op: 'add', path: '/spec/template/spec/domain/devices/interfaces/1/macAddress', value: '02:aa:00:00:00:02' },
    { op: 'remove', path: '/spec/template/spec/domain/firmware/uuid' },
    { op: 'add', path: '/spec/template/spec/domain/firmware/serial', value: 'new' },
  ]);
});

test('identityPatches: a fixed address is never copied, whatever the filters', () => {
  const source = { spec: { template: { metadata: { annotations: { 'ipam.vessel.io/ip': '10.244.0.9', note: 'n' } }, spec: {} } } };
  const ops = identityPatches(source, {}).map((p) => JSON.parse(p) as Record<string, unknown>);
  assert.deepEqual(ops, [{ op: 'remove', path: '/spec/template/metadata/annotations/ipam.vessel.io~1ip' }]);
});
