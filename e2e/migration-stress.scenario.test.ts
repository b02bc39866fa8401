/**
 * Many live migrations of tiny guests, each checked for a guest that goes on printing on its new
 * node (minutes; `bash scripts/test.sh e2e/migration-stress.scenario.test.ts`). Made to chase
 * the drain sweep's one failure (docs/migration.md: a guest silent on its new node): per
 * migration, what the guest prints on the target after it arrived must come, and continue its
 * uptime (no reboot). Four guests on a three-node cluster migrate together, round after round
 * (VESSEL_STRESS_ROUNDS, default 6), to a node the scheduler picks. A silent guest fails with
 * the report of e2e/guest-report.ts (QMP run state, vCPUs, Events, the agents' lines).
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { agentLines, silentGuestReport } from './guest-report.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
const NAMES = ['s1', 's2', 's3', 's4'];
const ROUNDS = Number(process.env.VESSEL_STRESS_ROUNDS ?? 6);
const USER_DATA = `#!/bin/sh\n(while true; do echo "VESSEL-UPTIME $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &\n`;
type VmiStatus = { phase?: string; nodeName?: string };
type VmimStatus = { phase?: string; migrationState?: { failureReason?: string; sourceNode?: string; targetNode?: string } };

let c: TestCluster;
const lines = agentLines();
const status = async (name: string) => ((await c.client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const uptimes = (text: string) => [...text.matchAll(/VESSEL-UPTIME (\d+(?:\.\d+)?)/g)].map((m) => Number(m[1]));
const dataDirOf = (node: string) => c.nodes.agents.find((a) => a.nodeName === node)!.dataDir;

/** Bytes of the guest's serial.log on `node` so far (a node it ran on before keeps its run directory and log). */
async function serialSize(node: string, name: string): Promise<number> {
  const dir = await runDirOf(dataDirOf(node), ns, name);
  return dir ? (await readFile(join(dir, 'serial.log')).catch(() => Buffer.alloc(0))).length : 0;
}

before(async () => {
  c = await startCluster({ nodes: 3, nodeLog: lines.add });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  if (!c) return;
  for (const name of NAMES) await c.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
  await eventually('the VMIs gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
    () => undefined,
  );
  await c.close();
});

test(`${NAMES.length} guests live-migrated together ${ROUNDS} times: each prints on, uptime continuing, on its new node`, { timeout: 3_600_000 }, async () => {
  for (const name of NAMES)
    await c.client.create(
      VM,
      tinyVm(name, { namespace: ns, binding: 'bridge', userData: USER_DATA, storageClass: 'shared', terminationGracePeriodSeconds: 5 }),
      { namespace: ns },
    );
  for (const name of NAMES) {
    await eventually(`${name} Running`, async () => ((await status(name)).phase === 'Running' ? true : undefined), 600_000);
    const node = (await status(name)).nodeName!;
    await eventually(`${name} printing its uptime`, async () => (uptimes(await serialLog(dataDirOf(node), ns, name)).length ? true : undefined), 300_000);
  }
  const nodes = c.nodes.cluster.nodes.map((n) => n.name);
  const arrivals: number[] = [];
  let migrations = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    // Where each guest's output stands on every node before the round, and its last uptime.
    const offsets = new Map<string, number>();
    const last = new Map<string, number>();
    for (const name of NAMES) {
      for (const n of nodes) offsets.set(`${name}@${n}`, await serialSize(n, name));
      last.set(name, uptimes(await serialLog(dataDirOf((await status(name)).nodeName!), ns, name)).at(-1) ?? 0);
    }
    for (const name of NAMES)
      await c.client.create(
        VMIM,
        {
          apiVersion: 'kubevirt.io/v1',
          kind: 'VirtualMachineInstanceMigration',
          metadata: { name: `${name}-r${round}`, namespace: ns },
          spec: { vmiName: name },
        },
        { namespace: ns },
      );
    for (const name of NAMES) {
      const done = await eventually(
        `${name}-r${round} Succeeded or Failed`,
        async () => {
          const s = ((await c.client.get(VMIM, `${name}-r${round}`, { namespace: ns })).status ?? {}) as VmimStatus;
          return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
        },
        600_000,
      );
      assert.equal(done.phase, 'Succeeded', `${name}-r${round}: ${done.migrationState?.failureReason}`);
      migrations++;
      const target = done.migrationState!.targetNode!;
      assert.equal((await status(name)).nodeName, target);
      const t0 = Date.now();
      const fresh = await eventually(
        `${name} printing on ${target} after round ${round}`,
        async () => {
          const dir = await runDirOf(dataDirOf(target), ns, name);
          const text = dir ? (await readFile(join(dir, 'serial.log')).catch(() => Buffer.alloc(0))).subarray(offsets.get(`${name}@${target}`)).toString() : '';
          const u = uptimes(text);
          return u.length >= 2 ? { u, text } : undefined;
        },
        90_000,
      ).catch(async (e: Error) => {
        throw new Error(`${e.message}\n${await silentGuestReport(c, ns, name, target, lines).catch((r: Error) => `report failed: ${r.message}`)}`);
      });
      arrivals.push(Date.now() - t0);
      // A rebooted guest starts again from about 1 s.
      if (!(fresh.u[0] > last.get(name)!)) {
        const report = await silentGuestReport(c, ns, name, target, lines).catch((r: Error) => `report failed: ${r.message}`);
        // The whole output kept past the cluster's removal: a guest oops (seen once) runs to many kilobytes.
        const kept = join(tmpdir(), `vessel-migration-stress-${process.pid}-${name}-r${round}.log`);
        await writeFile(kept, fresh.text);
        assert.fail(
          `${name} rebooted on ${target} in round ${round}: uptime ${fresh.u[0]} after ${last.get(name)}\nits output there (all of it in ${kept}): ${JSON.stringify(fresh.text.slice(0, 3000))}\n${report}`,
        );
      }
    }
    console.log(`# round ${round}: ${NAMES.join(', ')} migrated; ${migrations} so far`);
  }
  arrivals.sort((a, b) => a - b);
  console.log(
    `# ${migrations} migrations, every guest printing on after each; wait for its output after Succeeded: median ${arrivals[arrivals.length >> 1]} ms, max ${arrivals.at(-1)} ms`,
  );
});
