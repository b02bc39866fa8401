/** CDI's secretExtraHeaders: the DataVolume field reaches the importer, and each Secret value is one checked header. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { storage } from '@vessel/api';
import { parseExtraHeaders } from './import.ts';
import { ImportError } from './errors.ts';

test('populationSource keeps secretExtraHeaders of an http source', () => {
  const src = storage.populationSource({ source: { http: { url: 'https://x/disk.img', secretExtraHeaders: ['hdr'], certConfigMap: 'ca' } } }, 'ns');
  assert.deepEqual(src, {
    kind: 'http',
    url: 'https://x/disk.img',
    certConfigMap: 'ca',
    secretRef: undefined,
    checksum: undefined,
    secretExtraHeaders: ['hdr'],
  });
  assert.equal((storage.populationSource({ source: { http: { url: 'https://x' } } }, 'ns') as { secretExtraHeaders?: unknown }).secretExtraHeaders, undefined);
});

test("parseExtraHeaders: KubeVirt's `name:value` and `Name: value`; line breaks, bad names and reserved headers refused", () => {
  assert.deepEqual(parseExtraHeaders(['x-kubevirt-export-token:abc', 'X-Other: v w\n'], 'Secret s'), { 'x-kubevirt-export-token': 'abc', 'X-Other': 'v w' });
  for (const bad of ['no-colon', ': v', 'bad name: v', 'x: a\r\nInjected: 1', 'Host: evil', 'content-length: 1'])
    assert.throws(
      () => parseExtraHeaders([bad], 'Secret s'),
      (e: unknown) => e instanceof ImportError && e.code === 'InvalidArgument' && /Secret s/.test(e.message),
      bad,
    );
});
