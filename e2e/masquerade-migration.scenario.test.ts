/**
 * Scenario (minutes; CI skips it): the cost of the migration relay (agent/vms/migration-relay.ts).
 * Two tiny guests on one two-node dev cluster, each with 40 MiB of random data in a tmpfs (so the
 * stream carries more than zero pages): `relay` with the masquerade binding (its QEMU in a pod
 * namespace: unix sockets and the relay) and `direct` with the bridge binding (QEMU on the fabric
 * itself). Each moves back and forth ROUNDS times, alternating; the transfer time (migrationState
 * end − start) of each is printed with the medians. Every migration must succeed and keep the IP.
 * Then a masquerade guest with its root disk on the local pool moves once: its disk is mirrored
 * over NBD through the relays too.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
const ROUNDS = Number(process.env.VESSEL_RELAY_ROUNDS ?? 3);
const USER_DATA =
  '#!/bin/sh\n(mkdir -p /mnt/fill && mount -t tmpfs -o size=48m tmpfs /mnt/fill && ' +
  'dd if=/dev/urandom of=/mnt/fill/data bs=1M count=40 2>/dev/null; echo "VESSEL-FILLED $(cat /mnt/fill/data | wc -c)") &\n';

let c: TestCluster;
type Status = { phase?: string; nodeName?: string; interfaces?: { ipAddress?: string }[] };
const status = async (name: string) => ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as Status;

before(async () => {
  c = await startCluster({ nodes: 2 });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  if (!c) return;
  for (const v of (await c.client.list(VM, { namespace: ns }).catch(() => ({ items: [] as KubeObject[] }))).items)
    await c.client.delete(VM, v.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

async function migrate(name: string, round: number): Promise<number> {
  const from = await status(name);
  assert.equal(from.phase, 'Running', `${name} before round ${round}: ${JSON.stringify(from)}`);
  const to = c.nodes.cluster.nodes.find((n) => n.name !== from.nodeName)!.name;
  const vmim = `${name}-${round}`;
  await c.client.create(
    VMIM,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceMigration',
      metadata: { name: vmim, namespace: ns, annotations: { 'vessel.io/migration-target-node': to } },
      spec: { vmiName: name },
    },
    { namespace: ns },
  );
  type Vmim = { phase?: string; migrationState?: { failureReason?: string; startTimestamp?: string; endTimestamp?: string } };
  const done = await eventually(
    `${vmim} finished`,
    async () => {
      const st = ((await c.client.get(VMIM, vmim, { namespace: ns })).status ?? {}) as Vmim;
      return st.phase === 'Succeeded' || st.phase === 'Failed' ? st : undefined;
    },
    300_000,
  );
  assert.equal(done.phase, 'Succeeded', `${vmim}: ${done.migrationState?.failureReason}`);
  const now = await eventually(`${name} Running on ${to}`, async () => {
    const s = await status(name);
    return s.phase === 'Running' && s.nodeName === to ? s : undefined;
  });
  assert.equal(now.interfaces?.[0]?.ipAddress, from.interfaces?.[0]?.ipAddress);
  return Date.parse(done.migrationState!.endTimestamp!) - Date.parse(done.migrationState!.startTimestamp!);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

test('transfer time through the relay (masquerade) vs direct (bridge)', { timeout: 1_800_000 }, async () => {
  const vms = { relay: 'masquerade', direct: 'bridge' } as const;
  for (const [name, binding] of Object.entries(vms))
    await c.client.create(VM, tinyVm(name, { namespace: ns, binding, userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }), {
      namespace: ns,
    });
  for (const name of Object.keys(vms)) {
    const s = await eventually(`${name} Running`, async () => ((await status(name)).phase === 'Running' ? status(name) : undefined), 300_000);
    await eventually(
      `${name} filled its memory`,
      async () =>
        (await serialLog(c.nodes.agents.find((a) => a.nodeName === s.nodeName)!.dataDir, ns, name)).includes('VESSEL-FILLED 41943040') ? true : undefined,
      600_000,
    );
  }
  const times: Record<string, number[]> = { relay: [], direct: [] };
  for (let round = 0; round < ROUNDS; round++) for (const name of Object.keys(vms)) times[name].push(await migrate(name, round));
  // Local disk + masquerade: NBD through both relays.
  await c.client.create(
    VM,
    tinyVm('relay-local', { namespace: ns, binding: 'masquerade', userData: '#!/bin/sh\n', storageClass: 'local', terminationGracePeriodSeconds: 5 }),
    { namespace: ns },
  );
  await eventually('relay-local Running', async () => ((await status('relay-local')).phase === 'Running' ? true : undefined), 300_000);
  const local = await migrate('relay-local', 0);
  console.log(`figures: masquerade guest with a 1 GiB local root disk (tiny image): transfer ${local} ms (mirror included)`);
  console.log(
    `figures: transfer (ms), relay (masquerade): ${times.relay.join(' ')} (median ${median(times.relay)}); ` +
      `direct (bridge): ${times.direct.join(' ')} (median ${median(times.direct)}); ratio ${(median(times.relay) / median(times.direct)).toFixed(2)}x`,
  );
});
