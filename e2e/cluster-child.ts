/**
 * One piece of a dev cluster in a child process, for tests that kill it by SIGKILL and start it
 * again on the same data directory (e2e/migration-crash.*): `server DATADIR HOST:PORT` (API
 * server and controllers, no agent; a fixed port so the agents find it again), or `agent
 * KUBECONFIG NODE DATADIR SHAREDDIR NETNS FABRICIP` (a node agent as startDevNodes runs it).
 * Prints "READY <kubeconfig>" once up; SIGTERM stops it cleanly (its QEMUs run on).
 */
import { parseQemuPriority, startAgent } from '@vessel/agent';
import { Client } from '@vessel/client';
import { startControlPlane } from '../packages/cli/control-plane.ts';

const log = (l: string) => console.error(l);
const [mode, ...args] = process.argv.slice(2);
let stop: () => Promise<void>;
if (mode === 'server') {
  const [dataDir, listen] = args;
  const cp = await startControlPlane({ dataDir, listen, nodeGracePeriodMs: Number(process.env.VESSEL_TEST_NODE_GRACE_MS ?? 40_000), log });
  process.stdout.write(`READY ${cp.server.kubeconfigPath}\n`);
  stop = () => cp.close();
} else {
  const [kubeconfig, nodeName, dataDir, sharedDir, netns, fabricIp] = args;
  const client = Client.fromKubeconfig({ explicit: kubeconfig });
  // VESSEL_TEST_MIGRATION_TLS=false: `--migration-tls=false`.
  const migrationTls = process.env.VESSEL_TEST_MIGRATION_TLS !== 'false';
  // VESSEL_TEST_QEMU_PRIORITY: `--qemu-priority` (e.g. `off`).
  const qemuPriority = process.env.VESSEL_TEST_QEMU_PRIORITY ? parseQemuPriority(process.env.VESSEL_TEST_QEMU_PRIORITY) : undefined;
  const agent = await startAgent({
    client,
    nodeName,
    dataDir,
    sharedDir,
    netns,
    fabricIp,
    heartbeatMs: 5000,
    migrationTls,
    qemuPriority,
    log: (l) => log(`[${nodeName}] ${l}`),
  });
  process.stdout.write(`READY ${kubeconfig}\n`);
  stop = async () => {
    await agent.stop();
    client.close();
  };
}
process.on('SIGTERM', () => {
  void stop().then(() => process.exit(0));
});
