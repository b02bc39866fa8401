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
