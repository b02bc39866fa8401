/**
 * The node's CPU manager (kubelet's static CPU manager policy, as KubeVirt uses it) and the
 * host facts dedicated CPUs and hugepages need. `vessel agent --reserved-cpus 0` reserves CPUs
 * for the system; the rest are the exclusive pool. A VMI with `dedicatedCpuPlacement` gets one
 * pool CPU per vCPU (and one more for `isolateEmulatorThread`), recorded on the VMI in the
 * annotations below before QEMU starts, so a restarted agent reassigns nothing. After start each
 * vCPU thread (QMP `query-cpus-fast`) is pinned to its CPU, the emulator threads to the shared
 * pool (or the isolated CPU), and every other VM's QEMU to the shared pool: all CPUs but the
 * assigned ones. Affinity is set with sched_setaffinity through util-linux's `taskset`.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { promisify } from 'node:util';
import { cpuRanges } from '../qemu/argv/machine.ts';

const run = promisify(execFile);

/** The host CPUs a dedicated VMI's vCPUs run on (vCPU i on the i-th), as a CPU list ("1" or "2-3"). */
export const DEDICATED_CPUS_ANNOTATION = 'vessel.io/dedicated-cpus';
/** With isolateEmulatorThread: the one host CPU its emulator (and I/O) threads run on. */
export const EMULATOR_CPUS_ANNOTATION = 'vessel.io/emulator-cpus';

export type CpuManagerErrorCode = 'InvalidCpuList' | 'NoCpuManager' | 'InsufficientDedicatedCpus' | 'PinningFailed' | 'HugepagesUnavailable';

export class CpuManagerError extends Error {
  constructor(
    readonly code: CpuManagerErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'CpuManagerError';
  }
}

/** Parses a Linux CPU list ("0", "0-2,5"); throws InvalidCpuList. */
export function parseCpuList(list: string): number[] {
  const out = new Set<number>();
  const s = list.trim();
  if (s === '') return [];
  for (const part of s.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new CpuManagerError('InvalidCpuList', `${JSON.stringify(list)} is not a CPU list such as 0 or 0-1,4`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a || b > 4095) throw new CpuManagerError('InvalidCpuList', `${JSON.stringify(list)} is not a CPU list such as 0 or 0-1,4`);
    for (let i = a; i <= b; i++) out.add(i);
  }
  return [...out].sort((x, y) => x - y);
}

/** A CPU list in Linux's short form ("0-2,5"). */
export function formatCpuList(list: readonly number[]): string {
  return cpuRanges([...new Set(list)].sort((a, b) => a - b)).join(',');
}

/** One dedicated VMI's CPUs. */
export interface CpuAssignment {
  /** Host CPU of each vCPU (index = vCPU). */
  vcpus: number[];
  /** The isolated emulator CPU, if any. */
  emulator?: number;
}

/** The CPUs of an assignment, emulator included. */
export const assignedCpus = (a: CpuAssignment): number[] => (a.emulator === undefined ? a.vcpus : [...a.vcpus, a.emulator]);

/** The assignment recorded in a VMI's annotations, or undefined when it has none (or a malformed one). */
export function recordedAssignment(annotations: Record<string, string> | undefined): CpuAssignment | undefined {
  const v = annotations?.[DEDICATED_CPUS_ANNOTATION];
  if (v === undefined) return undefined;
  try {
    const e = annotations?.[EMULATOR_CPUS_ANNOTATION];
    const emulator = e === undefined ? undefined : parseCpuList(e);
    return { vcpus: parseCpuList(v), emulator: emulator?.[0] };
  } catch {
    return undefined;
  }
}

/** The annotations that record an assignment. */
export function assignmentAnnotations(a: CpuAssignment): Record<string, string> {
  return { [DEDICATED_CPUS_ANNOTATION]: formatCpuList(a.vcpus), ...(a.emulator === undefined ? {} : { [EMULATOR_CPUS_ANNOTATION]: String(a.emulator) }) };
}

/**
 * A live migration's target CPUs (docs/pinning.md "Live migration"): the target agent assigns
 * them from its own pool before its QEMU starts and records them here as
 * `{"migrationUid","node","cpus","emulator"?}`, next to the source's in the annotations above.
 * Once the guest runs on the target, that agent moves them into the annotations above and
 * removes this one; the source's CPUs are free as soon as the VMI is no longer its node's.
 */
export const TARGET_CPUS_ANNOTATION = 'vessel.io/migration-target-cpus';

/** The target annotation's value for an assignment on `node` for migration `migrationUid`. */
export function targetAnnotation(migrationUid: string, node: string, a: CpuAssignment): string {
  return JSON.stringify({ migrationUid, node, cpus: formatCpuList(a.vcpus), ...(a.emulator === undefined ? {} : { emulator: String(a.emulator) }) });
}

/** The target assignment recorded for migration `migrationUid` on `node`, if any (a malformed one is none). */
export function recordedTargetAssignment(
  annotations: Record<string, string> | undefined,
  migrationUid: string | undefined,
  node: string,
): CpuAssignment | undefined {
  const v = annotations?.[TARGET_CPUS_ANNOTATION];
  if (v === undefined || !migrationUid) return undefined;
  try {
    const t = JSON.parse(v) as { migrationUid?: unknown; node?: unknown; cpus?: unknown; emulator?: unknown };
    if (t.migrationUid !== migrationUid || t.node !== node || typeof t.cpus !== 'string') return undefined;
    return { vcpus: parseCpuList(t.cpus), emulator: typeof t.emulator === 'string' ? parseCpuList(t.emulator)[0] : undefined };
  } catch {
    return undefined;
  }
}

/** What assignmentOn needs of a VMI. */
export interface VmiCpuView {
  annotations?: Record<string, string>;
  nodeName?: string;
  migrationState?: { migrationUid?: string; targetNode?: string; completed?: boolean; failed?: boolean };
}

/**
 * The CPUs a VMI holds on `node`, and whether they are a migration target's not yet handed
 * over. The target's of the current migration while it runs and once it completed there (until
 * the handover rewrites the main annotations); else the main annotations when the VMI is the
 * node's. A source node stops counting the VMI when the switch records the target as its node.
 */
export function assignmentOn(vmi: VmiCpuView, node: string): { a: CpuAssignment; incoming: boolean } | undefined {
  const ms = vmi.migrationState;
  if (ms && ms.targetNode === node && !ms.failed) {
    const t = recordedTargetAssignment(vmi.annotations, ms.migrationUid, node);
    if (t) return { a: t, incoming: true };
  }
  if (vmi.nodeName !== node) return undefined;
  const a = recordedAssignment(vmi.annotations);
  return a && { a, incoming: false };
}

/** The annotation patch of a target's handover: its CPUs become the VMI's, the target record goes. */
export function handoverAnnotations(a: CpuAssignment): Record<string, string | null> {
  return { ...assignmentAnnotations(a), [EMULATOR_CPUS_ANNOTATION]: a.emulator === undefined ? null : String(a.emulator), [TARGET_CPUS_ANNOTATION]: null };
}

/** The node's CPUs split into reserved (the system's, shared) and the exclusive pool. Pure. */
export class CpuManager {
  readonly pool: number[];
  constructor(
    readonly all: readonly number[],
    readonly reserved: readonly number[],
  ) {
    const missing = reserved.filter((c) => !all.includes(c));
    if (missing.length)
      throw new CpuManagerError('InvalidCpuList', `--reserved-cpus ${formatCpuList(missing)}: no such CPU on this host (it has ${formatCpuList(all)})`);
    if (reserved.length === 0) throw new CpuManagerError('InvalidCpuList', '--reserved-cpus must keep at least one CPU for the system');
    this.pool = all.filter((c) => !reserved.includes(c));
  }

  /** `vcpus` (+1 isolated emulator) CPUs of the pool not in `taken`, lowest first; throws InsufficientDedicatedCpus. */
  assign(vcpus: number, isolateEmulator: boolean, taken: Iterable<number>): CpuAssignment {
    const busy = new Set(taken);
    const free = this.pool.filter((c) => !busy.has(c));
    const need = vcpus + (isolateEmulator ? 1 : 0);
    if (free.length < need)
      throw new CpuManagerError(
        'InsufficientDedicatedCpus',
        `needs ${need} dedicated CPU${need === 1 ? '' : 's'} and this node's CPU manager has ${free.length} free of ${this.pool.length} (${formatCpuList(this.pool)})`,
      );
    return { vcpus: free.slice(0, vcpus), emulator: isolateEmulator ? free[vcpus] : undefined };
  }

  /** The shared pool: every CPU no dedicated VMI holds (the reserved ones always). */
  shared(taken: Iterable<number>): number[] {
    const busy = new Set(taken);
    return this.all.filter((c) => !busy.has(c));
  }
}

/** The host's online CPUs. */
export async function hostCpus(): Promise<number[]> {
  const online = await readFile('/sys/devices/system/cpu/online', 'utf8').catch(() => undefined);
  return online ? parseCpuList(online) : cpus().map((_, i) => i);
}

/** Host NUMA node of each CPU (cpu → node); every CPU on node 0 where sysfs has no nodes. */
export async function hostNumaNodes(): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  const dir = '/sys/devices/system/node';
  for (const d of await readdir(dir).catch(() => [] as string[])) {
    const m = /^node(\d+)$/.exec(d);
    if (!m) continue;
    const list = await readFile(`${dir}/${d}/cpulist`, 'utf8').catch(() => '');
    for (const c of parseCpuList(list)) out.set(c, Number(m[1]));
  }
  return out;
}

/** Hugepage pool sizes the kernel has, as Kubernetes resource names. */
export const HUGEPAGE_SIZES = [
  { resource: 'hugepages-2Mi', sysfs: 'hugepages-2048kB', bytes: 2 * 2 ** 20 },
  { resource: 'hugepages-1Gi', sysfs: 'hugepages-1048576kB', bytes: 2 ** 30 },
] as const;

/** Total and free pages of one hugepage size, or undefined when the kernel has no such pool. */
export async function hugepagePool(sysfs: string): Promise<{ total: number; free: number } | undefined> {
  const dir = `/sys/kernel/mm/hugepages/${sysfs}`;
  const read = (f: string) => readFile(`${dir}/${f}`, 'utf8').then(Number, () => undefined);
  const [total, free] = await Promise.all([read('nr_hugepages'), read('free_hugepages')]);
  return total === undefined || free === undefined ? undefined : { total, free };
}

/**
 * What the Node reports beside cpu and memory: hugepages-2Mi/-1Gi (the pools' total size, as
 * kubelet: the scheduler subtracts what VMIs placed there use) and, with a CPU manager, the
 * size of its exclusive pool.
 */
export async function nodeExtendedResources(cpuManager: CpuManager | undefined): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const h of HUGEPAGE_SIZES) {
    const pool = await hugepagePool(h.sysfs);
    if (pool) out[h.resource] = `${(pool.total * h.bytes) / 2 ** 20}Mi`;
  }
  if (cpuManager) out['vessel.io/dedicated-cpus'] = String(cpuManager.pool.length);
  return out;
}

/** Sets the CPU affinity of one thread (or with `allThreads` every thread of process `id`). */
export async function setAffinity(id: number, list: readonly number[], allThreads = false): Promise<void> {
  if (list.length === 0) throw new CpuManagerError('PinningFailed', `no CPU to pin ${id} to`);
  try {
    await run('taskset', [...(allThreads ? ['-a'] : []), '-p', '-c', formatCpuList(list), String(id)], { timeout: 10_000 });
  } catch (e) {
    throw new CpuManagerError('PinningFailed', `taskset ${formatCpuList(list)} ${id}: ${(e as Error).message.trim()}`);
  }
}

/** The CPU affinity of a thread (sched_getaffinity, from /proc). */
export async function affinityOf(pid: number, tid: number = pid): Promise<number[]> {
  const status = await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8');
  const m = /^Cpus_allowed_list:\s*(.*)$/m.exec(status);
  return m ? parseCpuList(m[1]) : [];
}

/** The threads of a process. */
export async function threadsOf(pid: number): Promise<number[]> {
  return (await readdir(`/proc/${pid}/task`).catch(() => [] as string[])).map(Number).filter((n) => Number.isInteger(n));
}
