/**
 * Killing the control plane never stops a guest: five VMs run, the process holding the API
 * server, the controllers and the node agent is killed with SIGKILL, every guest keeps
 * printing on its serial console meanwhile, and after a restart on the same data directory
 * the statuses converge within seconds with the same QEMU processes (no VM started twice).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { Client, KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startChildControlPlane, type ChildControlPlane } from './harness.ts';
import { runDirOf, serialLog } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NAMES = ['k1', 'k2', 'k3', 'k4', 'k5'];
type Obj = Record<string, unknown>;

let dir: string;
let cp: ChildControlPlane | undefined;
let client: Client;

async function startChild(dataDir: string): Promise<void> {
  cp = await startChildControlPlane(dataDir);
  client = cp.client;
}

const pidOf = async (dataDir: string, name: string) =>
  Number((await readFile(join((await runDirOf(dataDir, 'default', name)) ?? '/nonexistent', 'qemu.pid'), 'utf8')).trim());
const counter = async (dataDir: string, name: string) => {
  const text = await serialLog(dataDir, 'default', name);
  return Math.max(0, ...[...text.matchAll(/VESSEL-COUNTER (\d+)/g)].map((m) => Number(m[1])));
};
const printable = async (name: string) => String(((await client.get(VM, name, { namespace: 'default' })).status as Obj | undefined)?.printableStatus);

after(async () => {
  if (client) {
    for (const n of NAMES) await client.delete(VM, n, { namespace: 'default' }).catch(() => undefined);
    await eventually('VMIs gone', async () => ((await client.list(VMI, { namespace: 'default' })).items.length === 0 ? true : undefined), 90_000).catch(
      () => undefined,
    );
  }
  if (cp && cp.process.exitCode === null) cp.process.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 1000));
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('SIGKILL of server and agent while 5 VMs run: guests live on, status converges, nothing starts twice', async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-vmcrash-'));
  const dataDir = join(dir, 'data');
  await startChild(dataDir);
  await ensureTinyImage(client, () => undefined);
  for (const name of NAMES) {
    await client.create(
      VM,
      {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachine',
        metadata: { name },
        spec: {
          runStrategy: 'Always',
          template: {
            spec: {
              terminationGracePeriodSeconds: 10,
              domain: { resources: { requests: { memory: '96Mi' } }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } },
              volumes: [{ name: 'root', dataVolume: { name: `${name}-root` } }],
            },
          },
          dataVolumeTemplates: [
            {
              metadata: { name: `${name}-root` },
              spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
            },
          ],
        },
      },
      { namespace: 'default' },
    );
  }
  for (const name of NAMES) await eventually(`${name} counting`, async () => ((await counter(dataDir, name)) >= 2 ? true : undefined), 180_000);
  const uids = new Map<string, string>();
  const pids = new Map<string, number>();
  for (const name of NAMES) {
    uids.set(name, (await client.get(VMI, name, { namespace: 'default' })).metadata!.uid!);
    pids.set(name, await pidOf(dataDir, name));
  }

  await cp!.kill();
  const before = new Map<string, number>();
  for (const name of NAMES) before.set(name, await counter(dataDir, name));
  await new Promise((r) => setTimeout(r, 5000));
  for (const name of NAMES) {
    assert.ok((await counter(dataDir, name)) > before.get(name)!, `${name} kept printing while the control plane was down`);
    process.kill(pids.get(name)!, 0); // still alive (throws if not)
  }

  const restarted = Date.now();
  await startChild(dataDir);
  for (const name of NAMES) await eventually(`${name} Running again`, async () => ((await printable(name)) === 'Running' ? true : undefined), 30_000);
  const converged = Date.now() - restarted;
  await new Promise((r) => setTimeout(r, 3000));
  for (const name of NAMES) {
    const vmi: KubeObject = await client.get(VMI, name, { namespace: 'default' });
    assert.equal(vmi.metadata!.uid, uids.get(name), `${name}: the same VMI`);
    assert.equal(await pidOf(dataDir, name), pids.get(name), `${name}: the same QEMU process, not a second start`);
  }
  const ps = (await run('ps', ['-eo', 'args'])).out;
  for (const name of NAMES) assert.equal(ps.split('\n').filter((l) => l.includes(`guest=default_${name},`)).length, 1, `exactly one QEMU for ${name}`);
  console.log(`# status converged ${converged} ms after the restart`);
});
