/**
 * Clone benchmark: creating a VM disk from a golden image, for a 1 GiB and a 20 GiB image
 * (the time should not grow with the size: a linked clone is a qcow2 overlay).
 *
 * Setup: for each size a qcow2 of that virtual size holding 1 GiB of data, like a small OS
 * image: the 1 GiB one is full, the 20 GiB one is sparse with 960 MiB at its start and 64 MiB
 * at its end (`qemu-io -c 'write -P 0xab 0 960M' -c 'write -P 0xcd END-64M 64M'`), so only
 * the virtual size differs. Each is imported over loopback HTTP into a DataVolume in
 * `vessel-images`, with a DataSource there
 * pointing at its claim. Measured, N times per size (BENCH_CLONE_N, default 10), one at a
 * time, order alternating each round:
 *   vessel:   a DataVolume `sourceRef: {kind: DataSource, name, namespace: vessel-images}`
 *             of the golden's size, through the API server, from the POST to the watch event
 *             showing phase Succeeded (the agent, controllers and API server run in-process);
 *   direct:   cloneVolume() of the agent's storage code on the same golden file (what the
 *             agent runs; the rest of vessel's time is the control plane);
 *   by hand:  `qemu-img create -f qcow2 -b <golden> -F qcow2 <dest>` (baseline);
 *   contrast: `qemu-img convert -f qcow2 -O qcow2 <golden 1 GiB> <dest>`, a full copy.
 * All destinations are on the same filesystem as the pool. Figures: p50 ratios, with p50 and
 * p95 beside them (with N = 10 the nearest-rank p95 is the slowest run).
 *
 *   node --import tsx bench/clone.bench.ts        (also part of `npm run bench`)
 *   env: BENCH_CLONE_N (10), BENCH_CLONE_DIR (a temp dir under os.tmpdir())
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backingFile, qemuImg } from '@vessel/agent';
import type { KubeObject } from '@vessel/client';
import { startVessel, type Vessel } from '../e2e/harness.ts';
import { cloneVolume } from '../packages/agent/storage/clone.ts';
import { startServer, type TestServer } from '../packages/agent/storage/testing.ts';
import {
  createDataVolumeAndWait,
  DATASOURCES,
  envInt,
  errText,
  fmtRatio,
  isMain,
  ms,
  now,
  percentile,
  pollUntil,
  printResult,
  PVCS,
  ratio,
  volumePath,
  type BenchResult,
  type Figure,
} from './lib.ts';

const MiB = 1 << 20;
const GiB = 1 << 30;
const IMAGES = 'vessel-images';
const NAMESPACE = 'default';
const SIZES = [
  { label: '1 GiB', gib: 1 },
  { label: '20 GiB', gib: 20 },
];
const DV_TIMEOUT_MS = 60_000;
/** Data in each golden image (the rest of a larger one is unallocated). */
const DATA = GiB;

function sh(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
}

function dataVolume(name: string, spec: Record<string, unknown>, size: string): KubeObject {
  return {
    apiVersion: 'cdi.kubevirt.io/v1beta1',
    kind: 'DataVolume',
    metadata: { name },
    spec: { ...spec, storage: { resources: { requests: { storage: size } } } },
  };
}

const p = (xs: number[], q: number) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    q,
  );
const p50p95 = (xs: number[]) => `p50 ${ms(p(xs, 50))}, p95 ${ms(p(xs, 95))}`;

interface Golden {
  label: string;
  gib: number;
  size: string;
  dsName: string;
  path: string;
}

/** The golden image of `gib` GiB: file, import into vessel-images, DataSource, Ready. */
async function makeGolden(v: Vessel, http: TestServer, serveDir: string, label: string, gib: number): Promise<Golden> {
  const file = join(serveDir, `golden-${gib}g.qcow2`);
  const bytes = gib * GiB;
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(bytes)]);
  await sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0xab 0 ${DATA - 64 * MiB}`, '-c', `write -q -P 0xcd ${bytes - 64 * MiB} 64M`, file]);
  const name = `golden-${gib}g`;
  const size = `${gib}Gi`;
  await createDataVolumeAndWait(v.client, IMAGES, dataVolume(name, { source: { http: { url: http.file(`golden-${gib}g.qcow2`) } } }, size), 120_000);
  await v.client.create(
    DATASOURCES,
    { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataSource', metadata: { name }, spec: { source: { pvc: { name, namespace: IMAGES } } } },
    { namespace: IMAGES },
  );
  await pollUntil(
    `DataSource ${IMAGES}/${name} Ready`,
    async () => {
      const ds = await v.client.get(DATASOURCES, name, { namespace: IMAGES });
      const conds = (ds.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? [];
      return conds.some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined;
    },
    30_000,
  );
  const path = volumePath(await v.client.get(PVCS, name, { namespace: IMAGES }));
  if (!path) throw new Error(`golden claim ${IMAGES}/${name} has no vessel.io/volume-path`);
  return { label, gib, size, dsName: name, path };
}

export async function runClone(): Promise<BenchResult> {
  const started = now();
  const n = envInt('BENCH_CLONE_N', 10);
  const figures: Figure[] = [];
  const problems: string[] = [];
  const dir = await mkdtemp(join(process.env.BENCH_CLONE_DIR ?? tmpdir(), 'vessel-clone-bench-'));
  let v: Vessel | undefined;
  let http: TestServer | undefined;
  try {
    const serveDir = join(dir, 'serve');
    const hand = join(dir, 'hand');
    await Promise.all([mkdir(serveDir), mkdir(hand), mkdir(join(dir, 'vessel'))]);
    http = await startServer(serveDir);
    v = await startVessel({ dataDir: join(dir, 'vessel'), agent: { nodeName: 'node-a', allowLoopbackImports: true } }); // the http server is on loopback
    const t = now();
    const goldens: Golden[] = [];
    for (const s of SIZES) goldens.push(await makeGolden(v, http, serveDir, s.label, s.gib));
    const alloc = await Promise.all(goldens.map(async (g) => `${g.label}: ${(((await stat(g.path)).blocks * 512) / MiB).toFixed(0)} MiB allocated`));
    console.log(`  setup: golden images imported into ${IMAGES} with DataSources in ${ms(now() - t)} (${alloc.join(', ')})`);

    // Warm-up outside the measurements: one of each kind on the 1 GiB image.
    const g1 = goldens[0];
    await createDataVolumeAndWait(
      v.client,
      NAMESPACE,
      dataVolume('warmup', { sourceRef: { kind: 'DataSource', name: g1.dsName, namespace: IMAGES } }, g1.size),
      DV_TIMEOUT_MS,
    );
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', g1.path, '-F', 'qcow2', join(hand, 'warmup.qcow2')]);

    const vessel = new Map<number, number[]>(goldens.map((g) => [g.gib, []]));
    const direct = new Map<number, number[]>(goldens.map((g) => [g.gib, []]));
    const byHand = new Map<number, number[]>(goldens.map((g) => [g.gib, []]));
    const fullCopy: number[] = [];
    /** Per size: ms after the POST at which each phase was first seen. */
    const phaseTimes = new Map<number, Map<string, number[]>>(goldens.map((g) => [g.gib, new Map()]));
    const timed = async (into: number[], f: () => Promise<unknown>) => {
      const t0 = now();
      await f();
      into.push(now() - t0);
    };
    for (let i = 0; i < n; i++) {
      const steps: (() => Promise<void>)[] = [];
      for (const g of goldens) {
        steps.push(
          () =>
            timed(byHand.get(g.gib)!, () =>
              sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', g.path, '-F', 'qcow2', join(hand, `linked-${g.gib}g-${i}.qcow2`)]),
            ),
          () =>
            timed(direct.get(g.gib)!, () => cloneVolume({ source: g.path, dest: join(hand, `direct-${g.gib}g-${i}.qcow2`), size: g.gib * GiB, linked: true })),
          async () => {
            const name = `vm-disk-${g.gib}g-${i}`;
            const r = await createDataVolumeAndWait(
              v!.client,
              NAMESPACE,
              dataVolume(name, { sourceRef: { kind: 'DataSource', name: g.dsName, namespace: IMAGES } }, g.size),
              DV_TIMEOUT_MS,
            );
            vessel.get(g.gib)!.push(r.ms);
            for (const ph of r.phases) {
              const m = phaseTimes.get(g.gib)!;
              m.set(ph.phase, [...(m.get(ph.phase) ?? []), ph.ms]);
            }
            if (i === 0) {
              // Outside the timing: it is a linked clone of the golden file with the golden's content.
              const path = volumePath(await v!.client.get(PVCS, name, { namespace: NAMESPACE }));
              const backing = path && (await backingFile(path));
              if (backing !== g.path)
                problems.push(`${g.label}: the clone ${path ?? '(no volume-path)'} is backed by ${backing ?? 'nothing'}, not the golden ${g.path}`);
              else {
                const cmp = await qemuImg.compare(g.path, path!, { formatA: 'qcow2', formatB: 'qcow2' });
                if (!cmp.identical) problems.push(`${g.label}: the clone differs from its golden image: ${cmp.message}`);
              }
            }
          },
        );
      }
      steps.push(() => timed(fullCopy, () => sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', g1.path, join(hand, `full-1g-${i}.qcow2`)])));
      // Alternate the order each round so neither side always runs first (or right after a full copy).
      if (i % 2 === 1) steps.reverse();
      for (const step of steps) await step();
      await rm(join(hand, `full-1g-${i}.qcow2`), { force: true });
    }

    const [a, b] = goldens.map((g) => g.gib);
    const p50 = (m: Map<number, number[]>, gib: number) => p(m.get(gib)!, 50);
    figures.push({
      name: 'vessel clone 20 GiB / 1 GiB (p50)',
      ratio: ratio(p50(vessel, b), p50(vessel, a)),
      detail: `DataVolume sourceRef create -> Succeeded, n=${n}: 1 GiB ${p50p95(vessel.get(a)!)}; 20 GiB ${p50p95(vessel.get(b)!)}`,
    });
    figures.push({
      name: 'hand linked clone 20 GiB / 1 GiB (p50)',
      ratio: ratio(p50(byHand, b), p50(byHand, a)),
      detail: `qemu-img create -b, n=${n}: 1 GiB ${p50p95(byHand.get(a)!)}; 20 GiB ${p50p95(byHand.get(b)!)}`,
    });
    for (const g of goldens) {
      figures.push({
        name: `vessel / hand linked clone, ${g.label} (p50)`,
        ratio: ratio(p50(vessel, g.gib), p50(byHand, g.gib)),
        detail: `vessel ${p50p95(vessel.get(g.gib)!)} vs qemu-img create -b ${p50p95(byHand.get(g.gib)!)}; p95 ratio ${fmtRatio(ratio(p(vessel.get(g.gib)!, 95), p(byHand.get(g.gib)!, 95)))}`,
      });
    }
    for (const g of goldens) {
      figures.push({
        name: `cloneVolume() direct / hand linked clone, ${g.label} (p50)`,
        ratio: ratio(p50(direct, g.gib), p50(byHand, g.gib)),
        detail: `direct ${p50p95(direct.get(g.gib)!)} (qemu-img info + create + fsync + rename); the control plane adds ${ms(p50(vessel, g.gib) - p50(direct, g.gib))} at p50; phases first seen (p50 ms after POST): ${[...phaseTimes.get(g.gib)!].map(([ph, xs]) => `${ph} ${p(xs, 50).toFixed(0)}`).join(', ')}`,
      });
    }
    figures.push({
      name: 'full copy 1 GiB / hand linked clone 1 GiB (p50)',
      ratio: ratio(p(fullCopy, 50), p50(byHand, a)),
      detail: `qemu-img convert -O qcow2 of the 1 GiB golden (1 GiB of data, page-cached, no fsync), n=${n}: ${p50p95(fullCopy)}; vessel linked clone / full copy ${fmtRatio(ratio(p50(vessel, a), p(fullCopy, 50)))}`,
    });
  } catch (e) {
    problems.push(`crashed: ${errText(e)}`);
  } finally {
    await v?.close();
    await http?.close();
    await rm(dir, { recursive: true, force: true });
  }
  return { bench: `clone (golden image 1 GiB and 20 GiB, ${n} clones each)`, figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runClone();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
