/**
 * Live migration's shared vocabulary (docs/migration.md): the VMI's `status.migrationState` with
 * KubeVirt's field names, read the same way by the migration controller and the node agents.
 */
import type { MigrationConfiguration } from './migration-config.ts';

/** The VMI's status.migrationState (the fields Vessel uses). */
export interface MigrationState {
  migrationUid?: string;
  sourceNode?: string;
  targetNode?: string;
  /** Set by the target agent as it starts preparing (PreparingTarget): what runs the target, `<vmi>@<node>` (KubeVirt's target virt-launcher pod). */
  targetPod?: string;
  targetNodeAddress?: string;
  targetDirectMigrationNodePorts?: Record<string, number>;
  mode?: string;
  startTimestamp?: string;
  endTimestamp?: string;
  completed?: boolean;
  failed?: boolean;
  failureReason?: string;
  abortRequested?: boolean;
  abortStatus?: string;
  /** The effective settings (KubeVirt object and MigrationPolicy), written with the target by the migration controller. */
  migrationConfiguration?: MigrationConfiguration;
  migrationPolicyName?: string;
}

/** The VMI's migrationState, if any. */
export const stateOf = (vmi: object | undefined): MigrationState | undefined =>
  ((vmi as { status?: unknown } | undefined)?.status as { migrationState?: MigrationState } | undefined)?.migrationState;

/** Whether a migrationState describes a migration still under way (neither completed nor failed). */
export const isActive = (ms: MigrationState | undefined): ms is MigrationState & { migrationUid: string } => !!ms?.migrationUid && !ms.completed && !ms.failed;

/**
 * On a VMI (from the VM's template): `"true"` lets a guest under TCG run during its migration
 * (live precopy) instead of pausing for the transfer (docs/migration.md "TCG").
 */
export const TCG_LIVE_ANNOTATION = 'migration.vessel.io/tcg-live';

/**
 * On a VirtualMachineInstanceMigration: JSON of MigrationProgress, written by the source agent at
 * most once a second while the guest is sent, and once more when it ends.
 */
export const PROGRESS_ANNOTATION = 'vessel.io/migration-progress';

/** What the source QEMU's `query-migrate` (and `query-block-jobs`) said, in bytes and bytes/s. */
export interface MigrationProgress {
  /** When the source asked QEMU (ISO time). */
  at: string;
  /** QEMU's migration status: setup, active, device, completed, failed, cancelled... */
  status: string;
  /** ms since `migrate`, QEMU's total-time. */
  elapsedMs?: number;
  memory: { total: number; remaining: number; transferred: number; dirtyRate: number; throughputMbps: number; iterations?: number };
  /** The disks' mirror jobs, when any runs (local disks copied to the target). */
  disk?: { total: number; remaining: number };
  /** The guest's pause at the switch-over (ms), once QEMU reports it. */
  downtimeMs?: number;
}

/** The progress a migration object carries, if any (undefined when missing or not JSON). */
export function progressOf(vmim: { metadata?: { annotations?: Record<string, string> } } | undefined): MigrationProgress | undefined {
  const raw = vmim?.metadata?.annotations?.[PROGRESS_ANNOTATION];
  if (!raw) return undefined;
  try {
    const p = JSON.parse(raw) as MigrationProgress;
    return typeof p === 'object' && p !== null && typeof p.memory === 'object' && p.memory !== null ? p : undefined;
  } catch {
    return undefined;
  }
}
