/** PriorityClass validation (kube's ValidatePriorityClass) and VMI priority resolution (the Priority admission plugin). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateObject } from './validate.ts';
import { findByResource } from './kinds.ts';
import { resolvePriority, priorityOf, systemPriorityClasses, PRIORITY, PREEMPTION_POLICY } from './priority.ts';
import type { KubeObject } from './types.ts';

const PC = findByResource('scheduling.k8s.io', 'v1', 'priorityclasses')!;
const pc = (name: string, value: unknown, extra: Record<string, unknown> = {}): KubeObject =>
  ({ apiVersion: 'scheduling.k8s.io/v1', kind: 'PriorityClass', metadata: { name }, value, ...extra }) as KubeObject;
const fields = (o: KubeObject, old?: KubeObject) => validateObject(PC, o, old ? 'update' : 'create', old).causes.map((c) => `${c.field}: ${c.message}`);

test('a user class up to 1e9 is valid; above, or a system- name, or a bad policy is refused naming the field', () => {
  assert.deepEqual(fields(pc('preemtible', 1000, { preemptionPolicy: 'Never', description: 'x' })), []);
  assert.deepEqual(fields(pc('top', 1_000_000_000)), []);
  assert.match(fields(pc('huge', 1_000_000_001))[0], /^value: Forbidden: maximum allowed value of a user defined priority is 1000000000/);
  assert.match(fields(pc('system-mine', 10))[0], /^metadata\.name: Forbidden: priority class names with 'system-' prefix are reserved/);
  assert.match(fields(pc('system-node-critical', 5))[0], /must be 2000001000/);
  for (const sys of systemPriorityClasses()) assert.deepEqual(fields(sys), [], sys.metadata?.name);
  assert.match(fields(pc('p', 1, { preemptionPolicy: 'Sometimes' })).join(), /^preemptionPolicy: Unsupported value/);
  assert.match(fields(pc('p', 'high')).join(), /^value: /);
  assert.match(fields({ apiVersion: 'scheduling.k8s.io/v1', kind: 'PriorityClass', metadata: { name: 'p' } } as KubeObject).join(), /^value: Required/);
});

test('value and preemptionPolicy are immutable', () => {
  const old = { ...pc('p', 5), metadata: { name: 'p', uid: 'u', resourceVersion: '1' } } as KubeObject;
  assert.match(fields({ ...old, value: 6 } as KubeObject, old).join(), /value: Forbidden: may not be changed/);
  assert.match(fields({ ...old, preemptionPolicy: 'Never' } as KubeObject, old).join(), /preemptionPolicy: .*immutable/);
  assert.deepEqual(fields({ ...old, description: 'now described' } as KubeObject, old), []);
});

test('resolution: the named class, else the lowest global default, else 0; an unknown name is undefined', () => {
  const classes = [
    { metadata: { name: 'low' }, value: 10, globalDefault: true },
    { metadata: { name: 'lower' }, value: 5, globalDefault: true, preemptionPolicy: 'Never' },
    { metadata: { name: 'high' }, value: 100 },
  ];
  assert.deepEqual(resolvePriority('high', classes), { priority: 100, preemptionPolicy: 'PreemptLowerPriority' });
  assert.deepEqual(resolvePriority(undefined, classes), { priority: 5, preemptionPolicy: 'Never' });
  assert.deepEqual(resolvePriority(undefined, [classes[2]]), { priority: 0, preemptionPolicy: 'PreemptLowerPriority' });
  assert.equal(resolvePriority('missing', classes), undefined);
  assert.deepEqual(priorityOf({ metadata: { annotations: { [PRIORITY]: '42', [PREEMPTION_POLICY]: 'Never' } } }), { priority: 42, preemptionPolicy: 'Never' });
  assert.deepEqual(priorityOf({}), { priority: 0, preemptionPolicy: 'PreemptLowerPriority' });
});
