import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findByKind, resolveName } from '../kinds.ts';
import { applyPresets } from '../presets.ts';
import type { KubeObject } from '../types.ts';
import { validateObject } from '../validate.ts';
import { PRESET_DEPRECATION } from './replicas.ts';

const check = (o: KubeObject) => validateObject(findByKind(o.apiVersion as string, o.kind as string)!, o, 'create');
const fields = (o: KubeObject) => check(o).causes.map((c) => c.field);
const domain = { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: {} };

const pool = (spec: Record<string, unknown>): KubeObject => ({
  apiVersion: 'pool.kubevirt.io/v1alpha1',
  kind: 'VirtualMachinePool',
  metadata: { name: 'web', namespace: 'ns' },
  spec: {
    replicas: 2,
    selector: { matchLabels: { app: 'web' } },
    virtualMachineTemplate: { metadata: { labels: { app: 'web' } }, spec: { runStrategy: 'Always', template: { spec: { domain } } } },
    ...spec,
  },
});
const rs = (spec: Record<string, unknown>): KubeObject => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstanceReplicaSet',
  metadata: { name: 'rs', namespace: 'ns' },
  spec: { replicas: 1, selector: { matchLabels: { app: 'rs' } }, template: { metadata: { labels: { app: 'rs' } }, spec: { domain } }, ...spec },
});

test('the kinds resolve by their short names, with the scale subresource on pools and replica sets', () => {
  assert.equal(resolveName('vmpool')?.kind, 'VirtualMachinePool');
  assert.equal(resolveName('vmirs')?.kind, 'VirtualMachineInstanceReplicaSet');
  assert.equal(resolveName('vmipreset')?.kind, 'VirtualMachineInstancePreset');
  assert.equal(resolveName('vmpool')?.scaleSubresource, true);
  assert.deepEqual(
    resolveName('vmirs')!.printerColumns.map((c) => c.name),
    ['Desired', 'Current', 'Ready', 'Age'],
  );
});

test('pools: valid passes; negative replicas, a selector missing the labels, a bad VM template are 422 with paths', () => {
  assert.deepEqual(fields(pool({})), []);
  assert.deepEqual(fields(pool({ replicas: -1 })), ['spec.replicas']);
  assert.deepEqual(fields(pool({ selector: { matchLabels: { app: 'other' } } })), ['spec.selector']);
  const noStrategy = pool({ virtualMachineTemplate: { metadata: { labels: { app: 'web' } }, spec: { template: { spec: { domain } } } } });
  assert.deepEqual(fields(noStrategy), ['spec.virtualMachineTemplate.spec.runStrategy']);
  const badDisk = pool({
    virtualMachineTemplate: {
      metadata: { labels: { app: 'web' } },
      spec: { runStrategy: 'Always', template: { spec: { domain: { ...domain, devices: { disks: [{ name: 'root', disk: {} }] } } } } },
    },
  });
  assert.ok(
    fields(badDisk).every((f) => f.startsWith('spec.virtualMachineTemplate.spec.template.spec.')),
    fields(badDisk).join(),
  );
});

test('replica sets: valid passes; negative replicas and a mismatched selector are 422', () => {
  assert.deepEqual(fields(rs({})), []);
  assert.deepEqual(fields(rs({ replicas: -2, selector: { matchLabels: { app: 'x' } } })), ['spec.replicas', 'spec.selector']);
});

test('presets: every write warns of the deprecation; an unsupported domain field is refused', () => {
  const preset = (d: unknown): KubeObject => ({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstancePreset',
    metadata: { name: 'small', namespace: 'ns' },
    spec: { selector: { matchLabels: { size: 'small' } }, domain: d },
  });
  const r = check(preset({ cpu: { cores: 2 }, devices: {} }));
  assert.deepEqual(r.causes, []);
  assert.ok(r.warnings.includes(PRESET_DEPRECATION));
  assert.ok(fields(preset({ cpu: { cores: 2 }, devices: { gpus: [{ name: 'g', deviceName: 'nvidia.com/GP102GL' }] } })).includes('spec.domain.devices.gpus'));
});

test('applyPresets merges matching presets; conflicts keep the VMI value and are reported', () => {
  const preset = (name: string, sel: Record<string, string>, d: unknown): KubeObject => ({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstancePreset',
    metadata: { name, namespace: 'ns' },
    spec: { selector: { matchLabels: sel }, domain: d },
  });
  const vmi: KubeObject = {
    metadata: { name: 'v', labels: { size: 'small' } },
    spec: { domain: { cpu: { cores: 1 }, devices: {} } },
  };
  const r = applyPresets(vmi, [
    preset('b', { size: 'small' }, { cpu: { cores: 4 }, resources: { requests: { memory: '64Mi' } } }),
    preset('a', { size: 'small' }, { memory: { guest: '64Mi' } }),
    preset('c', { size: 'large' }, { cpu: { sockets: 2 } }),
  ]);
  assert.deepEqual(r.applied, ['a', 'b']);
  assert.equal(r.conflicts.length, 1);
  assert.match(r.conflicts[0], /^b: spec\.domain\.cpu\.cores/);
  assert.deepEqual((vmi.spec as { domain: unknown }).domain, {
    cpu: { cores: 1 },
    devices: {},
    memory: { guest: '64Mi' },
    resources: { requests: { memory: '64Mi' } },
  });
  assert.equal(vmi.metadata?.annotations?.['virtualmachinepreset.kubevirt.io/a'], 'kubevirt.io/v1');
  const excluded: KubeObject = {
    metadata: { name: 'x', labels: { size: 'small' }, annotations: { 'virtualmachineinstancepresets.admission.kubevirt.io/exclude': 'true' } },
    spec: {},
  };
  assert.deepEqual(applyPresets(excluded, [preset('a', { size: 'small' }, { cpu: { cores: 2 } })]).applied, []);
});
