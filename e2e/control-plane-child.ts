/**
 * A control plane with a node agent in a child process, for tests that kill it (SIGKILL)
 * mid-operation and start it again on the same data directory. Prints "READY <kubeconfig>".
 */
import { startControlPlane } from '../packages/cli/control-plane.ts';

const [dataDir, listen] = process.argv.slice(2);
// The tests' http servers are on loopback: the administrator's override allows them.
const cp = await startControlPlane({
  dataDir,
  listen,
  agent: { nodeName: 'node-a', allowLoopbackImports: true },
  log: process.env.VESSEL_TEST_LOG ? (l) => console.error(l) : undefined,
});
process.stdout.write(`READY ${cp.server.kubeconfigPath}\n`);
process.on('SIGTERM', () => {
  void cp.close().then(() => process.exit(0));
});
