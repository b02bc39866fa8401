/**
 * Live migration time under TCG (issue 13): guests of each size in BENCH_MIG_SIZES (256Mi and
 * 1Gi), idle and dirtying memory (a busybox loop rewriting 32 MiB of random data in a tmpfs),
 * root disks on the shared pool, migrate back and forth on a two-node dev cluster: first with
 * TLS (the default), then, after both agents restart with migrationTls off (the QEMUs run on),
 * over plain TCP. The transfer time is the VMI's migrationState endTimestamp − startTimestamp;
 * QEMU's downtime and the bytes sent come from the source agent's progress annotation
 * (vessel.io/migration-progress). Printed per guest: the medians and TLS / plain; then
 * 1Gi / 256Mi and dirty / idle (same process, same mode).
 *
 *   node --import tsx bench/migration-tls.bench.ts     # about 6 minutes; env BENCH_MIG_ROUNDS (2 per mode and guest),
 *                                                      # BENCH_MIG_SIZES (256Mi,1Gi), BENCH_MIG_WORKLOADS (idle,dirty)
 */
import { migration } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';
import { startCluster, type TestCluster } from '../e2e/harness.ts';
import { runDirOf, tinyVm } from '../e2e/tiny-vm.ts';
import { waitForSerial } from '../packages/agent/qemu/process.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { envInt, fmtRatio, loadLine, median, pollUntil, ratio } from './lib.ts';

/** pollUntil with the condition first. */
const until = <T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> => pollUntil(what, fn, ms);

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
const ROUNDS = envInt('BENCH_MIG_ROUNDS', 2);
const SIZES = (process.env.BENCH_MIG_SIZES || '256Mi,1Gi').split(',');
const WORKLOADS = (process.env.BENCH_MIG_WORKLOADS || 'idle,dirty').split(',') as ('idle' | 'dirty')[];
type Status = {
  phase?: string;
  nodeName?: string;
  conditions?: { type: string; status: string }[];
  migrationState?: { startTimestamp?: string; endTimestamp?: string; failureReason?: string };
};

/** Rewrites 32 MiB of random bytes in a tmpfs for ever: pages dirtied as fast as the emulated CPU goes. */
const DIRTY =
  '#!/bin/sh\nmkdir -p /dirty && mount -t tmpfs -o size=80m tmpfs /dirty\n' +
  '(dd if=/dev/urandom of=/dirty/r bs=1M count=32 2>/dev/null; echo VESSEL-DIRTYING; while true; do cat /dirty/r > /dirty/w; done) &\n';

interface Guest {
  name: string;
  size: string;
  workload: 'idle' | 'dirty';
  tls: Sample[];
  plain: Sample[];
}
interface Sample {
  transferMs: number;
  downtimeMs?: number;
  sentMiB?: number;
}

async function main(): Promise<void> {
  let c: TestCluster | undefined;
  const guests: Guest[] = SIZES.flatMap((size) =>
    WORKLOADS.map((workload) => ({ name: `bench-${size.toLowerCase()}-${workload}`, size, workload, tls: [], plain: [] })),
  );
  try {
    c = await startCluster({ nodes: 2 });
    const client = c.client;
    await ensureTinyImage(client, () => undefined, { storageClass: 'shared' });
    for (const g of guests)
      await client.create(
        VM,
        tinyVm(g.name, {
          namespace: ns,
          binding: 'bridge',
          storageClass: 'shared',
          memory: g.size,
          terminationGracePeriodSeconds: 5,
          ...(g.workload === 'dirty' ? { userData: DIRTY } : {}),
        }),
        { namespace: ns },
      );
    const status = async (name: string) => ((await client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as Status;
    const ready = async (name: string) => {
      const s = await status(name);
      return s.phase === 'Running' && s.conditions?.find((x) => x.type === 'Ready')?.status === 'True' ? s : undefined;
    };
    // Each guest booted (the dirtying loop started) before the first migration; one that panicked
    // at boot (a starved TCG host: "IO-APIC + timer doesn't work") is started again.
    for (const g of guests) {
      // The run directory is the VM's: a restarted guest appends to the same serial.log.
      let since = 0;
      for (let attempt = 0; ; attempt++) {
        const s = await until(() => ready(g.name), 600_000, `${g.name} Running`);
        const dir = await runDirOf(c.nodes.agents.find((a) => a.nodeName === s.nodeName)!.dataDir, ns, g.name);
        const m = await waitForSerial(dir!, g.workload === 'dirty' ? /VESSEL-DIRTYING|Kernel panic/ : /VESSEL-GUEST-READY|Kernel panic/, 900_000, { since });
        if (!/panic/.test(m.match[0])) break;
        if (attempt >= 2) throw new Error(`${g.name} panicked at boot ${attempt + 1} times`);
        console.log(`PROBLEM: ${g.name} panicked at boot; starting it again`);
        since = m.offset;
        const uid = (await client.get(VMI, g.name, { namespace: ns })).metadata!.uid;
        await client.delete(VMI, g.name, { namespace: ns });
        await until(
          async () => ((await client.get(VMI, g.name, { namespace: ns }).catch(() => undefined))?.metadata?.uid !== uid ? true : undefined),
          120_000,
          'a new VMI',
        );
      }
    }
    let n = 0;
    const migrateOnce = async (vmi: string, retried = false): Promise<Sample> => {
      const from = (await status(vmi)).nodeName;
      const name = `${vmi}-${n++}`;
      await client.create(
        VMIM,
        { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: vmi } },
        { namespace: ns },
      );
      const done = await until(
        async () => {
          const m = await client.get(VMIM, name, { namespace: ns });
          const s = (m.status ?? {}) as Status;
          return s.phase === 'Succeeded' || s.phase === 'Failed' ? { s, progress: migration.progressOf(m) } : undefined;
        },
        600_000,
        `migration ${name}`,
      );
      if (done.s.phase !== 'Succeeded') {
        // One failure is reported and retried: the figure is the next successful transfer.
        if (retried) throw new Error(`migration ${name} failed: ${done.s.migrationState?.failureReason}`);
        console.log(`PROBLEM: migration ${name} failed (${done.s.migrationState?.failureReason}); once more`);
        process.exitCode = 1;
        await new Promise((r) => setTimeout(r, 3000));
        return migrateOnce(vmi, true);
      }
      await until(
        async () => {
          const s = await ready(vmi);
          return s && s.nodeName !== from ? s : undefined;
        },
        120_000,
        `${vmi} Running on the target`,
      );
      // The final progress is written just after the switch: give it a moment.
      const p = await until(
        async () => migration.progressOf(await client.get(VMIM, name, { namespace: ns })) ?? undefined,
        5_000,
        `the progress of ${name}`,
      ).catch(() => done.progress);
      const sample: Sample = {
        transferMs: Date.parse(done.s.migrationState!.endTimestamp!) - Date.parse(done.s.migrationState!.startTimestamp!),
        downtimeMs: p?.status === 'completed' ? p.downtimeMs : undefined,
        sentMiB: p?.status === 'completed' ? Math.round(p.memory.transferred / 1048576) : undefined,
      };
      console.log(`${name}: ${JSON.stringify(sample)}`);
      return sample;
    };
    for (let i = 0; i < ROUNDS; i++) for (const g of guests) g.tls.push(await migrateOnce(g.name));
    for (let i = 0; i < c.nodes.agents.length; i++) await c.nodes.restartAgent(i, { migrationTls: false });
    for (const g of guests) await until(() => ready(g.name), 120_000, `${g.name} Running after the agents restarted`);
    for (let i = 0; i < ROUNDS; i++) for (const g of guests) g.plain.push(await migrateOnce(g.name));

    const med = (xs: Sample[], k: keyof Sample) => median(xs.map((x) => x[k]).filter((v): v is number => v !== undefined));
    const list = (xs: Sample[]) => xs.map((x) => `${x.transferMs} ms (downtime ${x.downtimeMs ?? '?'} ms, ${x.sentMiB ?? '?'} MiB)`).join(', ');
    for (const g of guests) {
      console.log(`${g.size} ${g.workload}: TLS ${list(g.tls)}`);
      console.log(`${g.size} ${g.workload}: plain ${list(g.plain)}`);
      console.log(
        `${g.size} ${g.workload}: median transfer TLS ${med(g.tls, 'transferMs')} ms / plain ${med(g.plain, 'transferMs')} ms = ${fmtRatio(ratio(med(g.tls, 'transferMs'), med(g.plain, 'transferMs')))}; ` +
          `downtime TLS ${med(g.tls, 'downtimeMs')} / plain ${med(g.plain, 'downtimeMs')} ms`,
      );
    }
    const find = (size: string, w: string) => guests.find((g) => g.size === size && g.workload === w);
    for (const w of WORKLOADS) {
      const [a, b] = [find(SIZES[0], w), find(SIZES.at(-1)!, w)];
      if (a && b && a !== b)
        console.log(`${w}: ${b.size} / ${a.size} (median transfer, TLS): ${fmtRatio(ratio(med(b.tls, 'transferMs'), med(a.tls, 'transferMs')))}`);
    }
    for (const size of SIZES) {
      const [a, b] = [find(size, 'idle'), find(size, 'dirty')];
      if (a && b) console.log(`${size}: dirty / idle (median transfer, TLS): ${fmtRatio(ratio(med(b.tls, 'transferMs'), med(a.tls, 'transferMs')))}`);
    }
    console.log(`[${loadLine()}]`);
  } finally {
    if (c) {
      const cl = c.client;
      for (const g of guests) await cl.delete(VM, g.name, { namespace: ns }).catch(() => undefined);
      await until(async () => ((await cl.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000, 'the VMIs gone').catch(() => undefined);
      await c.close();
    }
  }
}

main().catch((e: unknown) => {
  console.error(`PROBLEM: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
});
