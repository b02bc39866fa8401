/**
 * Warm migration's cutover (issue 14; packages/agent/vms/warm-copy.ts): the copy a cutover waits
 * for is the last round, which moves what was written since the last precopy; a cold migration
 * copies the whole disk while the VM is off. A QEMU (no guest: `-machine none`, its disk written
 * through HMP `qemu-io`, which the dirty bitmap sees as guest writes) holds a raw disk of D MiB
 * full of data; after a full round into a qemu-nbd export (TLS-PSK, through the relays, as in a
 * migration), N MiB are written in 1 MiB pieces at random offsets, then timed: the incremental
 * round (warm) and a full round of the same disk into a fresh target (cold). The ratio is warm /
 * cold (lower is better); stopping and starting the VMs is the same for both and left out.
 *
 *   node --import tsx bench/forklift-warm.bench.ts   # env BENCH_WARM_DISK_MIB (1024), BENCH_WARM_CHANGED_MIB (100), BENCH_WARM_ROUNDS (3)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../e2e/harness.ts';
import { QmpClient } from '../packages/agent/qmp/client.ts';
import { copyRound, exportTarget } from '../packages/agent/vms/warm-copy.ts';
import { envInt, fmtRatio, loadLine, median, ratio } from './lib.ts';

const MiB = 1024 * 1024;
const DISK_MIB = envInt('BENCH_WARM_DISK_MIB', 1024);
const CHANGED_MIB = envInt('BENCH_WARM_CHANGED_MIB', 100);
const ROUNDS = envInt('BENCH_WARM_ROUNDS', 3);

async function must(cmd: string, args: string[]): Promise<void> {
  const r = await run(cmd, args, { timeoutMs: 1_800_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.err}`);
}

const dir = await mkdtemp(join(tmpdir(), 'vessel-bench-warm-'));
let qemu: ChildProcess | undefined;
let qmp: QmpClient | undefined;
try {
  console.log(`# warm cutover: ${DISK_MIB} MiB disk, ${CHANGED_MIB} MiB changed since the last precopy, ${ROUNDS} rounds; ${loadLine()}`);
  const disk = join(dir, 'disk.raw');
  await must('qemu-img', ['create', '-q', '-f', 'raw', disk, `${DISK_MIB}M`]);
  // In 256 MiB writes: qemu-io refuses one request of several GiB.
  const fill = Array.from({ length: Math.ceil(DISK_MIB / 256) }, (_, i) => ['-c', `write -P 0x11 ${i * 256}M ${Math.min(256, DISK_MIB - i * 256)}M`]).flat();
  await must('qemu-io', ['-f', 'raw', ...fill, disk]);
  const sock = join(dir, 'qmp.sock');
  qemu = spawn(
    'qemu-system-x86_64',
    [
      ...['-machine', 'none', '-nodefaults', '-no-user-config', '-display', 'none'],
      ...['-blockdev', `driver=file,filename=${disk},node-name=file-data`, '-blockdev', 'driver=raw,file=file-data,node-name=disk-data'],
      ...['-qmp', `unix:${sock},server=on,wait=off`],
    ],
    { stdio: 'ignore' },
  );
  qmp = await QmpClient.connect(sock, { timeoutMs: 10_000, waitForSocket: true });
  const warm: number[] = [];
  const cold: number[] = [];
  const bytes: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const files = [join(dir, `warm${i}.raw`), join(dir, `cold${i}.raw`)];
    for (const f of files) await must('qemu-img', ['create', '-q', '-f', 'raw', f, `${DISK_MIB}M`]);
    const [wt, ct] = [
      await exportTarget({ path: files[0], format: 'raw', host: '127.0.0.1' }),
      await exportTarget({ path: files[1], format: 'raw', host: '127.0.0.1' }),
    ];
    try {
      await copyRound(qmp, { volume: 'data', mode: 'full', target: wt, runDir: dir });
      for (let m = 0; m < CHANGED_MIB; m++) {
        const at = Math.floor(Math.random() * DISK_MIB);
        await qmp.execute('human-monitor-command', { 'command-line': `qemu-io disk-data "write -P 0x${(0x20 + i).toString(16)} ${at}M 1M"` });
      }
      let t = performance.now();
      const r = await copyRound(qmp, { volume: 'data', mode: 'incremental', target: wt, runDir: dir });
      warm.push(performance.now() - t);
      bytes.push(r.total);
      t = performance.now();
      await copyRound(qmp, { volume: 'data', mode: 'full', target: ct, runDir: dir });
      cold.push(performance.now() - t);
      console.log(
        `# round ${i + 1}: last round ${(warm[i] / 1000).toFixed(2)} s for ${(r.total / MiB).toFixed(0)} MiB; cold copy ${(cold[i] / 1000).toFixed(2)} s`,
      );
    } finally {
      await wt.stop();
      await ct.stop();
      for (const f of files) await rm(f, { force: true });
    }
  }
  const w = median(warm);
  const c = median(cold);
  console.log(
    `warm cutover copy (${CHANGED_MIB} MiB changed of ${DISK_MIB} MiB): median ${(w / 1000).toFixed(2)} s, ${(median(bytes) / MiB).toFixed(0)} MiB moved`,
  );
  console.log(`cold copy of the disk: median ${(c / 1000).toFixed(2)} s`);
  console.log(`ratio warm/cold: ${fmtRatio(ratio(w, c))} (lower is better)`);
} finally {
  await qmp?.close().catch(() => undefined);
  qemu?.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
}
