/**
 * Guest agent data (issue 15) end to end, with ONE tiny guest (it runs qemu-ga): the
 * guestosinfo, userlist and filesystemlist subresources through `vessel` and `kubectl get
 * --raw`, status.guestOSInfo filled by the agent's poller, 409 when the guest agent does not
 * answer (the guest paused) or the VMI does not run, the subresource group's version, and
 * soft-reboot (virtctl's name) rebooting the guest.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, KUBECTL_SKIP, kubectlFor, rejects, run, startVessel, type Vessel } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const ns = 'default';
const name = 'qga';
const BOOT = 'VESSEL-QGA-BOOT';
const SUB = `/apis/subresources.kubevirt.io/v1/namespaces/${ns}/virtualmachineinstances`;

let v: Vessel;
const vessel = (...args: string[]) => run('bin/vessel', ['--kubeconfig', v.kubeconfig, ...args], { timeoutMs: 60_000 });
const { ok: kubectl } = kubectlFor(() => v);
const conditions = (o: KubeObject) => (o.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? [];
const agentUp = async () => {
  const vmi = await v.client.get(VMI, name, { namespace: ns }).catch(async (e: Error) => {
    const vm = await v.client.get(VM, name, { namespace: ns });
    throw new Error(`${e.message}; VM ${JSON.stringify((vm.status as { printableStatus?: string; conditions?: unknown } | undefined) ?? {})}`);
  });
  return conditions(vmi).some((c) => c.type === 'AgentConnected' && c.status === 'True');
};
const boots = async () => (await serialLog(v.dataDir, ns, name)).split(BOOT).length - 1;

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
  await v.client.create(VM, tinyVm(name, { namespace: ns, userData: `#!/bin/sh\necho ${BOOT}\n` }), { namespace: ns });
  await eventually('the guest agent connected', async () => ((await agentUp()) ? true : undefined), 240_000, 500);
});

after(async () => {
  await v.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
  await v.client.delete(VMI, 'nowhere', { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.close();
});

test('vessel guestosinfo shows the guest OS, its agent, hostname and root filesystem', async () => {
  const r = await vessel('guestosinfo', name);
  assert.equal(r.code, 0, r.err);
  const info = JSON.parse(r.out) as {
    guestAgentVersion: string;
    supportedCommands: { name: string }[];
    hostname: string;
    os: Record<string, string>;
    timezone: string;
    fsInfo: { disks: { mountPoint: string }[] };
  };
  assert.equal(info.os.id, 'vessel-tiny');
  assert.equal(info.os.prettyName, 'Vessel tiny guest 1 (busybox)');
  assert.equal(info.os.machine, 'x86_64');
  assert.match(info.os.kernelRelease, /cloud-amd64/);
  assert.match(info.guestAgentVersion, /^\d+\.\d+/);
  assert.ok(info.supportedCommands.some((c) => c.name === 'guest-get-osinfo'));
  assert.ok(info.hostname.length > 0);
  assert.match(info.timezone, /, -?\d+$/);
  assert.ok(info.fsInfo.disks.some((d) => d.mountPoint === '/'));
});

test('status.guestOSInfo is filled from the agent (kubectl jsonpath), and get --raw serves the subresources', { skip: KUBECTL_SKIP }, async () => {
  const os = await eventually(
    'status.guestOSInfo',
    async () => {
      const out = await kubectl(['get', 'vmi', name, '-n', ns, '-o', 'jsonpath={.status.guestOSInfo}']);
      return out.includes('vessel-tiny') ? out : undefined;
    },
    60_000,
    1000,
  );
  assert.equal((JSON.parse(os) as { prettyName: string }).prettyName, 'Vessel tiny guest 1 (busybox)');
  const raw = JSON.parse(await kubectl(['get', '--raw', `${SUB}/${name}/guestosinfo`])) as { os: { id: string } };
  assert.equal(raw.os.id, 'vessel-tiny');
  const fs = JSON.parse(await kubectl(['get', '--raw', `${SUB}/${name}/filesystemlist`])) as { kind: string; items: Record<string, unknown>[] };
  assert.equal(fs.kind, 'VirtualMachineInstanceFileSystemList');
  const root = fs.items.find((f) => f.mountPoint === '/');
  assert.ok(root, JSON.stringify(fs.items));
  assert.equal(root.fileSystemType, 'ext4');
  assert.ok(Number(root.totalBytes) > 50 * 2 ** 20 && Number(root.usedBytes) > 0, JSON.stringify(root));
  const users = JSON.parse(await kubectl(['get', '--raw', `${SUB}/${name}/userlist`])) as { kind: string; items: unknown[] };
  assert.equal(users.kind, 'VirtualMachineInstanceGuestOSUserList');
  assert.deepEqual(users.items, []); // nobody logged in
  const ver = JSON.parse(await kubectl(['get', '--raw', '/apis/subresources.kubevirt.io/v1/version'])) as { gitVersion: string; platform: string };
  assert.match(ver.gitVersion, /^v.*vessel/);
});

test('vessel userlist and fslist print the lists', async () => {
  const u = await vessel('userlist', name);
  assert.equal(u.code, 0, u.err);
  assert.deepEqual((JSON.parse(u.out) as { items: unknown[] }).items, []);
  const f = await vessel('fslist', name);
  assert.equal(f.code, 0, f.err);
  assert.ok((JSON.parse(f.out) as { items: { mountPoint: string }[] }).items.some((i) => i.mountPoint === '/'));
});

test('no guest agent answering (guest paused) or a VMI not running: 409', async () => {
  const notRunning = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'nowhere', namespace: ns },
    spec: { nodeSelector: { 'kubernetes.io/hostname': 'no-such-node' }, domain: { resources: { requests: { memory: '64Mi' } }, devices: {} } },
  };
  await v.client.create(VMI, notRunning, { namespace: ns });
  await rejects(v.client.request('GET', `${SUB}/nowhere/guestosinfo`), 409, /not running/);
  assert.equal((await vessel('pause', name)).code, 0);
  try {
    // The agent cannot answer while the vCPUs are stopped: the node finds no agent, or the condition is gone.
    const e = await rejects(v.client.request('GET', `${SUB}/${name}/userlist`), 409, /does not have guest agent connected/);
    assert.equal(e.status.reason, 'Conflict');
  } finally {
    assert.equal((await vessel('unpause', name)).code, 0);
  }
  await eventually('the guest agent answers again', async () => (await vessel('userlist', name)).code === 0 || undefined, 60_000, 1000);
});

test('vessel soft-reboot reboots the guest: the boot marker shows twice', async () => {
  await eventually('first boot marker', async () => ((await boots()) >= 1 ? true : undefined), 60_000, 500);
  const before = await boots();
  const r = await vessel('soft-reboot', name);
  assert.equal(r.code, 0, r.err);
  await eventually('the guest booted again', async () => ((await boots()) > before ? true : undefined), 180_000, 1000);
  const vmi = await v.client.get(VMI, name, { namespace: ns });
  assert.equal((vmi.status as { phase: string }).phase, 'Running');
});
