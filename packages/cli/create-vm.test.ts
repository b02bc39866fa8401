/** Golden tests of the manifests `vessel create vm|instancetype|preference` print (virtctl's shape). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stringify } from 'yaml';
import { createInstancetypeManifest, createPreferenceManifest, createVmManifest, type NameGen } from './create-vm.ts';

const fixed: NameGen = (prefix) => `${prefix}-abcde`;

test('create vm --instancetype --preference --volume-import type:ds', () => {
  const m = createVmManifest(
    { name: 'web', instancetype: 'u1.small', preference: 'fedora', volumeImport: ['type:ds,src:vessel-images/tiny,name:root'], runStrategy: 'Always' },
    fixed,
  );
  assert.equal(
    stringify(m),
    `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: web
spec:
  dataVolumeTemplates:
    - metadata:
        name: root
      spec:
        sourceRef:
          kind: DataSource
          name: tiny
          namespace: vessel-images
        storage:
          resources: {}
  instancetype:
    name: u1.small
  preference:
    name: fedora
  runStrategy: Always
  template:
    spec:
      domain:
        devices: {}
      terminationGracePeriodSeconds: 180
      volumes:
        - name: root
          dataVolume:
            name: root
`,
  );
});

test('create vm: defaults (random names, 512Mi without an instancetype), kinds, inference, cloud-init', () => {
  const plain = createVmManifest({ volumeImport: ['type:blank,size:1Gi'] }, fixed) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.equal(plain.metadata.name, 'vm-abcde');
  assert.deepEqual(plain.spec.template.spec.domain.memory, { guest: '512Mi' });
  assert.deepEqual(plain.spec.dataVolumeTemplates[0], {
    metadata: { name: 'imported-volume-abcde' },
    spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '1Gi' } } } },
  });
  const ns = createVmManifest({ instancetype: 'virtualmachineinstancetype/small', preference: 'vmpref/mine' }, fixed) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.deepEqual(ns.spec.instancetype, { kind: 'VirtualMachineInstancetype', name: 'small' });
  assert.deepEqual(ns.spec.preference, { kind: 'VirtualMachinePreference', name: 'mine' });
  const inferred = createVmManifest(
    { inferInstancetype: true, inferPreference: true, volumeImport: ['type:pvc,src:images/fedora,name:root'], cloudInitUserData: 'IyEvYmluL3No' },
    fixed,
  ) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.deepEqual(inferred.spec.instancetype, { inferFromVolume: 'root' });
  assert.deepEqual(inferred.spec.preference, { inferFromVolume: 'root' });
  assert.equal(inferred.spec.template.spec.domain.memory, undefined);
  assert.deepEqual(inferred.spec.dataVolumeTemplates[0].spec.source, { pvc: { name: 'fedora', namespace: 'images' } });
  assert.deepEqual(inferred.spec.template.spec.volumes[1], { name: 'cloudinitdisk', cloudInitNoCloud: { userDataBase64: 'IyEvYmluL3No' } });
  const reg = createVmManifest({ volumeContainerdisk: ['src:quay.io/containerdisks/fedora:41'], user: 'fedora', sshKey: ['ssh-ed25519 AAA'] }, fixed) as Record<
    string,
    any // eslint-disable-line @typescript-eslint/no-explicit-any
  >;
  assert.deepEqual(reg.spec.template.spec.volumes[0], { name: 'containerdisk-abcde', containerDisk: { image: 'quay.io/containerdisks/fedora:41' } });
  assert.equal(
    Buffer.from(reg.spec.template.spec.volumes[1].cloudInitNoCloud.userDataBase64, 'base64').toString(),
    '#cloud-config\nuser: fedora\nssh_authorized_keys:\n  - ssh-ed25519 AAA\n',
  );
});

test('create vm: bad flags are usage errors', () => {
  assert.throws(() => createVmManifest({ volumeImport: ['type:ds'] }, fixed), /needs src/);
  assert.throws(() => createVmManifest({ volumeImport: ['type:nfs,src:x'] }, fixed), /type must be one of/);
  assert.throws(() => createVmManifest({ volumeImport: ['src'] }, fixed), /not key:value/);
  assert.throws(() => createVmManifest({ instancetype: 'pod/x' }, fixed), /unknown kind/);
  assert.throws(() => createVmManifest({ inferInstancetype: true }, fixed), /need a volume/);
  assert.throws(() => createVmManifest({ instancetype: 'u1.small', memory: '1Gi' }, fixed), /cannot be combined/);
});

test('create instancetype / preference', () => {
  assert.deepEqual(createInstancetypeManifest({ cpu: 2, memory: '256Mi', name: 'tiny2' }, fixed), {
    apiVersion: 'instancetype.kubevirt.io/v1beta1',
    kind: 'VirtualMachineClusterInstancetype',
    metadata: { name: 'tiny2' },
    spec: { cpu: { guest: 2 }, memory: { guest: '256Mi' } },
  });
  assert.equal(createInstancetypeManifest({ cpu: 1, memory: '1Gi', namespaced: true }, fixed).kind, 'VirtualMachineInstancetype');
  assert.throws(() => createInstancetypeManifest({ cpu: 0, memory: '1Gi' }, fixed), /--cpu/);
  assert.deepEqual(createPreferenceManifest({ cpuTopology: 'preferCores', namespaced: true }, fixed), {
    apiVersion: 'instancetype.kubevirt.io/v1beta1',
    kind: 'VirtualMachinePreference',
    metadata: { name: 'preference-abcde' },
    spec: { cpu: { preferredCPUTopology: 'preferCores' } },
  });
});
