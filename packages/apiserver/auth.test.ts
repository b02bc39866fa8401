/** Authorization rules that are pure: who may do what (the e2e security tests drive them over HTTPS). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { authorize, TENANT_GROUP_PREFIX } from './auth.ts';

const tenant = { name: 't1-user', groups: [`${TENANT_GROUP_PREFIX}t1`] };
const nad = { group: 'k8s.cni.cncf.io', resource: 'network-attachment-definitions', namespace: 't1' };

test('a tenant reads the NetworkAttachmentDefinitions of its namespace but writes none (they name node bridges)', () => {
  for (const verb of ['get', 'list', 'watch']) assert.doesNotThrow(() => authorize(tenant, { verb, ...nad }));
  for (const verb of ['create', 'update', 'patch', 'delete', 'deletecollection']) assert.throws(() => authorize(tenant, { verb, ...nad }), /forbidden/i);
  // Its other kinds stay its own.
  assert.doesNotThrow(() => authorize(tenant, { verb: 'create', group: 'kubevirt.io', resource: 'virtualmachines', namespace: 't1' }));
});

test('a tenant reads the migrations of its VMs but neither starts nor cancels one (an infrastructure operation, as KubeVirt 1.5)', () => {
  const vmim = { group: 'kubevirt.io', resource: 'virtualmachineinstancemigrations', namespace: 't1' };
  for (const verb of ['get', 'list', 'watch']) assert.doesNotThrow(() => authorize(tenant, { verb, ...vmim }));
  for (const verb of ['create', 'update', 'patch', 'delete', 'deletecollection']) assert.throws(() => authorize(tenant, { verb, ...vmim }), /forbidden/i);
  const plan = { group: 'forklift.konveyor.io', resource: 'plans', namespace: 't1' };
  assert.doesNotThrow(() => authorize(tenant, { verb: 'list', ...plan }));
  assert.throws(() => authorize(tenant, { verb: 'create', ...plan }), /forbidden/i);
});

test('viewers read what the guest agent reports, as the VMI, but get no console and no memory dump; another tenant reads nothing', () => {
  const viewer = { name: 'v', groups: ['vessel:view:t1'] };
  const sub = (subresource: string, verb = 'get', resource = 'virtualmachineinstances') =>
    ({ verb, group: 'subresources.kubevirt.io', resource, subresource, namespace: 't1', name: 'web' }) as const;
  for (const s of ['guestosinfo', 'userlist', 'filesystemlist']) {
    assert.doesNotThrow(() => authorize(viewer, sub(s)));
    assert.doesNotThrow(() => authorize(tenant, sub(s)));
    assert.throws(() => authorize({ name: 't2-user', groups: [`${TENANT_GROUP_PREFIX}t2`] }, sub(s)), /forbidden/i);
  }
  assert.throws(() => authorize(viewer, sub('console')), /forbidden/i);
  assert.throws(() => authorize(viewer, sub('memorydump', 'update', 'virtualmachines')), /forbidden/i);
  assert.doesNotThrow(() => authorize(tenant, sub('memorydump', 'update', 'virtualmachines')));
});
