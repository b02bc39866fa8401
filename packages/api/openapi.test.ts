/**
 * The OpenAPI documents, checked for what kubectl 1.32 relies on: `kubectl explain` finds the GVK on
 * the resource path's operations, then the component schema carrying that GVK, and follows $refs;
 * the field-validation check needs a PATCH operation with the GVK and a `fieldValidation` query
 * parameter; strategic merge patch is advertised for built-in kinds only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kinds, schemaNameFor, servedKinds } from './kinds.ts';
import { openApiV2, openApiV3, openApiV3Index } from './openapi.ts';
import type { Json } from './schemas.ts';

type J = { [k: string]: Json };

function doc(group: string, version: string): J {
  const d = openApiV3(group, version);
  assert.ok(d, `${group}/${version}`);
  return d as J;
}

function resolve(d: J, ref: string): J {
  const name = ref.replace('#/components/schemas/', '');
  const s = ((d.components as J).schemas as J)[name];
  assert.ok(s, `dangling $ref ${ref}`);
  return s as J;
}

/** Follows a field path the way kubectl explain's template does (properties, allOf, items, maps). */
function explain(d: J, gvk: { group: string; version: string; kind: string }, path: string[]): J {
  const schemas = (d.components as J).schemas as Record<string, J>;
  const root = Object.values(schemas).find((s) =>
    (s['x-kubernetes-group-version-kind'] as J[] | undefined)?.some((g) => g.group === gvk.group && g.version === gvk.version && g.kind === gvk.kind),
  );
  assert.ok(root, `no schema with GVK ${JSON.stringify(gvk)}`);
  let cur: J = root;
  const deref = (s: J): J => {
    for (;;) {
      if (typeof s.$ref === 'string') s = resolve(d, s.$ref);
      else if (Array.isArray(s.allOf) && s.allOf.length === 1 && !s.properties) s = s.allOf[0] as J;
      else if (s.items) s = s.items as J;
      else return s;
    }
  };
  for (const p of path) {
    cur = deref(cur);
    const props = cur.properties as Record<string, J> | undefined;
    assert.ok(props?.[p], `no field ${p} in ${path.join('.')}`);
    cur = props[p];
  }
  return cur;
}

test('the /openapi/v3 index lists every served group/version with a hash', () => {
  const idx = openApiV3Index();
  assert.deepEqual(Object.keys(idx.paths), [
    'api/v1',
    'apis/storage.k8s.io/v1',
    'apis/networking.k8s.io/v1',
    'apis/k8s.cni.cncf.io/v1',
    'apis/discovery.k8s.io/v1',
    'apis/scheduling.k8s.io/v1',
    'apis/kubevirt.io/v1',
    'apis/pool.kubevirt.io/v1beta1',
    'apis/pool.kubevirt.io/v1alpha1',
    'apis/migrations.kubevirt.io/v1alpha1',
    'apis/instancetype.kubevirt.io/v1beta1',
    'apis/apps/v1',
    'apis/cdi.kubevirt.io/v1beta1',
    'apis/snapshot.kubevirt.io/v1beta1',
    'apis/snapshot.kubevirt.io/v1alpha1',
    'apis/clone.kubevirt.io/v1beta1',
    'apis/clone.kubevirt.io/v1alpha1',
    'apis/export.kubevirt.io/v1beta1',
    'apis/nmstate.io/v1',
    'apis/nmstate.io/v1beta1',
    'apis/forklift.konveyor.io/v1beta1',
  ]);
  assert.match(idx.paths['apis/kubevirt.io/v1'].serverRelativeURL, /^\/openapi\/v3\/apis\/kubevirt\.io\/v1\?hash=[0-9A-F]{128}$/);
  assert.equal(openApiV3('batch', 'v1'), undefined);
});

test('every kind: operations carry the GVK, and exactly one schema has it (kubectl explain)', () => {
  for (const k of kinds) {
    const d = doc(k.group, k.version);
    const prefix = k.group ? `/apis/${k.group}/${k.version}` : `/api/${k.version}`;
    const collection = k.namespaced ? `${prefix}/namespaces/{namespace}/${k.plural}` : `${prefix}/${k.plural}`;
    const paths = d.paths as Record<string, J>;
    const gvk = { group: k.group, kind: k.kind, version: k.version };
    assert.deepEqual((paths[collection].get as J)['x-kubernetes-group-version-kind'], gvk, collection);
    assert.deepEqual((paths[`${collection}/{name}`].patch as J)['x-kubernetes-group-version-kind'], gvk);
    assert.equal(Boolean(paths[`${collection}/{name}/status`]), k.statusSubresource, `${k.kind} status path`);
    const schemas = (d.components as J).schemas as Record<string, J>;
    const holders = Object.entries(schemas).filter(([, s]) =>
      (s['x-kubernetes-group-version-kind'] as J[] | undefined)?.some((g) => g.kind === k.kind && g.group === k.group && g.version === k.version),
    );
    assert.deepEqual(
      holders.map(([n]) => n),
      [schemaNameFor(k)],
    );
    const list = schemas[`${schemaNameFor(k)}List`];
    assert.deepEqual(list['x-kubernetes-group-version-kind'], [{ group: k.group, kind: k.listKind, version: k.version }]);
  }
});

test('every PATCH operation has an inline fieldValidation query parameter (server-side validation)', () => {
  for (const k of kinds) {
    const d = doc(k.group, k.version);
    for (const [p, item] of Object.entries(d.paths as Record<string, J>)) {
      for (const m of ['post', 'put', 'patch']) {
        const o = item[m] as J | undefined;
        if (!o) continue;
        const params = o.parameters as J[];
        assert.ok(
          params.some((x) => x.name === 'fieldValidation' && x.in === 'query'),
          `${m} ${p}`,
        );
      }
    }
  }
});

test('strategic merge patch is offered for built-in kinds only', () => {
  const patchTypes = (group: string, version: string, path: string): string[] => {
    const o = (doc(group, version).paths as Record<string, J>)[path].patch as J;
    return Object.keys(((o.requestBody as J).content as J) ?? {});
  };
  assert.ok(patchTypes('', 'v1', '/api/v1/namespaces/{namespace}/configmaps/{name}').includes('application/strategic-merge-patch+json'));
  const vm = patchTypes('kubevirt.io', 'v1', '/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}');
  assert.ok(!vm.includes('application/strategic-merge-patch+json'));
  assert.ok(vm.includes('application/merge-patch+json') && vm.includes('application/json-patch+json'));
});

test('all $refs resolve within each document', () => {
  for (const { group, version } of [
    { group: '', version: 'v1' },
    { group: 'storage.k8s.io', version: 'v1' },
    { group: 'kubevirt.io', version: 'v1' },
    { group: 'cdi.kubevirt.io', version: 'v1beta1' },
    { group: 'networking.k8s.io', version: 'v1' },
    { group: 'discovery.k8s.io', version: 'v1' },
    { group: 'snapshot.kubevirt.io', version: 'v1beta1' },
    { group: 'clone.kubevirt.io', version: 'v1beta1' },
  ]) {
    const d = doc(group, version);
    const visit = (v: Json): void => {
      if (Array.isArray(v)) v.forEach(visit);
      else if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          if (k === '$ref') resolve(d, x as string);
          else visit(x);
        }
      }
    };
    visit(d);
  }
});

test('explain paths: descriptions, quantities, required markers', () => {
  const vm = { group: 'kubevirt.io', version: 'v1', kind: 'VirtualMachine' };
  const d = doc('kubevirt.io', 'v1');
  const runStrategy = explain(d, vm, ['spec', 'runStrategy']);
  assert.equal(runStrategy.type, 'string');
  assert.match(runStrategy.description as string, /Running state indicates the requested running state/);
  const requests = explain(d, vm, ['spec', 'template', 'spec', 'domain', 'resources', 'requests']);
  assert.deepEqual(requests.additionalProperties, { $ref: '#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity' });
  const bus = explain(d, vm, ['spec', 'template', 'spec', 'domain', 'devices', 'disks', 'disk', 'bus']);
  assert.match(bus.description as string, /supported values: virtio, sata, scsi, usb/);
  const dvStorage = explain(d, vm, ['spec', 'dataVolumeTemplates', 'spec', 'storage', 'resources', 'requests']);
  assert.ok(dvStorage.additionalProperties);
  const meta = explain(d, vm, ['metadata']);
  assert.match(meta.description as string, /Standard object's metadata/);
  const vmSchema = ((d.components as J).schemas as Record<string, J>)['io.kubevirt.v1.VirtualMachine'];
  assert.deepEqual(vmSchema.required, ['spec']);
  const core = doc('', 'v1');
  const ports = explain(core, { group: '', version: 'v1', kind: 'Service' }, ['spec', 'ports']);
  assert.equal(ports['x-kubernetes-patch-merge-key'], 'port');
  const target = explain(core, { group: '', version: 'v1', kind: 'Service' }, ['spec', 'ports', 'targetPort']);
  assert.equal(target.$ref, '#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString');
});

test('Swagger 2.0: definitions named like io.kubevirt.v1.VirtualMachine with GVKs, v2 refs only', () => {
  const v2 = openApiV2() as J;
  assert.equal(v2.swagger, '2.0');
  const defs = v2.definitions as Record<string, J>;
  assert.deepEqual(defs['io.kubevirt.v1.VirtualMachine']['x-kubernetes-group-version-kind'], [{ group: 'kubevirt.io', kind: 'VirtualMachine', version: 'v1' }]);
  assert.equal(defs['io.k8s.apimachinery.pkg.api.resource.Quantity'].type, 'string');
  const text = JSON.stringify(v2);
  assert.ok(!text.includes('#/components/'));
  assert.ok(!text.includes('"oneOf"'));
  // The meta types carry the GVK of every group version served.
  const groupVersions = new Set(servedKinds.map((k) => `${k.group}/${k.version}`));
  assert.equal((defs['io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions']['x-kubernetes-group-version-kind'] as J[]).length, groupVersions.size);
  const patch = (v2.paths as Record<string, J>)['/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}'].patch as J;
  assert.ok((patch.parameters as J[]).some((p) => p.name === 'fieldValidation' && p.in === 'query'));
  assert.ok((patch.parameters as J[]).some((p) => p.in === 'body'));
});
