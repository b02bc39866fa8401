/**
 * Tenant isolation, tried as a hostile tenant would: two tenants (t1, t2), a viewer of t1 and a
 * cluster-wide viewer, against a real server. Every kind, verb and subresource aimed at the
 * other tenant is refused, and no answer carries the other tenant's data; Vessel's own
 * annotations and labels (`vessel.io/*`), which tell the agent where a disk lives and what a
 * volume is cloned or restored from, cannot be set by a tenant through any verb, on any kind,
 * nor in the metadata a controller copies (a VM's template, its dataVolumeTemplates).
 *
 * The exploits that reach the node agent are tested where they act: uploads and importer
 * egress in security-import.e2e.test.ts, a dead VM's files in security-files.e2e.test.ts.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { kinds, storage, snapshots, type KindInfo } from '@vessel/api';
import { Client, StatusError, resourcePath, type KubeObject } from '@vessel/client';
import { connectSubresource } from '../packages/cli/commands/console.ts';
import { startVessel, type Vessel } from './harness.ts';

let v: Vessel;
let t1: Client;
let t2: Client;
let viewer1: Client;
let viewer: Client;
/** Printed in the other tenant's objects; no answer to t1 or a viewer may contain it. */
const MARKER = 't2-private-4c1d9e';
let attempts = 0;

const kind = (group: string, plural: string): KindInfo => {
  const k = kinds.find((x) => x.group === group && x.plural === plural);
  assert.ok(k, `${group}/${plural} is served`);
  return k;
};
const NS = kind('', 'namespaces');
const PVC = kind('', 'persistentvolumeclaims');
const SECRET = kind('', 'secrets');
const CM = kind('', 'configmaps');
const VM = kind('kubevirt.io', 'virtualmachines');
const VMI = kind('kubevirt.io', 'virtualmachineinstances');
const DV = kind('cdi.kubevirt.io', 'datavolumes');
const CONTENT = kind('snapshot.kubevirt.io', 'virtualmachinesnapshotcontents');
const POOL = kind('pool.kubevirt.io', 'virtualmachinepools');

async function tokenClient(user: string, groups: string[]): Promise<Client> {
  const r = await v.client.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user, groups } });
  return new Client({ ...v.client.config, token: r.token });
}

/** Sends one request that must be refused with `code`; its answer must not carry the other tenant's data. */
async function refused(what: string, p: Promise<unknown>, code: number | number[] = 403): Promise<StatusError> {
  attempts++;
  let result: unknown;
  try {
    result = await p;
  } catch (e) {
    if (!(e instanceof StatusError)) throw new Error(`${what}: not a Status error: ${String(e)}`);
    const codes = Array.isArray(code) ? code : [code];
    assert.ok(codes.includes(e.code), `${what}: got ${e.code} ${e.message}, want ${codes.join(' or ')}`);
    assert.doesNotMatch(JSON.stringify({ message: e.message, causes: e.causes }), new RegExp(MARKER), `${what}: the refusal names the other tenant's data`);
    return e;
  }
  assert.fail(`${what}: was allowed: ${JSON.stringify(result).slice(0, 300)}`);
}

function minimal(k: KindInfo, name: string): KubeObject {
  return { apiVersion: k.group ? `${k.group}/${k.version}` : k.version, kind: k.kind, metadata: { name } };
}

const tinyVm = (name: string, template: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): KubeObject => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachine',
  metadata: { name },
  spec: {
    runStrategy: 'Halted',
    ...extra,
    template: { ...template, spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } } },
  },
});

before(async () => {
  v = await startVessel({ controllers: true });
  for (const ns of ['t1', 't2']) await v.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  t1 = await tokenClient('alice', ['vessel:tenant:t1']);
  t2 = await tokenClient('bob', ['vessel:tenant:t2']);
  viewer1 = await tokenClient('vic', ['vessel:view:t1']);
  viewer = await tokenClient('val', ['vessel:view']);
  // The other tenant's objects, each carrying the marker.
  await t2.create(SECRET, { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'db' }, stringData: { password: MARKER } } as KubeObject, { namespace: 't2' });
  await t2.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cfg' }, data: { note: MARKER } } as KubeObject, { namespace: 't2' });
  await t2.create(VM, tinyVm('web', { metadata: { labels: { owner: MARKER } } }), { namespace: 't2' });
  await t2.create(
    VMI,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'web', labels: { owner: MARKER } },
      spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } },
    },
    { namespace: 't2' },
  );
  await t2.create(
    PVC,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: 'data', labels: { owner: MARKER } },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
    },
    { namespace: 't2' },
  );
});

after(async () => {
  for (const c of [t1, t2, viewer1, viewer]) c?.close();
  await v?.close();
  console.log(`security: ${attempts} cross-tenant or reserved-key attempts, all refused`);
});

/** The namespaced kinds a tenant owns in its namespace (the cluster-scoped ones are tried separately). */
const namespacedKinds = () => kinds.filter((k) => k.namespaced);

describe("another tenant's namespace", () => {
  for (const who of ['tenant', 'namespace viewer'] as const) {
    test(`a ${who} of t1 gets 403 for every kind and verb in t2`, async () => {
      const c = who === 'tenant' ? t1 : viewer1;
      for (const k of namespacedKinds()) {
        const one = resourcePath(k, 't2', 'web');
        const all = resourcePath(k, 't2');
        const id = `${who} ${k.plural}`;
        await refused(`${id} get`, c.request('GET', one));
        await refused(`${id} list`, c.request('GET', all));
        await refused(`${id} watch`, c.request('GET', all, { query: { watch: 'true', timeoutSeconds: 1 } }));
        await refused(`${id} create`, c.request('POST', all, { body: minimal(k, 'intruder') }));
        await refused(`${id} update`, c.request('PUT', one, { body: minimal(k, 'web') }));
        await refused(
          `${id} merge patch`,
          c.request('PATCH', one, { body: { metadata: { labels: { x: 'y' } } }, contentType: 'application/merge-patch+json' }),
        );
        await refused(
          `${id} json patch`,
          c.request('PATCH', one, { body: [{ op: 'add', path: '/metadata/labels', value: { x: 'y' } }], contentType: 'application/json-patch+json' }),
        );
        await refused(
          `${id} strategic patch`,
          c.request('PATCH', one, { body: { metadata: { labels: { x: 'y' } } }, contentType: 'application/strategic-merge-patch+json' }),
        );
        await refused(
          `${id} apply`,
          c.request('PATCH', one, {
            body: JSON.stringify(minimal(k, 'web')),
            contentType: 'application/apply-patch+yaml',
            query: { fieldManager: 'intruder' },
          }),
        );
        await refused(`${id} delete`, c.request('DELETE', one));
        await refused(`${id} deletecollection`, c.request('DELETE', all));
        if (k.statusSubresource) {
          await refused(`${id} get status`, c.request('GET', `${one}/status`));
          await refused(`${id} update status`, c.request('PUT', `${one}/status`, { body: minimal(k, 'web') }));
          await refused(`${id} patch status`, c.request('PATCH', `${one}/status`, { body: { status: {} }, contentType: 'application/merge-patch+json' }));
        }
      }
    });
  }

  test("a tenant's VMI may not take a system- priority class (it would preempt every other tenant's VMs)", async () => {
    for (const pc of ['system-node-critical', 'system-cluster-critical']) {
      const vmi = {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachineInstance',
        metadata: { name: `critical-${pc.length}` },
        spec: { priorityClassName: pc, domain: { resources: { requests: { memory: '64Mi' } }, devices: {} } },
      } as unknown as KubeObject;
      const e = await refused(`VMI with ${pc} in t1`, t1.create(VMI, vmi, { namespace: 't1' }));
      assert.match(e.message, /reserved to the kube-system namespace/);
    }
  });

  test('lists and watches across all namespaces are refused to tenants and namespace viewers', async () => {
    for (const [who, c] of [
      ['tenant', t1],
      ['namespace viewer', viewer1],
    ] as const) {
      for (const k of namespacedKinds()) {
        await refused(`${who} list all ${k.plural}`, c.request('GET', resourcePath(k)));
        await refused(`${who} watch all ${k.plural}`, c.request('GET', resourcePath(k), { query: { watch: '1', timeoutSeconds: 1 } }));
      }
    }
  });

  test('cluster-scoped kinds: a tenant may read storage classes and its own namespace, and change none', async () => {
    for (const k of kinds.filter((x) => !x.namespaced)) {
      const readable = k.plural === 'storageclasses';
      if (!readable) await refused(`tenant list ${k.plural}`, t1.request('GET', resourcePath(k)));
      await refused(`tenant create ${k.plural}`, t1.request('POST', resourcePath(k), { body: minimal(k, 'intruder') }));
      await refused(`tenant delete ${k.plural}`, t1.request('DELETE', resourcePath(k, undefined, k.plural === 'namespaces' ? 't2' : 'x')));
      await refused(
        `tenant patch ${k.plural}`,
        t1.request('PATCH', resourcePath(k, undefined, k.plural === 'namespaces' ? 't2' : 'x'), {
          body: { metadata: { labels: { x: 'y' } } },
          contentType: 'application/merge-patch+json',
        }),
      );
    }
    await refused('tenant get namespace t2', t1.request('GET', resourcePath(NS, undefined, 't2')));
    assert.equal((await t1.get(NS, 't1')).metadata?.name, 't1');
  });

  /** Every write verb on `one` (an object's path) and `all` (its collection), each refused with 403. */
  async function writesRefused(c: Client, id: string, k: KindInfo, one: string, all: string, name: string): Promise<void> {
    await refused(`${id} create`, c.request('POST', all, { body: minimal(k, 'intruder') }));
    await refused(`${id} update`, c.request('PUT', one, { body: minimal(k, name) }));
    for (const [flavour, contentType, body] of [
      ['merge', 'application/merge-patch+json', { metadata: { labels: { x: 'y' } } }],
      ['strategic', 'application/strategic-merge-patch+json', { metadata: { labels: { x: 'y' } } }],
      ['json', 'application/json-patch+json', [{ op: 'add', path: '/metadata/labels', value: { x: 'y' } }]],
    ] as const)
      await refused(`${id} ${flavour} patch`, c.request('PATCH', one, { body, contentType }));
    await refused(
      `${id} apply`,
      c.request('PATCH', one, { body: JSON.stringify(minimal(k, name)), contentType: 'application/apply-patch+yaml', query: { fieldManager: 'intruder' } }),
    );
    await refused(`${id} delete`, c.request('DELETE', one));
    await refused(`${id} deletecollection`, c.request('DELETE', all));
    if (k.statusSubresource) {
      await refused(`${id} update status`, c.request('PUT', `${one}/status`, { body: minimal(k, name) }));
      await refused(`${id} patch status`, c.request('PATCH', `${one}/status`, { body: { status: {} }, contentType: 'application/merge-patch+json' }));
    }
  }

  test('a cluster-wide viewer writes nothing, in t2 or at the cluster scope, through any verb', async () => {
    for (const k of namespacedKinds()) await writesRefused(viewer, `cluster viewer ${k.plural}`, k, resourcePath(k, 't2', 'web'), resourcePath(k, 't2'), 'web');
    for (const k of kinds.filter((x) => !x.namespaced)) {
      const name = k.plural === 'namespaces' ? 't2' : 'x';
      await writesRefused(viewer, `cluster viewer ${k.plural}`, k, resourcePath(k, undefined, name), resourcePath(k), name);
    }
    // What it may read, it reads: the other tenant's objects are still there.
    assert.equal((await viewer.get(CM, 'cfg', { namespace: 't2' })).metadata?.name, 'cfg');
    assert.equal((await viewer.get(NS, 't2')).metadata?.name, 't2');
  });

  test('cluster-scoped kinds: a tenant and a namespace viewer get, watch and write none of them but what they may read', async () => {
    for (const [who, c] of [
      ['tenant', t1],
      ['namespace viewer', viewer1],
    ] as const) {
      for (const k of kinds.filter((x) => !x.namespaced)) {
        const name = k.plural === 'namespaces' ? 't2' : 'x';
        const id = `${who} ${k.plural}`;
        if (k.plural !== 'storageclasses' || who === 'namespace viewer') {
          await refused(`${id} get`, c.request('GET', resourcePath(k, undefined, name)));
          await refused(`${id} watch`, c.request('GET', resourcePath(k), { query: { watch: 'true', timeoutSeconds: 1 } }));
        }
        await writesRefused(c, id, k, resourcePath(k, undefined, name), resourcePath(k), name);
      }
    }
  });

  test('every VM action, console, VNC, serial log and upload token of t2 is refused', async () => {
    const base = '/apis/subresources.kubevirt.io/v1/namespaces/t2';
    for (const c of [t1, viewer1, viewer]) {
      for (const action of ['start', 'stop', 'restart', 'pause', 'unpause', 'softreboot', 'reset', 'addvolume', 'removevolume']) {
        const res = ['start', 'stop', 'restart'].includes(action) ? 'virtualmachines' : 'virtualmachineinstances';
        await refused(`${action}`, c.request('PUT', `${base}/${res}/web/${action}`, { body: {} }));
      }
      await refused('serial log', c.request('GET', `${base}/virtualmachineinstances/web/serial-log`));
      for (const sub of ['console', 'vnc'] as const) {
        attempts++;
        await assert.rejects(
          connectSubresource(c, 't2', 'web', sub),
          (e: unknown) => e instanceof StatusError && e.code === 403 && !e.message.includes(MARKER),
        );
      }
      await refused(
        'upload token',
        c.request('POST', '/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/t2/uploadtokenrequests', {
          body: { apiVersion: 'upload.cdi.kubevirt.io/v1beta1', kind: 'UploadTokenRequest', metadata: { name: 'data' }, spec: { pvcName: 'data' } },
        }),
      );
    }
  });
});

describe('viewers', () => {
  test('a viewer of t1 reads t1 and changes nothing there', async () => {
    await t1.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'mine' }, data: { a: 'b' } } as KubeObject, { namespace: 't1' });
    assert.equal((await viewer1.get(CM, 'mine', { namespace: 't1' })).metadata?.name, 'mine');
    await refused('viewer update in t1', viewer1.patch(CM, 'mine', { data: { a: 'c' } }, { namespace: 't1' }));
    await refused('viewer delete in t1', viewer1.delete(CM, 'mine', { namespace: 't1' }));
    await refused(
      'viewer create in t1',
      viewer1.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' } } as KubeObject, { namespace: 't1' }),
    );
  });

  test("viewers read no Secrets, as with Kubernetes' view role, and open no consoles", async () => {
    await refused('cluster viewer get secret', viewer.get(SECRET, 'db', { namespace: 't2' }));
    await refused('cluster viewer list secrets', viewer.list(SECRET, { namespace: 't2' }));
    await refused('cluster viewer list all secrets', viewer.request('GET', resourcePath(SECRET)));
    await refused('namespace viewer get secret', viewer1.request('GET', resourcePath(SECRET, 't1')));
    // What a viewer may read, it reads.
    assert.equal((await viewer.get(CM, 'cfg', { namespace: 't2' })).metadata?.name, 'cfg');
  });
});

/** Every key of Vessel's own that the agent or a controller acts on. */
const RESERVED_KEYS = [
  storage.VOLUME_PATH,
  storage.VOLUME_POOL,
  storage.UPLOAD_TOKEN,
  storage.CLONE_TYPE,
  storage.RESTORE_SOURCE,
  'vessel.io/clone-source',
  snapshots.SNAPSHOT_FILES,
  snapshots.SNAPSHOT_NODE,
  snapshots.MEMORY_FILE,
  snapshots.TRIMMED_BYTES,
  'vessel.io/resume-memory',
  'vessel.io/template-hash',
  'vessel.io/once-ran',
  'vessel.io/restored-by',
  'vessel.io/golden-image',
  'vessel.io/accelerator',
];

describe("Vessel's own annotations and labels", () => {
  test('a tenant sets none of them, on any kind, through any verb; the object stays as it was', async () => {
    const claim = (name: string, meta: Record<string, unknown> = {}): KubeObject => ({
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name, ...meta },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
    });
    const targets: [KindInfo, (name: string, meta?: Record<string, unknown>) => KubeObject][] = [
      [PVC, claim],
      [CM, (name, meta = {}) => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, ...meta } })],
      [VM, (name, meta = {}) => ({ ...tinyVm(name), metadata: { name, ...meta } })],
      [
        DV,
        (name, meta = {}) => ({
          apiVersion: 'cdi.kubevirt.io/v1beta1',
          kind: 'DataVolume',
          metadata: { name, ...meta },
          spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '16Mi' } } } },
        }),
      ],
    ];
    for (const [k, make] of targets) {
      await t1.create(k, make('own'), { namespace: 't1' });
      for (const key of RESERVED_KEYS) {
        for (const field of ['annotations', 'labels'] as const) {
          const value = field === 'labels' ? 'x' : `/var/lib/vessel/pools/local/t2/data.qcow2@snap`;
          const id = `${k.plural} ${field}[${key}]`;
          const e = await refused(`${id} create`, t1.create(k, make('bad', { [field]: { [key]: value } }), { namespace: 't1' }), 422);
          assert.ok(
            e.causes.some((c) => c.field === `metadata.${field}[${key}]` && c.reason === 'FieldValueForbidden'),
            `${id}: ${JSON.stringify(e.causes)}`,
          );
          const one = resourcePath(k, 't1', 'own');
          const current = await t1.get(k, 'own', { namespace: 't1' });
          const { resourceVersion: _rv, ...unpinned } = current.metadata ?? {};
          await refused(`${id} update`, t1.update(k, { ...current, metadata: { ...unpinned, [field]: { [key]: value } } }, { namespace: 't1' }), 422);
          await refused(`${id} merge patch`, t1.patch(k, 'own', { metadata: { [field]: { [key]: value } } }, { namespace: 't1' }), 422);
          await refused(`${id} strategic patch`, t1.patch(k, 'own', { metadata: { [field]: { [key]: value } } }, { namespace: 't1', type: 'strategic' }), 422);
          await refused(
            `${id} json patch`,
            t1.patch(k, 'own', [{ op: 'add', path: `/metadata/${field}`, value: { [key]: value } }], { namespace: 't1', type: 'json' }),
            422,
          );
          await refused(
            `${id} apply`,
            t1.request('PATCH', one, {
              body: JSON.stringify(make('own', { [field]: { [key]: value } })),
              contentType: 'application/apply-patch+yaml',
              query: { fieldManager: 'alice' },
            }),
            [409, 422],
          );
          // Controllers may write status meanwhile; what the tenant aimed at must be as it was.
          const after = await t1.get(k, 'own', { namespace: 't1' });
          for (const f of ['labels', 'annotations', 'generation'] as const)
            assert.deepEqual(after.metadata?.[f], current.metadata?.[f], `${id}: metadata.${f} changed`);
        }
      }
      await refused(`${k.plural} bad does not exist`, t1.get(k, 'bad', { namespace: 't1' }), 404);
    }
  });

  test('nor in the metadata a controller copies: a VM template, its dataVolumeTemplates, a snapshot content', async () => {
    const resume = { 'vessel.io/resume-memory': '/var/lib/vessel/pools/local/t2/web.memory' };
    let e = await refused('template annotation', t1.create(VM, tinyVm('tpl', { metadata: { annotations: resume } }), { namespace: 't1' }), 422);
    assert.ok(
      e.causes.some((c) => c.field === 'spec.template.metadata.annotations[vessel.io/resume-memory]'),
      JSON.stringify(e.causes),
    );
    const withDisk = tinyVm(
      'dvt',
      {},
      {
        dataVolumeTemplates: [
          {
            metadata: { name: 'd', annotations: { 'vessel.io/clone-source': 't2/data' } },
            spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '16Mi' } } } },
          },
        ],
      },
    );
    (withDisk.spec as { template: { spec: Record<string, unknown> } }).template.spec.volumes = [{ name: 'd', dataVolume: { name: 'd' } }];
    e = await refused('dataVolumeTemplate annotation', t1.create(VM, withDisk, { namespace: 't1' }), 422);
    assert.ok(
      e.causes.some((c) => c.field === 'spec.dataVolumeTemplates[0].metadata.annotations[vessel.io/clone-source]'),
      JSON.stringify(e.causes),
    );
    // A pool copies its VM template (and that template's dataVolumeTemplates) into every VM it makes.
    const pool = {
      apiVersion: 'pool.kubevirt.io/v1beta1',
      kind: 'VirtualMachinePool',
      metadata: { name: 'pool' },
      spec: { replicas: 1, selector: { matchLabels: { app: 'p' } }, virtualMachineTemplate: { metadata: { labels: { app: 'p' } }, spec: withDisk.spec } },
    } as unknown as KubeObject;
    e = await refused('pool dataVolumeTemplate annotation', t1.create(POOL, pool, { namespace: 't1' }), 422);
    assert.ok(
      e.causes.some((c) => c.field === 'spec.virtualMachineTemplate.spec.dataVolumeTemplates[0].metadata.annotations[vessel.io/clone-source]'),
      JSON.stringify(e.causes),
    );
    e = await refused(
      'snapshot content',
      t1.create(
        CONTENT,
        {
          apiVersion: 'snapshot.kubevirt.io/v1beta1',
          kind: 'VirtualMachineSnapshotContent',
          metadata: { name: 'c', annotations: { [snapshots.SNAPSHOT_FILES]: '{}' } },
          spec: {
            virtualMachineSnapshotName: 's',
            source: { virtualMachine: { metadata: { name: 'web' }, spec: { template: { metadata: { annotations: resume } } } } },
          },
        } as KubeObject,
        { namespace: 't1' },
      ),
      422,
    );
    assert.ok(
      e.causes.some((c) => c.field === `metadata.annotations[${snapshots.SNAPSHOT_FILES}]`),
      JSON.stringify(e.causes),
    );
  });

  test('what Vessel wrote survives a tenant replacing the object without it', async () => {
    await t1.create(CM, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'kept' }, data: { a: '1' } } as KubeObject, { namespace: 't1' });
    await v.client.patch(CM, 'kept', { metadata: { annotations: { 'vessel.io/restored-by': 'admin-wrote-this' } } }, { namespace: 't1' });
    const current = await t1.get(CM, 'kept', { namespace: 't1' });
    const replaced = await t1.update(
      CM,
      { ...current, metadata: { name: 'kept', resourceVersion: current.metadata?.resourceVersion }, data: { a: '2' } } as KubeObject,
      { namespace: 't1' },
    );
    assert.equal((replaced.metadata?.annotations as Record<string, string>)['vessel.io/restored-by'], 'admin-wrote-this');
    assert.equal((replaced as KubeObject & { data: Record<string, string> }).data.a, '2');
    // Options in subdomains are the user's to set.
    await t1.patch(CM, 'kept', { metadata: { annotations: { 'snapshot.vessel.io/with-memory': 'true' } } }, { namespace: 't1' });
  });

  test("nor does a tenant's removal (merge patch null, JSON patch remove) or a status-subresource write change them", async () => {
    const key = 'vessel.io/restored-by';
    const dv: KubeObject = {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'status-own' },
      spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '16Mi' } } } },
    };
    await t1.create(DV, dv, { namespace: 't1' });
    await v.client.patch(DV, 'status-own', { metadata: { annotations: { [key]: 'admin-wrote-this' } } }, { namespace: 't1' });
    const one = resourcePath(DV, 't1', 'status-own');
    const kept = async (what: string) => {
      const now = await t1.get(DV, 'status-own', { namespace: 't1' });
      assert.equal((now.metadata?.annotations as Record<string, string>)[key], 'admin-wrote-this', `${what}: the annotation changed`);
      assert.equal((now.metadata?.labels as Record<string, string> | undefined)?.[key], undefined, `${what}: a reserved label was set`);
    };
    /**
     * A write that must be refused (422) or leave Vessel's keys as they were. Today each is
     * accepted and the keys are kept (as a replace without them keeps them, and as Kubernetes'
     * status subresource ignores metadata), so these are not counted as refused attempts.
     */
    const noChange = async (what: string, p: Promise<unknown>) => {
      await p.catch((e: unknown) => {
        if (!(e instanceof StatusError) || e.code !== 422) throw e;
      });
      await kept(what);
    };
    await noChange('merge patch null', t1.patch(DV, 'status-own', { metadata: { annotations: { [key]: null } } }, { namespace: 't1' }));
    await noChange(
      'json patch remove',
      t1.patch(DV, 'status-own', [{ op: 'remove', path: `/metadata/annotations/${key.replace('/', '~1')}` }], { namespace: 't1', type: 'json' }),
    );
    const current = await t1.get(DV, 'status-own', { namespace: 't1' });
    await noChange(
      'status update',
      t1.request('PUT', `${one}/status`, {
        body: { ...current, metadata: { ...current.metadata, annotations: { [key]: 'tenant' }, labels: { [key]: 'x' } } },
      }),
    );
    await noChange(
      'status merge patch',
      t1.request('PATCH', `${one}/status`, {
        body: { metadata: { annotations: { [key]: 'tenant' }, labels: { [key]: 'x' } } },
        contentType: 'application/merge-patch+json',
      }),
    );
    await noChange(
      'status merge patch null',
      t1.request('PATCH', `${one}/status`, { body: { metadata: { annotations: { [key]: null } } }, contentType: 'application/merge-patch+json' }),
    );
  });
});

describe('the exploits that were found', () => {
  test("exploit 1: a claim annotated to clone another tenant's disk is refused and nothing is made", async () => {
    await t1
      .create(
        DV,
        {
          apiVersion: 'cdi.kubevirt.io/v1beta1',
          kind: 'DataVolume',
          metadata: { name: 'steal' },
          spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '16Mi' } } } },
        },
        { namespace: 't1' },
      )
      .catch(() => undefined);
    const e = await refused(
      'clone-source claim',
      t1.create(
        PVC,
        {
          apiVersion: 'v1',
          kind: 'PersistentVolumeClaim',
          metadata: {
            name: 'steal-claim',
            annotations: { 'vessel.io/clone-source': 't2/data', [storage.POPULATED_FOR]: 'steal', [storage.CLONE_TYPE]: 'linked' },
          },
          spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
        },
        { namespace: 't1' },
      ),
      422,
    );
    assert.match(e.message, /vessel\.io\/clone-source/);
    await refused('the claim was not made', t1.get(PVC, 'steal-claim', { namespace: 't1' }), 404);
  });

  test("a clone of t2's claim through any reference (DataVolume, DataSource, a VM's dataVolumeTemplates) is refused at admission", async () => {
    const DS = kind('cdi.kubevirt.io', 'datasources');
    const storageSpec = { resources: { requests: { storage: '16Mi' } } };
    const fromPvc = { source: { pvc: { namespace: 't2', name: 'data' } }, storage: storageSpec };
    const fromRef = { sourceRef: { kind: 'DataSource', namespace: 't2', name: 'data' }, storage: storageSpec };
    for (const c of [t1, viewer1]) {
      for (const [what, spec] of [
        ['source.pvc', fromPvc],
        ['sourceRef', fromRef],
      ] as const) {
        const e = await refused(
          `DataVolume ${what}`,
          c.create(DV, { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataVolume', metadata: { name: 'steal-dv' }, spec } as KubeObject, { namespace: 't1' }),
        );
        if (c === t1) assert.match(e.message, /cannot clone from t2\/data/);
        const vm = tinyVm('steal-vm', {}, { dataVolumeTemplates: [{ metadata: { name: 'd' }, spec }] });
        (vm.spec as { template: { spec: Record<string, unknown> } }).template.spec.volumes = [{ name: 'd', dataVolume: { name: 'd' } }];
        await refused(`VM dataVolumeTemplates ${what}`, c.create(VM, vm, { namespace: 't1' }));
      }
      await refused(
        'DataSource to t2',
        c.create(
          DS,
          {
            apiVersion: 'cdi.kubevirt.io/v1beta1',
            kind: 'DataSource',
            metadata: { name: 'alias' },
            spec: { source: { pvc: { namespace: 't2', name: 'data' } } },
          } as KubeObject,
          { namespace: 't1' },
        ),
      );
    }
    for (const [k, name] of [
      [DV, 'steal-dv'],
      [VM, 'steal-vm'],
      [DS, 'alias'],
    ] as const)
      await refused(`${k.plural} ${name} was not made`, t1.get(k, name, { namespace: 't1' }), 404);
  });

  test("exploit 2: a claim restored from another tenant's snapshot by path traversal is refused", async () => {
    const e = await refused(
      'restore-source traversal',
      t1.create(
        PVC,
        {
          apiVersion: 'v1',
          kind: 'PersistentVolumeClaim',
          metadata: { name: 'traverse', annotations: { [storage.RESTORE_SOURCE]: '/var/lib/vessel/pools/local/t1/../t2/data.qcow2@s1' } },
          spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
        },
        { namespace: 't1' },
      ),
      422,
    );
    assert.match(e.message, /vessel\.io\/restore-source/);
    await refused('the claim was not made', t1.get(PVC, 'traverse', { namespace: 't1' }), 404);
  });
});
