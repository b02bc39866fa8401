/**
 * The control plane as one unit: the API server plus the controllers that run beside it
 * (talking to it over HTTPS like any client). `vessel server`, `vessel up` and the
 * end-to-end tests all start it through here.
 */
import { startServer, type RunningServer, type ServerOptions } from '@vessel/apiserver';
import { Client } from '@vessel/client';
import { startControllers } from '@vessel/controllers';

export interface ControlPlaneOptions extends ServerOptions {
  /** Run the controllers in this process (default true; with several servers on one etcd, run them in one). */
  controllers?: boolean;
}

export interface ControlPlane {
  server: RunningServer;
  /** An admin client of this server. */
  client: Client;
  close(): Promise<void>;
}

export async function startControlPlane(opts: ControlPlaneOptions): Promise<ControlPlane> {
  const server = await startServer(opts);
  const client = Client.fromKubeconfig({ explicit: server.kubeconfigPath });
  try {
    const controllers = opts.controllers === false ? undefined : await startControllers(client, opts.log);
    return {
      server, client,
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
