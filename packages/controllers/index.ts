/**
 * @vessel/controllers: the control loops of the server, built on the small runtime they share
 * with the agent (@vessel/runtime: informer, work queue). Each controller is one file.
 */
import type { Client } from '@vessel/client';
import { DataSourceController } from './datasource.ts';
import { DataVolumeController } from './datavolume.ts';
import { GarbageCollector } from './gc.ts';
import { NamespaceController } from './namespace.ts';
import { LeaderElector } from '@vessel/runtime';
import { VirtualMachineController } from './vm.ts';
import { VolumeBinder } from './volume-binder.ts';
import { Scheduler } from './scheduler.ts';
import { MigrationController } from './migration.ts';
import { CloneController } from './clone.ts';
import { EvacuationController } from './evacuation.ts';
import { NodeLifecycleController } from './node-lifecycle.ts';
import { IpamController, vmNetworkCidr } from './ipam.ts';
import { EndpointSliceController } from './endpointslice.ts';
import type { SchedulingSettings } from './scheduling/fit.ts';
import { ForkliftController } from './forklift/controller.ts';
import { VirtualMachinePoolController } from './vmpool.ts';
import { VirtualMachineInstanceReplicaSetController } from './vmirs.ts';
import { DataImportCronController } from './dataimportcron.ts';
import { VirtualMachineExportController } from './vmexport.ts';

export { GarbageCollector } from './gc.ts';
export { NamespaceController } from './namespace.ts';
export { VolumeBinder, defaultClass } from './volume-binder.ts';
export { DataVolumeController } from './datavolume.ts';
export { DataSourceController } from './datasource.ts';
export { VirtualMachineController } from './vm.ts';
export { Scheduler } from './scheduler.ts';
export { MigrationController, MIGRATION_TARGET_ANNOTATION } from './migration.ts';
export { CloneController } from './clone.ts';
export { EvacuationController, DRAIN_TAINT, EVACUATION_LABEL, hasDrainTaint, wantsLiveMigration } from './evacuation.ts';
export { NodeLifecycleController } from './node-lifecycle.ts';
export { IpamController, IpamReason, ADDRESS_CONDITION, vmNetworkCidr, type IpamOptions } from './ipam.ts';
export { EndpointSliceController } from './endpointslice.ts';
export type { SchedulingSettings } from './scheduling/fit.ts';
export { ForkliftController, type ForkliftOptions } from './forklift/controller.ts';
export { VirtualMachinePoolController } from './vmpool.ts';
export { VirtualMachineInstanceReplicaSetController } from './vmirs.ts';
export { DataImportCronController, type DataImportCronOptions } from './dataimportcron.ts';
export { VirtualMachineExportController } from './vmexport.ts';

export interface RunningControllers {
  /** Whether this process currently holds the lease and runs the controllers. */
  readonly leading: boolean;
  stop(): Promise<void>;
}

export interface ControllerOptions {
  log?: (line: string) => void;
  /** Lease timing (defaults: 15 s lease, renewed every 5 s). */
  leaseMs?: number;
  /** The scheduler's overcommit settings (KubeVirt's cpuAllocationRatio and memoryOvercommit). */
  scheduling?: SchedulingSettings;
  /** How long a node may go without its agent's heartbeat before it is Unknown (default 40 s). */
  nodeGracePeriodMs?: number;
  /** The VM network IPAM allocates from (default 10.244.0.0/16). */
  vmNetworkCidr?: string;
  /** Directories `ova` Providers may read (docs/forklift.md); none: every `ova` provider is refused. */
  ovaRoots?: readonly string[];
  /** DataImportCron polls may reach loopback registries and servers (`--allow-loopback-imports`; labs and tests). */
  allowLoopbackPolls?: boolean;
  /** Loopback address and port pairs DataImportCron polls may reach anyway: `vessel up`'s local registry. */
  allowedPolls?: readonly { address: string; port: number }[];
  /** Forklift: VMs of one migration at once (`--forklift-max-vm-inflight`) and the registered hook scripts' directory (`--forklift-hook-dir`). */
  forkliftMaxInFlight?: number;
  forkliftHookDir?: string;
  /** Forklift: time between a warm migration's precopy rounds (`--forklift-precopy-interval`). */
  forkliftPrecopyIntervalMs?: number;
}

/**
 * Runs every controller against the API server `client` talks to, while this process holds
 * the controllers' lease: with several servers on one store, exactly one runs them.
 */
export async function startControllers(client: Client, opts: ControllerOptions = {}): Promise<RunningControllers> {
  vmNetworkCidr(opts.vmNetworkCidr); // refused now, not when this process first leads
  let running: { start(): Promise<void>; stop(): Promise<void> }[] = [];
  const elector = new LeaderElector(client, {
    name: 'vessel-controllers',
    leaseMs: opts.leaseMs,
    log: opts.log,
    async onStartedLeading() {
      // Fresh instances each term: an informer does not restart after stop().
      running = [
        new GarbageCollector(client, opts.log),
        new NamespaceController(client, opts.log),
        new VolumeBinder(client, opts.log),
        new DataVolumeController(client, opts.log),
        new DataSourceController(client, opts.log),
        new VirtualMachineController(client, opts.log),
        new Scheduler(client, opts.log, opts.scheduling),
        new MigrationController(client, opts.log, opts.scheduling),
        new EvacuationController(client, opts.log),
        new CloneController(client, opts.log),
        new NodeLifecycleController(client, opts.log, { gracePeriodMs: opts.nodeGracePeriodMs }),
        new IpamController(client, opts.log, { cidr: opts.vmNetworkCidr }),
        new EndpointSliceController(client, opts.log),
        new ForkliftController(client, opts.log, {
          ovaRoots: opts.ovaRoots,
          maxInFlight: opts.forkliftMaxInFlight,
          hooks: { hookDir: opts.forkliftHookDir, allowLoopback: opts.allowLoopbackPolls },
          precopyIntervalMs: opts.forkliftPrecopyIntervalMs,
        }),
        new VirtualMachinePoolController(client, opts.log),
        new VirtualMachineInstanceReplicaSetController(client, opts.log),
        new DataImportCronController(client, opts.log, { allowLoopback: opts.allowLoopbackPolls, allowed: opts.allowedPolls }),
        new VirtualMachineExportController(client, opts.log),
      ];
      await Promise.all(running.map((c) => c.start()));
    },
    async onStoppedLeading() {
      const stopping = running;
      running = [];
      await Promise.all(stopping.map((c) => c.stop()));
    },
  });
  elector.start();
  return {
    get leading() {
      return elector.isLeader;
    },
    stop: () => elector.stop(),
  };
}
