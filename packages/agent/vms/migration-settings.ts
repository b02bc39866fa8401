/**
 * The migration settings on the node (docs/migration.md "Settings"): what the migration
 * controller wrote into the VMI's migrationState.migrationConfiguration, applied to QEMU. The
 * source sets the bandwidth limit and the auto-converge and post-copy capabilities (the target
 * post-copy too: QEMU wants it on both ends), and a watch over `query-migrate` decides when the
 * completion or progress timeout is hit: then post-copy when allowed, else (allowWorkloadDisruption)
 * the guest paused so the copy ends, else cancel.
 */
import { migration, migrationConfig, tryParseQuantity } from '@vessel/api';
import type { QmpClient } from '../qmp/client.ts';

type Configuration = migrationConfig.MigrationConfiguration;
const GIB = 2 ** 30;
/** QEMU's "unlimited" (its max-bandwidth is bytes/s; 0 would stop the transfer). */
const UNLIMITED = 1e12;

/** The configuration a migration runs with: the controller's, else KubeVirt's defaults (a migration started before settings existed). */
export function configurationOf(ms: { migrationConfiguration?: Partial<Configuration> } | undefined): Configuration {
  return { ...migrationConfig.MIGRATION_DEFAULTS, ...ms?.migrationConfiguration };
}

/** Bytes a migration moves, as KubeVirt sizes the completion timeout: guest memory (+ disks it copies). */
export function migrationDataBytes(spec: unknown, migratedDiskBytes = 0): number {
  const dom = (spec as { domain?: { memory?: { guest?: unknown }; resources?: { requests?: { memory?: unknown }; limits?: { memory?: unknown } } } })?.domain;
  const mem = [dom?.memory?.guest, dom?.resources?.requests?.memory, dom?.resources?.limits?.memory]
    .map(tryParseQuantity)
    .find((m) => m !== undefined && m > 0);
  return (mem ?? 0) + migratedDiskBytes;
}

/**
 * Source: capabilities and bandwidth, set every time (a QEMU that arrived by migration keeps the
 * last ones). With node-local disks QEMU pauses before the switch-over (`pre-switchover`, the
 * guest stopped, its devices not yet sent), where migration.ts ends the disk mirrors; QEMU 7.2's
 * postcopy_start passes that pause too, so post-copy stays allowed with them (docs/migration.md).
 */
export async function applySourceSettings(qmp: QmpClient, conf: Configuration, opts: { localDisks: number }): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: opts.localDisks > 0 },
      { capability: 'auto-converge', state: conf.allowAutoConverge },
      { capability: 'postcopy-ram', state: conf.allowPostCopy },
    ],
  });
  const bw = migrationConfig.bandwidthBytes(conf.bandwidthPerMigration);
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': bw > 0 ? bw : UNLIMITED });
}

/**
 * The self-announce the target QEMU makes when the guest starts there (ms; QEMU 7.2's defaults,
 * which libvirt and KubeVirt keep): a RARP per NIC MAC, and for virtio-net with
 * VIRTIO_NET_F_GUEST_ANNOUNCE a request that the guest send its own gratuitous ARPs, at 50, 150,
 * 250, 350 and 450 ms, so every bridge learns the guest's new port at once instead of sending
 * to the old node until its entry ages out.
 */
export const ANNOUNCE = Object.freeze({ 'announce-initial': 50, 'announce-max': 550, 'announce-rounds': 5, 'announce-step': 100 });

/** Target: post-copy must be on for the incoming side too; the announce set explicitly (a QEMU that arrived by migration keeps the last parameters). */
export async function applyTargetSettings(qmp: QmpClient, conf: Configuration): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'postcopy-ram', state: conf.allowPostCopy },
    ],
  });
  await qmp.execute('migrate-set-parameters', { ...ANNOUNCE });
}

export type Verdict = { action: 'postcopy' | 'pause' | 'cancel'; reason: string };

/** migrationState.mode once the source paused the guest to finish (KubeVirt's MigrationPaused). */
export const PAUSED_MODE = 'Paused';

/**
 * Whether the source pauses a running guest before `migrate`, for the whole transfer
 * (stop-and-copy, mode Paused; the target resumes it). Under TCG QEMU 7.2 loses dirty-page marks
 * of a running guest: the target's RAM then differs from the source's and the guest may crash
 * (docs/migration.md "TCG: the guest pauses for the transfer"). Under KVM, KVM tracks dirty pages.
 */
export function stopAndCopy(accel: string, annotations: Readonly<Record<string, string>> | undefined, running: boolean): boolean {
  return accel === 'tcg' && running && annotations?.[migration.TCG_LIVE_ANNOTATION] !== 'true';
}

/** migrationState.mode of a post-copy (KubeVirt's MigrationPostCopy), also one started from a paused source. */
export const POSTCOPY_MODE = 'PostCopy';

/** How the source starts a transfer: live precopy, paused for all of it, or paused and straight into post-copy. */
export type TransferStart = 'live' | 'stop-and-copy' | 'postcopy';

/**
 * Under TCG a running guest pauses for its transfer (stopAndCopy). When the migration may use
 * post-copy it goes there at once: the target runs the guest as soon as the device state arrived
 * and faults its pages over, so the pause is about the device state, not the whole memory. No
 * dirty mark is involved (the source's vCPU never runs again), so TCG's lost marks cannot hit it.
 */
export function transferStart(
  accel: string,
  annotations: Readonly<Record<string, string>> | undefined,
  running: boolean,
  conf: Pick<Configuration, 'allowPostCopy'>,
): TransferStart {
  if (!stopAndCopy(accel, annotations, running)) return 'live';
  return conf.allowPostCopy ? 'postcopy' : 'stop-and-copy';
}

/**
 * A timeout's verdict for a guest that is not running (paused for the transfer, or by its user):
 * post-copy would not bring it over sooner (it dirties nothing), and QEMU 7.2's target starts
 * the guest at post-copy's switch-over whatever its state on the source, so it ends the
 * migration instead.
 */
export function verdictWhenStopped(v: Verdict | undefined, guestRunning: boolean): Verdict | undefined {
  if (v?.action !== 'postcopy' || guestRunning) return v;
  return {
    action: 'cancel',
    reason: v.reason.replace(/: switched to post-copy$/, ': cancelled (the guest is paused: post-copy would not bring it over sooner)'),
  };
}

/**
 * Follows one precopy: the completion timeout (completionTimeoutPerGiB × GiB moved rounded up, from the
 * start) and the progress timeout (remaining bytes not below their lowest for progressTimeout s).
 * Says once what to do when one is hit; nothing afterwards.
 */
export class MigrationWatch {
  readonly completionTimeoutMs: number;
  private lowest = Infinity;
  private lastProgress: number;
  private done = false;

  constructor(
    private readonly conf: Configuration,
    dataBytes: number,
    private readonly startedAt: number,
  ) {
    // Whole GiB, rounded up, as KubeVirt sizes it (a quantity scaled up to giga): a 128 MiB guest
    // gets a whole completionTimeoutPerGiB, not an eighth of it.
    this.completionTimeoutMs = conf.completionTimeoutPerGiB * Math.max(1, Math.ceil(dataBytes / GIB)) * 1000;
    this.lastProgress = startedAt;
  }

  check(info: { status?: string; ram?: { remaining?: number } }, now: number): Verdict | undefined {
    if (this.done || info.status !== 'active') return undefined;
    const remaining = info.ram?.remaining;
    if (typeof remaining === 'number' && remaining < this.lowest) {
      this.lowest = remaining;
      this.lastProgress = now;
    }
    let why: string | undefined;
    if (now - this.startedAt >= this.completionTimeoutMs) {
      why = `completion timeout: not done within ${(this.completionTimeoutMs / 1000).toFixed(1)} s (completionTimeoutPerGiB ${this.conf.completionTimeoutPerGiB})`;
    } else if (now - this.lastProgress >= this.conf.progressTimeout * 1000) {
      why = `progress timeout: the remaining memory did not decrease for ${this.conf.progressTimeout} s (progressTimeout)`;
    }
    if (!why) return undefined;
    this.done = true;
    if (this.conf.allowPostCopy) return { action: 'postcopy', reason: `${why}: switched to post-copy` };
    // KubeVirt's allowWorkloadDisruption without post-copy: the guest pauses, dirties nothing, and the copy ends.
    if (this.conf.allowWorkloadDisruption) return { action: 'pause', reason: `${why}: the guest paused to complete (allowWorkloadDisruption)` };
    return { action: 'cancel', reason: `${why}: cancelled` };
  }
}
