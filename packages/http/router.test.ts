import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Router, RouterPatternError } from './index.ts';

test('first route whose method and pattern fit wins, with decoded params', () => {
  const r = new Router<string>()
    .on('GET', '/api', 'versions')
    .on('PUT', '/v1/vmi/:ns/:name/:action(pause|unpause)', 'action')
    .on('*', '/v1/vmi/*', 'other')
    .on(['POST', 'HEAD'], '/upload', 'upload');
  assert.deepEqual(r.match('GET', '/api'), { handler: 'versions', params: {} });
  assert.equal(r.match('POST', '/api'), undefined);
  assert.deepEqual(r.match('PUT', '/v1/vmi/a%2Fb/vm/pause'), { handler: 'action', params: { ns: 'a/b', name: 'vm', action: 'pause' } });
  assert.deepEqual(r.match('PUT', '/v1/vmi/ns/vm/reset'), { handler: 'other', params: { '*': 'ns/vm/reset' } });
  assert.equal(r.match('GET', '/v1/vmi'), undefined);
  assert.equal(r.match('HEAD', '/upload')?.handler, 'upload');
  assert.equal(r.match('GET', '/upload'), undefined);
  assert.equal(r.match('GET', '/api/'), undefined);
  assert.equal(r.match('PUT', '/v1/vmi/%zz/vm/pause')?.params.ns, '%zz');
});

test('a bad pattern is refused when the route is added', () => {
  assert.throws(() => new Router<string>().on('GET', 'api', 'x'), RouterPatternError);
  assert.throws(() => new Router<string>().on('GET', '/a/*/b', 'x'), RouterPatternError);
  assert.throws(() => new Router<string>().on('GET', '/a:b', 'x'), RouterPatternError);
});
