/**
 * Forklift benchmark (issue 14): "10 VMs in one plan: total time / (single-VM time × 10 /
 * maxInFlight)". 1.0 means the plan runs its VMs in perfect batches of maxInFlight (the
 * migration controller's MAX_IN_FLIGHT, 2): above it, running VMs side by side costs more than
 * they gain, or the controller leaves slots idle. Made here, outside the timing: one small disk
 * (BENCH_FK_PLAN_MIB, 64 MiB virtual, half of it data: random and 4-bit-entropy 1 MiB blocks),
 * its streamOptimized VMDK, and BENCH_FK_PLAN_VMS (10) OVAs `vm-0`.. holding a copy each (an OVF,
 * a SHA256 manifest). Controllers and the node agent run in this process (e2e/harness.ts).
 * Each round: single-VM plans (BENCH_FK_PLAN_SINGLES, 3, VMs vm-0..; the median is the round's
 * single-VM time) and one plan of all VMs, in alternating order; each timed from the
 * Migration's create to its `status.completed`. Targets are removed between runs, untimed,
 * followed by `sync`. Also checked: the most VMs seen transferring at once (from the VMs'
 * `started`/`completed`) is at most MAX_IN_FLIGHT.
 *
 *   node --import tsx bench/forklift-plan.bench.ts     (about 2 minutes on 2 cores)
 *   env: BENCH_FK_PLAN_VMS (10), BENCH_FK_PLAN_MIB (64), BENCH_FK_PLAN_SINGLES (3),
 *        BENCH_FK_PLAN_REPS (rounds, 2), BENCH_FK_DIR (where the temp dir goes)
 */
import { randomFillSync } from 'node:crypto';
import { mkdir, mkdtemp, open, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject } from '@vessel/client';
import { startVessel, type Vessel } from '../e2e/harness.ts';
import { DEFAULT_MAX_IN_FLIGHT as MAX_IN_FLIGHT } from '../packages/controllers/forklift/migration.ts';
import { cleanTarget, makeOva, removeTree, runPlan, setUpSource, sh } from './forklift-lib.ts';
import { envInt, errText, fmtRatio, isMain, loadLine, median, ms, now, printResult, ratio, type BenchResult, type Figure } from './lib.ts';

const MiB = 1 << 20;
const SRC = 'fkp-src';

/** Each VM's time from its `started` to its `completed` (ms), from a Migration's status. */
export function vmTimes(migration: KubeObject): number[] {
  const vms = (migration.status as { vms?: { started?: string; completed?: string }[] } | undefined)?.vms ?? [];
  return vms.filter((v) => v.started && v.completed).map((v) => Date.parse(v.completed!) - Date.parse(v.started!));
}

/** The most VMs whose [started, completed] overlap, from a Migration's status. */
export function maxOverlap(migration: KubeObject): number {
  const vms = (migration.status as { vms?: { started?: string; completed?: string }[] } | undefined)?.vms ?? [];
  const edges = vms
    .filter((v) => v.started && v.completed)
    .flatMap((v) => [
      { t: Date.parse(v.started!), d: 1 },
      { t: Date.parse(v.completed!), d: -1 },
    ])
    .sort((a, b) => a.t - b.t || a.d - b.d); // an end before a start at the same instant
  let cur = 0,
    max = 0;
  for (const e of edges) max = Math.max(max, (cur += e.d));
  return max;
}

export async function runForkliftPlan(): Promise<BenchResult> {
  const started = now();
  const n = envInt('BENCH_FK_PLAN_VMS', 10);
  const mib = envInt('BENCH_FK_PLAN_MIB', 64);
  const singles = envInt('BENCH_FK_PLAN_SINGLES', 3);
  const reps = envInt('BENCH_FK_PLAN_REPS', 2);
  const figures: Figure[] = [];
  const problems: string[] = [];
  const dir = await mkdtemp(join(process.env.BENCH_FK_DIR ?? tmpdir(), 'vessel-fk-plan-bench-'));
  let v: Vessel | undefined;
  try {
    const root = join(dir, 'ova');
    const work = join(dir, 'work');
    await Promise.all([mkdir(root), mkdir(work)]);
    let t = now();
    const raw = join(dir, 'disk.raw');
    const fh = await open(raw, 'w');
    try {
      await fh.truncate(mib * MiB);
      const block = Buffer.alloc(MiB);
      for (let b = 0; b < mib; b += 2) {
        if (b % 4 === 0) randomFillSync(block);
        else for (let i = 0; i < MiB; i++) block[i] = 0x40 + ((i * 7 + b) & 0x0f);
        await fh.write(block, 0, MiB, b * MiB);
      }
    } finally {
      await fh.close();
    }
    const vmdk = join(dir, 'disk.vmdk');
    await sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, vmdk]);
    const names = Array.from({ length: n }, (_, i) => `vm-${i}`);
    for (const name of names) await makeOva({ root, work, name, disk: raw, diskFormat: 'raw', capacity: mib * MiB, vmdk });
    console.log(`  setup: ${n} OVAs of a ${mib} MiB disk (VMDK ${((await stat(vmdk)).size / MiB).toFixed(1)} MiB) in ${ms(now() - t)}; ${loadLine()}`);
    v = await startVessel({ dataDir: join(dir, 'vessel'), ovaRoots: [root], agent: { nodeName: 'node-a' } });
    const client = v.client;
    t = now();
    await setUpSource(
      client,
      SRC,
      root,
      names.map((x) => `${x}.ova`),
    );
    console.log(`  provider and maps Ready in ${ms(now() - t)}; MAX_IN_FLIGHT ${MAX_IN_FLIGHT}`);
    const runPlanNamed = async (name: string, vms: string[]): Promise<{ ms: number; target: string; overlap: number; perVm: number[] }> => {
      const target = `fkp-${name}`;
      const r = await runPlan(client, SRC, name, target, vms, 900_000);
      return { ms: r.ms, target, overlap: maxOverlap(r.migration), perVm: vmTimes(r.migration) };
    };
    // Warm-up, not counted: one VM through every part of the path.
    await cleanTarget(client, (await runPlanNamed('warmup', [names[0]])).target, 120_000);

    const single: number[] = [];
    const all: number[] = [];
    const overlaps: number[] = [];
    const perVmSingle: number[] = [];
    const perVmAll: number[] = [];
    for (let r = 0; r < reps; r++) {
      const one = async () => {
        const times: number[] = [];
        for (let s = 0; s < singles; s++) {
          await sh('sync', []);
          const x = await runPlanNamed(`one-${r}-${s}`, [names[s % n]]);
          times.push(x.ms);
          perVmSingle.push(...x.perVm);
          await cleanTarget(client, x.target, 120_000);
        }
        single.push(median(times));
        console.log(`  round ${r}: single-VM plans [${times.map(ms).join(', ')}]`);
      };
      const many = async () => {
        await sh('sync', []);
        const x = await runPlanNamed(`all-${r}`, names);
        all.push(x.ms);
        overlaps.push(x.overlap);
        perVmAll.push(...x.perVm);
        if (x.overlap > MAX_IN_FLIGHT) problems.push(`round ${r}: ${x.overlap} VMs transferred at once, more than MAX_IN_FLIGHT ${MAX_IN_FLIGHT}`);
        console.log(`  round ${r}: plan of ${n} VMs ${ms(x.ms)}, at most ${x.overlap} at once; ${loadLine()}`);
        await cleanTarget(client, x.target, 300_000);
      };
      try {
        if (r % 2 === 0) {
          await one();
          await many();
        } else {
          await many();
          await one();
        }
      } catch (e) {
        problems.push(`round ${r}: ${errText(e)}`);
      }
    }
    if (single.length && single.length === all.length) {
      const perRound = all.map((x, i) => ratio(x, (single[i] * n) / MAX_IN_FLIGHT));
      figures.push({
        name: `${n} VMs in one plan / (single-VM time x ${n} / maxInFlight ${MAX_IN_FLIGHT})`,
        ratio: median(perRound),
        detail: `median of ${perRound.length} rounds [${perRound.map(fmtRatio).join(', ')}]; plan of ${n}: [${all.map(ms).join(', ')}]; single VM (median of ${singles} per round): [${single.map(ms).join(', ')}]; ideal with ${MAX_IN_FLIGHT} in flight: ${ms((median(single) * n) / MAX_IN_FLIGHT)}; serial (x ${n}): ${ms(median(single) * n)}; most VMs at once: [${overlaps.join(', ')}]`,
      });
      figures.push({
        name: `${n} VMs in one plan / (single-VM time x ${n}) (serial)`,
        ratio: median(all.map((x, i) => ratio(x, single[i] * n))),
        detail: `what running ${MAX_IN_FLIGHT} at once saves against one after the other`,
      });
      figures.push({
        name: `one VM's started → completed, in the plan of ${n} / alone`,
        ratio: ratio(median(perVmAll), median(perVmSingle)),
        detail: `median ${ms(median(perVmAll))} (of ${perVmAll.length}) vs ${ms(median(perVmSingle))} (of ${perVmSingle.length}): ${MAX_IN_FLIGHT} VMs side by side each take this much longer`,
      });
    }
  } catch (e) {
    problems.push(`crashed: ${errText(e)}`);
  } finally {
    await v?.close();
    await removeTree(dir);
  }
  console.log(`  done; ${loadLine()}`);
  return { bench: `forklift plan of ${n} VMs (${reps} rounds)`, figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runForkliftPlan();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
