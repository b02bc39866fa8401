/**
 * Import benchmark: importDisk over HTTP from a loopback server vs what a person would do by
 * hand, in the same run on the same files. qemu-img cannot read qcow2 from a pipe, so the
 * baselines are
 *   qcow2:  curl -s -o tmp URL && qemu-img convert -f qcow2 -O qcow2 tmp dest
 *   raw.gz: curl -s URL | gunzip > tmp && qemu-img convert -f raw -O qcow2 tmp dest
 * (run as argv-connected child processes, no shell). The disk is mostly non-zero data so
 * every size is real. The server runs in its own node process for both sides, so the
 * importer does not share its event loop with the server. Goal (issue 3): ratio <= 1.1.
 *
 *   node --import tsx bench/import.bench.ts
 *   env: BENCH_IMPORT_GIB (2; fractions such as 0.5 allowed), BENCH_IMPORT_REPS (2),
 *        BENCH_IMPORT_DIR (a temp dir under os.tmpdir())
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzip } from 'node:zlib';
import { importDisk } from '../packages/agent/storage/import.ts';
import * as qemuImg from '../packages/agent/storage/qemu-img.ts';
import { envInt, errText, isMain, ms, now, printResult, ratio, type BenchResult, type Figure } from './lib.ts';

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
 * multi-member files), which halves the setup time on 2 cores.
 */
async function makeDisk(path: string, gzPath: string, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(16 * MiB);
  let x = 0x2545f491;
  for (let i = 0; i < chunk.length; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    chunk[i] = 0x40 + ((x >>> 24) & 0x0f); // 4 bits of entropy per byte
  }
  const fh = await open(path, 'w');
  const gz = await open(gzPath, 'w');
  const inflight: Promise<Buffer>[] = [];
  const flushOne = async () => { await gz.write(await inflight.shift()!); };
  try {
    for (let off = 0, block = 0; off < bytes; off += chunk.length) {
      for (let b = 0; b < chunk.length; b += 4096) chunk.writeUInt32BE(block++, b);
      const n = Math.min(chunk.length, bytes - off);
      await fh.write(chunk, 0, n, off);
      const copy = Buffer.from(chunk.subarray(0, n));
      inflight.push(new Promise((resolve, reject) => gzip(copy, { level: 1 }, (e, out) => (e ? reject(e) : resolve(out)))));
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
    child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
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

export async function runImport(): Promise<BenchResult> {
  const started = now();
  const gib = gibFromEnv();
  const reps = envInt('BENCH_IMPORT_REPS', 2);
  const bytes = Math.round((gib * 2 ** 30) / MiB) * MiB;
  const figures: Figure[] = [];
  const problems: string[] = [];
  const dir = await mkdtemp(join(process.env.BENCH_IMPORT_DIR ?? tmpdir(), 'vessel-import-bench-'));
  let server: ChildProcess | undefined;
  try {
    const serveDir = join(dir, 'serve');
    const work = join(dir, 'work');
    await Promise.all([import('node:fs/promises').then((f) => f.mkdir(serveDir)), import('node:fs/promises').then((f) => f.mkdir(work))]);
    const raw = join(dir, 'disk.raw');
    let t = now();
    await makeDisk(raw, join(serveDir, 'disk.raw.gz'), bytes);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, join(serveDir, 'disk.qcow2')]);
    const sizes = { qcow2: (await stat(join(serveDir, 'disk.qcow2'))).size, gz: (await stat(join(serveDir, 'disk.raw.gz'))).size };
    console.log(`  setup: ${gib} GiB disk, qcow2 ${(sizes.qcow2 / MiB).toFixed(0)} MiB, raw.gz ${(sizes.gz / MiB).toFixed(0)} MiB in ${ms(now() - t)}`);
    const srv = await startServer(serveDir);
    server = srv.child;

    // Each case: one baseline and one or more Vessel variants, measured in turn. The qcow2
    // case also measures importDisk told to always convert (adoptPlainQcow2: false), the
    // path every non-qcow2 input takes, against the same baseline runs.
    const cases = [
      { name: 'qcow2', file: 'disk.qcow2', baseline: baselineQcow2, variants: [{ label: '', adopt: true }, { label: ', always converted', adopt: false }] },
      { name: 'raw.gz', file: 'disk.raw.gz', baseline: baselineGz, variants: [{ label: '', adopt: true }] },
    ];
    for (const c of cases) {
      const url = `${srv.url}/${c.file}`;
      const dest = join(work, 'dest.qcow2');
      const tmp = join(work, 'download.tmp');
      const base: number[] = [];
      const ves: number[][] = c.variants.map(() => []);
      const clean = () => Promise.all([rm(dest, { force: true }), rm(tmp, { force: true })]);
      const doBaseline = async () => { await clean(); t = now(); await c.baseline(url, tmp, dest); base.push(now() - t); };
      const doVessel = async (i: number) => {
        await clean();
        t = now();
        const r = await importDisk({ source: { kind: 'http', url }, dest, maxVirtualSize: bytes, adoptPlainQcow2: c.variants[i].adopt });
        ves[i].push(now() - t);
        if (ves[i].length === 1) {
          const cmp = await qemuImg.compare(raw, dest, { formatA: 'raw', formatB: 'qcow2' });
          if (!cmp.identical) problems.push(`${c.name}${c.variants[i].label}: imported disk differs from the original: ${cmp.message}`);
          console.log(`  ${c.name}${c.variants[i].label}: vessel ${r.converted ? 'converted' : 'published the plain qcow2 as received'}; compare: ${cmp.message}`);
        }
      };
      try {
        // Alternate the order (B V.. then V.. B) so page-cache and disk state favour neither side.
        for (let r = 0; r < reps; r++) {
          if (r % 2 === 0) await doBaseline();
          for (let i = 0; i < c.variants.length; i++) await doVessel(i);
          if (r % 2 === 1) await doBaseline();
        }
        const best = (a: number[]) => Math.min(...a);
        for (const [i, v] of c.variants.entries()) {
          const rt = ratio(best(ves[i]), best(base));
          figures.push({
            name: `http import ${c.name}${v.label} (vessel/baseline)`,
            ratio: rt,
            detail: `best of ${reps}: vessel ${ms(best(ves[i]))} vs baseline ${ms(best(base))}; all vessel [${ves[i].map(ms).join(', ')}] baseline [${base.map(ms).join(', ')}]; ${(bytes / MiB / (best(ves[i]) / 1000)).toFixed(0)} MiB/s virtual`,
          });
          if (rt > 1.1) problems.push(`${c.name}${v.label}: import takes ${rt.toFixed(2)}x the baseline (goal <= 1.1)`);
        }
      } catch (e) {
        problems.push(`${c.name}: ${errText(e)}`);
      } finally {
        await clean();
      }
    }
  } finally {
    server?.kill();
    await rm(dir, { recursive: true, force: true });
  }
  return { bench: `import (${gib} GiB over HTTP, ${reps} runs each)`, figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runImport();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
