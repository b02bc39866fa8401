/**
 * The control plane as one unit: the API server plus the controllers that run beside it
 * (talking to it over HTTPS like any client). `vessel server`, `vessel up` and the
 * end-to-end tests all start it through here.
 */
import { startServer, type RunningServer, type ServerOptions } from '@vessel/apiserver';
import { Client } from '@vessel/client';
import { startControllers, type RunningControllers, type SchedulingSettings } from '@vessel/controllers';
import type { QemuPriority, RunningAgent, SystemReserved } from '@vessel/agent';

export interface ControlPlaneOptions extends ServerOptions {
  /** Run the controllers in this process (default true); with several servers on one store, a lease picks the one that runs them. */
  controllers?: boolean;
  /** Controllers' lease duration (tests shorten it to see a takeover quickly). */
  leaseMs?: number;
  /** The scheduler's overcommit settings. */
  scheduling?: SchedulingSettings;
  /** How long a node may go without its agent's heartbeat before it is Unknown (tests shorten it). */
  nodeGracePeriodMs?: number;
  /** Directories `ova` Providers may read (the administrator's allow-list). */
  ovaRoots?: readonly string[];
  /** DataImportCron polls may reach loopback registries (default: as the in-process agent's allowLoopbackImports). */
  allowLoopbackPolls?: boolean;
  /**
   * The read-only registry `vessel up` serves the tiny image from (packages/cli/local-registry.ts):
   * DataImportCron polls and the in-process agent's imports may reach exactly this loopback
   * address and port, without --allow-loopback-imports.
   */
  localRegistry?: { address: string; port: number };
  /** Forklift: VMs of one migration at once, and the directory of registered hook scripts (docs/forklift.md). */
  forkliftMaxInFlight?: number;
  forkliftHookDir?: string;
  /** Warm plans: time between precopy rounds. */
  forkliftPrecopyIntervalMs?: number;
  /** Also run a node agent in this process (`vessel up`): its node name, and the shared pool's directory. */
  agent?: {
    nodeName: string;
    sharedDir?: string;
    version?: string;
    allowLoopbackImports?: boolean;
    qemuPriority?: QemuPriority;
    systemReserved?: SystemReserved;
    reservedCpus?: string;
  };
}

export interface ControlPlane {
  server: RunningServer;
  controllers?: RunningControllers;
  agent?: RunningAgent;
  /** An admin client of this server. */
  client: Client;
  close(): Promise<void>;
}

export async function startControlPlane(opts: ControlPlaneOptions): Promise<ControlPlane> {
  const server = await startServer(opts);
  const client = Client.fromKubeconfig({ explicit: server.kubeconfigPath });
  try {
    const controllers =
      opts.controllers === false
        ? undefined
        : await startControllers(client, {
            log: opts.log,
            leaseMs: opts.leaseMs,
            scheduling: opts.scheduling,
            nodeGracePeriodMs: opts.nodeGracePeriodMs,
            vmNetworkCidr: opts.vmNetworkCidr,
            ovaRoots: opts.ovaRoots,
            allowLoopbackPolls: opts.allowLoopbackPolls ?? opts.agent?.allowLoopbackImports,
            allowedPolls: opts.localRegistry && [opts.localRegistry],
            forkliftMaxInFlight: opts.forkliftMaxInFlight,
            forkliftHookDir: opts.forkliftHookDir,
            forkliftPrecopyIntervalMs: opts.forkliftPrecopyIntervalMs,
          });
    let agent: RunningAgent | undefined;
    if (opts.agent) {
      const { startAgent } = await import('@vessel/agent');
      agent = await startAgent({
        client,
        dataDir: opts.dataDir,
        ovaRoots: opts.ovaRoots,
        ...opts.agent,
        allowedImportSources: opts.localRegistry && [opts.localRegistry],
        log: opts.log,
      });
    }
    return {
      server,
      client,
      controllers,
      agent,
      async close() {
        await agent?.stop();
        await controllers?.stop();
        client.close();
        await server.close();
      },
    };
  } catch (e) {
    client.close();
    await server.close();
    throw e;
  }
}
