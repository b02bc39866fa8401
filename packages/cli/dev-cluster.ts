/**
 * The multi-node dev cluster on one host (`vessel up --nodes N`, e2e `startCluster`): the
 * namespaces of @vessel/agent's createDevCluster, and one in-process agent per node, each with
 * its own data directory (its `local` pool), one `shared` pool for all, and its node's
 * namespace and fabric address, so each runs the node's cluster network (docs/network.md).
 */
import { join } from 'node:path';
import type { DevCluster, QemuPriority, RunningAgent } from '@vessel/agent';
import { Client } from '@vessel/client';

export interface DevNodesOptions {
  /** The API server's kubeconfig (each agent gets a client of its own). */
  kubeconfig: string;
  dataDir: string;
  nodes: number;
  fabricCidr?: string;
  nodeNames?: string[];
  qemuPriority?: QemuPriority;
  allowLoopbackImports?: boolean;
  heartbeatMs?: number;
  /** The agents' NodeNetworkConfigurationPolicy probe timeout (tests: a few seconds). */
  nncpProbeTimeoutMs?: number;
  version?: string;
  log?: (line: string) => void;
}

export interface DevNodes {
  cluster: DevCluster;
  agents: RunningAgent[];
  /** Stops the agents (their QEMUs and dnsmasq keep running) and keeps the namespaces. */
  stopAgents(): Promise<void>;
  /** Stops agent `i` and starts it again on the same node (tests: what a restart keeps; benches: migration TLS off). */
  restartAgent(i: number, change?: { migrationTls?: boolean }): Promise<RunningAgent>;
  /** stopAgents(), then kills what runs in the namespaces and deletes them. */
  close(): Promise<void>;
}

export async function startDevNodes(opts: DevNodesOptions): Promise<DevNodes> {
  const { createDevCluster, startAgent } = await import('@vessel/agent');
  const cluster = await createDevCluster({ nodes: opts.nodes, fabricCidr: opts.fabricCidr, nodeNames: opts.nodeNames });
  const agents: RunningAgent[] = [];
  const clients: Client[] = [];
  let stopped = false;
  const stopAgents = async () => {
    if (stopped) return;
    stopped = true;
    for (const a of agents) await a.stop().catch((e: Error) => opts.log?.(`dev cluster: stopping agent ${a.nodeName}: ${e.message}`));
    for (const c of clients) c.close();
  };
  const startOne = async (n: DevCluster['nodes'][number], change: { migrationTls?: boolean } = {}) => {
    const client = Client.fromKubeconfig({ explicit: opts.kubeconfig });
    clients.push(client);
    return startAgent({
      client,
      nodeName: n.name,
      dataDir: join(opts.dataDir, 'nodes', n.name),
      sharedDir: join(opts.dataDir, 'pools', 'shared'),
      netns: n.netns,
      fabricIp: n.fabricIp,
      qemuPriority: opts.qemuPriority,
      allowLoopbackImports: opts.allowLoopbackImports,
      heartbeatMs: opts.heartbeatMs,
      nncpProbeTimeoutMs: opts.nncpProbeTimeoutMs,
      migrationTls: change.migrationTls,
      version: opts.version,
      log: opts.log && ((l) => opts.log!(`[${n.name}] ${l}`)),
    });
  };
  try {
    for (const n of cluster.nodes) agents.push(await startOne(n));
  } catch (e) {
    await stopAgents();
    await cluster.destroy();
    throw e;
  }
  return {
    cluster,
    agents,
    stopAgents,
    async restartAgent(i, change) {
      await agents[i].stop();
      agents[i] = await startOne(cluster.nodes[i], change);
      return agents[i];
    },
    async close() {
      try {
        await stopAgents();
      } finally {
        await cluster.destroy();
      }
    },
  };
}
