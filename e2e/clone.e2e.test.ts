/**
 * VirtualMachineClones end to end (real server, agent, QEMU under TCG, the tiny guest): ten
 * clones of one VM all boot, each with its own MAC address and firmware UUID as the guest sees
 * them, and cloud-init runs again in each with the clone's own instance id.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const CLONES: ResourceRef = { group: 'clone.kubevirt.io', version: 'v1beta1', plural: 'virtualmachineclones', namespaced: true };
const ns = 'default';
let v: Vessel;

const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 600_000 });
const identity = '#!/bin/sh\necho "VESSEL-ID mac=$(cat /sys/class/net/eth0/address) uuid=$(cat /sys/class/dmi/id/product_uuid)"\n';

/** What the VM's guest said of itself: its MAC, firmware UUID and cloud-init instance id. */
async function identityOf(name: string): Promise<{ mac: string; uuid: string; instance: string }> {
  return eventually(
    `${name}'s identity on its console`,
    async () => {
      const text = await serialLog(v.dataDir, ns, name);
      const id = /VESSEL-ID mac=(\S+) uuid=(\S+)/.exec(text);
      const ci = /VESSEL-CLOUDINIT (\S+)/.exec(text);
      return id && ci ? { mac: id[1], uuid: id[2], instance: ci[1] } : undefined;
    },
    420_000,
    500,
  );
}

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
});
after(async () => {
  for (const vm of (await v.client.list(VM, { namespace: ns })).items) await v.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 180_000).catch(
    () => undefined,
  );
  await v.close();
});

test('ten clones of one VM all boot with their own MAC, UUID and cloud-init instance', async () => {
  await v.client.create(VM, tinyVm('web', { userData: identity }), { namespace: ns });
  const source = await identityOf('web');
  const r = await vessel('clone', 'web', '--count', '10', '--name-prefix', 'web-');
  assert.equal(r.code, 0, r.err + r.out);
  const names = Array.from({ length: 10 }, (_, i) => `web-${i + 1}`);
  const ids = [source];
  for (const name of names) {
    const id = await identityOf(name);
    assert.equal(id.instance, `${name}.${ns}`, `cloud-init ran again in ${name} with its own instance id`);
    ids.push(id);
  }
  assert.equal(new Set(ids.map((i) => i.mac)).size, 11, `distinct MACs: ${ids.map((i) => i.mac).join(' ')}`);
  assert.equal(new Set(ids.map((i) => i.uuid)).size, 11, `distinct UUIDs: ${ids.map((i) => i.uuid).join(' ')}`);
  assert.ok(
    ids.every((i) => !/^0{8}-/.test(i.uuid)),
    'every VM has a real firmware UUID',
  );
  const clones = (await v.client.list(CLONES, { namespace: ns })).items;
  assert.ok(clones.every((c) => (c.status as { phase?: string }).phase === 'Succeeded'));
  const vms = await run('kubectl', ['--kubeconfig', v.kubeconfig, 'get', 'vmclone']);
  assert.match(vms.out, /clone-web-10\s+Succeeded\s+/);
});

test('one more clone straight from the running VM boots with its own identity', async () => {
  // A second online snapshot of `web`: its QEMU now reads the first one as a backing file.
  const r = await vessel('clone', 'web', '--name', 'web-11');
  assert.equal(r.code, 0, r.err + r.out);
  const id = await identityOf('web-11');
  assert.equal(id.instance, `web-11.${ns}`);
  const others = await Promise.all(['web', 'web-1', 'web-10'].map(identityOf));
  assert.ok(
    others.every((o) => o.mac !== id.mac && o.uuid !== id.uuid),
    'web-11 has its own MAC and UUID',
  );
});
