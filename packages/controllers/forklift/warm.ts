/**
 * Warm migration of a running VM (docs/forklift.md, "Warm migration"): Forklift's pipeline
 * Initialize → DiskAllocation → DiskTransfer (precopy rounds: a full copy while the source runs,
 * then every `precopyInterval` a round of the blocks written since) → Cutover (at
 * `Migration.spec.cutover`: the source stopped, the last round, then the target VM made) →
 * VirtualMachineCreation, with `status.vms[].warm` {successes, failures, consecutiveFailures,
 * nextPrecopyAt, precopies[{start, end, deltas[{disk, deltaId}]}]} as Forklift writes it.
 *
 * The moves are in `warmNext`, a pure function of the status, the clock and the cutover time;
 * the work is behind `WarmOps`, which a source provider implements: for the `openshift` type, the
 * agents' warm copy (packages/agent/vms/warm-copy.ts: a QEMU dirty bitmap and `blockdev-backup`
 * rounds into the target volume's NBD export). A run is resumable: the status says where it is,
 * and a lost bitmap (the source's QEMU restarted) makes the next round full again.
 */
import type { forklift } from '@vessel/api';

/** Forklift's default precopy interval (its `precopy_interval`, 60 min); the controller may be told otherwise. */
export const DEFAULT_PRECOPY_INTERVAL_MS = 60 * 60_000;
/** Consecutive failed rounds after which the VM's migration fails (Forklift's default). */
export const MAX_CONSECUTIVE_FAILURES = 5;

export interface WarmDelta {
  disk: string;
  deltaId: string;
}
export interface WarmPrecopy {
  start: string;
  end?: string;
  deltas?: WarmDelta[];
}
/** `status.vms[].warm`, Forklift's shape. */
export interface WarmStatus {
  successes: number;
  failures: number;
  consecutiveFailures: number;
  nextPrecopyAt?: string;
  precopies?: WarmPrecopy[];
}

export type WarmVmStatus = forklift.MigrationVmStatus & { warm?: WarmStatus };

/** A disk of the source VM and the target claim it is copied to. */
export interface WarmDisk {
  /** The source VM's volume (disk) name. */
  volume: string;
  /** Virtual size in bytes. */
  size: number;
  /** The target claim (DataVolume) name. */
  claim: string;
}

/** What a warm run asks of the source provider and the cluster; each call is idempotent. */
export interface WarmOps {
  /** Initialize: the source VM is running; its disks (rejects when it is not running). */
  initialize(): Promise<WarmDisk[]>;
  /** DiskAllocation: the disk's target volume, blank and of its size, exists and is bound. */
  allocate(disk: WarmDisk): Promise<void>;
  /**
   * One round of a disk: `full` the whole disk (change tracking starts with it), `incremental`
   * the blocks written since the last round that succeeded. Rejects with `code: 'WarmNoBitmap'`
   * when the tracking is gone (the run goes back to full). Resolves with the bytes copied and an
   * id of the delta (Forklift's `deltaId`).
   */
  copy(disk: WarmDisk, mode: 'full' | 'incremental', progress: (done: number, total: number) => void): Promise<{ bytes: number; deltaId: string }>;
  /** Cutover: the source stops writing (its guest paused; see docs for why not powered off first). */
  quiesceSource(): Promise<void>;
  /** Cutover, after the last round: the source VM is stopped for good. */
  stopSource(): Promise<void>;
  /** VirtualMachineCreation: the target VM, on the copied claims. */
  createTarget(): Promise<void>;
  /** The run's end (done, failed or cancelled): tracking and exports go; nothing if none. */
  release(): Promise<void>;
  /**
   * A cancel, after `release`: the target volumes this run allocated go (DataVolumes, claims and
   * their exports' secrets), as a cancelled cold VM's; nothing the run did not make.
   */
  discard(): Promise<void>;
}

export type WarmMove = { do: 'precopy'; full: boolean } | { do: 'cutover' } | { do: 'wait'; until: number } | { do: 'fail'; reason: string };

/**
 * The next move of a VM in its precopy phase. The first round (a full copy) always comes first,
 * even when the cutover time has passed: a cutover needs a base on the target. Then the cutover
 * once its time has come, else the next round at `nextPrecopyAt`.
 */
export function warmNext(w: WarmStatus, now: number, cutover: number | undefined, maxFailures = MAX_CONSECUTIVE_FAILURES): WarmMove {
  if (w.consecutiveFailures >= maxFailures) return { do: 'fail', reason: `${w.consecutiveFailures} precopy rounds failed in a row` };
  if (w.successes === 0) return { do: 'precopy', full: true };
  if (cutover !== undefined && now >= cutover) return { do: 'cutover' };
  const next = w.nextPrecopyAt ? Date.parse(w.nextPrecopyAt) : now;
  if (now >= next) return { do: 'precopy', full: false };
  return { do: 'wait', until: cutover !== undefined ? Math.min(next, cutover) : next };
}

/** Forklift's `Migration.spec.cutover` (RFC 3339), or undefined when unset or not a time. */
export function cutoverTime(spec: { cutover?: unknown } | undefined): number | undefined {
  const t = typeof spec?.cutover === 'string' ? Date.parse(spec.cutover) : NaN;
  return Number.isFinite(t) ? t : undefined;
}

const MB = 1_000_000;
const step = (name: string, total = 1) => ({ name, phase: 'Pending', progress: { total, completed: 0 } });

/** A warm VM's pipeline and empty warm status (Initialize, DiskAllocation, DiskTransfer with a task per disk, Cutover, VirtualMachineCreation). */
export function warmPipeline(disks: readonly { claim: string; size: number }[]): forklift.MigrationStep[] {
  const mb = (b: number) => Math.ceil(b / MB);
  return [
    step('Initialize'),
    step('DiskAllocation', disks.length),
    {
      ...step(
        'DiskTransfer',
        disks.reduce((a, d) => a + mb(d.size), 0),
      ),
      annotations: { unit: 'MB' },
      tasks: disks.map((d) => ({ ...step(d.claim, mb(d.size)), annotations: { unit: 'MB' } })),
    },
    step('Cutover'),
    step('VirtualMachineCreation'),
  ];
}

export interface WarmRunOptions {
  /** Time between rounds (default DEFAULT_PRECOPY_INTERVAL_MS). */
  precopyIntervalMs?: number;
  maxFailures?: number;
  /** The Migration's current cutover time (read again at every move). */
  cutover: () => number | undefined;
  /** Writes the status (the caller throttles). */
  write: (force?: boolean) => Promise<void>;
  /** Throws to end the run (cancel, controller stopping); called at every move and while waiting. */
  checkpoint: () => void;
  now?: () => number;
  /** Waits up to `ms` (a poll: cutover and cancel are checked after it). */
  sleep?: (ms: number) => Promise<void>;
  log?: (line: string) => void;
}

/** A round that failed on a disk (not a cancel or stop, which pass through). */
class RoundFailed extends Error {}

const iso = (t: number) => new Date(t).toISOString();
/** How long a wait lasts before the cutover time and cancel are read again. */
const POLL_MS = 1000;

/**
 * Runs a VM's warm migration from wherever its status is to the end; throws what fails (the
 * caller marks the step it names in `current()`), always releasing the tracking and exports when
 * it ends other than by a stop of the controller.
 */
export class WarmRun {
  private stepName = 'Initialize';
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(
    private readonly s: WarmVmStatus,
    private readonly ops: WarmOps,
    private readonly opts: WarmRunOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** The step being run (where a failure is recorded). */
  current(): string {
    return this.stepName;
  }

  async run(): Promise<void> {
    const s = this.s;
    const w = (s.warm ??= { successes: 0, failures: 0, consecutiveFailures: 0 });
    const get = (name: string) => s.pipeline.find((p) => p.name === name)!;
    this.enter('Initialize');
    const disks = await this.ops.initialize();
    // A pipeline made before the disks were known gets its per-disk tasks now.
    const transfer = get('DiskTransfer');
    if (!transfer.tasks?.length) Object.assign(transfer, warmPipeline(disks)[2]);
    get('DiskAllocation').progress.total = disks.length;
    this.done('Initialize');
    this.opts.checkpoint();
    this.enter('DiskAllocation');
    for (const [i, d] of disks.entries()) {
      await this.ops.allocate(d);
      get('DiskAllocation').progress.completed = i + 1;
    }
    this.done('DiskAllocation');
    this.enter('DiskTransfer');
    await this.opts.write(true);
    for (; get('Cutover').phase === 'Pending';) {
      this.opts.checkpoint();
      const move = warmNext(w, this.now(), this.opts.cutover(), this.opts.maxFailures);
      if (move.do === 'fail') throw new Error(move.reason);
      if (move.do === 'cutover') break;
      if (move.do === 'wait') {
        await this.sleep(Math.max(0, Math.min(POLL_MS, move.until - this.now())));
        continue;
      }
      await this.precopy(disks, move.full);
    }
    this.done('DiskTransfer');
    if (get('Cutover').phase !== 'Completed') {
      this.enter('Cutover');
      await this.opts.write(true);
      await this.ops.quiesceSource();
      // The last round: the source writes nothing more, so the target becomes the source's disk.
      await this.round(disks, false, true);
      await this.ops.stopSource();
      this.done('Cutover');
    }
    this.enter('VirtualMachineCreation');
    await this.opts.write(true);
    await this.ops.createTarget();
    this.done('VirtualMachineCreation');
    await this.ops.release();
  }

  /** A precopy round; a failure is counted (the next round comes after the interval), not thrown. */
  private async precopy(disks: readonly WarmDisk[], full: boolean): Promise<void> {
    const w = this.s.warm!;
    try {
      await this.round(disks, full, false);
    } catch (e) {
      if (!(e instanceof RoundFailed)) throw e; // a cancel or the controller stopping
      w.failures++;
      w.consecutiveFailures++;
      w.nextPrecopyAt = iso(this.now() + this.interval());
      const reason = e instanceof Error ? e.message : String(e);
      this.opts.log?.(`warm: precopy round failed (${w.consecutiveFailures} in a row): ${reason}`);
      const st = this.s.pipeline.find((p) => p.name === 'DiskTransfer')!;
      st.warning = { phase: 'DiskTransfer', reasons: [reason] };
      await this.opts.write(true);
    }
  }

  /** One round over every disk, recorded in `precopies`; `last`: the cutover's round (a failure throws). */
  private async round(disks: readonly WarmDisk[], full: boolean, last: boolean): Promise<void> {
    const w = this.s.warm!;
    const p: WarmPrecopy = { start: iso(this.now()), deltas: [] };
    (w.precopies ??= []).push(p);
    const transfer = this.s.pipeline.find((x) => x.name === 'DiskTransfer')!;
    try {
      for (const d of disks) {
        this.opts.checkpoint();
        const task = transfer.tasks?.find((t) => t.name === d.claim);
        const progress = (done: number, total: number) => {
          // A full round shows the disk's progress; later rounds keep the task complete.
          if (task && full) task.progress.completed = Math.min(task.progress.total, Math.floor((done / Math.max(1, total)) * task.progress.total));
          void this.opts.write();
        };
        if (task && full) {
          task.phase = 'Running';
          task.started ??= iso(this.now());
        }
        let r: { bytes: number; deltaId: string };
        try {
          r = await this.ops.copy(d, full ? 'full' : 'incremental', progress).catch((e: unknown) => {
            if ((e as { code?: string }).code !== 'WarmNoBitmap') throw e;
            this.opts.log?.(`warm: ${d.volume}: change tracking lost, copying the whole disk again`);
            return this.ops.copy(d, 'full', progress);
          });
        } catch (e) {
          throw new RoundFailed(`${d.volume}: ${e instanceof Error ? e.message : String(e)}`);
        }
        p.deltas!.push({ disk: d.volume, deltaId: r.deltaId });
        if (task && task.phase !== 'Completed') {
          task.phase = 'Completed';
          task.completed = iso(this.now());
          task.progress.completed = task.progress.total;
        }
      }
    } catch (e) {
      p.end = iso(this.now());
      throw e;
    }
    p.end = iso(this.now());
    transfer.progress.completed = (transfer.tasks ?? []).reduce((a, t) => a + t.progress.completed, 0);
    if (!last) {
      w.successes++;
      w.consecutiveFailures = 0;
      w.nextPrecopyAt = iso(this.now() + this.interval());
      delete transfer.warning;
      transfer.reason = `precopy ${w.successes} done`;
    }
    await this.opts.write(true);
  }

  private interval(): number {
    return this.opts.precopyIntervalMs ?? DEFAULT_PRECOPY_INTERVAL_MS;
  }

  private enter(name: string): void {
    this.stepName = name;
    this.s.phase = name;
    const st = this.s.pipeline.find((p) => p.name === name)!;
    st.phase = 'Running';
    st.started ??= iso(this.now());
  }

  private done(name: string): void {
    const st = this.s.pipeline.find((p) => p.name === name)!;
    st.phase = 'Completed';
    st.completed = iso(this.now());
    st.progress.completed = st.progress.total;
  }
}
