/**
 * Runs a Vessel API server (no controllers) in its own process for the watch benchmark, so
 * the benchmark's client work does not share the server's event loop.
 *
 *   node --import tsx bench/server-child.ts DATA_DIR [sqlite | etcd ENDPOINT]
 *
 * Prints one JSON line {"kubeconfig","url","pid"} once it serves; stops on SIGTERM/SIGINT
 * or when its stdin closes (so it never outlives the benchmark that started it).
 */
import { startServer } from '@vessel/apiserver';
import type { StoreConfig } from '@vessel/store';

const [dataDir, kind = 'sqlite', endpoint] = process.argv.slice(2);
if (!dataDir) {
  console.error('usage: server-child.ts DATA_DIR [sqlite | etcd ENDPOINT]');
  process.exit(2);
}
const store: StoreConfig | undefined = kind === 'etcd' ? { kind: 'etcd', endpoints: [endpoint], prefix: '/vessel' } : undefined;
const server = await startServer({ dataDir, listen: '127.0.0.1:0', store });
process.stdout.write(`${JSON.stringify({ kubeconfig: server.kubeconfigPath, url: server.url, pid: process.pid })}\n`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  const force = setTimeout(() => process.exit(1), 5000);
  force.unref();
  await server.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.on('close', () => void stop());
process.stdin.resume();
