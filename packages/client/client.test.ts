/** Tests for Client against a small in-process HTTP server playing a Kubernetes API. */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { Client, parseWarningHeader, resourcePath, withQuery } from './client.ts';
import { ClientError, StatusError } from './errors.ts';
import type { KubeObject, WatchEvent } from './types.ts';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}
const seen: Seen[] = [];
let server: http.Server;
let client: Client;
const warnings: string[] = [];

const vmResource = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };

function json(res: http.ServerResponse, code: number, body: unknown, headers: http.OutgoingHttpHeaders = {}) {
  res.writeHead(code, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

before(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/api') return json(res, 200, { kind: 'APIVersions', versions: ['v1'] });
      if (url.pathname === '/api/v1') {
        return json(res, 200, {
          groupVersion: 'v1',
          resources: [{ name: 'namespaces', singularName: 'namespace', namespaced: false, kind: 'Namespace', shortNames: ['ns'] }],
        });
      }
      if (url.pathname === '/apis') {
        return json(res, 200, {
          kind: 'APIGroupList',
          groups: [
            {
              name: 'kubevirt.io',
              versions: [{ groupVersion: 'kubevirt.io/v1', version: 'v1' }],
              preferredVersion: { groupVersion: 'kubevirt.io/v1', version: 'v1' },
            },
            { name: 'broken.io', versions: [{ groupVersion: 'broken.io/v1', version: 'v1' }] },
          ],
        });
      }
      if (url.pathname === '/apis/kubevirt.io/v1') {
        return json(res, 200, {
          groupVersion: 'kubevirt.io/v1',
          resources: [{ name: 'virtualmachines', singularName: 'virtualmachine', namespaced: true, kind: 'VirtualMachine', shortNames: ['vm'] }],
        });
      }
      if (url.pathname === '/apis/broken.io/v1') return json(res, 503, { kind: 'Status', code: 503, reason: 'ServiceUnavailable', message: 'down' });
      if (url.pathname === '/apis/kubevirt.io/v1/namespaces/default/virtualmachines' && url.searchParams.get('watch') === 'true') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        const vm = (rv: string) => ({ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name: 'demo', resourceVersion: rv } });
        // Events split across writes, including mid-line, as a real stream may be.
        const text = `${JSON.stringify({ type: 'ADDED', object: vm('1') })}\n${JSON.stringify({ type: 'MODIFIED', object: vm('2') })}\n`;
        res.write(text.slice(0, 30));
        setTimeout(() => res.write(text.slice(30)), 20);
        return; // left open, as a watch is
      }
      if (url.pathname === '/apis/kubevirt.io/v1/namespaces/default/virtualmachines/demo' && req.method === 'GET') {
        return json(res, 200, { kind: 'VirtualMachine', metadata: { name: 'demo' } }, { Warning: '299 - "spec.running is deprecated"' });
      }
      if (url.pathname === '/apis/kubevirt.io/v1/namespaces/default/virtualmachines/bad') {
        return json(res, 422, {
          kind: 'Status',
          apiVersion: 'v1',
          status: 'Failure',
          code: 422,
          reason: 'Invalid',
          message: 'VirtualMachine.kubevirt.io "bad" is invalid: spec.foo: unknown field',
          details: { causes: [{ field: 'spec.foo', message: 'unknown field', reason: 'FieldValueInvalid' }] },
        });
      }
      if (url.pathname === '/text-error') {
        res.writeHead(502);
        return res.end('bad gateway');
      }
      if (req.method === 'PATCH' || req.method === 'POST' || req.method === 'DELETE') return json(res, 200, JSON.parse(body || '{}'));
      json(res, 404, { kind: 'Status', code: 404, reason: 'NotFound', message: 'the server could not find the requested resource' });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  client = new Client(
    {
      path: '',
      context: 'test',
      server: `http://127.0.0.1:${port}`,
      insecureSkipTlsVerify: false,
      token: 'tok',
      namespace: 'default',
    },
    { onWarning: (m) => warnings.push(m) },
  );
});

after(() => {
  client.close();
  server.closeAllConnections();
  server.close();
});

test('resourcePath and withQuery build Kubernetes URLs', () => {
  assert.equal(resourcePath(vmResource, 'ns1', 'demo', 'status'), '/apis/kubevirt.io/v1/namespaces/ns1/virtualmachines/demo/status');
  assert.equal(resourcePath(vmResource), '/apis/kubevirt.io/v1/virtualmachines');
  assert.equal(resourcePath({ group: '', version: 'v1', plural: 'namespaces', namespaced: false }, 'ignored', 'x'), '/api/v1/namespaces/x');
  assert.equal(withQuery('/p', { labelSelector: 'a=b,c', limit: 5, continue: undefined }), '/p?labelSelector=a%3Db%2Cc&limit=5');
});

test('requests send the bearer token and return JSON; warnings are reported', async () => {
  const vm = await client.get(vmResource, 'demo');
  assert.equal(vm.metadata?.name, 'demo');
  const last = seen.at(-1)!;
  assert.equal(last.headers.authorization, 'Bearer tok');
  assert.equal(last.url, '/apis/kubevirt.io/v1/namespaces/default/virtualmachines/demo');
  assert.deepEqual(warnings, ['spec.running is deprecated']);
});

test('errors become StatusError with the server reason and causes', async () => {
  await assert.rejects(client.get(vmResource, 'bad'), (e: unknown) => {
    assert.ok(e instanceof StatusError);
    assert.equal(e.code, 422);
    assert.equal(e.reason, 'Invalid');
    assert.deepEqual(
      e.causes.map((c) => c.field),
      ['spec.foo'],
    );
    assert.match(e.message, /is invalid: spec.foo: unknown field/);
    return true;
  });
  await assert.rejects(client.request('GET', '/text-error'), (e: unknown) => e instanceof StatusError && e.code === 502 && e.message === 'bad gateway');
});

test('patch sends the merge-patch content type; delete sends DeleteOptions', async () => {
  await client.patch(vmResource, 'demo2', { spec: { runStrategy: 'Always' } });
  assert.equal(seen.at(-1)!.headers['content-type'], 'application/merge-patch+json');
  await client.delete(vmResource, 'demo2', { propagationPolicy: 'Foreground' });
  assert.deepEqual(JSON.parse(seen.at(-1)!.body), { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Foreground' });
});

test('discovery resolves names and skips failing group versions', async () => {
  assert.equal((await client.resolve('vm')).plural, 'virtualmachines');
  assert.equal((await client.resolve('ns')).plural, 'namespaces');
  const count = seen.filter((s) => s.url === '/api').length;
  await client.resolve('VirtualMachine'); // cached: no new discovery requests
  assert.equal(seen.filter((s) => s.url === '/api').length, count);
  await assert.rejects(client.resolve('nothing'), (e: unknown) => e instanceof ClientError && e.code === 'UnknownResource');
});

test('watch parses newline-delimited events across chunk boundaries', async () => {
  const events: WatchEvent<KubeObject>[] = [];
  let watch: ReturnType<Client['watch']> | undefined;
  await new Promise<void>((resolve) => {
    watch = client.watchResource(vmResource, { namespace: 'default', resourceVersion: '0' }, (e) => {
      events.push(e);
      if (events.length === 2) resolve();
    });
  });
  watch!.close();
  await watch!.done;
  assert.deepEqual(
    events.map((e) => `${e.type}:${e.object.metadata?.resourceVersion}`),
    ['ADDED:1', 'MODIFIED:2'],
  );
  assert.match(seen.find((s) => s.url.includes('watch=true'))!.url, /resourceVersion=0/);
});

test('an unreachable server is a ClientError that says to start it', async () => {
  const dead = new Client({ path: '', context: 'x', server: 'http://127.0.0.1:1', insecureSkipTlsVerify: false, namespace: 'default' });
  await assert.rejects(dead.request('GET', '/version'), (e: unknown) => e instanceof ClientError && e.code === 'Unreachable' && /vessel up/.test(e.message));
});

test('parseWarningHeader extracts quoted texts', () => {
  assert.deepEqual(parseWarningHeader('299 - "a \\"b\\"", 299 - "c"'), ['a "b"', 'c']);
  assert.deepEqual(parseWarningHeader(['299 - "x"', 'plain']), ['x', 'plain']);
});
