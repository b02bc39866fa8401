/**
 * Correctness of the API where clients other than Vessel's own notice (issue 10): Secrets'
 * stringData, resourceVersion parameters (malformed, too old, not reached yet), boolean query
 * parameters as Go parses them (the Python client's `watch=True`), kubectl with a kind Vessel
 * does not serve, kubectl's printing of Nodes and StorageClasses, a new claim's phase, and a
 * plain GET on a websocket-only subresource. Real server, real kubectl, real Python client.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { spawn, spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import * as k8s from '@kubernetes/client-node';
import { findByResource } from '@vessel/api';
import type { KubeObject } from '@vessel/client';
import { run, startVessel, type Vessel, rejects } from './harness.ts';

const CM = findByResource('', 'v1', 'configmaps')!;
const SECRET = findByResource('', 'v1', 'secrets')!;
const NODE = findByResource('', 'v1', 'nodes')!;

const haveKubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status === 0;
/** Debian's python3-kubernetes is importable by the system Python (a pyenv one on PATH may not have it). */
const PYTHON = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import kubernetes'], { encoding: 'utf8' }).status === 0);

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('API defects of issue 10', () => {
  let v: Vessel;
  before(async () => {
    v = await startVessel({ controllers: false });
  });
  after(async () => {
    await v?.close();
  });

  const kubectl = async (args: string[], input?: string) => run('kubectl', ['--kubeconfig', v.kubeconfig, ...args], { input });
  const revision = async () => Number((await v.client.list(CM, { namespace: 'default' })).metadata?.resourceVersion);

  describe('Secret stringData', () => {
    it('is merged into data as base64 and never stored, on create, update and patch', async () => {
      const kc = new k8s.KubeConfig();
      kc.loadFromFile(v.kubeconfig);
      const core = kc.makeApiClient(k8s.CoreV1Api);
      const created = await core.createNamespacedSecret({
        namespace: 'default',
        body: { metadata: { name: 'cloud-init' }, data: { a: b64('old'), keep: b64('kept') }, stringData: { userdata: '#cloud-config\n', a: 'new' } },
      });
      assert.deepEqual(created.data, { a: b64('new'), keep: b64('kept'), userdata: b64('#cloud-config\n') });
      assert.equal(created.stringData, undefined);
      const read = await v.client.get(SECRET, 'cloud-init', { namespace: 'default' });
      assert.equal(read.stringData, undefined, 'stringData is not stored');
      assert.equal((read.data as Record<string, string>).userdata, b64('#cloud-config\n'));

      const updated = await v.client.update(SECRET, { ...read, stringData: { b: 'by-put' } });
      assert.equal((updated.data as Record<string, string>).b, b64('by-put'));
      assert.equal(updated.stringData, undefined);

      const patched = await v.client.request<KubeObject>('PATCH', '/api/v1/namespaces/default/secrets/cloud-init', {
        body: { stringData: { a: 'by-patch' } },
        contentType: 'application/merge-patch+json',
      });
      assert.deepEqual(patched.data, { a: b64('by-patch'), keep: b64('kept'), userdata: b64('#cloud-config\n'), b: b64('by-put') });
      assert.equal(patched.stringData, undefined);
    });

    it('cannot change an immutable Secret', async () => {
      await v.client.create(SECRET, {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: 'frozen', namespace: 'default' },
        immutable: true,
        stringData: { a: 'x' },
      });
      const err = await rejects(
        v.client.request('PATCH', '/api/v1/namespaces/default/secrets/frozen', {
          body: { stringData: { a: 'y' } },
          contentType: 'application/merge-patch+json',
        }),
        422,
      );
      assert.ok(
        err.causes.some((c) => c.field === 'data'),
        err.message,
      );
      assert.equal(((await v.client.get(SECRET, 'frozen', { namespace: 'default' })).data as Record<string, string>).a, b64('x'));
    });
  });

  describe('resourceVersion', () => {
    it('a malformed one is a 400 naming the field, and changes nothing', async () => {
      const cm = await v.client.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'rv', namespace: 'default' }, data: { a: '1' } });
      const err = await rejects(v.client.update(CM, { ...cm, metadata: { ...cm.metadata, resourceVersion: 'abc' }, data: { a: '2' } }), 400);
      assert.equal(err.reason, 'BadRequest');
      assert.equal(err.causes[0]?.field, 'metadata.resourceVersion');
      assert.deepEqual((await v.client.get(CM, 'rv', { namespace: 'default' })).data, { a: '1' });
      for (const [path, watch] of [
        ['/api/v1/namespaces/default/configmaps', 'false'],
        ['/api/v1/namespaces/default/configmaps/rv', 'false'],
        ['/api/v1/namespaces/default/configmaps', 'true'],
      ]) {
        const e = await rejects(v.client.request('GET', path, { query: { resourceVersion: '12x', watch } }), 400);
        assert.match(e.message, /resourceVersion: Invalid value: "12x"/);
      }
    });

    it('a list or watch from one not reached yet waits for it, then answers 504 Too large resource version', async () => {
      const current = await revision();
      // Reached within the wait: the list answers once the write is in.
      setTimeout(() => {
        void v.client.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'soon', namespace: 'default' } });
      }, 500);
      const list = await v.client.request<{ metadata: { resourceVersion: string }; items: KubeObject[] }>('GET', '/api/v1/namespaces/default/configmaps', {
        query: { resourceVersion: String(current + 1) },
      });
      assert.ok(Number(list.metadata.resourceVersion) >= current + 1);
      assert.ok(list.items.some((i) => i.metadata?.name === 'soon'));

      const far = current + 1000;
      const started = Date.now();
      const [listErr, watchErr] = await Promise.all([
        rejects(v.client.request('GET', '/api/v1/namespaces/default/configmaps', { query: { resourceVersion: String(far) } }), 504),
        rejects(v.client.request('GET', '/api/v1/namespaces/default/configmaps', { query: { watch: 'true', resourceVersion: String(far) } }), 504),
      ]);
      const waited = Date.now() - started;
      assert.ok(waited >= 2900 && waited < 10_000, `answered after ${waited} ms`);
      for (const e of [listErr, watchErr]) {
        assert.equal(e.reason, 'Timeout');
        assert.match(e.message, new RegExp(`Too large resource version: ${far}, current: \\d+`));
        assert.deepEqual(e.causes, [{ reason: 'ResourceVersionTooLarge', message: 'Too large resource version' }]);
      }
    });

    it('an exact list from a compacted revision is 410 Expired', async () => {
      const old = await revision();
      await v.client.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'after-old', namespace: 'default' } });
      // Before compaction, the exact list is the state at that revision.
      const exact = await v.client.request<{ items: KubeObject[] }>('GET', '/api/v1/namespaces/default/configmaps', {
        query: { resourceVersion: String(old), resourceVersionMatch: 'Exact' },
      });
      assert.ok(!exact.items.some((i) => i.metadata?.name === 'after-old'));
      await v.server.store.compact(await v.server.store.currentRevision());
      const e = await rejects(
        v.client.request('GET', '/api/v1/namespaces/default/configmaps', { query: { resourceVersion: String(old), resourceVersionMatch: 'Exact' } }),
        410,
      );
      assert.equal(e.reason, 'Expired');
      // ListOptions that make no sense are refused as Kubernetes refuses them.
      for (const query of [
        { resourceVersionMatch: 'Exact' },
        { resourceVersionMatch: 'Sometimes', resourceVersion: '5' },
        { resourceVersion: '5', continue: 'x' },
      ]) {
        const bad = await rejects(v.client.request('GET', '/api/v1/namespaces/default/configmaps', { query }), 422);
        assert.match(bad.causes[0]?.field ?? '', /^resourceVersion/, JSON.stringify(query));
      }
    });
  });

  describe('boolean query parameters', () => {
    it('accept what strconv.ParseBool accepts and refuse the rest', async () => {
      for (const t of ['True', '1', 't', 'TRUE']) {
        const res = await v.client.stream('GET', `/api/v1/namespaces/default/configmaps?watch=${t}&timeoutSeconds=1`);
        let text = '';
        for await (const chunk of res) text += chunk;
        const first = JSON.parse(text.split('\n')[0]) as { type?: string };
        assert.equal(first.type, 'ADDED', `watch=${t} is a watch: ${text.slice(0, 200)}`);
      }
      const list = await v.client.request<{ kind: string }>('GET', '/api/v1/namespaces/default/configmaps', { query: { watch: 'False' } });
      assert.equal(list.kind, 'ConfigMapList');
      const e = await rejects(v.client.request('GET', '/api/v1/namespaces/default/configmaps', { query: { watch: 'yes' } }), 400);
      assert.match(e.message, /watch/);
      await rejects(v.client.request('GET', '/api/v1/namespaces/default/configmaps', { query: { watch: 'true', allowWatchBookmarks: 'sure' } }), 400);
    });

    it('the Python kubernetes client watches (it sends watch=True)', { skip: PYTHON ? false : 'python3-kubernetes is not installed' }, async () => {
      const script = [
        'import sys',
        'from kubernetes import client, config, watch',
        'config.load_kube_config(config_file=sys.argv[1])',
        'v1 = client.CoreV1Api()',
        "rv = v1.list_namespaced_config_map('default').metadata.resource_version",
        "print('LISTED', rv, flush=True)",
        "for ev in watch.Watch().stream(v1.list_namespaced_config_map, 'default', resource_version=rv, timeout_seconds=20):",
        "    print(ev['type'], ev['object'].metadata.name, flush=True)",
        "    if ev['object'].metadata.name == sys.argv[2] and ev['type'] == 'MODIFIED':",
        '        break',
      ].join('\n');
      const py = spawn(PYTHON!, ['-c', script, v.kubeconfig, 'py-watched'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      py.stderr.on('data', (d) => {
        err += d;
      });
      const exited = new Promise<number | null>((resolve) => py.on('close', resolve));
      const lines: string[] = [];
      const listed = new Promise<void>((resolve) => {
        createInterface({ input: py.stdout }).on('line', (l) => {
          lines.push(l);
          if (l.startsWith('LISTED')) resolve();
        });
      });
      const timer = setTimeout(() => py.kill('SIGKILL'), 40_000);
      try {
        await Promise.race([listed, exited.then(() => assert.fail(`python ended before listing: ${err}`))]);
        // Written after the list: the watch from the list's resourceVersion sees both, whenever it connected.
        const cm = await v.client.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'py-watched', namespace: 'default' }, data: { a: '1' } });
        await v.client.update(CM, { ...cm, data: { a: '2' } });
        assert.equal(await exited, 0, `python failed: ${err}\n${lines.join('\n')}`);
      } finally {
        clearTimeout(timer);
        py.kill('SIGKILL');
      }
      assert.ok(lines.includes('ADDED py-watched'), lines.join('\n'));
      assert.ok(lines.includes('MODIFIED py-watched'), lines.join('\n'));
    });
  });

  describe('kubectl', { skip: haveKubectl ? false : 'kubectl is not installed' }, () => {
    it('apply of a kind Vessel does not serve says so, as with any cluster', async () => {
      const r = await kubectl(['apply', '-f', '-'], 'apiVersion: example.com/v1\nkind: Foo\nmetadata:\n  name: x\n');
      assert.notEqual(r.code, 0);
      assert.match(r.err, /no matches for kind "Foo" in version "example\.com\/v1"/);
      assert.match(r.err, /ensure CRDs are installed first/);
      assert.doesNotMatch(r.err, /content type/);
    });

    it('reads OpenAPI v2 as protobuf (explain --output plaintext-openapiv2)', async () => {
      const r = await kubectl(['explain', 'vm.spec.runStrategy', '--output', 'plaintext-openapiv2']);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /KIND:\s+VirtualMachine/);
      assert.match(r.out, /FIELD:\s+runStrategy <string>/);
      const pvc = await kubectl(['explain', 'pvc.spec.accessModes', '--output', 'plaintext-openapiv2']);
      assert.equal(pvc.code, 0, pvc.err);
      assert.match(pvc.out, /accessModes\s+<\[\]string>/);
    });

    it('apply of a v1 List validates its items against OpenAPI v2 and creates them', async () => {
      const list = {
        apiVersion: 'v1',
        kind: 'List',
        items: [
          { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'from-list' }, data: { a: '1' } },
          {
            apiVersion: 'kubevirt.io/v1',
            kind: 'VirtualMachine',
            metadata: { name: 'from-list' },
            spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } } } },
          },
        ],
      };
      const r = await kubectl(['apply', '-f', '-'], JSON.stringify(list));
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /configmap\/from-list created/);
      assert.match(r.out, /virtualmachine\.kubevirt\.io\/from-list created/);
      // kubectl's client-side validation (strict for a List) reads the v2 schema and names an unknown field.
      const bad = await kubectl(
        ['apply', '-f', '-'],
        JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'bad-list' }, dta: {} }] }),
      );
      assert.notEqual(bad.code, 0);
      assert.match(bad.err, /dta/);
    });

    it('get nodes shows Ready, NotReady, Unknown and SchedulingDisabled', async () => {
      const nodes: [string, string | undefined, boolean][] = [
        ['n-ready', 'True', false],
        ['n-notready', 'False', false],
        ['n-silent', 'Unknown', false],
        ['n-new', undefined, false],
        ['n-cordoned', 'True', true],
      ];
      for (const [name, ready, cordoned] of nodes) {
        const node = await v.client.create(NODE, { apiVersion: 'v1', kind: 'Node', metadata: { name }, spec: cordoned ? { unschedulable: true } : {} });
        if (ready) {
          await v.client.update(
            NODE,
            { ...node, status: { conditions: [{ type: 'Ready', status: ready, reason: 'Test', lastHeartbeatTime: new Date().toISOString() }] } },
            { subresource: 'status' },
          );
        }
      }
      const r = await kubectl(['get', 'nodes']);
      assert.equal(r.code, 0, r.err);
      const statusOf = (name: string) => new RegExp(`^${name}\\s+(\\S+)`, 'm').exec(r.out)?.[1];
      assert.equal(statusOf('n-ready'), 'Ready', r.out);
      assert.equal(statusOf('n-notready'), 'NotReady', r.out);
      assert.equal(statusOf('n-silent'), 'NotReady', r.out); // kubectl: a Ready condition that is not True
      assert.equal(statusOf('n-new'), 'Unknown', r.out); // no Ready condition at all
      assert.equal(statusOf('n-cordoned'), 'Ready,SchedulingDisabled', r.out);
    });

    it('get sc marks the default class', async () => {
      const r = await kubectl(['get', 'sc']);
      assert.equal(r.code, 0, r.err);
      const classes = (await v.client.list(findByResource('storage.k8s.io', 'v1', 'storageclasses')!)).items;
      for (const sc of classes) {
        const isDefault = sc.metadata?.annotations?.['storageclass.kubernetes.io/is-default-class'] === 'true';
        assert.match(r.out, new RegExp(`^${sc.metadata!.name}${isDefault ? ' \\(default\\)' : ''}\\s`, 'm'), r.out);
      }
      assert.ok(
        classes.some((sc) => sc.metadata?.annotations?.['storageclass.kubernetes.io/is-default-class'] === 'true'),
        'a fresh install has a default class',
      );
    });

    it('a new claim is Pending', async () => {
      const kc = new k8s.KubeConfig();
      kc.loadFromFile(v.kubeconfig);
      const core = kc.makeApiClient(k8s.CoreV1Api);
      const pvc = await core.createNamespacedPersistentVolumeClaim({
        namespace: 'default',
        body: {
          metadata: { name: 'waiting' },
          spec: { accessModes: ['ReadWriteOnce'], storageClassName: 'no-such-class', resources: { requests: { storage: '1Gi' } } },
        },
      });
      assert.equal(pvc.status?.phase, 'Pending');
      assert.equal((await core.readNamespacedPersistentVolumeClaim({ namespace: 'default', name: 'waiting' })).status?.phase, 'Pending');
      const r = await kubectl(['get', 'pvc', 'waiting']);
      assert.match(r.out, /^waiting\s+Pending\s/m, r.out);
    });
  });

  it('a plain GET on a VMI console or VNC is a 400 saying a websocket is needed', async () => {
    for (const sub of ['console', 'vnc']) {
      const e = await rejects(v.client.request('GET', `/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/demo/${sub}`), 400);
      assert.equal(e.reason, 'BadRequest');
      assert.match(e.message, /websocket/);
    }
  });
});
