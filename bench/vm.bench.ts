/**
 * VM benchmarks: the API server, controllers and node agent run in this process
 * (e2e/harness.ts) and boot the `tiny` golden guest with real QEMU (TCG on this machine).
 *
 * boot: from the create of a VirtualMachine (runStrategy Always) to the first line the guest
 *   prints on its serial console (`<dataDir>/vms/default/<VM uid>/serial.log`, polled every
 *   10 ms), minus the same for QEMU launched directly with launch() (packages/agent/qemu/
 *   process.ts) and the argv the agent used (vm.json), with the same chardevs, VNC socket and
 *   -no-shutdown. Each platform VM boots its own DataVolume, a linked clone of `tiny` made
 *   before the measurements (the clone is not timed); each raw QEMU boots a fresh linked clone
 *   of the same golden file made the same way (cloneVolume, same virtual size), so both boot
 *   the same bytes. Runs come in pairs, platform then raw, with the order swapped every other
 *   pair; a raw run uses the argv of the latest platform run, with only the disk path changed
 *   (checked: the two QEMU command lines are equal apart from run directory and disk). After a
 *   platform run the VM is deleted and the benchmark waits until its VMI is gone.
 *   Goal: platform − raw < 200 ms at p50.
 *
 * scale: N VirtualMachines (default 50) created 100 ms apart, each with a dataVolumeTemplate
 *   cloning `tiny` (as `kubectl apply` of a typical manifest would): create-to-Running
 *   (printableStatus, from a watch) at p50/p95 against the same for VMs created one at a time
 *   in the same run; and the growth of this process's RSS and V8 heap from before the first
 *   create to when all N are Running (after a forced GC), per VM. The server, controllers and
 *   agent share this process, so their growth cannot be told apart. QEMU's own RSS (VmRSS of
 *   every QEMU, summed) is reported beside it. Both are measured again once every guest has
 *   printed VESSEL-GUEST-READY (or BENCH_VM_SCALE_BOOT_WAIT_S ran out). Goal: under 5 MiB of
 *   platform memory per VM.
 *
 *   node --import tsx --expose-gc bench/vm.bench.ts
 *   env: BENCH_VM_ONLY=boot|scale, BENCH_VM_BOOT_N (20), BENCH_VM_SCALE_N (50),
 *        BENCH_VM_SCALE_GAP_MS (100), BENCH_VM_SCALE_TIMEOUT_S (600),
 *        BENCH_VM_SCALE_BOOT_WAIT_S (300; 0 skips), BENCH_VM_MEMORY (96Mi),
 *        BENCH_VM_SCALE_PRIORITY (both: the scale part with QEMU at the control plane's
 *        priority, then below it, compared; or off / on),
 *        BENCH_VM_DIR (a temp dir under os.tmpdir())
 */
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { DEFAULT_QEMU_PRIORITY, NO_QEMU_PRIORITY, qemuImg, type QemuPriority } from '@vessel/agent';
import { isNotFound, type KubeObject, type ResourceRef, type Watch } from '@vessel/client';
import { startVessel, type Vessel } from '../e2e/harness.ts';
import { TINY_SERIAL } from '../guest/tiny.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { launch, listRunDirs, probe, terminate } from '../packages/agent/qemu/process.ts';
import { findPriorityTools } from '../packages/agent/qemu/priority.ts';
import { cloneVolume } from '../packages/agent/storage/clone.ts';
import {
  chardevsOf,
  createDataVolumeAndWait,
  DATAVOLUMES,
  envInt,
  errText,
  fmtRatio,
  isMain,
  loadLine,
  ms,
  now,
  percentile,
  pollUntil,
  printResult,
  PVCS,
  ratio,
  sleep,
  volumePath,
  type BenchResult,
  type Figure,
} from './lib.ts';

const VMS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMIS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NS = 'default';
const IMAGES = 'vessel-images';
const MiB = 1 << 20;
/** Guest memory. 64Mi is too little for the tiny guest to print anything (its kernel and initrd do not fit). */
const MEMORY = process.env.BENCH_VM_MEMORY || '96Mi';
/**
 * CPU request per VM. Without one a 1-vCPU VM asks for 100m (KubeVirt's cpuAllocationRatio 10),
 * so a 2-core node takes 20 VMs and the 21st is Unschedulable (Insufficient cpu).
 */
const CPU = process.env.BENCH_VM_CPU || '30m';
/** Short, so deleting a VM whose guest is still booting (and ignores ACPI) does not take long. */
const GRACE_S = 2;
const SERIAL_TIMEOUT_MS = 180_000;
const GONE_TIMEOUT_MS = 120_000;

type Obj = Record<string, unknown>;
const priorityTools = findPriorityTools();

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
const p = (xs: number[], q: number) => percentile(sorted(xs), q);
const p50p95 = (xs: number[]) => `p50 ${ms(p(xs, 50))}, p95 ${ms(p(xs, 95))}`;
const signedMs = (v: number) => (v >= 0 ? '+' : '−') + ms(Math.abs(v));
const mib = (bytes: number) => `${(bytes / MiB).toFixed(2)} MiB`;

function vmManifest(name: string, disk: { dataVolume: string } | { template: true }): KubeObject {
  const dvName = 'dataVolume' in disk ? disk.dataVolume : `${name}-root`;
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: NS },
    spec: {
      runStrategy: 'Always',
      template: {
        spec: {
          terminationGracePeriodSeconds: GRACE_S,
          domain: { resources: { requests: { memory: MEMORY, cpu: CPU } }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } },
          volumes: [{ name: 'root', dataVolume: { name: dvName } }],
        },
      },
      dataVolumeTemplates:
        'template' in disk
          ? [
              {
                metadata: { name: dvName },
                spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: IMAGES }, storage: { resources: { requests: { storage: '1Gi' } } } },
              },
            ]
          : [],
    },
  };
}

function dataVolume(name: string): KubeObject {
  return {
    apiVersion: 'cdi.kubevirt.io/v1beta1',
    kind: 'DataVolume',
    metadata: { name },
    spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: IMAGES }, storage: { resources: { requests: { storage: '1Gi' } } } },
  };
}

/**
 * Follows the namespace's VMs and VMIs over watches and remembers when (now()) each state was
 * first seen per object name: `vm/<name>:<printableStatus>`, `vmi/<name>:added`,
 * `vmi/<name>:<phase>`, `vmi/<name>:finalizer` (the agent's), `dv/<name>:<phase>`, `<kind>/<name>:deleted`. If a watch stream ends, it is reopened from a
 * fresh list (states in the list are recorded then, a little late, and counted in `relists`).
 */
type Kind = 'vm' | 'vmi' | 'dv';

class Tracker {
  private readonly seen = new Map<string, number>();
  private readonly watches: Watch[] = [];
  private closed = false;
  relists = 0;

  constructor(private readonly v: Vessel) {}

  async start(): Promise<void> {
    await Promise.all([this.follow(VMS, 'vm'), this.follow(VMIS, 'vmi'), this.follow(DATAVOLUMES, 'dv')]);
  }

  private record(key: string): void {
    if (!this.seen.has(key)) this.seen.set(key, now());
  }

  private observe(kind: Kind, type: string, o: KubeObject): void {
    const name = o.metadata?.name;
    if (!name) return;
    const s = (o.status ?? {}) as Obj;
    if (type === 'DELETED') {
      this.record(`${kind}/${name}:deleted`);
      return;
    }
    if (kind === 'vm') {
      if (typeof s.printableStatus === 'string') this.record(`vm/${name}:${s.printableStatus}`);
      return;
    }
    if (kind === 'dv') {
      if (typeof s.phase === 'string' && s.phase) this.record(`dv/${name}:${s.phase}`);
      return;
    }
    this.record(`vmi/${name}:added`);
    if (typeof s.phase === 'string' && s.phase) this.record(`vmi/${name}:${s.phase}`);
    if (((o.metadata?.finalizers as string[] | undefined) ?? []).includes('vessel.io/qemu')) this.record(`vmi/${name}:finalizer`);
  }

  private async follow(res: ResourceRef, kind: Kind): Promise<void> {
    const list = await this.v.client.list(res, { namespace: NS });
    for (const o of list.items) this.observe(kind, 'ADDED', o);
    const w = this.v.client.watchResource(res, { namespace: NS, resourceVersion: list.metadata?.resourceVersion }, (ev) =>
      this.observe(kind, ev.type, ev.object),
    );
    this.watches.push(w);
    const again = () => {
      if (this.closed) return;
      this.relists++;
      void this.follow(res, kind).catch(() => setTimeout(again, 200));
    };
    w.done.then(again, again);
  }

  /** When `key` was first seen, or undefined. */
  at(key: string): number | undefined {
    return this.seen.get(key);
  }

  /** Resolves with the time `key` was first seen; rejects after timeoutMs. */
  waitFor(key: string, timeoutMs: number): Promise<number> {
    return pollUntil(`${key} to be seen`, async () => this.seen.get(key), timeoutMs, 10);
  }

  close(): void {
    this.closed = true;
    for (const w of this.watches) w.close();
  }
}

/**
 * Polls `file` every 10 ms from now on; resolves with the times (now()) at which it first held
 * a byte and a complete line.
 */
async function firstSerial(file: string, timeoutMs: number, alive?: () => boolean): Promise<{ byte: number; line: number }> {
  const deadline = now() + timeoutMs;
  let byte: number | undefined;
  for (;;) {
    const size = await stat(file).then(
      (s) => s.size,
      () => 0,
    );
    if (size > 0) {
      byte ??= now();
      if ((await readFile(file, 'latin1').catch(() => '')).includes('\n')) return { byte, line: now() };
    }
    if (now() > deadline) throw new Error(`no serial line in ${file} within ${timeoutMs} ms`);
    if (alive && !alive()) throw new Error(`gave up waiting for ${file}`);
    await sleep(10);
  }
}

async function cmdline(pid: number): Promise<string[]> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter((a) => a !== '');
}

/** A QEMU command line with its run directory and disk replaced by placeholders. */
function normalized(args: string[], runDir: string, disk: string): string {
  // The disk first: a raw run's overlay is named after its run directory.
  return args.map((a) => a.split(disk).join('<disk>').split(runDir).join('<run>')).join(' ');
}

async function vmRssBytes(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(text)?.[1];
  return kb ? Number(kb) * 1024 : 0;
}

/** Full GCs with idle time between (V8 returns freed pages lazily); false without --expose-gc. */
async function settleMemory(idleMs: number): Promise<boolean> {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3; i++) {
    gc?.();
    await sleep(idleMs / 3);
  }
  gc?.();
  return gc !== undefined;
}

async function startWithTiny(dir: string, qemuPriority?: QemuPriority): Promise<{ v: Vessel; golden: string }> {
  const v = await startVessel({ dataDir: join(dir, 'vessel'), agent: { nodeName: 'node-a', qemuPriority } });
  await ensureTinyImage(v.client, (l) => console.log(`  ${l}`));
  const golden = volumePath(await v.client.get(PVCS, 'tiny', { namespace: IMAGES }));
  if (!golden) throw new Error(`claim ${IMAGES}/tiny has no vessel.io/volume-path`);
  return { v, golden };
}

/** A VM's run directory: `vms/<namespace>/<VM uid>`, as the agent names it (never by the VM's name). */
function runDirOf(v: Vessel, vm: KubeObject): string {
  const uid = vm.metadata?.uid;
  if (!uid) throw new Error(`VirtualMachine ${vm.metadata?.name} has no uid`);
  return join(v.dataDir, 'vms', NS, uid);
}

async function deleteVmAndWait(v: Vessel, name: string): Promise<void> {
  await v.client.delete(VMS, name, { namespace: NS }).catch((e: unknown) => {
    if (!isNotFound(e)) throw e;
  });
  await pollUntil(
    `VMI ${NS}/${name} to be gone`,
    async () =>
      await v.client.get(VMIS, name, { namespace: NS }).then(
        () => undefined,
        (e: unknown) => {
          if (isNotFound(e)) return true;
          throw e;
        },
      ),
    GONE_TIMEOUT_MS,
    50,
  );
}

/** Deletes every VM of the namespace, waits for their VMIs to go, then stops any QEMU left in the data directory. */
async function cleanUp(v: Vessel, problems: string[]): Promise<void> {
  try {
    const vms = (await v.client.list(VMS, { namespace: NS })).items;
    await Promise.all(vms.map((o) => v.client.delete(VMS, o.metadata!.name!, { namespace: NS }).catch(() => undefined)));
    await pollUntil(
      'all VMIs gone',
      async () => ((await v.client.list(VMIS, { namespace: NS })).items.length === 0 ? true : undefined),
      GONE_TIMEOUT_MS * 2,
      250,
    );
  } catch (e) {
    problems.push(`clean-up: ${errText(e)}`);
  }
  for (const left of await listRunDirs(join(v.dataDir, 'vms', NS))) {
    problems.push(`clean-up: QEMU pid ${left.pid} still ran in ${left.runDir} after its VMI was gone; stopped it`);
    await terminate(left.runDir, { graceMs: 2000 });
  }
}

// ---------------------------------------------------------------- boot

interface PlatformRun {
  name: string;
  /** ms after the create, each: */
  byte: number;
  line: number;
  vmiAdded: number;
  scheduled: number;
  finalizer: number;
  launchStarted: number;
  qemuPidfile: number;
  running: number;
  /** CPU time (user + system) this process used from the create to the first serial line. */
  cpuMs: number;
  argv: string[];
  disk: string;
  /** The QEMU command line, run directory and disk replaced by placeholders. */
  cmd: string;
}

interface RawRun {
  byte: number;
  line: number;
  launchReturned: number;
  cpuMs: number;
  cmd: string;
}

const cpuMsSince = (start: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(start);
  return (u.user + u.system) / 1000;
};

export async function runVmBoot(): Promise<BenchResult> {
  const started = now();
  const n = envInt('BENCH_VM_BOOT_N', 20);
  const figures: Figure[] = [];
  const problems: string[] = [];
  const dir = await mkdtemp(join(process.env.BENCH_VM_DIR ?? tmpdir(), 'vessel-vm-bench-'));
  const rawRoot = join(dir, 'raw');
  await mkdir(rawRoot);
  let v: Vessel | undefined;
  let tracker: Tracker | undefined;
  const rawDirs: string[] = [];
  try {
    const t = now();
    const s = await startWithTiny(dir);
    v = s.v;
    const golden = s.golden;
    tracker = new Tracker(v);
    await tracker.start();
    // One DataVolume (a linked clone of tiny) per platform run, plus one for the warm-up.
    const disks: string[] = [];
    for (let i = 0; i <= n; i++) {
      const name = `boot-disk-${i}`;
      await createDataVolumeAndWait(v.client, NS, dataVolume(name), 60_000);
      disks.push(name);
    }
    const diskPaths = await Promise.all(disks.map(async (d) => volumePath(await v!.client.get(PVCS, d, { namespace: NS })) ?? ''));
    const virtualSize = (await qemuImg.info(diskPaths[0], { format: 'qcow2' })).virtualSize;
    console.log(`  setup: tiny imported and ${n + 1} DataVolumes cloned in ${ms(now() - t)}; guest memory ${MEMORY}; golden ${golden}`);

    const platform = async (i: number): Promise<PlatformRun> => {
      const name = `boot-${i < 0 ? 'warmup' : i}`;
      await sleep(500); // let the previous run's deletion settle
      const wall0 = Date.now();
      const t0 = now();
      const cpu0 = process.cpuUsage();
      let waiting = true;
      try {
        const vm = await v!.client.create(VMS, vmManifest(name, { dataVolume: disks[i < 0 ? n : i] }), { namespace: NS });
        // The run directory is named by the VM's uid, known once the create returns (well before the agent launches QEMU).
        const runDir = runDirOf(v!, vm);
        const first = await firstSerial(join(runDir, 'serial.log'), SERIAL_TIMEOUT_MS, () => waiting);
        const cpuMs = cpuMsSince(cpu0);
        const meta = JSON.parse(await readFile(join(runDir, 'vm.json'), 'utf8')) as { argv?: string[]; launchedAt?: string };
        const pidStat = await stat(join(runDir, 'qemu.pid'));
        const pid = await probe(runDir);
        const cmd = pid ? normalized(await cmdline(pid), runDir, diskPaths[i < 0 ? n : i]) : '';
        const running = await tracker!.waitFor(`vmi/${name}:Running`, 30_000);
        const rel = (k: string) => (tracker!.at(`vmi/${name}:${k}`) ?? NaN) - t0;
        return {
          name,
          byte: first.byte - t0,
          line: first.line - t0,
          vmiAdded: rel('added'),
          scheduled: rel('Scheduled'),
          finalizer: rel('finalizer'),
          launchStarted: Date.parse(meta.launchedAt ?? '') - wall0,
          qemuPidfile: pidStat.mtimeMs - wall0,
          running: running - t0,
          cpuMs,
          argv: meta.argv ?? [],
          disk: diskPaths[i < 0 ? n : i],
          cmd,
        };
      } finally {
        waiting = false;
        await deleteVmAndWait(v!, name);
      }
    };

    const raw = async (j: string, from: PlatformRun): Promise<RawRun> => {
      const runDir = join(rawRoot, `r${j}`);
      const overlay = join(rawRoot, `r${j}.qcow2`);
      rawDirs.push(runDir);
      await cloneVolume({ source: golden, dest: overlay, size: virtualSize, linked: true });
      const argv = from.argv.map((a) => a.split(from.disk).join(overlay));
      if (!argv.some((a) => a.includes(overlay))) throw new Error(`the disk ${from.disk} is not in the argv of ${from.name}`);
      try {
        await sleep(500);
        const t0 = now();
        const cpu0 = process.cpuUsage();
        let waiting = true;
        const serial = firstSerial(join(runDir, 'serial.log'), SERIAL_TIMEOUT_MS, () => waiting);
        serial.catch(() => undefined);
        try {
          // At the agent's default priority too, so both sides start QEMU the same way.
          const priority = { nice: DEFAULT_QEMU_PRIORITY.nice, batch: DEFAULT_QEMU_PRIORITY.batch, tools: await priorityTools };
          const res = await launch({
            runDir,
            argv,
            chardevs: chardevsOf(from.argv),
            vnc: true,
            noShutdown: true,
            vm: { namespace: 'bench', name: `raw-${j}` },
            priority,
          });
          const launchReturned = now() - t0;
          const first = await serial;
          const cpuMs = cpuMsSince(cpu0);
          const cmd = normalized(await cmdline(res.pid), res.files.dir, overlay);
          return { byte: first.byte - t0, line: first.line - t0, launchReturned, cpuMs, cmd };
        } finally {
          waiting = false;
        }
      } finally {
        await terminate(runDir, { graceMs: 2000 });
        await rm(overlay, { force: true });
      }
    };

    // Warm-up (not counted): JIT, QEMU's binary and the golden image in the page cache.
    const warm = await platform(-1);
    await raw('warmup', warm);
    console.log(`  warm-up: platform first line ${ms(warm.line)}`);

    const runs: { p: PlatformRun; r: RawRun; from: PlatformRun }[] = [];
    let latest = warm;
    for (let i = 0; i < n; i++) {
      let pr: PlatformRun, rr: RawRun;
      const from = i % 2 === 0 ? undefined : latest;
      if (!from) {
        pr = await platform(i);
        rr = await raw(String(i), pr);
      } else {
        rr = await raw(String(i), from);
        pr = await platform(i);
      }
      latest = pr;
      runs.push({ p: pr, r: rr, from: from ?? pr });
      if (rr.cmd !== (from ?? pr).cmd)
        problems.push(`run ${i}: the raw QEMU command line differs from the agent's:\n    agent: ${(from ?? pr).cmd}\n    raw:   ${rr.cmd}`);
      console.log(
        `  run ${String(i).padStart(2)} (${from ? 'raw first' : 'platform first'}): first line platform ${ms(pr.line)}, raw ${ms(rr.line)} (${signedMs(pr.line - rr.line)}); create → QEMU launch ${ms(pr.launchStarted)}, → Running ${ms(pr.running)}`,
      );
    }

    const P = runs.map((x) => x.p),
      R = runs.map((x) => x.r);
    const pl = P.map((x) => x.line),
      rl = R.map((x) => x.line);
    const diff = runs.map((x) => x.p.line - x.r.line);
    const byteDiff = runs.map((x) => x.p.byte - x.r.byte);
    figures.push({
      name: 'create → first serial line, platform/raw p50',
      ratio: ratio(p(pl, 50), p(rl, 50)),
      detail:
        `platform − raw per pair: p50 ${signedMs(p(diff, 50))}, p95 ${signedMs(p(diff, 95))} (goal < 200 ms); ` +
        `p50(platform) − p50(raw) ${signedMs(p(pl, 50) - p(rl, 50))}; platform ${p50p95(pl)}; raw QEMU ${p50p95(rl)}; n = ${runs.length} pairs. ` +
        `First serial byte, platform − raw per pair: p50 ${signedMs(p(byteDiff, 50))}, p95 ${signedMs(p(byteDiff, 95))} (the kernel prints its first lines at once)`,
    });
    const launchRet = R.map((x) => x.launchReturned);
    const running = P.map((x) => x.running);
    figures.push({
      name: 'create → VMI Running / raw launch() returned, p50',
      ratio: ratio(p(running, 50), p(launchRet, 50)),
      detail: `create → Running ${p50p95(running)}; raw launch() (QEMU daemonised, QMP answered) ${p50p95(launchRet)}`,
    });
    const stage = (label: string, xs: number[]) => `${label} ${ms(p(xs, 50))}`;
    const controlPlane = P.map((x) => x.launchStarted);
    figures.push({
      name: 'create → agent starts QEMU / raw launch() returned, p50',
      ratio: ratio(p(controlPlane, 50), p(launchRet, 50)),
      detail:
        `create → vm.json launchedAt ${p50p95(controlPlane)}. Where the platform's time goes (p50, ms after the create): ` +
        [
          stage(
            'VMI seen',
            P.map((x) => x.vmiAdded),
          ),
          stage(
            'Scheduled',
            P.map((x) => x.scheduled),
          ),
          stage(
            'agent finalizer',
            P.map((x) => x.finalizer),
          ),
          stage('QEMU launch starts', controlPlane),
          stage(
            'QEMU pidfile written',
            P.map((x) => x.qemuPidfile),
          ),
          stage('VMI Running', running),
          stage(
            'first serial byte',
            P.map((x) => x.byte),
          ),
          stage('first serial line', pl),
        ].join(', '),
    });
    const bootPlatform = P.map((x) => x.line - x.launchStarted);
    figures.push({
      name: 'QEMU start → first serial line, platform/raw p50',
      ratio: ratio(p(bootPlatform, 50), p(rl, 50)),
      detail: `platform (from vm.json launchedAt) ${p50p95(bootPlatform)}; raw ${p50p95(rl)}: the guest's own boot, which dominates under TCG`,
    });
    const pc = P.map((x) => x.cpuMs),
      rc = R.map((x) => x.cpuMs);
    figures.push({
      name: 'CPU of this process until the first serial line, platform/raw p50',
      ratio: ratio(p(pc, 50), p(rc, 50)),
      detail:
        `platform (API server, controllers, agent, client) ${p50p95(pc)}; raw (launch() and the 10 ms serial polling, also in the platform figure) ${p50p95(rc)}: ` +
        `CPU the platform takes from a booting guest on a 2-core TCG host`,
    });
    if (tracker.relists) console.log(`  note: a watch stream ended ${tracker.relists} time(s) and was reopened from a list`);
    console.log(`  ${loadLine()}`);
  } catch (e) {
    problems.push(`failed: ${errText(e)}`);
  } finally {
    tracker?.close();
    for (const d of rawDirs) await terminate(d, { graceMs: 2000 }).catch(() => undefined);
    if (v) {
      await cleanUp(v, problems);
      await v.close();
    }
    await rm(dir, { recursive: true, force: true });
  }
  return { bench: 'vm boot: create → first serial line, platform vs raw QEMU', figures, problems, seconds: (now() - started) / 1000 };
}

// ---------------------------------------------------------------- scale

/** What the before/after comparison needs from one scale run. */
interface ScaleStats {
  p50: number;
  p95: number;
  allRunning: number;
  lag50: number;
  lag99: number;
  lagMax: number;
  count: number;
}

/**
 * BENCH_VM_SCALE_PRIORITY: `both` (default) runs the scale part twice in this process, first
 * with QEMU at the control plane's priority (`--qemu-priority off`, as before issue 11), then
 * with the agent's default (nice 10 + SCHED_BATCH), and compares them; `off` or `on` runs one.
 */
export async function runVmScale(): Promise<BenchResult> {
  const started = now();
  const mode = process.env.BENCH_VM_SCALE_PRIORITY || 'both';
  if (!['both', 'on', 'off'].includes(mode)) throw new Error(`BENCH_VM_SCALE_PRIORITY must be both, on or off, not ${mode}`);
  const figures: Figure[] = [];
  const problems: string[] = [];
  const runs: [string, QemuPriority][] = [];
  if (mode !== 'on') runs.push(["QEMU at the control plane's priority (off)", NO_QEMU_PRIORITY]);
  if (mode !== 'off') runs.push(['QEMU below it (default: nice 10 + SCHED_BATCH)', DEFAULT_QEMU_PRIORITY]);
  const stats: (ScaleStats | undefined)[] = [];
  for (const [label, prio] of runs) {
    console.log(`  scale run: ${label}`);
    const r = await scaleRun(prio);
    const tag = runs.length > 1 ? `[${prio.nice ? 'nice' : 'off'}] ` : '';
    figures.push(...r.figures.map((f) => ({ ...f, name: tag + f.name })));
    // At once too, so a run cut short later still leaves this one's figures.
    for (const f of r.figures) console.log(`  ${tag}${f.name}: ${fmtRatio(f.ratio)}; ${f.detail}`);
    problems.push(...r.problems.map((x) => tag + x));
    stats.push(r.stats);
  }
  const [off, on] = stats;
  if (runs.length === 2 && off && on) {
    figures.push({
      name: 'burst create → Running p50, nice / off',
      ratio: ratio(on.p50, off.p50),
      detail: `p50 ${ms(on.p50)} vs ${ms(off.p50)}; p95 ${ms(on.p95)} vs ${ms(off.p95)} (${fmtRatio(ratio(on.p95, off.p95))}); all Running after ${ms(on.allRunning)} vs ${ms(off.allRunning)} (${fmtRatio(ratio(on.allRunning, off.allRunning))}); ${on.count} and ${off.count} VMs`,
    });
    figures.push({
      name: 'control plane event-loop delay during the burst p99, nice / off',
      ratio: ratio(on.lag99, off.lag99),
      detail: `p99 ${ms(on.lag99)} vs ${ms(off.lag99)}; p50 ${ms(on.lag50)} vs ${ms(off.lag50)} (${fmtRatio(ratio(on.lag50, off.lag50))}); max ${ms(on.lagMax)} vs ${ms(off.lagMax)}`,
    });
  }
  return {
    bench: `vm scale: ${envInt('BENCH_VM_SCALE_N', 50)} VMs ${envInt('BENCH_VM_SCALE_GAP_MS', 100)} ms apart`,
    figures,
    problems,
    seconds: (now() - started) / 1000,
  };
}

async function scaleRun(qemuPriority: QemuPriority): Promise<{ figures: Figure[]; problems: string[]; stats?: ScaleStats }> {
  const n = envInt('BENCH_VM_SCALE_N', 50);
  const gap = envInt('BENCH_VM_SCALE_GAP_MS', 100);
  const timeoutMs = envInt('BENCH_VM_SCALE_TIMEOUT_S', 600) * 1000;
  const alone = 3;
  const figures: Figure[] = [];
  const problems: string[] = [];
  const dir = await mkdtemp(join(process.env.BENCH_VM_DIR ?? tmpdir(), 'vessel-vm-bench-'));
  let v: Vessel | undefined;
  let tracker: Tracker | undefined;
  let stats: ScaleStats | undefined;
  try {
    const s = await startWithTiny(dir, qemuPriority);
    v = s.v;
    tracker = new Tracker(v);
    await tracker.start();

    // Baseline: the same manifest, one VM at a time (the first one also warms up, not counted).
    const aloneMs: number[] = [];
    for (let i = -1; i < alone; i++) {
      const name = `alone-${i < 0 ? 'warmup' : i}`;
      await sleep(500);
      const t0 = now();
      await v.client.create(VMS, vmManifest(name, { template: true }), { namespace: NS });
      const t = await tracker.waitFor(`vm/${name}:Running`, 120_000);
      if (i >= 0) aloneMs.push(t - t0);
      await deleteVmAndWait(v, name);
      await pollUntil(
        `DataVolume of ${name} gone`,
        async () =>
          await v!.client.get(PVCS, `${name}-root`, { namespace: NS }).then(
            () => undefined,
            () => true,
          ),
        60_000,
        100,
      );
    }

    const gcOk = await settleMemory(5000);
    if (!gcOk) console.log('  note: no global gc (run node with --expose-gc): memory figures are noisier');
    const before = process.memoryUsage();

    const created = new Map<string, number>();
    const createdWall = new Map<string, number>();
    const runDirs = new Map<string, string>();
    const names = Array.from({ length: n }, (_, i) => `scale-${i}`);
    // Is the control plane busy, or starved by the guests? Its CPU time and event-loop delay over the burst.
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    const burstCpu0 = process.cpuUsage();
    const t0 = now();
    const creates: Promise<unknown>[] = [];
    for (let i = 0; i < n; i++) {
      const at = t0 + i * gap;
      const wait = at - now();
      if (wait > 0) await sleep(wait);
      created.set(names[i], now());
      createdWall.set(names[i], Date.now());
      creates.push(
        v.client.create(VMS, vmManifest(names[i], { template: true }), { namespace: NS }).then(
          (vm) => runDirs.set(names[i], runDirOf(v!, vm)),
          (e: unknown) => problems.push(`create ${names[i]}: ${errText(e)}`),
        ),
      );
    }
    await Promise.all(creates);
    const createSpan = now() - t0;
    let reached = 0;
    try {
      await pollUntil(
        `${n} VMs Running`,
        async () => {
          reached = names.filter((nm) => tracker!.at(`vm/${nm}:Running`) !== undefined).length;
          return reached === n ? true : undefined;
        },
        timeoutMs,
        100,
      );
    } catch {
      const why = new Map<string, number>();
      for (const o of (await v.client.list(VMS, { namespace: NS })).items) {
        const st = (o.status ?? {}) as { printableStatus?: string; conditions?: { type: string; message?: string }[] };
        if (st.printableStatus === 'Running') continue;
        const k = `${st.printableStatus ?? '?'}: ${st.conditions?.find((c) => c.type === 'Ready')?.message ?? ''}`;
        why.set(k, (why.get(k) ?? 0) + 1);
      }
      problems.push(
        `only ${reached} of ${n} VMs reached Running within ${timeoutMs / 1000} s (${[...why].map(([k, c]) => `${c} × ${k}`).join('; ')}): try a smaller BENCH_VM_SCALE_N`,
      );
    }
    const allRunning = now() - t0;
    loopDelay.disable();
    const burstCpuMs = cpuMsSince(burstCpu0);
    const lag = (q: number) => ms(loopDelay.percentile(q) / 1e6);
    const toRunning = names.flatMap((nm) => {
      const r = tracker!.at(`vm/${nm}:Running`);
      return r === undefined ? [] : [r - created.get(nm)!];
    });
    stats = {
      p50: p(toRunning, 50),
      p95: p(toRunning, 95),
      allRunning,
      lag50: loopDelay.percentile(50) / 1e6,
      lag99: loopDelay.percentile(99) / 1e6,
      lagMax: loopDelay.max / 1e6,
      count: toRunning.length,
    };
    // Where the time goes: per VM, ms after its create at which each stage was first seen.
    const stages: [string, (nm: string) => Promise<number | undefined>][] = [
      ['DataVolume Succeeded', async (nm) => tracker!.at(`dv/${nm}-root:Succeeded`)],
      ['VMI seen', async (nm) => tracker!.at(`vmi/${nm}:added`)],
      ['Scheduled', async (nm) => tracker!.at(`vmi/${nm}:Scheduled`)],
      [
        'QEMU launch starts',
        async (nm) => {
          const meta = JSON.parse(await readFile(join(runDirs.get(nm) ?? '', 'vm.json'), 'utf8').catch(() => '{}')) as { launchedAt?: string };
          return meta.launchedAt ? Date.parse(meta.launchedAt) - createdWall.get(nm)! + created.get(nm)! : undefined;
        },
      ],
      ['VMI Running', async (nm) => tracker!.at(`vmi/${nm}:Running`)],
      ['VM Running', async (nm) => tracker!.at(`vm/${nm}:Running`)],
    ];
    const breakdown: string[] = [];
    for (const [label, at] of stages) {
      const xs: number[] = [];
      for (const nm of names) {
        const t = await at(nm);
        if (t !== undefined) xs.push(t - created.get(nm)!);
      }
      breakdown.push(`${label} ${ms(p(xs, 50))}/${ms(p(xs, 95))}`);
    }

    await settleMemory(3000);
    const after = process.memoryUsage();
    let qemuRss = 0,
      qemus = 0;
    for (const vm of await listRunDirs(join(v.dataDir, 'vms', NS))) {
      qemuRss += await vmRssBytes(vm.pid);
      qemus++;
    }
    const count = reached || n;
    const rssPerVm = (after.rss - before.rss) / count;
    const heapPerVm = (after.heapUsed - before.heapUsed) / count;
    const qemuPerVm = qemus ? qemuRss / qemus : NaN;

    // Again once the guests have booted (QEMU's RSS grows as a guest touches its memory).
    // 0 skips the wait and its figure (the before/after comparison does not need it).
    const bootWaitMs = process.env.BENCH_VM_SCALE_BOOT_WAIT_S === '0' ? 0 : envInt('BENCH_VM_SCALE_BOOT_WAIT_S', 300) * 1000;
    const bootStart = now();
    let booted = 0;
    if (bootWaitMs > 0)
      await pollUntil(
        `${count} guests booted`,
        async () => {
          const logs = await Promise.all(names.map((nm) => readFile(join(runDirs.get(nm) ?? '', 'serial.log'), 'latin1').catch(() => '')));
          booted = logs.filter((l) => l.includes(TINY_SERIAL.ready)).length;
          return booted >= count ? true : undefined;
        },
        bootWaitMs,
        2000,
      ).catch(() => undefined);
    const bootedAfter = now() - bootStart;
    await settleMemory(3000);
    const later = process.memoryUsage();
    let qemuRss2 = 0,
      qemus2 = 0;
    for (const vm of await listRunDirs(join(v.dataDir, 'vms', NS))) {
      qemuRss2 += await vmRssBytes(vm.pid);
      qemus2++;
    }
    const rssPerVm2 = (later.rss - before.rss) / count;
    const qemuPerVm2 = qemus2 ? qemuRss2 / qemus2 : NaN;
    if (bootWaitMs > 0 && booted < count)
      problems.push(
        `only ${booted} of ${count} guests printed ${TINY_SERIAL.ready} within ${bootWaitMs / 1000} s of all being Running (the booted-memory figure is taken then anyway)`,
      );

    figures.push({
      name: `create → Running, ${count} VMs ${gap} ms apart / one at a time, p50`,
      ratio: ratio(p(toRunning, 50), p(aloneMs, 50)),
      detail:
        `${count} VMs: ${p50p95(toRunning)}, all Running ${ms(allRunning)} after the first create (creates spread over ${ms(createSpan)}); ` +
        `one at a time (${alone}): ${p50p95(aloneMs)}. Includes each VM's DataVolume clone (dataVolumeTemplates). ` +
        `Stages, p50/p95 ms after each create: ${breakdown.join(', ')}. ` +
        `Until all were Running this process used ${ms(burstCpuMs)} of CPU in ${ms(allRunning)} (${((100 * burstCpuMs) / allRunning).toFixed(0)}% of one core); ` +
        `event-loop delay p50 ${lag(50)}, p99 ${lag(99)}, max ${ms(loopDelay.max / 1e6)}; ${loadLine()}`,
    });
    figures.push({
      name: 'platform RSS growth per VM / QEMU RSS per VM',
      ratio: ratio(rssPerVm, qemuPerVm),
      detail:
        `platform (server + controllers + agent, this process) ${mib(rssPerVm)} RSS and ${mib(heapPerVm)} V8 heap per VM (goal < 5 MiB); ` +
        `RSS ${mib(before.rss)} → ${mib(after.rss)}, heapUsed ${mib(before.heapUsed)} → ${mib(after.heapUsed)}${gcOk ? '' : ' (no --expose-gc)'}; ` +
        `QEMU ${mib(qemuPerVm)} RSS per VM (${qemus} QEMUs, ${MEMORY} guests, summed VmRSS right after all were Running, guests still booting); KubeVirt reserves ~240 MiB per VM for virt-launcher`,
    });
    if (bootWaitMs > 0)
      figures.push({
        name: 'the same once the guests have booted',
        ratio: ratio(rssPerVm2, qemuPerVm2),
        detail:
          `${booted} of ${count} guests printed ${TINY_SERIAL.ready}, ${ms(bootedAfter)} after all were Running: platform ${mib(rssPerVm2)} RSS and ` +
          `${mib((later.heapUsed - before.heapUsed) / count)} V8 heap per VM (RSS ${mib(later.rss)}, heapUsed ${mib(later.heapUsed)}); QEMU ${mib(qemuPerVm2)} RSS per VM (${qemus2} QEMUs)`,
      });
    console.log(`  ${loadLine()}`);
  } catch (e) {
    problems.push(`failed: ${errText(e)}`);
  } finally {
    tracker?.close();
    if (v) {
      await cleanUp(v, problems);
      await v.close();
    }
    await rm(dir, { recursive: true, force: true });
  }
  return { figures, problems, stats };
}

if (isMain(import.meta.url)) {
  const only = process.env.BENCH_VM_ONLY;
  const results: BenchResult[] = [];
  if (!only || only === 'boot') {
    const r = await runVmBoot();
    printResult(r);
    results.push(r);
  }
  if (!only || only === 'scale') {
    const r = await runVmScale();
    printResult(r);
    results.push(r);
  }
  console.log(`\n${results.map((r) => r.figures.map((f) => `  ${fmtRatio(f.ratio).padStart(8)}  ${f.name}`).join('\n')).join('\n')}`);
  process.exit(results.some((r) => r.problems.length > 0) ? 1 : 0);
}
