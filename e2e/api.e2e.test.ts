/**
 * The API server's REST semantics, through the HTTP client a controller uses: status codes,
 * Status errors, optimistic concurrency, the status subresource, paging, watches, finalizers,
 * garbage collection, namespaces, dry runs and authorization.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource } from '@vessel/api';
import { Client, StatusError, type KubeObject, type WatchEvent } from '@vessel/client';
import { startVessel, vm, type Vessel, rejects } from './harness.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const CMS = findByResource('', 'v1', 'configmaps')!;
const CM = findByResource('', 'v1', 'configmaps')!;
const NS = findByResource('', 'v1', 'namespaces')!;

async function eventually(cond: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const exists = (c: Client, res: typeof VM, name: string, ns = 'default') =>
  c.get(res, name, { namespace: ns }).then(
    () => true,
    (e) => {
      if (e instanceof StatusError && e.code === 404) return false;
      throw e;
    },
  );

describe('API server semantics', () => {
  let v: Vessel;
  let c: Client;
  before(async () => {
    v = await startVessel({ bookmarkIntervalMs: 200 });
    c = v.client;
  });
  after(async () => {
    await v?.close();
  });

  it('starts with the namespaces and the default storage class of a fresh install', async () => {
    const names = (await c.list(NS)).items.map((n) => n.metadata?.name);
    for (const ns of ['default', 'kube-system', 'vessel-images']) assert.ok(names.includes(ns), `namespace ${ns}`);
    const classes = (await c.list(findByResource('storage.k8s.io', 'v1', 'storageclasses')!)).items;
    const defaults = classes.filter((sc) => sc.metadata?.annotations?.['storageclass.kubernetes.io/is-default-class'] === 'true');
    assert.deepEqual(
      defaults.map((sc) => sc.metadata?.name),
      ['local'],
    );
  });

  it('creates, reads and refuses duplicates', async () => {
    const created = await c.create(VM, vm('a1'));
    assert.ok(created.metadata?.uid);
    assert.equal(created.metadata?.generation, 1);
    assert.match(created.metadata?.resourceVersion ?? '', /^\d+$/);
    const got = await c.get(VM, 'a1');
    assert.deepEqual(got, created);
    await rejects(c.create(VM, vm('a1')), 409, /already exists/);
  });

  it('rejects invalid objects with field paths and stores nothing', async () => {
    const bad = vm('bad1');
    (bad.spec as { template: { spec: { domain: Record<string, unknown> } } }).template.spec.domain.resources = {};
    const err = await rejects(c.create(VM, bad), 422);
    assert.ok(
      err.causes.some((x) => x.field === 'spec.template.spec.domain.resources.requests.memory'),
      JSON.stringify(err.causes),
    );
    const unknown = vm('bad2');
    (unknown.spec as Record<string, unknown>).colour = 'blue';
    const err2 = await rejects(c.create(VM, unknown), 422);
    assert.ok(
      err2.causes.some((x) => x.field === 'spec.colour'),
      JSON.stringify(err2.causes),
    );
    await rejects(c.create(VM, { ...vm('x'), metadata: { name: 'Not_A_Name' } }), 422, /metadata\.name/);
    await rejects(c.create(VM, { ...vm('x'), metadata: {} }), 422, /metadata\.name/);
    assert.equal(await exists(c, VM, 'bad1'), false);
    assert.equal(await exists(c, VM, 'bad2'), false);
  });

  it('refuses a negative CPU as it refuses negative memory: 422 naming the field, on create and on patch', async () => {
    type Domain = { resources: { requests: Record<string, unknown> }; cpu?: Record<string, unknown> };
    const withDomain = (name: string, edit: (d: Domain) => void) => {
      const o = vm(name);
      edit((o.spec as { template: { spec: { domain: Domain } } }).template.spec.domain);
      return o;
    };
    const T = 'spec.template.spec.domain';
    for (const [name, edit, field] of [
      [
        'neg-mem',
        (d: Domain) => {
          d.resources.requests.memory = '-1Gi';
        },
        `${T}.resources.requests.memory`,
      ],
      [
        'neg-cpu',
        (d: Domain) => {
          d.resources.requests.cpu = '-1';
        },
        `${T}.resources.requests.cpu`,
      ],
      [
        'neg-limit',
        (d: Domain) => {
          (d.resources as Record<string, unknown>).limits = { cpu: '-2' };
        },
        `${T}.resources.limits.cpu`,
      ],
      [
        'neg-cores',
        (d: Domain) => {
          d.cpu = { cores: -1 };
        },
        `${T}.cpu.cores`,
      ],
    ] as const) {
      const err = await rejects(c.create(VM, withDomain(name, edit)), 422);
      assert.equal(err.reason, 'Invalid');
      const cause = err.causes.find((x) => x.field === field);
      assert.ok(cause, `${name}: ${JSON.stringify(err.causes)}`);
      assert.match(cause.message ?? '', /must be greater than or equal to 0/);
      assert.equal(await exists(c, VM, name), false);
    }
    await c.create(
      VM,
      withDomain('cpu-ok', (d) => {
        d.resources.requests.cpu = '500m';
      }),
    );
    await rejects(c.patch(VM, 'cpu-ok', { spec: { template: { spec: { domain: { resources: { requests: { cpu: '-1' } } } } } } }), 422, /requests\.cpu/);
    const kept = await c.get(VM, 'cpu-ok');
    assert.equal(
      (kept.spec as { template: { spec: { domain: Domain } } }).template.spec.domain.resources.requests.cpu,
      '500m',
      'the refused patch changed nothing',
    );
  });

  it('refuses VMI fields the VM could not start with (422 naming them); implemented ones pass without a warning', async () => {
    const warnings: string[] = [];
    const w = new Client(c.config, { onWarning: (m) => warnings.push(m) });
    type Spec = { domain: Record<string, unknown> & { devices: Record<string, unknown> }; networks?: unknown[] };
    const withSpec = (name: string, edit: (s: Spec) => void) => {
      const o = vm(name);
      edit((o.spec as { template: { spec: Spec } }).template.spec);
      return o;
    };
    const err = await rejects(
      w.create(
        VM,
        withSpec('pci', (s) => {
          s.domain.devices.interfaces = [{ name: 'default', masquerade: {}, pciAddress: '0000:81:00.1' }];
          s.networks = [{ name: 'default', pod: {} }];
          s.domain.devices.gpus = [{ name: 'gpu1', deviceName: 'nvidia.com/TU104GL' }];
        }),
      ),
      422,
    );
    assert.deepEqual(
      err.causes.map((x) => [x.field, x.reason]),
      [
        ['spec.template.spec.domain.devices.interfaces[0].pciAddress', 'FieldValueNotSupported'],
        ['spec.template.spec.domain.devices.gpus', 'FieldValueNotSupported'],
      ],
    );
    assert.equal(await exists(c, VM, 'pci'), false);
    await w.create(
      VM,
      withSpec('clocked', (s) => {
        s.domain.clock = { timezone: 'Europe/Berlin' };
        s.domain.devices.watchdog = { name: 'wd', i6300esb: { action: 'reset' } };
      }),
    );
    assert.deepEqual(warnings, []);
  });

  it('enforces resourceVersion preconditions', async () => {
    const cur = await c.get(VM, 'a1');
    const stale = structuredClone(cur);
    (cur.metadata!.labels ??= {}).step = 'one';
    await c.update(VM, cur);
    (stale.metadata!.labels ??= {}).step = 'two';
    await rejects(c.update(VM, stale), 409, /has been modified/);
    assert.equal((await c.get(VM, 'a1')).metadata?.labels?.step, 'one');
  });

  it('keeps spec and status apart and counts generations', async () => {
    const cur = await c.get(VM, 'a1');
    const withStatus = { ...cur, status: { printableStatus: 'Stopped' } };
    const afterStatus = await c.update(VM, withStatus, { subresource: 'status' });
    assert.deepEqual(afterStatus.status, { printableStatus: 'Stopped' });
    assert.equal(afterStatus.metadata?.generation, cur.metadata?.generation, 'a status write is not a new generation');
    const specChange = { ...afterStatus, status: { printableStatus: 'Hacked' }, spec: { ...(afterStatus.spec as object), runStrategy: 'Always' } };
    const afterSpec = await c.update(VM, specChange);
    assert.deepEqual(afterSpec.status, { printableStatus: 'Stopped' }, 'the main resource cannot write status');
    assert.equal(afterSpec.metadata?.generation, (cur.metadata?.generation ?? 0) + 1);
    const patched = await c.patch(VM, 'a1', { status: { printableStatus: 'Running' } }, { subresource: 'status' });
    assert.equal((patched.status as { printableStatus: string }).printableStatus, 'Running');
  });

  it('supports merge, JSON and strategic patches and dry runs', async () => {
    await c.patch(VM, 'a1', { metadata: { labels: { m: '1' } } });
    await c.patch(VM, 'a1', [{ op: 'add', path: '/metadata/labels/j', value: '2' }], { type: 'json' });
    await rejects(c.patch(VM, 'a1', [{ op: 'test', path: '/metadata/labels/j', value: 'nope' }], { type: 'json' }), 422);
    const got = await c.get(VM, 'a1');
    assert.equal(got.metadata?.labels?.m, '1');
    assert.equal(got.metadata?.labels?.j, '2');
    const dry = await c.request<KubeObject>('POST', '/apis/kubevirt.io/v1/namespaces/default/virtualmachines', { query: { dryRun: 'All' }, body: vm('dry1') });
    assert.equal(dry.metadata?.name, 'dry1');
    assert.equal(await exists(c, VM, 'dry1'), false);
  });

  it('pages lists and filters by label and field', async () => {
    for (let i = 0; i < 25; i++) await c.create(VM, vm(`page-${String(i).padStart(2, '0')}`, { tier: i % 2 ? 'odd' : 'even' }));
    const names: string[] = [];
    let cont: string | undefined;
    let pages = 0;
    do {
      const page = await c.list(VM, { namespace: 'default', labelSelector: 'tier', limit: 10, continue: cont });
      names.push(...page.items.map((o) => o.metadata!.name!));
      cont = page.metadata?.continue;
      pages++;
    } while (cont);
    assert.equal(pages, 3);
    assert.equal(names.length, 25);
    assert.equal(new Set(names).size, 25);
    const odd = await c.list(VM, { namespace: 'default', labelSelector: 'tier in (odd),tier!=even' });
    assert.equal(odd.items.length, 12);
    const one = await c.list(VM, { namespace: 'default', fieldSelector: 'metadata.name=page-03' });
    assert.deepEqual(
      one.items.map((o) => o.metadata?.name),
      ['page-03'],
    );
    await rejects(c.list(VM, { labelSelector: 'tier in (odd' }), 400, /unable to parse requirement/);
    await rejects(c.list(VM, { fieldSelector: 'nonsense' }), 400, /field selector/);
  });

  it('resumes a watch from a resourceVersion without gaps or duplicates', async () => {
    // ConfigMaps: no controller writes to them, so every event is one of ours.
    const cm = (name: string) => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name }, data: { k: name } });
    await c.create(CMS, cm('w-0'));
    await c.create(CMS, cm('w-1'));
    const start = (await c.list(CMS, { namespace: 'default' })).metadata!.resourceVersion!;
    await c.patch(CMS, 'w-0', { metadata: { labels: { w: '1' } } });
    await c.create(CMS, cm('w-new'));
    await c.delete(CMS, 'w-1');
    const events: WatchEvent[] = [];
    const w = c.watchResource(CMS, { namespace: 'default', resourceVersion: start }, (e) => events.push(e));
    await eventually(async () => events.length >= 3, 'three replayed events');
    await c.patch(CMS, 'w-new', { metadata: { labels: { live: 'yes' } } });
    await eventually(async () => events.length >= 4, 'a live event');
    w.close();
    assert.deepEqual(
      events.map((e) => `${e.type} ${e.object.metadata?.name}`),
      ['MODIFIED w-0', 'ADDED w-new', 'DELETED w-1', 'MODIFIED w-new'],
    );
    const rvs = events.map((e) => Number(e.object.metadata?.resourceVersion));
    assert.deepEqual(
      [...rvs].sort((a, b) => a - b),
      rvs,
      'events arrive in revision order',
    );
  });

  it('sends bookmarks and the end of initial events when asked', async () => {
    const events: WatchEvent[] = [];
    const w = c.watch(
      '/apis/kubevirt.io/v1/namespaces/default/virtualmachines',
      { allowWatchBookmarks: true, sendInitialEvents: true, resourceVersionMatch: 'NotOlderThan', fieldSelector: 'metadata.name=a1' },
      (e) => events.push(e),
    );
    await eventually(async () => events.filter((e) => e.type === 'BOOKMARK').length >= 2, 'two bookmarks');
    w.close();
    assert.equal(events[0].type, 'ADDED');
    assert.equal(events[0].object.metadata?.name, 'a1');
    const initialEnd = events[1];
    assert.equal(initialEnd.type, 'BOOKMARK');
    assert.equal(initialEnd.object.metadata?.annotations?.['k8s.io/initial-events-end'], 'true');
    assert.match(events.at(-1)!.object.metadata?.resourceVersion ?? '', /^\d+$/);
  });

  it('answers a watch from a compacted revision with 410 Expired', async () => {
    const old = (await c.list(VM, { namespace: 'default' })).metadata!.resourceVersion!;
    await c.patch(VM, 'page-02', { metadata: { labels: { c: '1' } } });
    await v.server.store.compact(await v.server.store.currentRevision());
    const events: WatchEvent[] = [];
    const w = c.watchResource(VM, { namespace: 'default', resourceVersion: old }, (e) => events.push(e));
    await w.done;
    assert.equal(events.length, 1);
    assert.equal(events[0].type, 'ERROR');
    assert.equal((events[0].object as { code?: number }).code, 410);
  });

  it('holds deletion for finalizers', async () => {
    await c.create(VM, { ...vm('fin1'), metadata: { name: 'fin1', finalizers: ['example.com/hold'] } });
    const marked = await c.delete(VM, 'fin1');
    assert.ok(marked.metadata?.deletionTimestamp);
    assert.equal(await exists(c, VM, 'fin1'), true);
    await rejects(c.patch(VM, 'fin1', { metadata: { finalizers: ['example.com/hold', 'example.com/more'] } }), 403);
    await c.patch(VM, 'fin1', { metadata: { finalizers: null } });
    assert.equal(await exists(c, VM, 'fin1'), false);
  });

  it('collects dependents of a deleted owner (background, foreground, orphan)', async () => {
    const owned = async (owner: KubeObject, name: string) =>
      c.create(CM, {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        data: { a: 'b' },
        metadata: {
          name,
          ownerReferences: [
            { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: owner.metadata!.name!, uid: owner.metadata!.uid!, blockOwnerDeletion: true },
          ],
        },
      });
    const bg = await c.create(VM, vm('owner-bg'));
    await owned(bg, 'dep-bg');
    await c.delete(VM, 'owner-bg', { propagationPolicy: 'Background' });
    await eventually(async () => !(await exists(c, CM, 'dep-bg')), 'the background dependent to be collected');

    const fg = await c.create(VM, vm('owner-fg'));
    await owned(fg, 'dep-fg');
    await c.delete(VM, 'owner-fg', { propagationPolicy: 'Foreground' });
    await eventually(async () => !(await exists(c, VM, 'owner-fg')), 'the foreground owner to go');
    assert.equal(await exists(c, CM, 'dep-fg'), false, 'the dependent went first');

    const or = await c.create(VM, vm('owner-or'));
    await owned(or, 'dep-or');
    await c.delete(VM, 'owner-or', { propagationPolicy: 'Orphan' });
    await eventually(async () => !(await exists(c, VM, 'owner-or')), 'the orphaning owner to go');
    const dep = await c.get(CM, 'dep-or');
    assert.equal(dep.metadata?.ownerReferences, undefined);
  });

  it('deletes a namespace with everything in it, and refuses new content meanwhile', async () => {
    await c.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'doomed' } });
    await c.create(VM, vm('inside'), { namespace: 'doomed' });
    await c.create(VM, { ...vm('held'), metadata: { name: 'held', finalizers: ['example.com/hold'] } }, { namespace: 'doomed' });
    await c.delete(NS, 'doomed');
    assert.equal(((await c.get(NS, 'doomed')).status as { phase: string }).phase, 'Terminating');
    await rejects(c.create(VM, vm('late'), { namespace: 'doomed' }), 403, /being terminated/);
    await eventually(async () => !(await exists(c, VM, 'inside', 'doomed')), 'the namespace content to be deleted');
    assert.equal(await exists(c, NS, 'doomed', ''), true, 'a finalizer inside keeps the namespace');
    await c.patch(VM, 'held', { metadata: { finalizers: null } }, { namespace: 'doomed' });
    await eventually(async () => !(await exists(c, NS, 'doomed', '')), 'the namespace to go');
    await rejects(c.create(VM, vm('x'), { namespace: 'nowhere' }), 404, /namespaces "nowhere" not found/);
  });

  it('authenticates tokens and lets view tokens only read', async () => {
    const anon = new Client({ ...c.config, token: undefined });
    await rejects(anon.list(VM), 401);
    const issued = await c.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user: 'viewer', groups: ['vessel:view'] } });
    const viewer = new Client({ ...c.config, token: issued.token });
    assert.ok((await viewer.list(VM, { namespace: 'default' })).items.length > 0);
    await rejects(viewer.create(VM, vm('nope')), 403, /User "viewer" cannot create resource "virtualmachines"/);
    await rejects(c.request('POST', '/vessel/v1/tokens', { body: { user: 'bad user!' } }), 422, /user/);
    anon.close();
    viewer.close();
  });

  it('answers malformed requests with 4xx Status objects', async () => {
    const path = '/apis/kubevirt.io/v1/namespaces/default/virtualmachines';
    await rejects(c.request('POST', path, { body: '{"kind": ', contentType: 'application/json' }), 400, /not valid JSON/);
    await rejects(c.request('POST', path, { body: 'a: [b', contentType: 'application/yaml' }), 400, /not valid YAML/);
    await rejects(c.request('POST', path, { body: { ...vm('k'), kind: 'ConfigMap' } }), 400, /kind/);
    await rejects(c.request('POST', path, { body: { ...vm('k'), apiVersion: 'kubevirt.io/v2' } }), 400, /API version/);
    await rejects(c.request('POST', path, { body: '[1,2]', contentType: 'application/json' }), 400);
    await rejects(c.request('POST', path, { body: 'x'.repeat(3 * 1024 * 1024 + 1), contentType: 'application/json' }), 413);
    await rejects(c.request('POST', path, { body: '{}', contentType: 'text/plain' }), 415);
    await rejects(c.request('GET', '/apis/kubevirt.io/v1/namespaces/default/gadgets'), 404);
    await rejects(c.request('PATCH', `${path}/a1`, { body: '{}', contentType: 'application/xml' }), 415);
    await rejects(c.request('PUT', path, { body: vm('k') }), 405);
    await rejects(c.request('GET', path, { query: { limit: 'ten' } }), 400, /limit/);
    await rejects(c.request('GET', path, { query: { continue: 'garbage' } }), 400, /continue/);
  });
});
