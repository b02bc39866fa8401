/** ClusterIP and NodePort allocation, through Resources as the API server writes Services. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource, parseIPv4, refs, type KubeObject } from '@vessel/api';
import { SqliteStore } from '@vessel/store';
import { ApiError } from './errors.ts';
import { Resources } from './resources.ts';

const { SERVICES, IPADDRESSES } = refs;
const NAMESPACES = findByResource('', 'v1', 'namespaces')!;

async function setup(serviceCidr?: string): Promise<Resources> {
  const r = new Resources(new SqliteStore(':memory:'), { serviceCidr });
  for (const name of ['default', 'other']) {
    await r.create(NAMESPACES, undefined, { metadata: { name } });
  }
  return r;
}

function svc(name: string, spec: Record<string, unknown> = {}): KubeObject {
  return { apiVersion: 'v1', kind: 'Service', metadata: { name }, spec: { selector: { app: name }, ports: [{ port: 80 }], ...spec } };
}

const spec = (o: KubeObject) => o.spec as { clusterIP?: string; clusterIPs?: string[]; ports: { nodePort?: number }[] };

async function refusal(p: Promise<unknown>): Promise<{ code: number; fields: string[]; message: string }> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ApiError, String(e));
    return { code: e.code, fields: (e.toStatus().details?.causes ?? []).map((c) => c.field ?? ''), message: e.message };
  }
  assert.fail('expected the write to be refused');
}

const ipAddresses = async (r: Resources) => (await r.list(IPADDRESSES, undefined, {})).items.map((o) => o.metadata.name).sort();

test('a Service gets a ClusterIP from the range, recorded as an IPAddress naming it', async () => {
  const r = await setup();
  const created = (await r.create(SERVICES, 'default', svc('web'))).object;
  const ip = spec(created).clusterIP!;
  assert.match(ip, /^10\.96\.\d+\.\d+$/);
  assert.ok(parseIPv4(ip)! > parseIPv4('10.96.1.0')!, `${ip}: dynamic addresses leave the lowest 256 for requested ones`);
  assert.deepEqual(spec(created).clusterIPs, [ip]);
  const rec = await r.get(IPADDRESSES, undefined, ip);
  assert.deepEqual((rec.spec as Record<string, unknown>).parentRef, { group: '', resource: 'services', namespace: 'default', name: 'web' });
  assert.equal(rec.metadata.labels?.['vessel.io/network'], 'services');
  assert.equal(rec.metadata.annotations?.['vessel.io/parent-uid'], created.metadata.uid);
  // The stored Service carries it too (not only the reply).
  assert.equal(spec(await r.get(SERVICES, 'default', 'web')).clusterIP, ip);
});

test('a requested ClusterIP is honoured, or refused naming spec.clusterIP when taken, outside the range or malformed', async () => {
  const r = await setup('10.100.0.0/24');
  const a = (await r.create(SERVICES, 'default', svc('a', { clusterIP: '10.100.0.10' }))).object;
  assert.equal(spec(a).clusterIP, '10.100.0.10');
  const taken = await refusal(r.create(SERVICES, 'other', svc('b', { clusterIP: '10.100.0.10' })));
  assert.equal(taken.code, 422);
  assert.deepEqual(taken.fields, ['spec.clusterIP']);
  assert.match(taken.message, /already allocated/);
  const outside = await refusal(r.create(SERVICES, 'default', svc('c', { clusterIP: '10.96.0.10' })));
  assert.deepEqual([outside.code, outside.fields], [422, ['spec.clusterIP']]);
  assert.match(outside.message, /10\.100\.0\.0\/24/);
  const broadcast = await refusal(r.create(SERVICES, 'default', svc('d', { clusterIP: '10.100.0.255' })));
  assert.deepEqual(broadcast.fields, ['spec.clusterIP']);
  const malformed = await refusal(r.create(SERVICES, 'default', svc('e', { clusterIP: '10.100.0.010' })));
  assert.deepEqual([malformed.code, malformed.fields], [422, ['spec.clusterIP']]);
  // Nothing refused left an address behind.
  assert.deepEqual(await ipAddresses(r), ['10.100.0.10']);
});

test('a headless Service gets no address, and None is refused for a NodePort Service', async () => {
  const r = await setup();
  const h = (await r.create(SERVICES, 'default', svc('h', { clusterIP: 'None' }))).object;
  assert.deepEqual([spec(h).clusterIP, spec(h).clusterIPs], ['None', ['None']]);
  assert.deepEqual(await ipAddresses(r), []);
  const put = (await r.update(SERVICES, 'default', 'h', svc('h', { ports: [{ port: 81 }] }), undefined)).object;
  assert.equal(spec(put).clusterIP, 'None', 'a PUT without clusterIP keeps it headless');
  const toNodePort = await refusal(r.patch(SERVICES, 'default', 'h', 'merge', JSON.stringify({ spec: { type: 'NodePort' } }), undefined));
  assert.deepEqual([toNodePort.code, toNodePort.fields], [422, ['spec.clusterIP']]);
  assert.deepEqual(await ipAddresses(r), []);
  const bad = await refusal(r.create(SERVICES, 'default', svc('np', { clusterIP: 'None', type: 'NodePort' })));
  assert.deepEqual(bad.fields, ['spec.clusterIP']);
});

test('NodePort Services get distinct ports in 30000-32767; requested ones are honoured or refused with spec.ports[i].nodePort', async () => {
  const r = await setup();
  const a = (
    await r.create(
      SERVICES,
      'default',
      svc('a', {
        type: 'NodePort',
        ports: [
          { name: 'http', port: 80 },
          { name: 'https', port: 443 },
        ],
      }),
    )
  ).object;
  const [p0, p1] = spec(a).ports.map((p) => p.nodePort!);
  for (const p of [p0, p1]) assert.ok(p >= 30000 && p <= 32767, String(p));
  assert.notEqual(p0, p1);
  const b = (await r.create(SERVICES, 'default', svc('b', { type: 'NodePort', ports: [{ port: 80, nodePort: 30080 }] }))).object;
  assert.equal(spec(b).ports[0].nodePort, 30080);
  const dup = await refusal(
    r.create(
      SERVICES,
      'other',
      svc('c', {
        type: 'NodePort',
        ports: [
          { name: 'x', port: 81 },
          { name: 'y', port: 82, nodePort: 30080 },
        ],
      }),
    ),
  );
  assert.deepEqual([dup.code, dup.fields], [422, ['spec.ports[1].nodePort']]);
  const range = await refusal(r.create(SERVICES, 'other', svc('d', { type: 'NodePort', ports: [{ port: 80, nodePort: 8080 }] })));
  assert.deepEqual(range.fields, ['spec.ports[0].nodePort']);
  // The refused Service 'c' got a ClusterIP and port 0 a nodePort before port 1 failed: both undone.
  const held = [...(await r.services.nodePorts()).keys()].sort();
  assert.deepEqual(held, [p0, p1, 30080].sort());
  assert.equal((await ipAddresses(r)).length, 2);
});

test('racing creates never share a ClusterIP or a NodePort', async () => {
  const r = await setup('10.100.0.0/27');
  const results = await Promise.allSettled(
    Array.from({ length: 12 }, (_, i) =>
      r.create(SERVICES, 'default', svc(`s${i}`, { type: 'NodePort', ports: [{ port: 80, nodePort: i < 6 ? 31000 : undefined }] })),
    ),
  );
  const ok = results.filter((x) => x.status === 'fulfilled').map((x) => (x as PromiseFulfilledResult<{ object: KubeObject }>).value.object);
  // Six asked for 31000: one got it; the other six allocated freely.
  assert.equal(ok.length, 7);
  assert.equal(new Set(ok.map((o) => spec(o).clusterIP)).size, 7);
  assert.equal(new Set(ok.map((o) => spec(o).ports[0].nodePort)).size, 7);
  assert.equal((await ipAddresses(r)).length, 7);
  assert.equal((await r.services.nodePorts()).size, 7);
});

test('deleting a Service releases its ClusterIP and NodePorts, which another Service may then take', async () => {
  const r = await setup();
  const a = (await r.create(SERVICES, 'default', svc('a', { type: 'NodePort', clusterIP: '10.96.1.1', ports: [{ port: 80, nodePort: 30001 }] }))).object;
  assert.equal(spec(a).clusterIP, '10.96.1.1');
  await r.delete(SERVICES, 'default', 'a');
  assert.deepEqual(await ipAddresses(r), []);
  assert.equal((await r.services.nodePorts()).size, 0);
  const b = (await r.create(SERVICES, 'other', svc('b', { type: 'NodePort', clusterIP: '10.96.1.1', ports: [{ port: 80, nodePort: 30001 }] }))).object;
  assert.equal(spec(b).ports[0].nodePort, 30001);
});

test('a create that fails after allocating (the name exists) leaves nothing behind', async () => {
  const r = await setup();
  await r.create(SERVICES, 'default', svc('a'));
  await assert.rejects(r.create(SERVICES, 'default', svc('a', { type: 'NodePort' })), (e: unknown) => e instanceof ApiError && e.code === 409);
  assert.equal((await ipAddresses(r)).length, 1);
  assert.equal((await r.services.nodePorts()).size, 0);
});

test('updates keep the addresses a Service holds; type changes allocate and release (NodePort, ClusterIP, ExternalName)', async () => {
  const r = await setup();
  const a = (await r.create(SERVICES, 'default', svc('a', { type: 'NodePort' }))).object;
  const ip = spec(a).clusterIP!;
  const port = spec(a).ports[0].nodePort!;
  const put = (await r.update(SERVICES, 'default', 'a', svc('a', { type: 'NodePort', ports: [{ port: 80 }] }), undefined)).object;
  assert.deepEqual([spec(put).clusterIP, spec(put).ports[0].nodePort], [ip, port]);
  const changed = (await r.update(SERVICES, 'default', 'a', svc('a', { type: 'ClusterIP', ports: [{ port: 80 }] }), undefined)).object;
  assert.equal(spec(changed).clusterIP, ip);
  assert.equal(spec(changed).ports[0].nodePort, undefined);
  assert.equal((await r.services.nodePorts()).size, 0);
  // A type change drops what the client only carried over, as kube-apiserver does (kubectl patch -p '{"spec":{"type":...}}').
  const np = (await r.patch(SERVICES, 'default', 'a', 'merge', JSON.stringify({ spec: { type: 'NodePort' } }), undefined)).object;
  const port2 = spec(np).ports[0].nodePort!;
  assert.ok(port2 >= 30000);
  const back = (await r.patch(SERVICES, 'default', 'a', 'merge', JSON.stringify({ spec: { type: 'ClusterIP' } }), undefined)).object;
  assert.equal(spec(back).ports[0].nodePort, undefined);
  assert.equal((await r.services.nodePorts()).size, 0);
  const ext = (await r.patch(SERVICES, 'default', 'a', 'merge', JSON.stringify({ spec: { type: 'ExternalName', externalName: 'db.example.com' } }), undefined))
    .object;
  assert.equal(spec(ext).clusterIP, undefined);
  assert.deepEqual(await ipAddresses(r), [], 'ExternalName holds no address');
  const again = (await r.update(SERVICES, 'default', 'a', svc('a', { ports: [{ port: 80 }] }), undefined)).object;
  assert.deepEqual(await ipAddresses(r), [spec(again).clusterIP!], 'back to ClusterIP: a new address');
});

test('an update may not move the ClusterIP', async () => {
  const r = await setup();
  const a = (await r.create(SERVICES, 'default', svc('a'))).object;
  const ip = spec(a).clusterIP!;
  const moved = await refusal(r.update(SERVICES, 'default', 'a', svc('a', { clusterIP: '10.96.9.9' }), undefined));
  assert.deepEqual(moved.fields, ['spec.clusterIP']);
  assert.deepEqual(await ipAddresses(r), [ip]);
});

test('repair releases allocations whose Service never got stored, once past the grace period', async () => {
  const r = await setup();
  const kept = (await r.create(SERVICES, 'default', svc('kept', { type: 'NodePort' }))).object;
  // What a server that died between allocating and storing leaves: a Service's allocations without it.
  const ghost = (await r.create(SERVICES, 'default', svc('ghost', { type: 'NodePort', ports: [{ port: 80, nodePort: 30999 }] }))).object;
  await (r as unknown as { store: SqliteStore }).store.delete('/registry/core/services/default/ghost');
  assert.deepEqual(await r.services.repair(60_000), [], 'young allocations are left alone');
  const removed = await r.services.repair(0, Date.now() + 1000);
  assert.deepEqual(removed.sort(), [`released ${spec(ghost).clusterIP!}`, 'released nodePort 30999'].sort());
  assert.deepEqual(await ipAddresses(r), [spec(kept).clusterIP!]);
  assert.deepEqual([...(await r.services.nodePorts()).keys()], [spec(kept).ports[0].nodePort]);
});

test('repair records again what a stored Service holds when its IPAddress was deleted by hand', async () => {
  const r = await setup();
  const a = (await r.create(SERVICES, 'default', svc('a', { type: 'NodePort' }))).object;
  const ip = spec(a).clusterIP!;
  await r.delete(IPADDRESSES, undefined, ip);
  assert.deepEqual(await r.services.repair(), [`recorded ${ip}`]);
  const rec = await r.get(IPADDRESSES, undefined, ip);
  assert.equal(rec.metadata.annotations?.['vessel.io/parent-uid'], a.metadata.uid);
  const taken = await refusal(r.create(SERVICES, 'other', svc('b', { clusterIP: ip })));
  assert.deepEqual(taken.fields, ['spec.clusterIP']);
  assert.deepEqual(await r.services.repair(), [], 'nothing more to do');
});
