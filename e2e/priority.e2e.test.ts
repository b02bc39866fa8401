/**
 * Guests never starve the control plane (issue 11), end to end: real server, controllers,
 * node agent (this process) and QEMU (TCG) booting the tiny guest.
 *
 * - every thread of a VM's QEMU (the vCPU threads included, made after QEMU started) runs
 *   below the agent: higher nice, SCHED_BATCH, and a session (autogroup) of lower weight;
 * - two guests spinning on their vCPUs (both cores of a 2-core host) do not slow API GETs
 *   beyond noise: GET latency while they spin vs while the same guests are paused, in
 *   alternating rounds of the same test, must stay under 3x at p50 and p95.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startVessel, type Vessel } from './harness.ts';
import { runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const ns = 'default';
// One busy loop per vCPU: two guests of two vCPUs keep four TCG threads runnable on a 2-core host.
const SPIN = '#!/bin/sh\nwhile :; do :; done &\nwhile :; do :; done &\necho VESSEL-SPINNING\n';
const SPINNERS = ['spin-a', 'spin-b'];
const SCHED_BATCH = 3;

let v: Vessel;

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } }); // the default --qemu-priority
  await ensureTinyImage(v.client, () => undefined);
  for (const name of SPINNERS) await v.client.create(VM, tinyVm(name, { namespace: ns, userData: SPIN, memory: '96Mi', cores: 2 }), { namespace: ns });
  for (const name of SPINNERS) {
    await eventually(`${name} spinning`, async () => ((await serialLog(v.dataDir, ns, name)).includes('VESSEL-SPINNING') ? true : undefined), 240_000, 500);
  }
});

after(async () => {
  for (const name of SPINNERS) await v.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 90_000).catch(
    () => undefined,
  );
  await v.close();
});

/** nice and scheduling policy of a thread from /proc/.../stat (fields 19 and 41). */
async function schedOf(statFile: string): Promise<{ nice: number; policy: number }> {
  const st = await readFile(statFile, 'utf8');
  const f = st.slice(st.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return { nice: Number(f[19 - 3]), policy: Number(f[41 - 3]) };
}

async function autogroupNice(pid: number | 'self'): Promise<number> {
  const m = /nice (-?\d+)/.exec(await readFile(`/proc/${pid}/autogroup`, 'utf8').catch(() => ''));
  return m ? Number(m[1]) : NaN;
}

async function qemuPid(name: string): Promise<number> {
  const dir = await runDirOf(v.dataDir, ns, name);
  assert.ok(dir, `run directory of ${name}`);
  return Number((await readFile(join(dir, 'qemu.pid'), 'utf8')).trim());
}

/** How many threads of these processes are runnable (state R: running or waiting for a CPU). */
async function runnable(pids: number[]): Promise<number> {
  let n = 0;
  for (const pid of pids) {
    for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
      const st = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '');
      if (st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) === 'R') n++;
    }
  }
  return n;
}

test('every thread of a QEMU, vCPUs included, runs below the agent: higher nice, SCHED_BATCH, a lighter autogroup', async () => {
  const agent = await schedOf('/proc/self/stat');
  for (const name of SPINNERS) {
    const pid = await qemuPid(name);
    const tids = await readdir(`/proc/${pid}/task`);
    assert.ok(tids.length >= 2, `QEMU ${pid} has its vCPU thread besides the main one (${tids.length} threads)`);
    for (const tid of tids) {
      const t = await schedOf(`/proc/${pid}/task/${tid}/stat`);
      assert.ok(t.nice > agent.nice, `thread ${tid} of QEMU ${pid}: nice ${t.nice}, agent ${agent.nice}`);
      assert.equal(t.policy, SCHED_BATCH, `thread ${tid} of QEMU ${pid} is SCHED_BATCH`);
    }
    const group = await autogroupNice(pid);
    // Without autogroup support the kernel weighs threads directly and the nice above suffices.
    // A process of the root task group (never called setsid, e.g. a container's init and its
    // children) has an empty autogroup file: its threads count as nice-0 entities on their own.
    const own = await autogroupNice('self');
    if (!Number.isNaN(group))
      assert.ok(group > (Number.isNaN(own) ? 0 : own), `QEMU ${pid}'s autogroup nice ${group}, the agent's ${Number.isNaN(own) ? 'root group' : own}`);
  }
});

test('two guests spinning on all their vCPUs (both cores) do not slow API GETs beyond noise (vs the same guests paused)', { timeout: 300_000 }, async () => {
  const pids = await Promise.all(SPINNERS.map(qemuPid));
  const qmp = (name: string) => {
    const c = v.agent!.vms.qmpFor(ns, name);
    assert.ok(c, `QMP of ${name}`);
    return c;
  };
  // One sample: 10 GETs in flight at once, so it takes the server some CPU time, not just a wake-up.
  const gets = async (n: number): Promise<number[]> => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await Promise.all(Array.from({ length: 10 }, (_, j) => v.client.get(VM, SPINNERS[j % SPINNERS.length], { namespace: ns })));
      out.push(performance.now() - t0);
    }
    return out;
  };
  const q = (xs: number[], pct: number) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor((pct / 100) * s.length))];
  };
  await gets(20); // warm-up
  const paused: number[] = [];
  const spinning: number[] = [];
  const demand: number[] = []; // runnable QEMU threads, sampled while the guests spin
  // Alternating rounds, so other load on the machine falls on both sides alike.
  for (let round = 0; round < 4; round++) {
    for (const name of SPINNERS) await qmp(name).execute('stop');
    await new Promise((r) => setTimeout(r, 1000));
    paused.push(...(await gets(40)));
    for (const name of SPINNERS) await qmp(name).execute('cont');
    await new Promise((r) => setTimeout(r, 1000));
    let done = false;
    const sampler = (async () => {
      while (!done) {
        demand.push(await runnable(pids));
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    spinning.push(...(await gets(40)));
    done = true;
    await sampler;
  }
  const meanDemand = demand.reduce((a, b) => a + b, 0) / demand.length;
  const line =
    `10 GETs p50 ${q(spinning, 50).toFixed(1)} ms spinning vs ${q(paused, 50).toFixed(1)} ms paused, p95 ${q(spinning, 95).toFixed(1)} vs ${q(paused, 95).toFixed(1)} ms; ` +
    `on average ${meanDemand.toFixed(1)} QEMU threads wanted a CPU while the guests spun`;
  console.log(`# ${line}`);
  // The guests really spun (else the comparison says nothing): their vCPU threads wanted both
  // cores. Demand, not CPU used: niced guests rightly get little CPU while other work runs.
  assert.ok(meanDemand >= 2, line);
  assert.ok(q(spinning, 50) < 3 * q(paused, 50), line);
  assert.ok(q(spinning, 95) < 3 * q(paused, 95), line);
});
