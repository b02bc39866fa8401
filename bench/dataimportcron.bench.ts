/**
 * DataImportCron benchmark (issue 15): how long from "the tag points at a new image" to "the
 * managed DataSource points at its import", against a plain registry import (a DataVolume with
 * the same pinned URL) of the same 1 GiB image, in the same run. Both pull from Debian's
 * docker-registry on loopback into the agent's pool; the server, controllers and agent run in
 * this process (e2e/harness.ts). The cron's tick is forced by setting CDI's
 * `nextCronTime` annotation to now (what CDI's own tests do), so the figure is the pipeline's
 * overhead (poll, DataVolume, DataSource, garbage collection), not the wait for a schedule.
 * Each round pushes a new image under the tag (outside the timing), then times the plain
 * import and the cron's, the order swapped every other round. Figure: median of cron / plain.
 * The image is 1 GiB raw, sparse (a few MiB of data), gzip level 1 in the layer: the bytes
 * streamed are 1 GiB after gunzip.
 *
 *   node --import tsx bench/dataimportcron.bench.ts      (about 2 minutes at 1 GiB, 2 rounds)
 *   env: BENCH_DIC_GIB (1), BENCH_DIC_REPS (2)
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ResourceRef } from '@vessel/client';
import { startVessel } from '../e2e/harness.ts';
import { makeRawDisk } from '../packages/agent/storage/testing.ts';
import { pushDiskImage, startRegistry } from '../packages/agent/storage/testing-registry.ts';
import {
  createDataVolumeAndWait,
  DATASOURCES,
  DATAVOLUMES,
  deleteDataVolume,
  envInt,
  errText,
  fmtRatio,
  isMain,
  median,
  ms,
  now,
  printResult,
  ratio,
  type BenchResult,
} from './lib.ts';

const DIC: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'dataimportcrons', namespaced: true };
const NEXT = 'cdi.kubevirt.io/storage.import.nextCronTime';
const NS = 'default';

export async function runDataImportCron(): Promise<BenchResult> {
  const started = now();
  const gib = Number(process.env.BENCH_DIC_GIB ?? 1);
  const reps = envInt('BENCH_DIC_REPS', 2);
  const problems: string[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'vessel-bench-dic-'));
  const registry = await startRegistry();
  const v = await startVessel({ agent: { nodeName: 'bench-dic', allowLoopbackImports: true } });
  const size = Math.round(gib * 1024) * (1 << 20);
  const disk = join(dir, 'disk.img');
  await makeRawDisk(disk, size);
  /** A new version of the image: a round-specific block at the start, pushed under the tag. */
  const push = async (round: number) => {
    const fh = await open(disk, 'r+');
    await fh.write(Buffer.alloc(4096, round + 1), 0, 4096, 0);
    await fh.close();
    return pushDiskImage(registry.url, 'bench/disk', 'latest', [[{ path: 'disk/disk.img', file: disk }]]);
  };
  const dsClaim = async () => ((await v.client.get(DATASOURCES, 'disk', { namespace: NS })).spec as { source?: { pvc?: { name?: string } } }).source?.pvc?.name;
  const waitDs = async (name: string, timeoutMs: number) => {
    const end = Date.now() + timeoutMs;
    while ((await dsClaim().catch(() => undefined)) !== name) {
      if (Date.now() > end) throw new Error(`DataSource did not move to ${name} within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const importOf = (digest: string) => `disk-${digest.slice(7, 19)}`;
  const cronMs: number[] = [];
  const plainMs: number[] = [];
  const ratios: number[] = [];
  try {
    const first = await push(0);
    await v.client.create(
      DIC,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataImportCron',
        metadata: { name: 'disk-cron' },
        spec: {
          schedule: '0 0 1 1 *',
          managedDataSource: 'disk',
          importsToKeep: 1,
          template: {
            spec: {
              source: { registry: { url: `docker://${registry.url}/bench/disk:latest` } },
              storage: { resources: { requests: { storage: `${gib}Gi` } } },
            },
          },
        },
      },
      { namespace: NS },
    );
    await waitDs(importOf(first.digest), 600_000);
    for (let i = 1; i <= reps; i++) {
      const pushed = await push(i);
      const plain = async () => {
        const r = await createDataVolumeAndWait(
          v.client,
          NS,
          {
            apiVersion: 'cdi.kubevirt.io/v1beta1',
            kind: 'DataVolume',
            metadata: { name: `plain-${i}` },
            spec: {
              source: { registry: { url: `docker://${registry.url}/bench/disk@${pushed.digest}` } },
              storage: { resources: { requests: { storage: `${gib}Gi` } } },
            },
          },
          600_000,
        );
        plainMs.push(r.ms);
        console.log(`  plain round ${i}: ${r.phases.map((p) => `${p.phase} ${ms(p.ms)}`).join(', ')}`);
        await deleteDataVolume(v.client, NS, `plain-${i}`, 60_000);
        return r.ms;
      };
      const cron = async () => {
        const t0 = now();
        await v.client.patch(DIC, 'disk-cron', { metadata: { annotations: { [NEXT]: new Date().toISOString() } } }, { namespace: NS });
        // When the import itself Succeeded, to split the figure into import and publication.
        let importedAt = 0;
        const phases: string[] = [];
        const watchDv = setInterval(() => {
          void v.client.get(DATAVOLUMES, importOf(pushed.digest), { namespace: NS }).then(
            (dv) => {
              const phase = (dv.status as { phase?: string } | undefined)?.phase ?? '';
              if (!phases.some((p) => p.startsWith(`${phase} `))) phases.push(`${phase} ${ms(now() - t0)}`);
              if (!importedAt && phase === 'Succeeded') importedAt = now();
            },
            () => {},
          );
        }, 50);
        await waitDs(importOf(pushed.digest), 600_000).finally(() => clearInterval(watchDv));
        const t = now() - t0;
        if (importedAt) console.log(`  cron round ${i}: import Succeeded at ${ms(importedAt - t0)}, DataSource moved at ${ms(t)} (${phases.join(', ')})`);
        cronMs.push(t);
        return t;
      };
      const [a, b] = i % 2 ? [await plain(), await cron()] : [await cron(), await plain()].reverse();
      ratios.push(ratio(b, a));
      console.log(`round ${i}: cron ${ms(b)}, plain ${ms(a)}, ratio ${fmtRatio(b / a)}`);
    }
  } catch (e) {
    problems.push(errText(e));
  } finally {
    await v.close();
    await registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
  return {
    bench: 'dataimportcron',
    figures: [
      {
        name: `digest change → DataSource at the new import (${gib} GiB) / plain registry DataVolume of the same image`,
        ratio: median(ratios),
        detail: `cron ${cronMs.map(ms).join(', ')}; plain ${plainMs.map(ms).join(', ')}`,
      },
    ],
    problems,
    seconds: (now() - started) / 1000,
  };
}

if (isMain(import.meta.url)) {
  const r = await runDataImportCron();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
