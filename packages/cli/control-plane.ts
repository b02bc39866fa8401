/**
 * The control plane as one unit: the API server plus the controllers that run beside it
 * (talking to it over HTTPS like any client). `vessel server`, `vessel up` and the
 * end-to-end tests all start it through here.
 */
import { startServer, type RunningServer, type ServerOptions } from '@vessel/apiserver';
import { Client } from '@vessel/client';
import { startControllers, type RunningControllers } from '@vessel/controllers';

export interface ControlPlaneOptions extends ServerOptions {
  /** Run the controllers in this process (default true); with several servers on one store, a lease picks the one that runs them. */
  controllers?: boolean;
  /** Controllers' lease duration (tests shorten it to see a takeover quickly). */
  leaseMs?: number;
}

export interface ControlPlane {
  server: RunningServer;
  controllers?: RunningControllers;
  /** An admin client of this server. */
  client: Client;
  close(): Promise<void>;
}

export async function startControlPlane(opts: ControlPlaneOptions): Promise<ControlPlane> {
  const server = await startServer(opts);
  const client = Client.fromKubeconfig({ explicit: server.kubeconfigPath });
  try {
    const controllers = opts.controllers === false ? undefined : await startControllers(client, { log: opts.log, leaseMs: opts.leaseMs });
    return {
      server, client, controllers,
      async close() {
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
