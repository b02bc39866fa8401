/**
 * The multi-node dev cluster on one host (`vessel up --nodes N`, e2e `startCluster`): the
 * namespaces of @vessel/agent's createDevCluster, and one in-process agent per node, each with
 * its own data directory (its `local` pool), one `shared` pool for all, and its node's
 * namespace and fabric address, so each runs the node's cluster network (docs/network.md).
 * Tests of HA kill a node (its agent, then every process of its namespace) or cut its fabric link.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
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
  /** Per node (by index): its agent's `--reserved-cpus` (a CPU manager; tests give nodes distinct pools). */
  reservedCpus?: readonly (string | undefined)[];
  allowLoopbackImports?: boolean;
  /** Loopback address and port pairs the agents may import from anyway: `vessel up`'s local registry (the agents run in this process's namespace). */
  allowedImportSources?: readonly { address: string; port: number }[];
  heartbeatMs?: number;
  /** The agents' self-fencing timeout (default theirs, 8 s; 0: off). */
  fencingTimeoutMs?: number;
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
  /**
   * A node's death: its agent stops at once (nothing more is written for it), then every process
   * of its namespace (QEMUs, dnsmasq) and of its VMs' pods is SIGKILLed.
   */
  killNode(i: number): Promise<void>;
  /** A dead node comes back: a new agent on its data directory. */
  reviveNode(i: number): Promise<RunningAgent>;
  /**
   * Cuts (or restores) node `i`'s fabric link: its peers and the control plane's side (the
   * fabric's outside address) stop answering inside its namespace; its QEMUs run on.
   */
  setLink(i: number, up: boolean): Promise<void>;
  /** stopAgents(), then kills what runs in the namespaces and deletes them. */
  close(): Promise<void>;
}

export async function startDevNodes(opts: DevNodesOptions): Promise<DevNodes> {
  const { createDevCluster, startAgent } = await import('@vessel/agent');
  const cluster = await createDevCluster({ nodes: opts.nodes, fabricCidr: opts.fabricCidr, nodeNames: opts.nodeNames });
  const agents: RunningAgent[] = [];
  const clients: Client[] = [];
  let stopped = false;
  const dead = new Set<number>();
  const stopAgents = async () => {
    if (stopped) return;
    stopped = true;
    for (const a of agents.filter((_, i) => !dead.has(i)))
      await a.stop().catch((e: Error) => opts.log?.(`dev cluster: stopping agent ${a.nodeName}: ${e.message}`));
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
      reservedCpus: opts.reservedCpus?.[cluster.nodes.indexOf(n)],
      allowLoopbackImports: opts.allowLoopbackImports,
      allowedImportSources: opts.allowedImportSources,
      heartbeatMs: opts.heartbeatMs,
      nncpProbeTimeoutMs: opts.nncpProbeTimeoutMs,
      fencingTimeoutMs: opts.fencingTimeoutMs,
      controlPlaneVia: cluster.outsideIp,
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
    async killNode(i) {
      dead.add(i);
      await agents[i].stop();
      const n = cluster.nodes[i];
      const all = (await cmd('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0]);
      for (const ns of all.filter((x) => x === n.netns || x.startsWith(`${n.netns}-p`))) await killAll(ns);
    },
    async reviveNode(i) {
      agents[i] = await startOne(cluster.nodes[i]);
      dead.delete(i);
      return agents[i];
    },
    async setLink(i, up) {
      await cmd('ip', ['-n', cluster.fabricNetns, 'link', 'set', `n${i}`, up ? 'up' : 'down']);
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

function cmd(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${file} ${args.join(' ')}: ${err.trim()}`))));
  });
}

/** SIGKILLs every process of network namespace `ns` and waits until they are gone. */
async function killAll(ns: string): Promise<void> {
  const pids = (await cmd('ip', ['netns', 'pids', ns]).catch(() => ''))
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((p) => p > 1 && p !== process.pid);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
  for (const pid of pids)
    for (let t = 0; t < 50; t++) {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      if (!stat || /\) [ZX] /.test(stat)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
}
