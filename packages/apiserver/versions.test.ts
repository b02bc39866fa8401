/**
 * A kind served at several versions (VirtualMachinePool: stored at pool.kubevirt.io/v1beta1,
 * served at v1alpha1 too): conversion, routing, discovery, and reads, writes, lists and watches
 * at either version through the real handler on a loopback HTTP server over SQLite :memory:.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { convertTo, convertToStorage, findByKind, findByResource, resolveName, servedKinds, type KindInfo } from '@vessel/api';
import { SqliteStore } from '@vessel/store';
import { createToken } from './auth.ts';
import { apiGroupDoc, apiGroupList, apiResourceList } from './discovery.ts';
import { createHandler, parseResourcePath, type Handler } from './server.ts';

type J = Record<string, unknown>;
const ALPHA = 'pool.kubevirt.io/v1alpha1';
const BETA = 'pool.kubevirt.io/v1beta1';

function pool(apiVersion: string, name: string, replicas = 0): J {
  const labels = { app: name };
  return {
    apiVersion,
    kind: 'VirtualMachinePool',
    metadata: { name },
    spec: {
      replicas,
      selector: { matchLabels: labels },
      virtualMachineTemplate: {
        metadata: { labels },
        spec: { runStrategy: 'Halted', template: { metadata: { labels }, spec: { domain: { devices: {}, memory: { guest: '64Mi' } } } } },
      },
    },
  };
}

test('conversion: identity but for apiVersion, never in place; the storage version is v1beta1', () => {
  const alpha = findByResource('pool.kubevirt.io', 'v1alpha1', 'virtualmachinepools')!;
  const beta = findByResource('pool.kubevirt.io', 'v1beta1', 'virtualmachinepools')!;
  assert.equal(beta.storageVersion, undefined);
  assert.equal(alpha.storageVersion, 'v1beta1');
  const o = pool(ALPHA, 'p');
  const stored = convertToStorage(alpha, o);
  assert.equal(stored.apiVersion, BETA);
  assert.equal(o.apiVersion, ALPHA, 'the input is not changed');
  assert.deepEqual({ ...stored, apiVersion: ALPHA }, o);
  assert.equal(convertTo(alpha, stored).apiVersion, ALPHA);
  assert.equal(convertTo(beta, o).apiVersion, BETA);
  // A kind's own conversion runs between versions (none needs one today).
  const renaming: KindInfo = { ...alpha, convert: (x, from, to) => ({ ...x, spec: { ...(x.spec as J), converted: `${from}->${to}` } }) };
  assert.deepEqual(convertTo(renaming, stored).spec, { ...(o.spec as J), converted: 'v1beta1->v1alpha1' });
});

test('routing and names: each served version resolves to its own KindInfo of the one kind', () => {
  assert.equal(parseResourcePath('/apis/pool.kubevirt.io/v1alpha1/namespaces/ns/virtualmachinepools/p')?.info.version, 'v1alpha1');
  assert.equal(parseResourcePath('/apis/pool.kubevirt.io/v1beta1/namespaces/ns/virtualmachinepools/p/scale')?.info.version, 'v1beta1');
  assert.equal(parseResourcePath('/apis/pool.kubevirt.io/v1/namespaces/ns/virtualmachinepools/p'), undefined);
  assert.equal(findByKind(ALPHA, 'VirtualMachinePool')?.version, 'v1alpha1');
  assert.equal(findByKind(BETA, 'VirtualMachinePool')?.version, 'v1beta1');
  assert.equal(resolveName('virtualmachinepools.v1alpha1.pool.kubevirt.io')?.version, 'v1alpha1');
  assert.equal(resolveName('vmpool')?.version, 'v1beta1', 'unqualified names: the preferred version');
  assert.equal(servedKinds.filter((k) => k.kind === 'VirtualMachinePool').length, 2);
});

test('discovery: both versions, v1beta1 preferred, one storageVersionHash', () => {
  const g = apiGroupDoc('pool.kubevirt.io') as { versions: { version: string }[]; preferredVersion: { version: string } };
  assert.deepEqual(
    g.versions.map((v) => v.version),
    ['v1beta1', 'v1alpha1'],
  );
  assert.equal(g.preferredVersion.version, 'v1beta1');
  assert.ok(apiGroupList().groups.some((x) => x.name === 'pool.kubevirt.io' && x.versions.length === 2));
  const res = (v: string) => apiResourceList('pool.kubevirt.io', v)!.resources;
  for (const v of ['v1alpha1', 'v1beta1']) {
    assert.deepEqual(
      res(v).map((r) => r.name),
      ['virtualmachinepools', 'virtualmachinepools/status', 'virtualmachinepools/scale'],
    );
  }
  const hash = (v: string) => (res(v)[0] as { storageVersionHash?: string }).storageVersionHash;
  assert.equal(hash('v1alpha1'), hash('v1beta1'));
});

let server: Server;
let handler: Handler;
let base: string;
let token: string;
const store = new SqliteStore(':memory:');

before(async () => {
  token = await createToken(store, 'admin', ['system:masters']);
  handler = createHandler({ store, serverAddress: '127.0.0.1', bookmarkIntervalMs: 60_000 });
  server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  await call('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ns' } });
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await handler.close();
  await store.close();
});

async function call(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<J> {
  const res = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': contentType },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const out = (await res.json()) as J;
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(out)}`);
  return out;
}

const path = (v: string, name = '') => `/apis/pool.kubevirt.io/${v}/namespaces/ns/virtualmachinepools${name ? `/${name}` : ''}`;
const meta = (o: J) => o.metadata as { resourceVersion: string; uid: string; managedFields?: { manager: string; apiVersion: string; operation: string }[] };

test('reads, writes and lists at either version: one stored object, resourceVersion and managedFields kept', async () => {
  const created = await call('POST', `${path('v1alpha1')}?fieldManager=alpha-writer`, pool(ALPHA, 'web', 1));
  assert.equal(created.apiVersion, ALPHA);
  const raw = JSON.parse((await store.get('/registry/pool.kubevirt.io/virtualmachinepools/ns/web'))!.value) as J;
  assert.equal(raw.apiVersion, BETA, 'stored at the storage version');
  const beta = await call('GET', path('v1beta1', 'web'));
  assert.equal(beta.apiVersion, BETA);
  assert.equal(meta(beta).resourceVersion, meta(created).resourceVersion);
  assert.equal(meta(beta).uid, meta(created).uid);
  // An update at v1beta1 with the resourceVersion read at v1alpha1 (optimistic concurrency across versions).
  (beta.spec as J).replicas = 2;
  const updated = await call('PUT', `${path('v1beta1', 'web')}?fieldManager=beta-writer`, beta);
  assert.equal(updated.apiVersion, BETA);
  assert.notEqual(meta(updated).resourceVersion, meta(created).resourceVersion);
  // A stale resourceVersion is a conflict at either version.
  await assert.rejects(call('PUT', path('v1alpha1', 'web'), { ...created, spec: { ...(created.spec as J), replicas: 5 } }), /409/);
  const managers = meta(updated).managedFields!.map((m) => `${m.manager} ${m.operation} ${m.apiVersion}`);
  assert.deepEqual(managers.sort(), [`alpha-writer Update ${ALPHA}`, `beta-writer Update ${BETA}`]);
  // Server-side apply at v1beta1 of a field another manager owns: a conflict naming it, forced takes it.
  const apply = JSON.stringify({ apiVersion: BETA, kind: 'VirtualMachinePool', metadata: { name: 'web' }, spec: { replicas: 3 } });
  await assert.rejects(call('PATCH', `${path('v1beta1', 'web')}?fieldManager=kubectl`, apply, 'application/apply-patch+yaml'), /409.*spec.replicas/s);
  const applied = await call('PATCH', `${path('v1beta1', 'web')}?fieldManager=kubectl&force=true`, apply, 'application/apply-patch+yaml');
  assert.equal((applied.spec as J).replicas, 3);
  assert.ok(meta(applied).managedFields!.some((m) => m.manager === 'kubectl' && m.operation === 'Apply' && m.apiVersion === BETA));
  // A merge patch at v1alpha1 answers at v1alpha1.
  const patched = await call('PATCH', path('v1alpha1', 'web'), { spec: { paused: true } }, 'application/merge-patch+json');
  assert.equal(patched.apiVersion, ALPHA);
  assert.equal((patched.spec as J).paused, true);
  // The body's apiVersion must be the URL's.
  await assert.rejects(call('POST', path('v1beta1'), pool(ALPHA, 'other')), /400.*does not match the expected API version/s);
  for (const [v, apiVersion] of [
    ['v1alpha1', ALPHA],
    ['v1beta1', BETA],
  ]) {
    const list = await call('GET', path(v));
    assert.equal(list.apiVersion, apiVersion);
    assert.deepEqual(
      (list.items as J[]).map((i) => `${i.apiVersion} ${meta(i).resourceVersion}`),
      [`${apiVersion} ${meta(patched).resourceVersion}`],
    );
  }
  // Validation is the version's schema: a v1beta1-only field (updateStrategy) is unknown at v1alpha1.
  await assert.rejects(
    call('PATCH', path('v1alpha1', 'web'), { spec: { updateStrategy: { unmanaged: {} } } }, 'application/merge-patch+json'),
    /spec.updateStrategy/,
  );
  const withStrategy = await call('PATCH', path('v1beta1', 'web'), { spec: { updateStrategy: { unmanaged: {} } } }, 'application/merge-patch+json');
  assert.deepEqual((withStrategy.spec as J).updateStrategy, { unmanaged: {} });
  await call('DELETE', path('v1alpha1', 'web'));
});

test('watches at both versions get each event at their own version', async () => {
  const watch = async (v: string) => {
    const res = await fetch(`${base}${path(v)}?watch=true&resourceVersion=0`, { headers: { Authorization: `Bearer ${token}` } });
    const reader = res.body!.getReader();
    let buf = '';
    const events: J[] = [];
    return {
      events,
      async until(n: number): Promise<J[]> {
        while (events.length < n) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += Buffer.from(value).toString();
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            events.push(JSON.parse(buf.slice(0, i)) as J);
            buf = buf.slice(i + 1);
          }
        }
        return events;
      },
      close: () => reader.cancel(),
    };
  };
  const a = await watch('v1alpha1');
  const b = await watch('v1beta1');
  await call('POST', path('v1beta1'), pool(BETA, 'w'));
  await call('PATCH', path('v1alpha1', 'w'), { spec: { replicas: 1 } }, 'application/merge-patch+json');
  await call('DELETE', path('v1beta1', 'w'));
  for (const [w, apiVersion] of [
    [a, ALPHA],
    [b, BETA],
  ] as const) {
    const events = await w.until(3);
    assert.deepEqual(
      events.map((e) => `${e.type} ${(e.object as J).apiVersion}`),
      [`ADDED ${apiVersion}`, `MODIFIED ${apiVersion}`, `DELETED ${apiVersion}`],
    );
    await w.close();
  }
});

test('snapshot.kubevirt.io and clone.kubevirt.io at v1alpha1 too, as KubeVirt serves them: one schema, the version GVK', async () => {
  for (const [group, plural] of [
    ['snapshot.kubevirt.io', 'virtualmachinesnapshots'],
    ['snapshot.kubevirt.io', 'virtualmachinesnapshotcontents'],
    ['snapshot.kubevirt.io', 'virtualmachinerestores'],
    ['clone.kubevirt.io', 'virtualmachineclones'],
  ]) {
    const alpha = findByResource(group, 'v1alpha1', plural);
    assert.equal(alpha?.storageVersion, 'v1beta1', plural);
    assert.equal((apiGroupDoc(group) as { preferredVersion: { version: string } }).preferredVersion.version, 'v1beta1');
  }
  const doc = await call('GET', '/openapi/v3/apis/snapshot.kubevirt.io/v1alpha1');
  const schema = (doc.components as { schemas: Record<string, J> }).schemas['io.kubevirt.snapshot.v1beta1.VirtualMachineSnapshot'];
  assert.deepEqual(schema['x-kubernetes-group-version-kind'], [{ group: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', version: 'v1alpha1' }]);
  const list = await call('GET', '/apis/snapshot.kubevirt.io/v1alpha1/namespaces/ns/virtualmachinesnapshots');
  assert.equal(list.apiVersion, 'snapshot.kubevirt.io/v1alpha1');
});
