/**
 * Thousands of generated bad requests (mutated VirtualMachines, broken bodies, odd paths,
 * headers and query parameters) must each get a 4xx Status, never a 5xx (but the 504 for a
 * resourceVersion the store has not reached, as kube-apiserver answers), and leave the server
 * serving. Seeded, so a failure can be replayed with FUZZ_SEED.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { request } from 'node:https';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rng } from '../packages/store/conformance.ts';
import { startVessel, vm, type Vessel } from './harness.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 20261122);
const COUNT = Number(process.env.FUZZ_COUNT ?? 3000);

interface Req {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string | Buffer;
}

function generator(rand: () => number) {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const weird = [
    '',
    ' ',
    'null',
    '0',
    '-1',
    '1e309',
    '"',
    '\u0000',
    '../../etc/passwd',
    '%00',
    'ñ',
    '🙂',
    'a'.repeat(300),
    '{}',
    '[]',
    'true',
    'Invalid Name',
    'default',
    'kube-system',
  ];
  const values: unknown[] = [
    null,
    true,
    0,
    -1,
    1.5,
    2 ** 53 + 1,
    '',
    'x',
    '64Mi',
    '-64Mi',
    '1e400',
    'a'.repeat(10_000),
    [],
    [1, 'a'],
    {},
    { a: { b: { c: [] } } },
  ];
  const bases = ['/api/v1', '/apis/kubevirt.io/v1', '/apis/cdi.kubevirt.io/v1beta1', '/apis/storage.k8s.io/v1', '/apis/nope/v9'];
  const plurals = [
    'virtualmachines',
    'virtualmachineinstances',
    'datavolumes',
    'configmaps',
    'namespaces',
    'nodes',
    'storageclasses',
    'services',
    'gadgets',
    '',
  ];
  const types = [
    'application/json',
    'application/yaml',
    'application/merge-patch+json',
    'application/json-patch+json',
    'application/strategic-merge-patch+json',
    'application/apply-patch+yaml',
    'application/vnd.kubernetes.protobuf',
    'text/plain',
    '',
    'application/json; charset=utf-8',
  ];

  function mutate(obj: unknown, depth = 0): unknown {
    if (depth > 6 || obj === null || typeof obj !== 'object') return pick(values);
    const o = structuredClone(obj) as Record<string, unknown>;
    const keys = Object.keys(o);
    const r = rand();
    if (r < 0.3 && keys.length) o[pick(keys)] = pick(values);
    else if (r < 0.5) o[pick(['bogus', 'spec', 'status', 'metadata', 'kind', 'apiVersion', '__proto__', 'constructor'])] = pick(values);
    else if (r < 0.6 && keys.length) delete o[pick(keys)];
    else if (keys.length) {
      const k = pick(keys);
      o[k] = mutate(o[k], depth + 1);
    }
    return o;
  }

  function path(): string {
    const parts = [pick(bases)];
    if (rand() < 0.5) parts.push('namespaces', pick(['default', 'nowhere', ...weird]).replace(/\//g, '%2F'));
    parts.push(pick(plurals));
    if (rand() < 0.6) parts.push(encodeURIComponent(pick(['a1', 'missing', ...weird])));
    if (rand() < 0.2) parts.push(pick(['status', 'scale', 'console', 'x', 'status/extra']));
    const q = new URLSearchParams();
    for (const [k, vs] of Object.entries({
      labelSelector: ['a=b', 'a in (b', '!!x', 'a=b=c', 'a notin ()', 'x'.repeat(400), 'ok'],
      fieldSelector: ['metadata.name=x', 'nonsense', '=', 'a!=b,c==d'],
      limit: ['10', '-1', 'abc', '1e9', '0'],
      continue: ['garbage', 'eyJ2IjoxLCJydiI6LTEsInN0YXJ0IjoiLyJ9', ''],
      resourceVersion: ['0', 'abc', '-5', '99999999999'],
      dryRun: ['All', 'Some', ''],
      fieldValidation: ['Strict', 'Warn', 'Ignore', 'Loose'],
      propagationPolicy: ['Orphan', 'Background', 'Foreground', 'Sideways'],
    }))
      if (rand() < 0.15) q.set(k, pick(vs));
    if (rand() < 0.05) {
      q.set('watch', 'true');
      q.set('timeoutSeconds', '1');
    }
    const qs = q.toString();
    return parts.join('/') + (qs ? `?${qs}` : '');
  }

  return (): Req => {
    const method = pick(['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'POST', 'PUT', 'PATCH', 'OPTIONS', 'HEAD']);
    const contentType = pick(types);
    let body: string | Buffer | undefined;
    const r = rand();
    if (method === 'GET' || method === 'HEAD') body = undefined;
    else if (r < 0.55) body = JSON.stringify(mutate(mutate(vm(pick(['a1', 'fz-1', 'Bad_Name', ''])))));
    else if (r < 0.65) body = JSON.stringify(mutate({ op: 'add', path: '/spec/x', value: 1 }));
    else if (r < 0.72) body = JSON.stringify(vm('fz-2')).slice(0, Math.floor(rand() * 200));
    else if (r < 0.78) body = '['.repeat(100_000) + ']'.repeat(100_000);
    else if (r < 0.82) body = Buffer.from(Array.from({ length: 256 }, () => Math.floor(rand() * 256)));
    else if (r < 0.86) body = `k8s\u0000${'\u0001'.repeat(20)}`;
    else if (r < 0.9) body = 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [x]}\n';
    else if (r < 0.93) body = `{"a": "${'\\ud800'.repeat(50)}"}`;
    else body = pick(weird);
    const headers: Record<string, string> = {};
    if (contentType) headers['content-type'] = contentType;
    if (rand() < 0.1)
      headers.accept = pick([
        'application/json;as=Table;v=v1;g=meta.k8s.io',
        'application/vnd.kubernetes.protobuf',
        'text/html',
        '*/*',
        'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1',
      ]);
    return { method, path: path(), headers, body };
  };
}

function send(url: URL, ca: string, token: string, r: Req): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(r.path, url), { method: r.method, ca, headers: { ...r.headers, authorization: `Bearer ${token}` } }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        data += d;
      });
      res.on('end', () => resolve({ code: res.statusCode ?? 0, body: data }));
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`timeout: ${r.method} ${r.path}`)));
    req.on('error', reject);
    req.end(r.body);
  });
}

describe('fuzzing the API server', () => {
  let v: Vessel;
  before(async () => {
    v = await startVessel();
    await v.client.create({ group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true }, vm('a1'));
  });
  after(async () => {
    await v?.close();
  });

  it(`answers ${COUNT} generated bad requests without a 5xx (seed ${SEED})`, async () => {
    const next = generator(rng(SEED));
    const url = new URL(v.server.url);
    const failures: string[] = [];
    const codes = new Map<number, number>();
    let i = 0;
    const worker = async () => {
      while (i < COUNT) {
        const n = i++;
        const r = next();
        const res = await send(url, v.server.caPem, v.server.adminToken, r);
        codes.set(res.code, (codes.get(res.code) ?? 0) + 1);
        // The one right 5xx: a read from a resourceVersion the store has not reached (kube's 504 ResourceVersionTooLarge).
        const tooLarge = res.code === 504 && res.body.includes('"ResourceVersionTooLarge"');
        if (res.code >= 500 && !tooLarge) failures.push(`#${n} ${r.method} ${r.path} [${r.headers['content-type']}] -> ${res.code} ${res.body.slice(0, 300)}`);
        else if (res.code >= 400 && r.method !== 'HEAD') {
          let status: { kind?: string; code?: number; message?: string } = {};
          try {
            status = JSON.parse(res.body);
          } catch {
            /* reported below */
          }
          if (status.kind !== 'Status' || status.code !== res.code || !status.message)
            failures.push(`#${n} ${r.method} ${r.path}: a ${res.code} without a proper Status: ${res.body.slice(0, 200)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    assert.deepEqual(failures.slice(0, 20), [], `${failures.length} bad answers`);
    const health = await send(url, v.server.caPem, v.server.adminToken, { method: 'GET', path: '/healthz', headers: {} });
    assert.equal(health.code, 200);
    const fourxx = [...codes].filter(([c]) => c >= 400).reduce((s, [, n]) => s + n, 0);
    assert.ok(fourxx > COUNT * 0.5, `most generated requests should be refused: ${JSON.stringify([...codes])}`);
  });
});
