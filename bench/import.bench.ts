/**
 * Import benchmark (issue 3): "HTTP import of a 2 GiB qcow2 and of a 2 GiB raw.gz: Vessel's
 * time / `curl | qemu-img convert` time. Goal: at most 1.1". Measured in the same run, on the
 * same files, from the same loopback HTTP server (a node child process, so it shares no event
 * loop with the importer):
 *   DataVolume (the goal figure): the user-visible path. A DataVolume with `source.http` is
 *     POSTed to the API server and timed until a watch shows phase Succeeded; controllers and
 *     the node agent run in this process (e2e/harness.ts) and the volume lands in the agent's
 *     pool, on the same filesystem as everything else here.
 *   importDisk direct: the agent's data plane alone (packages/agent/storage/import.ts) on
 *     the same URL, to show how much of the time is the data plane and how much the control
 *     plane. For qcow2 also with adoptPlainQcow2: false (always converted), the path every
 *     non-qcow2 input takes.
 *   baseline, by hand (qemu-img cannot read qcow2 from a pipe), argv-connected child
 *     processes, no shell:
 *       qcow2:  curl -s -o tmp URL && qemu-img convert -f qcow2 -O qcow2 tmp dest
 *       raw.gz: curl -s URL | gunzip > tmp && qemu-img convert -f raw -O qcow2 tmp dest
 * Each round runs the baseline and the Vessel variants once each, the order reversed every
 * other round (B, direct.., API, then API, ..direct, B). The DataVolume variant runs in every
 * round (BENCH_IMPORT_REPS, 3); the importDisk-direct variants only in the first
 * BENCH_IMPORT_DIRECT_REPS (2), which keeps the whole run near 6 minutes on 2 cores (3 and 3
 * take about 40 s more). Between any two runs, outside the timing,
 * the outputs are removed and `sync` is run, so one run's dirty pages are not written back
 * during the next. A figure is the median over rounds of (variant / that round's baseline).
 * The first run of each variant is checked with `qemu-img compare` against the original.
 * The disk is mostly non-zero data (every size is real); the .gz is Huffman-only deflate.
 *
 *   node --import tsx bench/import.bench.ts          (about 6 minutes at 2 GiB on 2 cores)
 *   env: BENCH_IMPORT_GIB (2; fractions such as 0.5 allowed), BENCH_IMPORT_REPS (rounds, 3),
 *        BENCH_IMPORT_DIRECT_REPS (rounds with the direct variants, 2; at most REPS),
 *        BENCH_IMPORT_DIR (a temp dir under os.tmpdir())
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants as zlibConstants, gzip } from 'node:zlib';
import type { KubeObject } from '@vessel/client';
import { startVessel, type Vessel } from '../e2e/harness.ts';
import { importDisk } from '../packages/agent/storage/import.ts';
import * as qemuImg from '../packages/agent/storage/qemu-img.ts';
import {
  createDataVolumeAndWait,
  deleteDataVolume,
  envInt,
  errText,
  fmtRatio,
  isMain,
  loadLine,
  median,
  ms,
  now,
  printResult,
  PVCS,
  ratio,
  volumePath,
  type BenchResult,
  type Figure,
} from './lib.ts';

const MiB = 1 << 20;

/** A static file server in a child process; prints its port on stdout. */
const SERVER_JS = `
const http = require('node:http'), fs = require('node:fs'), path = require('node:path');
const { pipeline } = require('node:stream');
const dir = process.argv[1];
const s = http.createServer((req, res) => {
  const p = path.join(dir, path.basename(decodeURIComponent(req.url)));
  fs.stat(p, (err, st) => {
    if (err) { res.writeHead(404); return res.end(); }
    res.writeHead(200, { 'content-length': st.size, 'content-type': 'application/octet-stream' });
    pipeline(fs.createReadStream(p, { highWaterMark: 1 << 20 }), res, () => {});
  });
});
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
`;

function gibFromEnv(): number {
  const raw = process.env.BENCH_IMPORT_GIB;
  if (raw === undefined || raw === '') return 2;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0 || n > 64) throw new Error(`BENCH_IMPORT_GIB must be a number of GiB in (0, 64], not "${raw}"`);
  return n;
}

/**
 * Mostly non-zero data that gzip still compresses about 2:1, never the same MiB twice (each
 * 4 KiB block starts with its own index). The .gz is written alongside as one gzip member
 * per 16 MiB, compressed two at a time on the thread pool (gunzip and node's zlib both read
 * multi-member files), which halves the setup time on 2 cores. The data has 4 bits of entropy
 * per byte and next to no repeats, so the members are Huffman-only deflate (Z_HUFFMAN_ONLY):
 * the same size as level 1 (0.51 vs 0.54 of the input) at a third of the compression time,
 * and about 30% faster to decompress, for gunzip and node alike.
 */
async function makeDisk(path: string, gzPath: string, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(16 * MiB);
  let x = 0x2545f491;
  for (let i = 0; i < chunk.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    chunk[i] = 0x40 + ((x >>> 24) & 0x0f); // 4 bits of entropy per byte
  }
  const fh = await open(path, 'w');
  const gz = await open(gzPath, 'w');
  const inflight: Promise<Buffer>[] = [];
  const flushOne = async () => {
    await gz.write(await inflight.shift()!);
  };
  try {
    for (let off = 0, block = 0; off < bytes; off += chunk.length) {
      for (let b = 0; b < chunk.length; b += 4096) chunk.writeUInt32BE(block++, b);
      const n = Math.min(chunk.length, bytes - off);
      await fh.write(chunk, 0, n, off);
      const copy = Buffer.from(chunk.subarray(0, n));
      inflight.push(
        new Promise((resolve, reject) => gzip(copy, { level: 1, strategy: zlibConstants.Z_HUFFMAN_ONLY }, (e, out) => (e ? reject(e) : resolve(out)))),
      );
      if (inflight.length >= 2) await flushOne();
    }
    while (inflight.length) await flushOne();
  } finally {
    await Promise.allSettled(inflight);
    await fh.close();
    await gz.close();
  }
}

function exited(child: ChildProcess, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${what} exited ${code}: ${stderr.trim()}`))));
  });
}

function run(cmd: string, args: string[]): Promise<void> {
  return exited(spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] }), cmd);
}

/** curl -s -o tmp URL && qemu-img convert -f qcow2 -O qcow2 tmp dest */
async function baselineQcow2(url: string, tmp: string, dest: string): Promise<void> {
  await run('curl', ['-s', '-f', '-o', tmp, url]);
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', tmp, dest]);
}

/** curl -s URL | gunzip > tmp && qemu-img convert -f raw -O qcow2 tmp dest */
async function baselineGz(url: string, tmp: string, dest: string): Promise<void> {
  const out = await open(tmp, 'w');
  try {
    const curl = spawn('curl', ['-s', '-f', url], { stdio: ['ignore', 'pipe', 'pipe'] });
    const gunzip = spawn('gunzip', ['-c'], { stdio: [curl.stdout, out.fd, 'pipe'] });
    curl.stdout.destroy(); // gunzip has its own copy; ours would keep curl's 'close' from firing
    await Promise.all([exited(curl, 'curl'), exited(gunzip, 'gunzip')]);
  } finally {
    await out.close();
  }
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', tmp, dest]);
}

async function startServer(dir: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['-e', SERVER_JS, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<string>((resolve, reject) => {
    child.once('error', reject);
    child.stdout!.once('data', (c: Buffer) => resolve(c.toString().trim()));
  });
  return { url: `http://127.0.0.1:${port}`, child };
}

const GiB = 2 ** 30;
const NAMESPACE = 'default';
const DV_TIMEOUT_MS = 300_000;
const signedMs = (d: number) => (d < 0 ? `-${ms(-d)}` : `+${ms(d)}`);

/** One thing measured against the baseline: its runs, one per round, and how to do one. */
interface Variant {
  label: string;
  api: boolean;
  times: number[];
  /** Does one run and returns its time (ms); setup and checks around it are not timed. */
  run: (round: number) => Promise<number>;
}

export async function runImport(): Promise<BenchResult> {
  const started = now();
  const gib = gibFromEnv();
  const reps = envInt('BENCH_IMPORT_REPS', 3);
  const directReps = Math.min(reps, envInt('BENCH_IMPORT_DIRECT_REPS', 2));
  const bytes = Math.round((gib * GiB) / MiB) * MiB;
  const quantity = bytes % GiB === 0 ? `${bytes / GiB}Gi` : `${bytes / MiB}Mi`;
  const figures: Figure[] = [];
  const problems: string[] = [];
  const dir = await mkdtemp(join(process.env.BENCH_IMPORT_DIR ?? tmpdir(), 'vessel-import-bench-'));
  let server: ChildProcess | undefined;
  let v: Vessel | undefined;
  try {
    const serveDir = join(dir, 'serve');
    const work = join(dir, 'work');
    const dataDir = join(dir, 'vessel');
    await Promise.all([mkdir(serveDir), mkdir(work), mkdir(dataDir)]);
    const raw = join(dir, 'disk.raw');
    let t = now();
    await makeDisk(raw, join(serveDir, 'disk.raw.gz'), bytes);
    await run('qemu-img', ['convert', '-W', '-f', 'raw', '-O', 'qcow2', raw, join(serveDir, 'disk.qcow2')]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(serveDir, 'warmup.qcow2'), '16M']);
    const sizes = { qcow2: (await stat(join(serveDir, 'disk.qcow2'))).size, gz: (await stat(join(serveDir, 'disk.raw.gz'))).size };
    console.log(
      `  setup: ${gib} GiB disk, qcow2 ${(sizes.qcow2 / MiB).toFixed(0)} MiB, raw.gz ${(sizes.gz / MiB).toFixed(0)} MiB in ${ms(now() - t)}; ${loadLine()}`,
    );
    const srv = await startServer(serveDir);
    server = srv.child;
    v = await startVessel({ dataDir, agent: { nodeName: 'node-a', allowLoopbackImports: true } }); // the http server is on loopback
    const client = v.client;
    const dataVolume = (name: string, url: string, size: string): KubeObject => ({
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name },
      spec: { source: { http: { url } }, storage: { resources: { requests: { storage: size } } } },
    });
    // Warm-up outside the measurements: one small import through every part of the API path.
    t = now();
    await createDataVolumeAndWait(client, NAMESPACE, dataVolume('warmup', `${srv.url}/warmup.qcow2`, '16Mi'), 60_000);
    await deleteDataVolume(client, NAMESPACE, 'warmup', 60_000);
    console.log(`  control plane and node agent up, warm-up import done in ${ms(now() - t)}`);

    const cases = [
      {
        name: 'qcow2',
        file: 'disk.qcow2',
        baseline: baselineQcow2,
        direct: [
          { label: '', adopt: true },
          { label: ', always converted', adopt: false },
        ],
      },
      { name: 'raw.gz', file: 'disk.raw.gz', baseline: baselineGz, direct: [{ label: '', adopt: true }] },
    ];
    for (const c of cases) {
      const url = `${srv.url}/${c.file}`;
      const dest = join(work, 'dest.qcow2');
      const tmp = join(work, 'download.tmp');
      const base: number[] = [];
      /** ms after the POST at which the DataVolume was first seen ImportInProgress, per API run. */
      const inProgressAt: number[] = [];
      // Between runs, untimed: remove the outputs and write back every dirty page, so no run
      // pays for the previous one's writeback (the baseline never fsyncs; Vessel does).
      const clean = async () => {
        await Promise.all([rm(dest, { force: true }), rm(tmp, { force: true })]);
        await run('sync', []);
      };
      const check = async (label: string, path: string, how: string) => {
        const cmp = await qemuImg.compare(raw, path, { formatA: 'raw', formatB: 'qcow2' });
        if (!cmp.identical) problems.push(`${c.name}${label}: imported disk differs from the original: ${cmp.message}`);
        console.log(`  ${c.name}${label}: ${how}; compare: ${cmp.message}`);
      };
      const apiVariant: Variant = {
        label: ', DataVolume via API',
        api: true,
        times: [],
        run: async (round) => {
          const name = `import-${c.name.replace(/\W/g, '-')}-${round}`;
          const r = await createDataVolumeAndWait(client, NAMESPACE, dataVolume(name, url, quantity), DV_TIMEOUT_MS);
          const at = r.phases.find((p) => p.phase === 'ImportInProgress')?.ms;
          if (at !== undefined) inProgressAt.push(at);
          if (round === 0) {
            const path = volumePath(await client.get(PVCS, name, { namespace: NAMESPACE }));
            if (!path) problems.push(`${c.name}: claim ${name} has no vessel.io/volume-path after Succeeded`);
            else await check(apiVariant.label, path, `phases ${r.phases.map((p) => `${p.phase}@${ms(p.ms)}`).join(' ')}`);
          }
          await deleteDataVolume(client, NAMESPACE, name, 120_000);
          return r.ms;
        },
      };
      const directVariants: Variant[] = c.direct.map((d) => {
        const variant: Variant = {
          label: `, importDisk direct${d.label}`,
          api: false,
          times: [],
          run: async (round) => {
            const t0 = now();
            const r = await importDisk({
              source: { kind: 'http', url },
              dest,
              maxVirtualSize: bytes,
              adoptPlainQcow2: d.adopt,
              egress: { allowLoopback: true },
            });
            const took = now() - t0;
            if (round === 0) await check(variant.label, dest, `vessel ${r.converted ? 'converted' : 'published the plain qcow2 as received'}`);
            return took;
          },
        };
        return variant;
      });
      const baselineStep = async () => {
        const t0 = now();
        await c.baseline(url, tmp, dest);
        base.push(now() - t0);
      };
      try {
        for (let r = 0; r < reps; r++) {
          // The direct variants run in the first directReps rounds only (time budget).
          const measured = r < directReps ? [...directVariants, apiVariant] : [apiVariant];
          const steps: (() => Promise<void>)[] = [
            baselineStep,
            ...measured.map((vr) => async () => {
              vr.times.push(await vr.run(r));
            }),
          ];
          if (r % 2 === 1) steps.reverse();
          for (const step of steps) {
            await clean();
            await step();
          }
        }
        const medBase = median(base);
        const medDirect = median(directVariants[0].times);
        for (const vr of [apiVariant, ...directVariants]) {
          const rt = median(vr.times.map((x, i) => ratio(x, base[i])));
          const goal = vr.api ? `; goal <= 1.1: ${rt <= 1.1 ? 'met' : 'NOT met'}` : '';
          const where = vr.api
            ? `; API - direct: ${signedMs(median(vr.times) - medDirect)} at the median (ImportInProgress seen at ${ms(median(inProgressAt))} after the POST)`
            : '';
          figures.push({
            name: `http import ${c.name}${vr.label} (vessel/baseline)`,
            ratio: rt,
            detail: `median of ${vr.times.length} per-round ratios [${vr.times.map((x, i) => fmtRatio(ratio(x, base[i]))).join(', ')}]${goal}; median vessel ${ms(median(vr.times))} vs baseline ${ms(medBase)}; runs vessel [${vr.times.map(ms).join(', ')}] baseline [${base.map(ms).join(', ')}]${where}; ${(bytes / MiB / (median(vr.times) / 1000)).toFixed(0)} MiB/s virtual`,
          });
        }
      } catch (e) {
        problems.push(`${c.name}: ${errText(e)}`);
      } finally {
        await clean();
      }
    }
  } catch (e) {
    problems.push(`crashed: ${errText(e)}`);
  } finally {
    await v?.close();
    server?.kill();
    await rm(dir, { recursive: true, force: true });
  }
  console.log(`  done; ${loadLine()}`);
  return { bench: `import (${gib} GiB over HTTP, ${reps} rounds; importDisk direct in ${directReps})`, figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runImport();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
