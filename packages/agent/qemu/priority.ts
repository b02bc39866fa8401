/**
 * Guests never starve the control plane: every QEMU runs below the agent's CPU priority.
 *
 * - Everywhere: QEMU is exec'd through `nice -n N` and `chrt --batch 0`, so its first thread,
 *   and every thread it creates later (vCPUs, I/O), has nice N and SCHED_BATCH from the start.
 *   QEMU's `-daemonize` calls setsid(), and with sched_autogroup (the default on desktop and
 *   many server kernels) a new session is a new scheduling group of nice 0 whose weight equals
 *   the agent's whole session, whatever the threads' nice: so the daemon's autogroup gets nice N
 *   as well (`/proc/PID/autogroup`), right after the launcher returns.
 * - Where the host delegates a cgroup v2 subtree with the cpu controller to Vessel (a systemd
 *   unit with `Delegate=yes`), each VM also gets its own cgroup: `cpu.weight` from its CPU
 *   requests, `cpu.max` from its CPU limits, `memory.max` from its memory plus overhead.
 *   Elsewhere (cgroup v1, as on the development machines, whose memory hierarchy belongs to the
 *   host's process manager) no cgroup is touched.
 */
import { constants } from 'node:fs';
import { access, mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { tryParseQuantity } from '@vessel/api';

/** The agent's policy for QEMU processes (`vessel agent --qemu-priority`). */
export interface QemuPriority {
  /** Niceness of every QEMU thread, 0..19; 0 keeps the agent's. Above 0 the autogroup gets AUTOGROUP_NICE. */
  nice: number;
  /** SCHED_BATCH: QEMU never preempts a waking control-plane thread. */
  batch: boolean;
  /** A cgroup per VM where a delegated cgroup v2 subtree with the cpu controller exists. */
  cgroups: boolean;
}

/**
 * The niceness of every QEMU's autogroup (its own session) whenever QEMU runs below the agent:
 * the lightest, since the groups of many guests add up (thread nice only orders a QEMU's own threads).
 */
export const AUTOGROUP_NICE = 19;

export const DEFAULT_QEMU_PRIORITY: Readonly<QemuPriority> = { nice: 10, batch: true, cgroups: true };
export const NO_QEMU_PRIORITY: Readonly<QemuPriority> = { nice: 0, batch: false, cgroups: false };

/**
 * Parses `--qemu-priority`: `off`, `default`, or a comma list of `nice=N`, `batch`, `no-batch`,
 * `cgroups`, `no-cgroups` applied over the default (`nice=10,batch,cgroups`).
 */
export function parseQemuPriority(spec: string): QemuPriority {
  const s = spec.trim();
  if (s === 'off') return { ...NO_QEMU_PRIORITY };
  const out: QemuPriority = { ...DEFAULT_QEMU_PRIORITY };
  if (s === 'default' || s === '') return out;
  for (const part of s.split(',').map((p) => p.trim())) {
    const nice = /^nice=(\d+)$/.exec(part);
    if (nice) {
      const n = Number(nice[1]);
      if (n > 19) throw new Error(`--qemu-priority: nice=${n} is out of range 0..19`);
      out.nice = n;
    } else if (part === 'batch' || part === 'no-batch') out.batch = part === 'batch';
    else if (part === 'cgroups' || part === 'no-cgroups') out.cgroups = part === 'cgroups';
    else
      throw new Error(`--qemu-priority: unknown item ${JSON.stringify(part)}; use off, default, or a list of nice=0..19, batch, no-batch, cgroups, no-cgroups`);
  }
  return out;
}

/** How launch() starts one QEMU below the agent. */
export interface LaunchPriority {
  nice: number;
  batch: boolean;
  /** The executables that apply them (undefined: not installed, that part is skipped). */
  tools: PriorityTools;
  /** A prepared cgroup v2 directory the QEMU joins (vmCgroup). */
  cgroupDir?: string;
}

export interface PriorityTools {
  nice?: string;
  chrt?: string;
}

/** `nice` (coreutils) and `chrt` (util-linux) in PATH. */
export async function findPriorityTools(env: NodeJS.ProcessEnv = process.env): Promise<PriorityTools> {
  return { nice: await findExecutable('nice', env), chrt: await findExecutable('chrt', env) };
}

/** `name` resolved against PATH (a name with a slash as it is), when it is an executable file. */
export async function findExecutable(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const candidates = name.includes('/')
    ? [name]
    : (env.PATH ?? '/usr/local/bin:/usr/bin:/bin')
        .split(':')
        .filter(Boolean)
        .map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

/**
 * The command that runs `binary argv` with the priority: `[prefix...] nice -n N chrt --batch 0
 * binary argv...` (each tool execs the next, so the QEMU process itself carries the setting and
 * every thread it makes inherits it). Pure.
 */
export function wrapLaunch(
  binary: string,
  argv: readonly string[],
  prio: Pick<LaunchPriority, 'nice' | 'batch' | 'tools'> | undefined,
  prefix: readonly string[] = [],
): { file: string; args: string[] } {
  // `prefix` goes first (e.g. `nsenter --net=/run/netns/NS --`, which execs the rest in the node's namespace).
  const chain: string[] = [...prefix];
  if (prio && prio.nice > 0 && prio.tools.nice) chain.push(prio.tools.nice, '-n', String(prio.nice));
  if (prio?.batch && prio.tools.chrt) chain.push(prio.tools.chrt, '--batch', '0');
  if (chain.length === 0) return { file: binary, args: [...argv] };
  return { file: chain[0], args: [...chain.slice(1), binary, ...argv] };
}

/**
 * Gives the session of a QEMU the weight launch() gives it: the lightest (AUTOGROUP_NICE) when
 * QEMU runs below the agent (`nice` > 0), else nothing. Also when an agent re-adopts a QEMU: the
 * agent before may have died during a migration that boosted it (vms/migration-boost.ts).
 */
export async function applyLaunchWeight(pid: number, nice: number): Promise<boolean> {
  return nice > 0 ? setAutogroupNice(pid, AUTOGROUP_NICE) : true;
}

/** The nice value in `/proc/PID/autogroup` ("/autogroup-123 nice 19"), or undefined. */
export function parseAutogroupNice(text: string): number | undefined {
  const m = /\bnice\s+(-?\d+)/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The niceness of the autogroup (session) of `pid`; undefined without autogroups or the process. */
export async function autogroupNice(pid: number | string): Promise<number | undefined> {
  return parseAutogroupNice(await readFile(`/proc/${pid}/autogroup`, 'utf8').catch(() => ''));
}

/**
 * Gives the autogroup (session) of `pid` the niceness `nice`. False when the kernel has no
 * autogroup (no /proc/PID/autogroup) or refused it.
 */
export async function setAutogroupNice(pid: number, nice: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/autogroup`, String(nice));
    return true;
  } catch {
    return false;
  }
}

// ---- cgroup v2 ----

/** Where VM cgroups can go, or why not. */
export type CgroupSupport = { kind: 'v2'; parent: string } | { kind: 'none'; reason: string };

/** What detectCgroupV2 reads, injectable for tests. */
export interface CgroupProbe {
  readFile(file: string): Promise<string | undefined>;
  writable(dir: string): Promise<boolean>;
}

export const hostCgroupProbe: CgroupProbe = {
  readFile: (f) =>
    readFile(f, 'utf8').then(
      (t) => t,
      () => undefined,
    ),
  writable: (d) =>
    access(d, constants.W_OK).then(
      () => true,
      () => false,
    ),
};

/** The cgroup v2 mount point (and the hierarchy path mounted there) from /proc/self/mountinfo. */
export function cgroup2Mount(mountinfo: string): { mountPoint: string; root: string } | undefined {
  for (const line of mountinfo.split('\n')) {
    // "id parent maj:min root mountpoint options [optional...] - fstype source superopts"
    const [pre, post] = line.split(' - ');
    if (!post || post.split(' ')[0] !== 'cgroup2') continue;
    const f = pre.split(' ');
    if (f.length < 5) continue;
    return { root: unescapeMount(f[3]), mountPoint: unescapeMount(f[4]) };
  }
  return undefined;
}

/** This process's cgroup v2 path from /proc/self/cgroup (the `0::` line), undefined when none. */
export function ownCgroupV2Path(selfCgroup: string): string | undefined {
  const line = selfCgroup.split('\n').find((l) => l.startsWith('0::'));
  return line?.slice(3).trim() || undefined;
}

/**
 * Decides whether VM cgroups are possible: a cgroup v2 hierarchy whose controllers include cpu
 * and memory (on a hybrid host they are bound to v1 and the v2 mount has none), and this
 * process's cgroup writable, i.e. delegated to us. VM cgroups then go under `<own>/vms`.
 */
export async function detectCgroupV2(probe: CgroupProbe = hostCgroupProbe, proc = '/proc/self'): Promise<CgroupSupport> {
  const mount = cgroup2Mount((await probe.readFile(`${proc}/mountinfo`)) ?? '');
  if (!mount) return { kind: 'none', reason: 'no cgroup v2 hierarchy is mounted' };
  const own = ownCgroupV2Path((await probe.readFile(`${proc}/cgroup`)) ?? '');
  if (!own) return { kind: 'none', reason: 'this process is in no cgroup v2 group' };
  const rel = path.posix.relative(mount.root, own);
  if (rel.startsWith('..')) return { kind: 'none', reason: `this process's cgroup ${own} is outside the mounted cgroup2 tree` };
  const dir = path.join(mount.mountPoint, rel);
  const controllers = ((await probe.readFile(path.join(dir, 'cgroup.controllers'))) ?? '').split(/\s+/);
  const missing = ['cpu', 'memory'].filter((c) => !controllers.includes(c));
  if (missing.length) return { kind: 'none', reason: `the cgroup v2 group ${dir} has no ${missing.join(' or ')} controller (a cgroup v1 or hybrid host)` };
  if (!(await probe.writable(dir))) return { kind: 'none', reason: `the cgroup v2 group ${dir} is not delegated to this process (not writable)` };
  return { kind: 'v2', parent: path.join(dir, 'vms') };
}

/**
 * Makes `parent` (detectCgroupV2's) ready for VM groups. A cgroup with processes cannot hand
 * controllers to its children, so the agent first moves itself into a leaf `agent` beside it.
 */
export async function prepareCgroupParent(parent: string, pid: number = process.pid): Promise<void> {
  const own = path.dirname(parent);
  const leaf = path.join(own, 'agent');
  await mkdir(leaf, { recursive: true });
  if ((await readFile(path.join(own, 'cgroup.procs'), 'utf8').catch(() => '')).trim() !== '') await writeFile(path.join(leaf, 'cgroup.procs'), String(pid));
  await writeFile(path.join(own, 'cgroup.subtree_control'), '+cpu +memory');
  await mkdir(parent, { recursive: true });
  await writeFile(path.join(parent, 'cgroup.subtree_control'), '+cpu +memory');
}

/** A VM's resources as the VMI spec has them (spec.domain). */
export interface VmResources {
  requests?: Record<string, string | number | undefined>;
  limits?: Record<string, string | number | undefined>;
  /** spec.domain.memory.guest */
  guestMemory?: string | number;
}

/** The cgroup v2 settings of one VM (file name → value). */
export interface CgroupSettings {
  'cpu.weight': string;
  'cpu.max': string;
  'memory.max': string;
}

/** QEMU's own memory beside the guest's: TCG's translation cache is large, KVM needs less. */
export function memoryOverhead(accel: 'kvm' | 'tcg'): number {
  return (accel === 'tcg' ? 256 : 128) * 1024 * 1024;
}

/**
 * cpu.weight, cpu.max and memory.max of a VM (pure). CPU requests become a weight the way the
 * kubelet converts them (shares = milli-CPU × 1024 / 1000, mapped onto 1..10000), so a VM's
 * share against others follows its requests; no request counts as KubeVirt's 100m per vCPU.
 * A CPU limit becomes a quota per 100 ms period. Memory: the largest of the limit, the request
 * and the guest's memory, plus overhead; without any, no limit.
 */
export function cgroupSettings(res: VmResources, accel: 'kvm' | 'tcg'): CgroupSettings {
  const cpuReq = tryParseQuantity(res.requests?.cpu);
  const shares = Math.min(262144, Math.max(2, Math.round((cpuReq ?? 0.1) * 1024)));
  const weight = Math.max(1, Math.min(10000, 1 + Math.floor(((shares - 2) * 9999) / 262142)));
  const cpuLim = tryParseQuantity(res.limits?.cpu);
  const period = 100_000;
  const cpuMax = cpuLim !== undefined && cpuLim > 0 ? `${Math.max(1000, Math.round(cpuLim * period))} ${period}` : `max ${period}`;
  const mems = [res.limits?.memory, res.requests?.memory, res.guestMemory].map(tryParseQuantity).filter((m): m is number => m !== undefined && m > 0);
  const memMax = mems.length ? String(Math.ceil(Math.max(...mems) + memoryOverhead(accel))) : 'max';
  return { 'cpu.weight': String(weight), 'cpu.max': cpuMax, 'memory.max': memMax };
}

/** Creates (or updates) the VM's cgroup under `parent` and returns its directory. */
export async function vmCgroup(parent: string, uid: string, settings: CgroupSettings): Promise<string> {
  if (!/^[\w.-]+$/.test(uid)) throw new Error(`a VM cgroup needs a plain uid, not ${JSON.stringify(uid)}`);
  const dir = path.join(parent, uid);
  await mkdir(dir, { recursive: true });
  for (const [file, value] of Object.entries(settings)) await writeFile(path.join(dir, file), value);
  return dir;
}

/** Moves process `pid` (all its threads: cgroup v2 moves whole processes) into `dir`. */
export async function joinCgroup(dir: string, pid: number): Promise<void> {
  await writeFile(path.join(dir, 'cgroup.procs'), String(pid));
}

/** Removes a VM's cgroup once its QEMU is gone (a cgroup with processes cannot be removed: left for later). */
export async function removeVmCgroup(parent: string, uid: string): Promise<void> {
  await rmdir(path.join(parent, uid)).catch(() => undefined); // busy (EBUSY) or already gone: see above
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The agent's QemuPriority made concrete for this host (resolveQemuPriority). */
export interface HostPriority {
  nice: number;
  batch: boolean;
  tools: PriorityTools;
  /** Where VM cgroups go; undefined: none (see `cgroupReason`). */
  cgroupParent?: string;
  cgroupReason?: string;
}

/**
 * What of `policy` this host can do: the tools found, and a prepared cgroup v2 parent when
 * delegated. Never fails: a missing piece is logged and skipped, the rest still applies.
 */
export async function resolveQemuPriority(
  policy: QemuPriority,
  log: (line: string) => void = () => {},
  probe: CgroupProbe = hostCgroupProbe,
): Promise<HostPriority> {
  const tools = await findPriorityTools();
  if (policy.nice > 0 && !tools.nice) log("agent: `nice` (coreutils) is not in PATH: QEMU runs at the agent's niceness");
  if (policy.batch && !tools.chrt) log('agent: `chrt` (util-linux) is not in PATH: QEMU runs without SCHED_BATCH');
  const out: HostPriority = { nice: policy.nice, batch: policy.batch, tools };
  if (!policy.cgroups) {
    out.cgroupReason = 'disabled';
  } else {
    const support = await detectCgroupV2(probe);
    if (support.kind === 'v2') {
      try {
        await prepareCgroupParent(support.parent);
        out.cgroupParent = support.parent;
      } catch (err) {
        out.cgroupReason = `cannot prepare ${support.parent}: ${(err as Error).message}`;
      }
    } else {
      out.cgroupReason = support.reason;
    }
  }
  log(
    `agent: QEMU runs at nice ${policy.nice}${policy.batch && tools.chrt ? ', SCHED_BATCH' : ''}; ${out.cgroupParent ? `a cgroup per VM under ${out.cgroupParent}` : `no VM cgroups (${out.cgroupReason})`}`,
  );
  return out;
}
