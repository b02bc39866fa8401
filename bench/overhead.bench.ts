/**
 * QEMU's memory overhead, measured against the scheduler's formula (vmiOverheadBytes in
 * packages/controllers/scheduling/fit.ts): the API server, controllers and node agent run in
 * this process (e2e/harness.ts) and boot the tiny guest twice, small (128Mi, 1 vCPU) and larger
 * (1Gi, 2 vCPUs). Each guest fills its memory (a tmpfs written with zeros up to its size less
 * 48 MiB for its kernel, then its page cache), so every guest page is resident on the host;
 * QEMU's VmRSS (/proc/PID/status) less the guest's size is then QEMU's own overhead, as KubeVirt
 * measures its QemuOverhead ("minus the RAM of its (stressed) guest"). The figure is that
 * measured overhead as a ratio of the formula's (baseline: the formula, in the same run).
 * Also printed: the overhead right after boot (VmRSS minus what the guest touched is unknown
 * then, so only VmRSS), and VmHWM.
 *
 *   node --import tsx bench/overhead.bench.ts       env: BENCH_OVERHEAD_SIZES (128Mi:1,1Gi:2)
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NO_QEMU_PRIORITY } from '@vessel/agent';
import { parseQuantity } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';
import { eventually, startVessel } from '../e2e/harness.ts';
import { runDirOf, serialLog, tinyVm } from '../e2e/tiny-vm.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { vmiOverheadBytes } from '../packages/controllers/scheduling/fit.ts';
import { errText, isMain, now, printResult, type BenchResult } from './lib.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const MiB = 2 ** 20;
const ns = 'default';

const stress = (fillMiB: number) =>
  `#!/bin/sh\nmkdir -p /mnt/fill && mount -t tmpfs -o size=100% tmpfs /mnt/fill\n` +
  `dd if=/dev/zero of=/mnt/fill/zeros bs=1M count=${fillMiB} 2>/dev/null\nsync\necho VESSEL-STRESSED\n`;

async function status(pid: number): Promise<{ rss: number; hwm: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

export async function runOverhead(): Promise<BenchResult> {
  const started = now();
  const sizes = (process.env.BENCH_OVERHEAD_SIZES ?? '128Mi:1,1Gi:2').split(',').map((s) => {
    const [mem, cores] = s.split(':');
    return { mem, cores: Number(cores ?? 1) };
  });
  const result: BenchResult = { bench: 'overhead', figures: [], problems: [], seconds: 0 };
  // QEMU at the agent's own priority: on a loaded host a niced TCG guest may take minutes to boot, and RSS is what is measured here.
  const v = await startVessel({ agent: { nodeName: 'bench-node', qemuPriority: NO_QEMU_PRIORITY } });
  try {
    await ensureTinyImage(v.client, () => undefined);
    for (const [i, { mem, cores }] of sizes.entries()) {
      const name = `overhead-${i}`;
      const guest = parseQuantity(mem);
      const vm = tinyVm(name, { namespace: ns, memory: mem, cores, userData: stress(Math.max(8, Math.floor(guest / MiB) - 48)) });
      await v.client.create(VM, vm, { namespace: ns });
      try {
        await eventually(
          `${name} booted`,
          async () => ((await serialLog(v.dataDir, ns, name)).includes('VESSEL-GUEST-READY') ? true : undefined),
          300_000,
          500,
        );
        const dir = await runDirOf(v.dataDir, ns, name);
        const pid = Number((await readFile(join(dir!, 'qemu.pid'), 'utf8')).trim());
        const booted = await status(pid);
        await eventually(
          `${name} filled its memory`,
          async () => ((await serialLog(v.dataDir, ns, name)).includes('VESSEL-STRESSED') ? true : undefined),
          300_000,
          500,
        );
        await new Promise((r) => setTimeout(r, 2000));
        const filled = await status(pid);
        const formula = vmiOverheadBytes(guest, { domain: { cpu: { cores } } });
        const measured = filled.rss - guest;
        const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
        result.figures.push({
          name: `${mem}, ${cores} vCPU: QEMU overhead / formula`,
          ratio: measured / formula,
          detail: `VmRSS ${mib(filled.rss)} filled (${mib(booted.rss)} booted, VmHWM ${mib(filled.hwm)}), guest ${mib(guest)}: overhead ${mib(measured)}, formula ${mib(formula)}`,
        });
      } finally {
        await v.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
        await eventually(`${name} gone`, async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
          (e: unknown) => result.problems.push(errText(e)),
        );
      }
    }
  } catch (e) {
    result.problems.push(errText(e));
  } finally {
    await v.close();
  }
  result.seconds = (now() - started) / 1000;
  return result;
}

if (isMain(import.meta.url)) {
  const r = await runOverhead();
  printResult(r);
  process.exit(r.problems.length ? 1 : 0);
}
