/**
 * Guest agent data (issue 15) end to end, with ONE tiny guest (it runs qemu-ga): the
 * guestosinfo, userlist and filesystemlist subresources through `vessel` and `kubectl get
 * --raw`, status.guestOSInfo filled by the agent's poller, 409 when the guest agent does not
 * answer (the guest paused) or the VMI does not run, the subresource group's version, and
 * a memory dump into a claim (an ELF file of about the guest's memory, status Completed),
 * and soft-reboot (virtctl's name) rebooting the guest.
 */
import assert from 'node:assert/strict';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
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
const VM_SUB = `/apis/subresources.kubevirt.io/v1/namespaces/${ns}/virtualmachines`;
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };

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
  for (const claim of ['dump', 'small-dump']) await v.client.delete(PVC, claim, { namespace: ns }).catch(() => undefined);
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
  // The guest's NIC (when it has one) carries the name the guest gives it.
  if (!(await serialLog(v.dataDir, ns, name)).includes('VESSEL-NO-NET')) {
    const ifaces = await eventually(
      'status.interfaces from the guest agent',
      async () => {
        const vmi = await v.client.get(VMI, name, { namespace: ns });
        const list = ((vmi.status as { interfaces?: Record<string, unknown>[] }).interfaces ?? []).filter((i) => String(i.infoSource).includes('guest-agent'));
        return list.length ? list : undefined;
      },
      60_000,
      1000,
    );
    console.log(`# status.interfaces from the guest agent: ${JSON.stringify(ifaces)}`);
    assert.ok(
      ifaces.some((i) => i.interfaceName === 'eth0' && i.name === 'default' && i.infoSource === 'domain, guest-agent'),
      'the guest NIC merged into the spec interface',
    );
  }
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
  assert.deepEqual(await v.client.request('GET', '/apis/subresources.kubevirt.io/v1/healthz'), { apiserver: { connectivity: 'ok' } });
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
  // pause/unpause and the poll below through the API, not CLI processes (seconds each under load):
  // the CLI's userlist is checked above, its pause/unpause in e2e/vm.
  await v.client.request('PUT', `${SUB}/${name}/pause`, { body: {} });
  try {
    // The agent cannot answer while the vCPUs are stopped: the node finds no agent, or the condition is gone.
    const e = await rejects(v.client.request('GET', `${SUB}/${name}/userlist`), 409, /does not have guest agent connected/);
    assert.equal(e.status.reason, 'Conflict');
  } finally {
    await v.client.request('PUT', `${SUB}/${name}/unpause`, { body: {} });
  }
  await eventually(
    'the guest agent answers again',
    async () => {
      await v.client.request('GET', `${SUB}/${name}/userlist`);
      return true;
    },
    60_000,
    500,
  );
});

test('vessel memory-dump writes an ELF file of about the guest memory into the claim; too small a claim is a 422', async () => {
  const small = {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name: 'small-dump' },
    spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '64Mi' } } },
  };
  await v.client.create(PVC, small, { namespace: ns });
  const e = await rejects(v.client.request('PUT', `${VM_SUB}/${name}/memorydump`, { body: { claimName: 'small-dump' } }), 422, /needs at least 228Mi/);
  assert.equal(e.status.details?.causes?.[0]?.field, 'claimName');
  const t0 = Date.now();
  const r = await vessel('memory-dump', 'get', name, '--claim-name', 'dump', '--create-claim');
  assert.equal(r.code, 0, r.err);
  const req = await eventually(
    'the dump Completed',
    async () => {
      const vm = await v.client.get(VM, name, { namespace: ns });
      const d = (vm.status as { memoryDumpRequest?: Record<string, string> } | undefined)?.memoryDumpRequest;
      if (d?.phase === 'Failed') throw new Error(`dump failed: ${d.message}`);
      return d?.phase === 'Completed' ? d : undefined;
    },
    120_000,
    500,
  );
  const seconds = (Date.now() - t0) / 1000;
  assert.equal(req.claimName, 'dump');
  assert.ok(req.startTimestamp && req.endTimestamp);
  assert.match(req.fileName, /^qga-dump-\d{8}-\d{6}\.memory\.dump$/);
  const claim = await v.client.get(PVC, 'dump', { namespace: ns });
  const volume = claim.metadata!.annotations!['vessel.io/volume-path'];
  const file = join(`${volume.replace(/\.qcow2$/, '')}.memory-dumps`, req.fileName);
  const head = Buffer.alloc(4);
  const fh = await open(file, 'r');
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46], 'an ELF file');
  const size = (await stat(file)).size;
  const mem = 128 * 2 ** 20;
  console.log(`# memory dump of a ${mem / 2 ** 20} MiB guest: ${(size / 2 ** 20).toFixed(1)} MiB in ${seconds.toFixed(1)} s (request to Completed)`);
  assert.ok(size >= mem * 0.95 && size <= mem + 64 * 2 ** 20, `dump size ${size}`);
  const rm = await vessel('memory-dump', 'remove', name);
  assert.equal(rm.code, 0, rm.err);
  const vm = await v.client.get(VM, name, { namespace: ns });
  assert.equal((vm.status as { memoryDumpRequest?: unknown }).memoryDumpRequest, undefined);
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
