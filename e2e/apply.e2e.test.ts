/**
 * Server-side apply with field ownership, through an unmodified kubectl: managedFields,
 * removal of fields a manager stops applying, conflicts between managers and
 * --force-conflicts, and controllers' status writes next to applies. Also: patches of every
 * flavour nested absurdly deep are refused with a 422 and change nothing.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import YAML from 'yaml';
import * as k8s from '@kubernetes/client-node';
import { StatusError } from '@vessel/client';
import type { KubeObject } from '@vessel/client';
import { run, startVessel, type Vessel, kubectlFor, KUBECTL_SKIP } from './harness.ts';

const VESSEL = fileURLToPath(new URL('../bin/vessel', import.meta.url));

interface Entry {
  manager: string;
  operation: string;
  subresource?: string;
  fieldsV1: Record<string, unknown>;
}
const entries = (obj: { metadata?: { managedFields?: unknown } }) => (obj.metadata?.managedFields ?? []) as Entry[];

function configMap(data: Record<string, string>, labels: Record<string, string> = { app: 'web' }): string {
  return YAML.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'settings', labels }, data });
}

function vm(name: string, memory: string, labels: Record<string, string> = {}): string {
  return YAML.stringify({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, labels },
    spec: {
      runStrategy: 'Halted',
      template: {
        spec: {
          domain: { resources: { requests: { memory } }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } },
          volumes: [{ name: 'root', containerDisk: { image: 'quay.io/containerdisks/debian:12' } }],
        },
      },
    },
  });
}

describe('server-side apply with kubectl', { skip: KUBECTL_SKIP }, () => {
  let v: Vessel;
  const { kubectl, ok } = kubectlFor(() => v);
  const getYaml = async (what: string[]) => YAML.parse(await ok(['get', ...what, '-o', 'yaml', '--show-managed-fields']));

  before(async () => {
    v = await startVessel();
  });
  after(async () => {
    await v?.close();
  });

  it('applies twice, then drops a field that is left out of the configuration', async () => {
    assert.match(await ok(['apply', '--server-side', '-f', '-'], configMap({ a: '1', b: '2' })), /configmap\/settings serverside-applied/);
    const first = await getYaml(['cm', 'settings']);
    await ok(['apply', '--server-side', '-f', '-'], configMap({ a: '1', b: '2' }));
    const second = await getYaml(['cm', 'settings']);
    assert.equal(second.metadata.resourceVersion, first.metadata.resourceVersion, 'the same configuration again changes nothing');
    assert.deepEqual(
      entries(second).map((e) => [e.manager, e.operation, e.fieldsV1]),
      [['kubectl', 'Apply', { 'f:data': { 'f:a': {}, 'f:b': {} }, 'f:metadata': { 'f:labels': { 'f:app': {} } } }]],
    );
    await ok(['apply', '--server-side', '-f', '-'], configMap({ a: '1' }, {}));
    const third = await getYaml(['cm', 'settings']);
    assert.deepEqual(third.data, { a: '1' });
    assert.equal(third.metadata.labels, undefined, 'the label left out is gone too');
  });

  it('shows a conflict with another manager, and --force-conflicts takes the field', async () => {
    const r = await kubectl(['apply', '--server-side', '--field-manager', 'other', '-f', '-'], configMap({ a: '2' }, {}));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /Apply failed with 1 conflict: conflict with "kubectl": \.data\.a/);
    assert.equal((await getYaml(['cm', 'settings'])).data.a, '1', 'nothing changed');
    // The same value is no conflict: both own it.
    await ok(['apply', '--server-side', '--field-manager', 'other', '-f', '-'], configMap({ a: '1', c: '3' }, {}));
    await ok(['apply', '--server-side', '--field-manager', 'other', '--force-conflicts', '-f', '-'], configMap({ a: '2', c: '3' }, {}));
    const cm = await getYaml(['cm', 'settings']);
    assert.deepEqual(cm.data, { a: '2', c: '3' });
    assert.deepEqual(
      entries(cm).map((e) => [e.manager, e.fieldsV1]),
      [['other', { 'f:data': { 'f:a': {}, 'f:c': {} } }]],
      'kubectl lost .data.a and owns nothing more',
    );
  });

  it('records other writes as Update entries that apply then conflicts with', async () => {
    await ok(['patch', 'cm', 'settings', '--type', 'merge', '-p', '{"data":{"c":"patched"}}']);
    const cm = await getYaml(['cm', 'settings']);
    const patcher = entries(cm).find((e) => e.manager === 'kubectl-patch');
    assert.deepEqual(patcher && [patcher.operation, patcher.fieldsV1], ['Update', { 'f:data': { 'f:c': {} } }]);
    const r = await kubectl(['apply', '--server-side', '--field-manager', 'other', '-f', '-'], configMap({ a: '2', c: '3' }, {}));
    assert.match(r.err, /conflict with "kubectl-patch" using v1: \.data\.c/);
    // Client-side apply records its own manager.
    await ok(['apply', '-f', '-'], configMap({ a: '2', c: 'patched', d: '4' }, {}));
    assert.ok(entries(await getYaml(['cm', 'settings'])).some((e) => e.manager === 'kubectl-client-side-apply' && e.operation === 'Update'));
  });

  it('moves from client-side to server-side apply and back', async () => {
    const cm = (data: Record<string, string>) => YAML.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'switcher' }, data });
    await ok(['apply', '-f', '-'], cm({ a: '1', b: '2' }));
    await ok(['apply', '--server-side', '-f', '-'], cm({ a: '1' }));
    let got = await getYaml(['cm', 'switcher']);
    assert.deepEqual(got.data, { a: '1' }, 'kubectl handed the client-side fields to its server-side manager, so b went');
    assert.deepEqual(
      JSON.parse(got.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration']).data,
      { a: '1' },
      'the annotation follows the apply',
    );
    await ok(['apply', '-f', '-'], cm({ a: '1', c: '3' }));
    got = await getYaml(['cm', 'switcher']);
    assert.deepEqual(got.data, { a: '1', c: '3' });
  });

  it('treats an object stored before ownership tracking as owned by before-first-apply', async () => {
    // Written straight to the store, as objects of older Vessel versions are: no managedFields.
    const old = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'old', namespace: 'default', uid: 'u-old', creationTimestamp: '2026-01-01T00:00:00Z' },
      data: { a: '1', b: '2' },
    };
    await v.server.store.create('/registry/core/configmaps/default/old', JSON.stringify(old));
    await ok(['patch', 'cm', 'old', '--type', 'merge', '-p', '{"data":{"b":"3"}}']);
    assert.equal((await getYaml(['cm', 'old'])).metadata.managedFields, undefined, 'updates do not start tracking');
    await ok(['apply', '--server-side', '-f', '-'], YAML.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'old' }, data: { a: 'new' } }));
    const got = await getYaml(['cm', 'old']);
    assert.deepEqual(got.data, { a: 'new', b: '3' }, 'no conflict, and b stays');
    assert.deepEqual(
      entries(got).map((e) => [e.manager, e.operation, e.fieldsV1]),
      [
        ['kubectl', 'Apply', { 'f:data': { 'f:a': {} } }],
        ['before-first-apply', 'Update', { 'f:data': { 'f:b': {} } }],
      ],
    );
  });

  it('merges keyed lists item by item and removes only the items a manager dropped', async () => {
    const disk = (name: string) => ({ name, disk: { bus: 'virtio' } });
    const volume = (name: string) => ({ name, containerDisk: { image: 'quay.io/containerdisks/debian:12' } });
    const lists = (names: string[], extra: Record<string, unknown> = {}) =>
      YAML.stringify({
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachine',
        metadata: { name: 'lists' },
        spec: { template: { spec: { domain: { ...extra, devices: { disks: names.map(disk) } }, volumes: names.map(volume) } } },
      });
    const base = YAML.parse(vm('lists', '128Mi'));
    base.spec.template.spec.domain.devices.disks.push(disk('data'));
    base.spec.template.spec.volumes.push(volume('data'));
    await ok(['apply', '--server-side', '-f', '-'], YAML.stringify(base));
    await ok(['apply', '--server-side', '--field-manager', 'addon', '-f', '-'], lists(['extra']));
    const names = async () => {
      const got = await getYaml(['vm', 'lists']);
      return [
        got.spec.template.spec.domain.devices.disks.map((d: { name: string }) => d.name),
        got.spec.template.spec.volumes.map((d: { name: string }) => d.name),
      ];
    };
    assert.deepEqual(await names(), [
      ['root', 'data', 'extra'],
      ['root', 'data', 'extra'],
    ]);
    const addon = entries(await getYaml(['vm', 'lists'])).find((e) => e.manager === 'addon');
    assert.deepEqual(
      Object.keys((addon?.fieldsV1 as { 'f:spec': { 'f:template': { 'f:spec': { 'f:volumes': object } } } })['f:spec']['f:template']['f:spec']['f:volumes']),
      ['k:{"name":"extra"}'],
    );
    base.spec.template.spec.domain.devices.disks.pop();
    base.spec.template.spec.volumes.pop();
    await ok(['apply', '--server-side', '-f', '-'], YAML.stringify(base));
    assert.deepEqual(
      await names(),
      [
        ['root', 'extra'],
        ['root', 'extra'],
      ],
      "data went, extra (another manager's) stayed",
    );
    const r = await kubectl(
      ['apply', '--server-side', '--field-manager', 'addon', '-f', '-'],
      lists(['extra'], { resources: { requests: { memory: '512Mi' } } }),
    );
    assert.match(r.err, /conflict with "kubectl": \.spec\.template\.spec\.domain\.resources\.requests\.memory/);
  });

  it("keeps controllers' status writes apart from spec applies", async () => {
    await ok(['apply', '--server-side', '-f', '-'], vm('owned', '128Mi'));
    const created = await getYaml(['vm', 'owned']);
    assert.ok(created.spec.template.spec.domain.machine?.type, 'the server defaulted the machine type');
    assert.equal(JSON.stringify(entries(created)).includes('f:machine'), false, 'defaults belong to no manager');
    // The VM controller writes status through the client library, which names no field manager.
    const res = await v.client.resolve('virtualmachines');
    await v.client.patch(res, 'owned', { status: { printableStatus: 'Stopped', ready: false } }, { subresource: 'status' });
    const before = await getYaml(['vm', 'owned']);
    const status = entries(before).find((e) => e.subresource === 'status');
    assert.ok(status, 'the status write has its entry');
    assert.deepEqual(Object.keys(status.fieldsV1), ['f:status']);
    assert.ok(!entries(before).some((e) => e.subresource !== 'status' && 'f:status' in e.fieldsV1), 'no main-resource manager owns status');
    await ok(['apply', '--server-side', '-f', '-'], vm('owned', '256Mi', { tier: 'db' }));
    const after = await getYaml(['vm', 'owned']);
    assert.equal(after.spec.template.spec.domain.resources.requests.memory, '256Mi');
    assert.equal(after.status.ready, false);
    // A list shows managedFields like a get; kubectl and vessel hide them unless asked.
    assert.doesNotMatch(await ok(['get', 'vm', 'owned', '-o', 'yaml']), /managedFields/);
    const vessel = (args: string[]) => run(VESSEL, args, { env: { ...process.env, KUBECONFIG: v.kubeconfig } });
    const hidden = await vessel(['get', 'vm', 'owned', '-o', 'yaml']);
    assert.equal(hidden.code, 0, hidden.err);
    assert.doesNotMatch(hidden.out, /managedFields/);
    assert.match((await vessel(['get', 'vm', '-o', 'json', '--show-managed-fields'])).out, /"managedFields"/);
    const list = await v.client.list(res);
    assert.ok(list.items.every((o: KubeObject) => Array.isArray(o.metadata?.managedFields)));
  });

  it('applies from @kubernetes/client-node, with its conflict and force', async () => {
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(v.kubeconfig);
    const api = k8s.KubernetesObjectApi.makeApiClient(kc);
    const spec = (value: string) => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'from-node', namespace: 'default' }, data: { key: value } });
    await api.patch(spec('1'), undefined, undefined, 'node-app', false, k8s.PatchStrategy.ServerSideApply);
    const err = await api.patch(spec('2'), undefined, undefined, 'other-app', false, k8s.PatchStrategy.ServerSideApply).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof k8s.ApiException && err.code === 409, String(err));
    const forced: k8s.V1ConfigMap = await api.patch(spec('2'), undefined, undefined, 'other-app', true, k8s.PatchStrategy.ServerSideApply);
    assert.equal(forced.data?.key, '2');
    assert.deepEqual(
      forced.metadata?.managedFields?.map((e) => e.manager),
      ['other-app'],
    );
  });

  it('refuses patches nested 10,000 levels deep with a 422 and changes nothing', async () => {
    const res = await v.client.resolve('configmaps');
    const path = '/api/v1/namespaces/default/configmaps/settings';
    const deep = (n: number) => '{"a":'.repeat(n) + '"x"' + '}'.repeat(n);
    const rv = (await v.client.get(res, 'settings')).metadata?.resourceVersion;
    const attempts: [string, string, string][] = [
      ['application/merge-patch+json', `{"metadata":{"labels":${deep(10_000)}}}`, 'metadata.labels'],
      ['application/strategic-merge-patch+json', `{"metadata":{"labels":${deep(10_000)}}}`, 'metadata.labels'],
      ['application/json-patch+json', `[{"op":"add","path":"/metadata/annotations","value":${deep(10_000)}}]`, '[0].value'],
      ['application/apply-patch+yaml', `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":${deep(10_000)}}`, 'data'],
      ['application/apply-patch+yaml', `apiVersion: v1\nkind: ConfigMap\ndata: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`, ''],
    ];
    for (const [contentType, body, field] of attempts) {
      const err = await v.client.request('PATCH', `${path}?fieldManager=deep`, { body, contentType }).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof StatusError, `${contentType}: ${String(err)}`);
      assert.equal(err.status.code, 422, `${contentType}: ${err.message}`);
      assert.match(err.message, /nested more than 1000 levels deep/);
      assert.ok(err.status.details?.causes?.[0]?.field?.startsWith(field), `${contentType}: ${JSON.stringify(err.status.details)}`);
    }
    assert.equal((await v.client.get(res, 'settings')).metadata?.resourceVersion, rv, 'nothing was written');
    // JSON patch can build depth by copying a document into itself.
    await ok(['patch', 'cm', 'settings', '--type', 'merge', '-p', '{"metadata":{"annotations":null}}']);
    const rvBefore = (await v.client.get(res, 'settings')).metadata?.resourceVersion;
    const copies = Array.from({ length: 1100 }, () => ({ op: 'copy', from: '/data', path: '/data/x' }));
    const err = await v.client.patch(res, 'settings', copies, { type: 'json' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof StatusError && err.status.code === 422, String(err));
    assert.equal((await v.client.get(res, 'settings')).metadata?.resourceVersion, rvBefore);
    // Creating such an object is refused the same way.
    const created = await v.client
      .request('POST', '/api/v1/namespaces/default/configmaps', {
        body: `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"data":${deep(10_000)}}`,
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(created instanceof StatusError && created.status.code === 422 && /nested more than 1000/.test(created.message), String(created));
    const createdYaml = await v.client
      .request('POST', '/api/v1/namespaces/default/configmaps', {
        body: `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\ndata: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`,
        contentType: 'application/yaml',
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(createdYaml instanceof StatusError && createdYaml.status.code === 422 && /nested more than 1000/.test(createdYaml.message), String(createdYaml));
  });
});
