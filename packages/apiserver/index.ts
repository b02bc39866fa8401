/**
 * @vessel/apiserver: the Kubernetes-compatible API server. `startServer` opens the store,
 * makes certificates and the admin kubeconfig on first start, and serves HTTPS.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile, rename } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import YAML from 'yaml';
import { CIDR_PROBLEM, DEFAULT_SERVICE_CIDR, findByResource, ipam, migrationConfig, parseCidr, priority } from '@vessel/api';
import { commonClusterInstancetypes, commonClusterPreferences } from '@vessel/api';
import { openStore, startCompactor, type Store, type StoreConfig } from '@vessel/store';
import { ensureServingCerts, parseListen } from '@vessel/tls';
import { ADMIN_GROUP, authenticate, createToken } from './auth.ts';
import { ApiError, badRequest } from './errors.ts';
import { Resources } from './resources.ts';
import { createHandler, createHttpsServer, createUpgradeHandler } from './server.ts';
import { agentAuthSecret } from './upload.ts';

export { ApiError, type Status } from './errors.ts';
export { ADMIN_GROUP, VIEW_GROUP, authenticate, authorize, createToken, type User } from './auth.ts';
export { createHandler, parseResourcePath, MAX_BODY_BYTES } from './server.ts';
export { Resources } from './resources.ts';

export interface ServerOptions {
  dataDir: string;
  /** HOST:PORT; port 0 picks a free one. */
  listen: string;
  /** Default: SQLite at DATA_DIR/store.db. */
  store?: StoreConfig;
  /** How often watches with allowWatchBookmarks get a BOOKMARK (Kubernetes: about a minute). */
  bookmarkIntervalMs?: number;
  /** Every interval, history older than the previous tick's revision is compacted (Kubernetes: 5 minutes). */
  compactIntervalMs?: number;
  /** The range ClusterIPs come from (`--service-cidr`, default 10.96.0.0/16). */
  serviceCidr?: string;
  /** How often orphaned ClusterIPs and NodePorts are looked for (default a minute; see services.ts). */
  serviceRepairIntervalMs?: number;
  log?: (line: string) => void;
  /** The VM network (default 10.244.0.0/16): admission checks fixed addresses against it. */
  vmNetworkCidr?: string;
}

export interface RunningServer {
  url: string;
  port: number;
  kubeconfigPath: string;
  adminToken: string;
  caPem: string;
  store: Store;
  close(): Promise<void>;
}

/**
 * `vessel-images` holds the golden images every tenant may read (OpenShift's openshift-virtualization-os-images);
 * `kubevirt` the cluster's KubeVirt object (virt-operator's namespace).
 */
export const DEFAULT_NAMESPACES = ['default', 'kube-system', 'kube-public', 'kube-node-lease', 'vessel-images', migrationConfig.KUBEVIRT_NAMESPACE];

/**
 * The storage classes of a fresh install: `local` (a directory per node, the default) and
 * `shared` (one directory every node sees). The node agent's pools serve them.
 */
export const DEFAULT_STORAGE_CLASSES = [
  { name: 'local', isDefault: true, pool: 'local' },
  { name: 'shared', isDefault: false, pool: 'shared' },
];

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const vmNetwork = ipam.vmNetwork(opts.vmNetworkCidr); // a bad range stops the server before it starts
  const { host, port } = parseListen(opts.listen, '127.0.0.1:6443');
  const serviceCidr = opts.serviceCidr ?? DEFAULT_SERVICE_CIDR;
  if (!parseCidr(serviceCidr)) throw new Error(`invalid service CIDR "${serviceCidr}": ${CIDR_PROBLEM}`);
  await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const store = await openStore(opts.store ?? { kind: 'sqlite', path: join(opts.dataDir, 'store.db') });
  try {
    await bootstrap(store);
    const certs = await ensureServingCerts(join(opts.dataDir, 'pki'), [host]);
    const clientHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;

    let serverAddress = `${clientHost}:${port}`;
    const handler = createHandler({
      store,
      get serverAddress() {
        return serverAddress;
      },
      serviceCidr,
      bookmarkIntervalMs: opts.bookmarkIntervalMs ?? 60_000,
      log: opts.log,
      vmNetwork,
    });
    const server = createHttpsServer({ cert: certs.certPem, key: certs.keyPem, keepAliveTimeout: 65_000 }, (req, res) => {
      void handler(req, res);
    });
    const resources = new Resources(store, { serviceCidr });
    const consoles = createUpgradeHandler({ store, resources, log: opts.log });
    server.on('upgrade', consoles);
    // Requests Node cannot parse (bad characters in the path, broken headers) still get a Status.
    server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      if (!socket.writable) return socket.destroy();
      const body = JSON.stringify(badRequest(`malformed HTTP request: ${err.code ?? err.message}`).toStatus());
      socket.end(
        `HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const actualPort = (server.address() as AddressInfo).port;
    serverAddress = `${clientHost.includes(':') ? `[${clientHost}]` : clientHost}:${actualPort}`;
    const url = `https://${serverAddress}`;

    const kubeconfigPath = join(opts.dataDir, 'kubeconfig');
    const adminToken = await adminTokenFor(store, kubeconfigPath);
    await writeKubeconfig(kubeconfigPath, url, certs.caPem, adminToken);

    const compactor = startCompactor(store, { intervalMs: opts.compactIntervalMs, onError: (e) => opts.log?.(`compaction failed: ${e.message}`) });
    const repair = startServiceRepair(resources, opts.serviceRepairIntervalMs ?? 60_000, opts.log);
    return {
      url,
      port: actualPort,
      kubeconfigPath,
      adminToken,
      caPem: certs.caPem,
      store,
      async close() {
        await repair.stop();
        compactor.stop();
        await handler.close();
        consoles.close();
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await store.close();
      },
    };
  } catch (e) {
    await store.close();
    throw e;
  }
}

/**
 * Runs the ClusterIP/NodePort repair (services.ts) now and every interval. Every server runs
 * it: the deletes carry preconditions, so two servers repairing at once do no harm.
 */
function startServiceRepair(resources: Resources, intervalMs: number, log?: (line: string) => void): { stop(): Promise<void> } {
  let running: Promise<void> | undefined;
  const run = () => {
    if (running) return; // a slow pass is not overlapped by the next
    running = resources.services
      .repair()
      .then(
        (done) => {
          if (done.length) log?.(`service allocations repaired: ${done.join(', ')}`);
        },
        (e: unknown) => log?.(`service allocation repair failed: ${e instanceof Error ? e.message : e}`),
      )
      .finally(() => {
        running = undefined;
      });
  };
  run();
  const timer = setInterval(run, intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}

/** Creates what a fresh install has, once: existing objects (a user's edits included) are left alone. */
async function bootstrap(store: Store): Promise<void> {
  const resources = new Resources(store);
  const ensure = async (plural: string, group: string, version: string, obj: Record<string, unknown>) => {
    try {
      await resources.create(findByResource(group, version, plural)!, (obj.metadata as { namespace?: string }).namespace, obj);
    } catch (e) {
      if (!(e instanceof ApiError && e.reason === 'AlreadyExists')) throw e;
    }
  };
  for (const name of DEFAULT_NAMESPACES) await ensure('namespaces', '', 'v1', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
  await ensure('secrets', '', 'v1', agentAuthSecret());
  await ensure('kubevirts', 'kubevirt.io', 'v1', migrationConfig.defaultKubeVirt());
  for (const pc of priority.systemPriorityClasses()) await ensure('priorityclasses', 'scheduling.k8s.io', 'v1', pc);
  // KubeVirt's common-instancetypes, as virt-operator deploys them (docs/instancetypes.md).
  for (const it of commonClusterInstancetypes()) await ensure('virtualmachineclusterinstancetypes', 'instancetype.kubevirt.io', 'v1beta1', it);
  for (const p of commonClusterPreferences()) await ensure('virtualmachineclusterpreferences', 'instancetype.kubevirt.io', 'v1beta1', p);
  for (const sc of DEFAULT_STORAGE_CLASSES) {
    await ensure('storageclasses', 'storage.k8s.io', 'v1', {
      apiVersion: 'storage.k8s.io/v1',
      kind: 'StorageClass',
      metadata: { name: sc.name, annotations: { 'storageclass.kubernetes.io/is-default-class': String(sc.isDefault) } },
      provisioner: 'vessel.io/qcow2',
      parameters: { pool: sc.pool },
      reclaimPolicy: 'Delete',
      volumeBindingMode: 'WaitForFirstConsumer',
      allowVolumeExpansion: true,
    });
  }
}

/** Reuses the token of an existing kubeconfig while the store still knows it. */
async function adminTokenFor(store: Store, kubeconfigPath: string): Promise<string> {
  if (existsSync(kubeconfigPath)) {
    const existing = YAML.parse(await readFile(kubeconfigPath, 'utf8')) as { users?: { user?: { token?: string } }[] };
    const token = existing?.users?.[0]?.user?.token;
    if (token && (await authenticate(store, `Bearer ${token}`))) return token;
  }
  return createToken(store, 'admin', [ADMIN_GROUP], 'created by the server for its kubeconfig');
}

export function kubeconfigFor(url: string, caPem: string, token: string, user = 'admin'): string {
  return YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'vessel', cluster: { server: url, 'certificate-authority-data': Buffer.from(caPem).toString('base64') } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: 'vessel', context: { cluster: 'vessel', user, namespace: 'default' } }],
    'current-context': 'vessel',
    preferences: {},
  });
}

async function writeKubeconfig(path: string, url: string, caPem: string, token: string): Promise<void> {
  // Written to a temporary name and renamed, so a reader never sees half a file.
  await writeFile(`${path}.tmp`, kubeconfigFor(url, caPem, token), { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}
