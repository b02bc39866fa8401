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
