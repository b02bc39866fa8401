/**
 * The protobuf body decoder: the wire reader on hand-built bytes, the field tables on
 * hand-built objects, and the real kubectl's bodies captured by a throwaway HTTP server
 * (kubectl is the only trustworthy source of real Kubernetes protobuf here).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeProtobufObject, PROTOBUF_CONTENT_TYPE, ProtobufError, protobufMessages, UnsupportedProtobufKind, WireReader, WireType } from './protobuf.ts';

// --- a tiny encoder, only for building test input -------------------------------------------

function varint(v: bigint | number): number[] {
  let n = BigInt.asUintN(64, BigInt(v));
  const out: number[] = [];
  while (n >= 0x80n) {
    out.push(Number(n & 0x7fn) | 0x80);
    n >>= 7n;
  }
  out.push(Number(n));
  return out;
}
const key = (field: number, wire: number) => varint((field << 3) | wire);
const num = (field: number, v: bigint | number) => [...key(field, WireType.VARINT), ...varint(v)];
const len = (field: number, bytes: number[]) => [...key(field, WireType.LEN), ...varint(bytes.length), ...bytes];
const str = (field: number, s: string) => len(field, [...Buffer.from(s, 'utf8')]);
const entry = (field: number, k: string, value: number[]) => len(field, [...str(1, k), ...value]);
const time = (field: number, seconds: number, nanos = 0) => len(field, [...num(1, seconds), ...(nanos ? num(2, nanos) : [])]);

function envelope(apiVersion: string, kind: string, raw: number[], extra: number[] = []): Buffer {
  return Buffer.from([0x6b, 0x38, 0x73, 0x00, ...len(1, [...str(1, apiVersion), ...str(2, kind)]), ...len(2, raw), ...extra]);
}

// --- the wire reader --------------------------------------------------------------------------

test('varints: multi-byte, negative int32 as 10 bytes, int64, bool', () => {
  const bytes = new Uint8Array([...varint(300), ...varint(-5), ...varint(-(2n ** 40n)), ...varint(1)]);
  assert.equal(varint(-5).length, 10);
  const r = new WireReader(bytes);
  assert.equal(r.int32(), 300);
  assert.equal(r.int32(), -5);
  assert.equal(r.int64(), -(2 ** 40));
  assert.equal(r.bool(), true);
  assert.ok(r.done());
});

test('tags, nested messages and map entries read back as written', () => {
  const inner = [...str(1, 'k'), ...str(2, 'v')];
  const r = new WireReader(new Uint8Array([...len(11, inner), ...num(7, 42)]));
  assert.deepEqual(r.tag(), { field: 11, wire: WireType.LEN });
  const sub = new WireReader(r.bytes());
  assert.deepEqual(sub.tag(), { field: 1, wire: WireType.LEN });
  assert.equal(Buffer.from(sub.bytes()).toString(), 'k');
  const t = sub.tag();
  sub.skip(t.wire, t.field);
  assert.ok(sub.done());
  assert.deepEqual(r.tag(), { field: 7, wire: WireType.VARINT });
  assert.equal(r.int64(), 42);
});

test('every wire type can be skipped, groups included', () => {
  const group = [...key(9, WireType.SGROUP), ...num(1, 5), ...key(9, WireType.EGROUP)];
  const bytes = [...num(1, 1), ...key(2, WireType.I64), 1, 2, 3, 4, 5, 6, 7, 8, ...str(3, 'x'), ...key(4, WireType.I32), 1, 2, 3, 4, ...group];
  const r = new WireReader(new Uint8Array(bytes));
  while (!r.done()) {
    const t = r.tag();
    r.skip(t.wire, t.field);
  }
  assert.equal(r.pos, bytes.length);
});

test('truncated and malformed input throws ProtobufError', () => {
  assert.throws(() => new WireReader(new Uint8Array([0x80, 0x80])).varint(), ProtobufError);
  assert.throws(() => new WireReader(new Uint8Array(11).fill(0xff)).varint(), /longer than 10 bytes/);
  assert.throws(() => new WireReader(new Uint8Array([...key(1, WireType.LEN), 5, 1, 2])).skip(WireType.LEN, 1), ProtobufError);
  const r = new WireReader(new Uint8Array([...key(1, WireType.LEN), 5, 1, 2]));
  r.tag();
  assert.throws(() => r.bytes(), /truncated: a length of 5 at byte 2/);
  assert.throws(() => new WireReader(new Uint8Array([0x00])).tag(), /invalid field number 0/);
  assert.throws(() => new WireReader(new Uint8Array([1, 2])).skip(7, 1), /unexpected wire type 7/);
});

// --- the decoder on hand-built objects --------------------------------------------------------

test('the field tables parse and name only known messages', () => {
  for (const m of ['ObjectMeta', 'Namespace', 'ConfigMap', 'Secret', 'Service', 'Event', 'PersistentVolumeClaim', 'Node', 'DeleteOptions']) {
    assert.ok(protobufMessages().includes(m), m);
  }
});

test('ObjectMeta: labels, annotations, ownerReferences, finalizers, timestamps; unknown fields skipped', () => {
  const meta = [
    ...str(1, 'cfg'),
    ...str(2, ''),
    ...str(3, 'default'),
    ...str(5, 'u-1'),
    ...num(7, 0),
    ...time(8, 1700000000),
    ...len(9, []),
    ...entry(11, 'app', str(2, 'web')),
    ...entry(11, 'tier', str(2, '')),
    ...entry(12, 'note', str(2, 'hi')),
    ...len(13, [...str(1, 'Deployment'), ...str(3, 'web'), ...str(4, 'u-0'), ...str(5, 'apps/v1'), ...num(6, 1), ...num(7, 0)]),
    ...str(14, 'a/b'),
    ...str(14, 'c/d'),
    ...num(99, 7),
    ...str(98, 'from a newer Kubernetes'),
  ];
  const obj = decodeProtobufObject(envelope('v1', 'ConfigMap', [...len(1, meta), ...entry(2, 'a', str(2, 'b')), ...num(4, 0)]));
  assert.deepEqual(obj, {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: 'cfg',
      namespace: 'default',
      uid: 'u-1',
      creationTimestamp: '2023-11-14T22:13:20Z',
      labels: { app: 'web', tier: '' },
      annotations: { note: 'hi' },
      ownerReferences: [{ kind: 'Deployment', name: 'web', uid: 'u-0', apiVersion: 'apps/v1', controller: true, blockOwnerDeletion: false }],
      finalizers: ['a/b', 'c/d'],
    },
    data: { a: 'b' },
    immutable: false, // a Go *bool: sent only when set, so false is meaningful
  });
});

test('Secret bytes and ConfigMap binaryData become base64; map keys stay data', () => {
  const secret = decodeProtobufObject(
    envelope('v1', 'Secret', [
      ...len(1, str(1, 's')),
      ...entry(2, 'pw', len(2, [...Buffer.from('hunter2')])),
      ...entry(2, '__proto__', len(2, [0xff])),
      ...entry(4, 'plain', str(2, 'text')),
      ...str(3, 'Opaque'),
      ...num(5, 1),
    ]),
  );
  assert.deepEqual(secret.data, JSON.parse('{"pw":"aHVudGVyMg==","__proto__":"/w=="}'));
  assert.deepEqual(
    { ...secret, data: undefined },
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 's' },
      data: undefined,
      stringData: { plain: 'text' },
      type: 'Opaque',
      immutable: true,
    },
  );
  const cm = decodeProtobufObject(envelope('v1', 'ConfigMap', [...len(1, str(1, 'c')), ...entry(3, 'bin', len(2, [0, 1, 2]))]));
  assert.deepEqual(cm.binaryData, { bin: 'AAEC' });
});

test('Service: ports with IntOrString, selector, families, pointer strings', () => {
  const port = (name: string, p: number, target: number[]) => len(1, [...str(1, name), ...str(2, 'TCP'), ...num(3, p), ...len(4, target), ...num(5, 0)]);
  const spec = [
    ...port('http', 80, [...num(1, 0), ...num(2, 8080), ...str(3, '')]),
    ...port('named', 443, [...num(1, 1), ...num(2, 0), ...str(3, 'https')]),
    ...port('default', 53, [...num(1, 0), ...num(2, 0)]),
    ...entry(2, 'app', str(2, 'web')),
    ...str(3, '10.0.0.10'),
    ...str(18, '10.0.0.10'),
    ...str(4, 'ClusterIP'),
    ...str(7, 'None'),
    ...num(12, 0),
    ...num(13, 0),
    ...len(14, len(1, num(1, 300))),
    ...str(19, 'IPv4'),
    ...str(17, 'SingleStack'),
    ...str(22, 'Cluster'),
  ];
  const svc = decodeProtobufObject(envelope('v1', 'Service', [...len(1, str(1, 'web')), ...len(2, spec), ...len(3, len(1, []))]));
  assert.deepEqual(svc.spec, {
    ports: [
      { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 },
      { name: 'named', protocol: 'TCP', port: 443, targetPort: 'https' },
      { name: 'default', protocol: 'TCP', port: 53 }, // targetPort 0 means "same as port"
    ],
    selector: { app: 'web' },
    clusterIP: '10.0.0.10',
    clusterIPs: ['10.0.0.10'],
    type: 'ClusterIP',
    sessionAffinity: 'None',
    sessionAffinityConfig: { clientIP: { timeoutSeconds: 300 } },
    ipFamilies: ['IPv4'],
    ipFamilyPolicy: 'SingleStack',
    internalTrafficPolicy: 'Cluster',
  });
  assert.deepEqual(svc.status, { loadBalancer: {} });
});

test('Event: ObjectReference, source, Time and MicroTime', () => {
  const ev = decodeProtobufObject(
    envelope('v1', 'Event', [
      ...len(1, [...str(1, 'web.1'), ...str(3, 'default')]),
      ...len(2, [...str(1, 'Pod'), ...str(2, 'default'), ...str(3, 'web'), ...str(5, 'v1'), ...str(7, 'spec.containers{web}')]),
      ...str(3, 'Started'),
      ...str(4, 'Started container'),
      ...len(5, [...str(1, 'kubelet'), ...str(2, 'node-1')]),
      ...time(6, 1700000000, 999_999_999),
      ...time(7, 1700000060),
      ...num(8, 3),
      ...str(9, 'Normal'),
      ...time(10, 1700000060, 123_456_789),
      ...str(12, 'Start'),
      ...str(14, 'kubelet'),
      ...str(15, 'node-1'),
    ]),
  );
  assert.deepEqual(ev, {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { name: 'web.1', namespace: 'default' },
    involvedObject: { kind: 'Pod', namespace: 'default', name: 'web', apiVersion: 'v1', fieldPath: 'spec.containers{web}' },
    reason: 'Started',
    message: 'Started container',
    source: { component: 'kubelet', host: 'node-1' },
    firstTimestamp: '2023-11-14T22:13:20Z',
    lastTimestamp: '2023-11-14T22:14:20Z',
    count: 3,
    type: 'Normal',
    eventTime: '2023-11-14T22:14:20.123456Z',
    action: 'Start',
    reportingComponent: 'kubelet',
    reportingInstance: 'node-1',
  });
  // A zero eventTime is marshalled as an empty message: absent, as JSON's null would be.
  assert.equal(decodeProtobufObject(envelope('v1', 'Event', len(10, []))).eventTime, undefined);
});

test('PersistentVolumeClaim: access modes, Quantity maps, storage class, data sources', () => {
  const spec = [
    ...str(1, 'ReadWriteOnce'),
    ...len(2, entry(2, 'storage', len(2, str(1, '10Gi')))),
    ...str(5, ''),
    ...str(6, 'Filesystem'),
    ...len(7, [...str(2, 'VolumeSnapshot'), ...str(3, 'snap'), ...str(1, 'snapshot.storage.k8s.io')]),
    ...len(8, [...str(2, 'VolumeSnapshot'), ...str(3, 'snap'), ...str(1, 'snapshot.storage.k8s.io')]),
    ...len(4, [...entry(1, 'disk', str(2, 'ssd')), ...len(2, [...str(1, 'zone'), ...str(2, 'In'), ...str(3, 'a'), ...str(3, 'b')])]),
  ];
  const pvc = decodeProtobufObject(envelope('v1', 'PersistentVolumeClaim', [...len(1, str(1, 'data')), ...len(2, spec)]));
  assert.deepEqual(pvc.spec, {
    accessModes: ['ReadWriteOnce'],
    resources: { requests: { storage: '10Gi' } },
    storageClassName: '', // a Go *string: "" asks for no storage class, unlike an absent field
    volumeMode: 'Filesystem',
    dataSource: { kind: 'VolumeSnapshot', name: 'snap', apiGroup: 'snapshot.storage.k8s.io' },
    dataSourceRef: { kind: 'VolumeSnapshot', name: 'snap', apiGroup: 'snapshot.storage.k8s.io' },
    selector: { matchLabels: { disk: 'ssd' }, matchExpressions: [{ key: 'zone', operator: 'In', values: ['a', 'b'] }] },
  });
});

test('Node: spec taints, status capacity, conditions, addresses, nodeInfo', () => {
  const node = decodeProtobufObject(
    envelope('v1', 'Node', [
      ...len(1, [...str(1, 'node-1'), ...entry(11, 'kubernetes.io/hostname', str(2, 'node-1'))]),
      ...len(2, [
        ...str(1, '10.244.0.0/24'),
        ...str(7, '10.244.0.0/24'),
        ...str(3, 'vessel://node-1'),
        ...num(4, 1),
        ...len(5, [...str(1, 'dedicated'), ...str(2, 'gpu'), ...str(3, 'NoSchedule')]),
      ]),
      ...len(3, [
        ...entry(1, 'cpu', len(2, str(1, '4'))),
        ...entry(1, 'memory', len(2, str(1, '8Gi'))),
        ...entry(2, 'cpu', len(2, str(1, '3900m'))),
        ...len(4, [...str(1, 'Ready'), ...str(2, 'True'), ...time(3, 1700000000), ...time(4, 1700000000), ...str(5, 'KubeletReady')]),
        ...len(5, [...str(1, 'InternalIP'), ...str(2, '192.168.1.10')]),
        ...len(6, len(1, num(1, 10250))),
        ...len(7, [...str(1, 'mid'), ...str(4, '6.1.0'), ...str(7, 'v1.32.0'), ...str(9, 'linux'), ...str(10, 'amd64')]),
      ]),
    ]),
  );
  assert.deepEqual(node, {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name: 'node-1', labels: { 'kubernetes.io/hostname': 'node-1' } },
    spec: {
      podCIDR: '10.244.0.0/24',
      podCIDRs: ['10.244.0.0/24'],
      providerID: 'vessel://node-1',
      unschedulable: true,
      taints: [{ key: 'dedicated', value: 'gpu', effect: 'NoSchedule' }],
    },
    status: {
      capacity: { cpu: '4', memory: '8Gi' },
      allocatable: { cpu: '3900m' },
      conditions: [
        { type: 'Ready', status: 'True', lastHeartbeatTime: '2023-11-14T22:13:20Z', lastTransitionTime: '2023-11-14T22:13:20Z', reason: 'KubeletReady' },
      ],
      addresses: [{ type: 'InternalIP', address: '192.168.1.10' }],
      daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
      nodeInfo: { machineID: 'mid', kernelVersion: '6.1.0', kubeletVersion: 'v1.32.0', operatingSystem: 'linux', architecture: 'amd64' },
    },
  });
});

test('Namespace and DeleteOptions (any group version)', () => {
  assert.deepEqual(
    decodeProtobufObject(envelope('v1', 'Namespace', [...len(1, str(1, 'team')), ...len(2, str(1, 'kubernetes')), ...len(3, str(1, 'Active'))])),
    {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: 'team' },
      spec: { finalizers: ['kubernetes'] },
      status: { phase: 'Active' },
    },
  );
  const opts = [...num(1, 0), ...len(2, [...str(1, 'u-1'), ...str(2, '7')]), ...str(4, 'Foreground'), ...str(5, 'All')];
  assert.deepEqual(decodeProtobufObject(envelope('meta.k8s.io/v1', 'DeleteOptions', opts)), {
    apiVersion: 'meta.k8s.io/v1',
    kind: 'DeleteOptions',
    gracePeriodSeconds: 0,
    preconditions: { uid: 'u-1', resourceVersion: '7' },
    propagationPolicy: 'Foreground',
    dryRun: ['All'],
  });
});

test('bad envelopes and unsupported kinds give clear errors', () => {
  assert.throws(
    () => decodeProtobufObject(Buffer.from('{"kind":"Namespace"}')),
    (e: Error) => e instanceof ProtobufError && /k8s\\0/.test(e.message),
  );
  assert.throws(() => decodeProtobufObject(Buffer.from([0x6b, 0x38, 0x73, 0x00])), /names no kind/);
  assert.throws(() => decodeProtobufObject(envelope('v1', 'Namespace', []).subarray(0, 12)), /truncated/);
  assert.throws(
    () => decodeProtobufObject(envelope('apps/v1', 'Deployment', [])),
    (e: Error) =>
      e instanceof UnsupportedProtobufKind &&
      e.message === 'protobuf body of kind Deployment (apps/v1) is not supported by Vessel; send JSON (application/json)',
  );
  assert.throws(() => decodeProtobufObject(envelope('v1', 'Namespace', [], str(3, 'gzip'))), UnsupportedProtobufKind);
  // A known field with the wrong wire type is malformed, not silently dropped.
  assert.throws(() => decodeProtobufObject(envelope('v1', 'Namespace', len(1, num(1, 5)))), /Namespace\.metadata\.name: wire type 0, expected 2/);
  // Garbage inside raw: a ProtobufError, never a TypeError.
  for (let i = 0; i < 200; i++) {
    const raw = [...Buffer.from(`${i}`.repeat(7))].map((b, j) => (b * (j + 31) * (i + 7)) & 0xff);
    try {
      decodeProtobufObject(envelope('v1', 'Service', raw));
    } catch (e) {
      assert.ok(e instanceof ProtobufError, String(e));
    }
  }
});

// --- real kubectl bodies ----------------------------------------------------------------------

const KUBECTL = '/usr/bin/kubectl';

interface Captured {
  method: string;
  path: string;
  contentType: string;
  accept: string;
  body: Buffer;
}

/** A stand-in API server: minimal discovery, records every write, answers 201 with the decoded object as JSON. */
async function captureServer(): Promise<{ url: string; captured: Captured[]; close: () => Promise<void> }> {
  const captured: Captured[] = [];
  const resources = [
    ['namespaces', 'Namespace', false],
    ['configmaps', 'ConfigMap', true],
    ['secrets', 'Secret', true],
    ['services', 'Service', true],
  ] as const;
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const send = (code: number, body: unknown) => res.writeHead(code, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
    if (path === '/version') return send(200, { major: '1', minor: '32', gitVersion: 'v1.32.0' });
    if (path === '/api')
      return send(200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '127.0.0.1' }] });
    if (path === '/apis') return send(200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [] });
    if (path === '/api/v1') {
      return send(200, {
        kind: 'APIResourceList',
        groupVersion: 'v1',
        resources: resources.map(([name, kind, namespaced]) => ({
          name,
          singularName: kind.toLowerCase(),
          namespaced,
          kind,
          verbs: ['create', 'get', 'list'],
        })),
      });
    }
    if (req.method !== 'POST') return send(404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 404, reason: 'NotFound', message: 'not here' });
    const body = Buffer.concat(chunks);
    captured.push({ method: req.method, path, contentType: req.headers['content-type'] ?? '', accept: req.headers.accept ?? '', body });
    try {
      send(201, req.headers['content-type'] === PROTOBUF_CONTENT_TYPE ? decodeProtobufObject(body) : JSON.parse(body.toString()));
    } catch (e) {
      send(400, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 400, reason: 'BadRequest', message: String(e) });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, captured, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

test('real kubectl create bodies are protobuf and decode to the objects kubectl meant', { skip: !existsSync(KUBECTL) && 'no kubectl' }, async () => {
  const srv = await captureServer();
  const dir = mkdtempSync(join(tmpdir(), 'vessel-pb-'));
  try {
    const kubeconfig = join(dir, 'config');
    writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'current-context: t',
        `clusters: [{name: t, cluster: {server: "${srv.url}"}}]`,
        'users: [{name: t, user: {token: test}}]',
        'contexts: [{name: t, context: {cluster: t, user: t, namespace: default}}]',
      ].join('\n'),
    );
    // Async on purpose: a synchronous child would block the capture server living in this process.
    const kubectl = (...args: string[]) =>
      new Promise<string>((resolve, reject) => {
        execFile(
          KUBECTL,
          [...args, '--kubeconfig', kubeconfig, '--cache-dir', join(dir, 'cache')],
          { timeout: 30_000, env: { ...process.env, HOME: dir } },
          (err, stdout, stderr) => (err ? reject(new Error(`kubectl ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout.trim())),
        );
      });
    const create = async (...args: string[]): Promise<{ out: string; post: Captured; object: Record<string, unknown> }> => {
      srv.captured.length = 0;
      const out = await kubectl('create', ...args);
      assert.equal(srv.captured.length, 1, `one POST for kubectl create ${args.join(' ')}`);
      const post = srv.captured[0];
      assert.equal(post.contentType, PROTOBUF_CONTENT_TYPE, `kubectl create ${args.join(' ')} sends protobuf`);
      // kubectl also accepts JSON answers, which is all Vessel sends.
      assert.match(post.accept, /application\/json/);
      return { out, post, object: decodeProtobufObject(post.body) };
    };

    const ns = await create('namespace', 'demo');
    assert.equal(ns.out, 'namespace/demo created'); // kubectl read the JSON answer
    assert.equal(ns.post.path, '/api/v1/namespaces');
    assert.deepEqual(ns.object, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo' }, spec: {}, status: {} });

    const cm = await create('configmap', 'cfg', '--from-literal=a=b', '-n', 'default');
    assert.equal(cm.out, 'configmap/cfg created');
    assert.equal(cm.post.path, '/api/v1/namespaces/default/configmaps');
    assert.deepEqual(cm.object, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cfg', namespace: 'default' }, data: { a: 'b' } });

    const secret = await create('secret', 'generic', 's', '--from-literal=pw=hunter2');
    assert.equal(secret.out, 'secret/s created');
    assert.deepEqual(secret.object, { apiVersion: 'v1', kind: 'Secret', metadata: { name: 's' }, data: { pw: 'aHVudGVyMg==' } });

    const docker = await create('secret', 'docker-registry', 'reg', '--docker-server=r.example', '--docker-username=u', '--docker-password=p');
    assert.equal(docker.object.type, 'kubernetes.io/dockerconfigjson');
    const config = JSON.parse(Buffer.from((docker.object.data as Record<string, string>)['.dockerconfigjson'], 'base64').toString());
    assert.equal(config.auths['r.example'].username, 'u');

    const svc = await create('service', 'clusterip', 'web', '--tcp=80:8080');
    assert.equal(svc.out, 'service/web created');
    assert.deepEqual(svc.object, {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web', labels: { app: 'web' } },
      spec: { ports: [{ name: '80-8080', protocol: 'TCP', port: 80, targetPort: 8080 }], selector: { app: 'web' }, type: 'ClusterIP' },
      status: { loadBalancer: {} },
    });

    const headless = await create('service', 'clusterip', 'hl', '--clusterip=None');
    assert.deepEqual(headless.object.spec, { selector: { app: 'hl' }, clusterIP: 'None', type: 'ClusterIP' });

    const np = await create('service', 'nodeport', 'np', '--tcp=80:8080', '--node-port=30080');
    assert.deepEqual((np.object.spec as { ports: unknown[] }).ports, [{ name: '80-8080', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 }]);
  } finally {
    await srv.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
