/**
 * Instancetypes and preferences end to end (docs/instancetypes.md): real server, controllers,
 * node agent and one tiny guest under TCG. `vessel create instancetype|vm --apply` makes a test
 * cluster instancetype (2 vCPUs, 192Mi) and a VM naming it with a namespaced preference (virtio
 * disks, cores); the guest reports its CPUs and memory on the serial console; kubectl shows the
 * ControllerRevision the VM's status names; renaming the instancetype gives RestartRequired; a
 * conflicting VM and one naming a missing instancetype are refused naming the field.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, KUBECTL_SKIP, kubectlFor, run, startVessel, type Vessel } from './harness.ts';
import { serialLog } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const CLUSTER_IT: ResourceRef = { group: 'instancetype.kubevirt.io', version: 'v1beta1', plural: 'virtualmachineclusterinstancetypes', namespaced: false };
const PREFS: ResourceRef = { group: 'instancetype.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinepreferences', namespaced: true };
const ns = 'it-e2e';
const IT = 'e2e-tiny2';
const REPORT = '#!/bin/sh\necho "VESSEL-NPROC $(grep -c ^processor /proc/cpuinfo)"\necho "VESSEL-MEM $(grep MemTotal /proc/meminfo)"\n';

let v: Vessel;
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 120_000 });
const { kubectl, ok } = kubectlFor(() => v);

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
  await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  await v.client.delete(NAMESPACES, ns).catch(() => undefined);
  await eventually('VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.client.delete(CLUSTER_IT, IT).catch(() => undefined);
  await v.close();
});

test('a VM sized by a cluster instancetype boots with its CPUs and memory; its revision exists; a rename needs a restart', { skip: KUBECTL_SKIP }, async () => {
  // The default set is installed at server start.
  assert.match(await ok(['get', 'vmclusterinstancetypes', 'u1.nano', '-o', 'jsonpath={.spec.memory.guest}']), /^512Mi$/);
  assert.match(await ok(['get', 'vmcp', 'fedora', '-o', 'name']), /fedora/);

  let r = await vessel('create', 'instancetype', '--name', IT, '--cpu', '2', '--memory', '192Mi', '--apply');
  assert.equal(r.code, 0, r.err);
  await v.client.create(
    PREFS,
    {
      apiVersion: 'instancetype.kubevirt.io/v1beta1',
      kind: 'VirtualMachinePreference',
      metadata: { name: 'tiny' },
      spec: { cpu: { preferredCPUTopology: 'preferCores' }, devices: { preferredDiskBus: 'virtio' } },
    },
    { namespace: ns },
  );
  r = await vessel(
    '-n',
    ns,
    'create',
    'vm',
    '--name',
    'sized',
    '--instancetype',
    IT,
    '--preference',
    'virtualmachinepreference/tiny',
    '--volume-import',
    'type:ds,src:vessel-images/tiny,name:root,size:1Gi',
    '--cloud-init-user-data',
    Buffer.from(REPORT).toString('base64'),
    '--termination-grace-period',
    '20',
    '--apply',
  );
  assert.equal(r.code, 0, r.err);

  const text = await eventually(
    'the guest reports its CPUs and memory',
    async () => {
      const t = await serialLog(v.dataDir, ns, 'sized');
      return /VESSEL-MEM MemTotal:\s+\d+ kB/.test(t) ? t : undefined;
    },
    // A few seconds on a quiet host; minutes when the host's cores are shared with other TCG guests.
    480_000,
    500,
  ).catch(async (e: unknown) => {
    // Say where it stopped: the VM's status and the end of the console.
    const status = JSON.stringify((await v.client.get(VM, 'sized', { namespace: ns }).catch(() => undefined))?.status);
    throw new Error(`${e instanceof Error ? e.message : e}\nVM status: ${status}\nserial: ${(await serialLog(v.dataDir, ns, 'sized')).slice(-1500)}`);
  });
  assert.match(text, /VESSEL-NPROC 2\b/);
  const kb = Number(/VESSEL-MEM MemTotal:\s+(\d+) kB/.exec(text)![1]);
  // MemTotal is the guest memory less what the kernel reserves: under 192Mi, well above the 128Mi the VM would get otherwise.
  assert.ok(kb > 140_000 && kb <= 192 * 1024, `MemTotal ${kb} kB`);
  console.log(`# guest: ${/VESSEL-NPROC (\d+)/.exec(text)![1]} CPUs, MemTotal ${kb} kB (instancetype: 2 vCPUs, 192Mi)`);

  const ref = JSON.parse(await ok(['get', 'vm', 'sized', '-n', ns, '-o', 'jsonpath={.status.instancetypeRef}'])) as {
    kind: string;
    name: string;
    controllerRevisionRef: { name: string };
  };
  assert.equal(ref.kind, 'VirtualMachineClusterInstancetype');
  assert.equal(ref.name, IT);
  const rev = await ok(['get', 'controllerrevision', ref.controllerRevisionRef.name, '-n', ns, '-o', 'jsonpath={.data.spec.cpu.guest}']);
  assert.equal(rev, '2');
  const vmi = await v.client.get(VMI, 'sized', { namespace: ns });
  assert.deepEqual((vmi.spec as { domain: { cpu: unknown } }).domain.cpu, { sockets: 1, cores: 2, threads: 1 });

  await ok(['patch', 'vm', 'sized', '-n', ns, '--type', 'merge', '-p', '{"spec":{"instancetype":{"name":"u1.nano"}}}']);
  await eventually(
    'RestartRequired',
    async () => {
      const c = ((await v.client.get(VM, 'sized', { namespace: ns })).status as { conditions?: { type: string; status: string }[] }).conditions;
      return c?.some((x) => x.type === 'RestartRequired' && x.status === 'True') ? true : undefined;
    },
    30_000,
  );
});

test('refused at admission, naming the field: a VM that sets what its instancetype provides, and a missing instancetype', { skip: KUBECTL_SKIP }, async () => {
  const manifest = (instancetype: string, domain: Record<string, unknown>) =>
    JSON.stringify({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      metadata: { name: 'bad', namespace: ns },
      spec: { runStrategy: 'Halted', instancetype: { name: instancetype }, template: { spec: { domain: { devices: {}, ...domain } } } },
    });
  let r = await kubectl(['apply', '-f', '-'], manifest('u1.nano', { cpu: { cores: 2 } }));
  assert.notEqual(r.code, 0);
  assert.match(r.err, /spec\.template\.spec\.domain\.cpu\.cores/);
  r = await kubectl(['apply', '-f', '-'], manifest('no-such-size', {}));
  assert.notEqual(r.code, 0);
  assert.match(r.err, /spec\.instancetype\.name/);
  assert.match(r.err, /not found/);
  r = await kubectl(['apply', '-f', '-'], manifest('u1.nano', {}));
  assert.equal(r.code, 0, r.err);
});
