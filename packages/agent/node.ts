/**
 * The agent's Node: registered on start (created, or taken over after a restart), with
 * capacity, addresses, the pools it serves and the port and certificate of its endpoint,
 * and a Ready heartbeat every `heartbeatMs` (kubelet's node status update). Allocatable is the
 * capacity less the system reservation (kubelet's --system-reserved), which stands for the
 * host's own processes, the agent's and the control plane's when they share the host.
 */
import { cpus, hostname, release, totalmem } from 'node:os';
import { statfs } from 'node:fs/promises';
import { storage, refs, tryParseQuantity } from '@vessel/api';
import { isNotFound, type Client } from '@vessel/client';
import { EventRecorder, setCondition, updateStatus, type KubeObject } from '@vessel/runtime';

/** The Node condition an agent that fenced itself sets once it can write again (fencing.ts). */
export const SELF_FENCED = 'SelfFenced';

/** Every 2 s (kubelet: 10 s), so a dead node is noticed soon enough to restart its VMs within 30 s (docs/migration.md, HA). */
export const DEFAULT_HEARTBEAT_MS = 2000;

/** What the node keeps for itself (kubelet's --system-reserved), left out of status.allocatable. */
export interface SystemReserved {
  cpuMillis?: number;
  memoryBytes?: number;
}

/** kubelet has no default reservation; Vessel keeps a little for the host, the agent and its QEMU launcher. */
export const DEFAULT_SYSTEM_RESERVED = 'cpu=100m,memory=256Mi';

/** Parses kubelet's `cpu=100m,memory=256Mi` form (either key may be left out); throws with the offending part. */
export function parseSystemReserved(spec: string): SystemReserved {
  const out: SystemReserved = {};
  for (const part of spec.split(',').filter((p) => p.trim())) {
    const [k, v] = part.split('=').map((x) => x.trim());
    const q = tryParseQuantity(v);
    if (q === undefined || q < 0 || (k !== 'cpu' && k !== 'memory'))
      throw new Error(`--system-reserved: ${JSON.stringify(part)} is not cpu=QUANTITY or memory=QUANTITY`);
    if (k === 'cpu') out.cpuMillis = Math.ceil(q * 1000);
    else out.memoryBytes = Math.ceil(q);
  }
  return out;
}

/** status.capacity and status.allocatable (capacity less the reservation, never below 0), as Node quantities. */
export function nodeResources(
  cpus: number,
  memoryBytes: number,
  reserved: SystemReserved = {},
): { capacity: Record<string, string>; allocatable: Record<string, string> } {
  const cpuMillis = Math.max(0, cpus * 1000 - (reserved.cpuMillis ?? 0));
  const memKi = Math.max(0, Math.floor((memoryBytes - (reserved.memoryBytes ?? 0)) / 1024));
  return {
    capacity: { cpu: String(cpus), memory: `${Math.floor(memoryBytes / 1024)}Ki` },
    allocatable: { cpu: cpuMillis % 1000 === 0 ? String(cpuMillis / 1000) : `${cpuMillis}m`, memory: `${memKi}Ki` },
  };
}

export interface NodeRegistrationOptions {
  nodeName: string;
  /** The address the server reaches this agent at. */
  address: string;
  port: number;
  certFingerprint256: string;
  certPem: string;
  pools: Record<string, storage.NodePool>;
  labels?: Record<string, string>;
  /** More annotations (vessel.io/fabric-ip with a cluster network). */
  annotations?: Record<string, string>;
  heartbeatMs?: number;
  /** Capacity beside cpu and memory (hugepages, dedicated CPUs: vms/cpu-manager.ts), read at each heartbeat. */
  extendedResources?: () => Promise<Record<string, string>>;
  /** Kept out of allocatable (default DEFAULT_SYSTEM_RESERVED). */
  systemReserved?: SystemReserved;
  /** False while the agent cannot reach the API server (fencing.ts): no heartbeat then. */
  connected?: () => boolean;
  version: string;
  log?: (line: string) => void;
}

export class NodeRegistration {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly client: Client,
    private readonly opts: NodeRegistrationOptions,
  ) {}

  async start(): Promise<void> {
    const { nodeName } = this.opts;
    const metadata = {
      name: nodeName,
      labels: {
        'kubernetes.io/hostname': nodeName,
        'kubernetes.io/os': 'linux',
        'kubernetes.io/arch': 'amd64',
        'kubevirt.io/schedulable': 'true',
        ...this.opts.labels,
      },
      annotations: {
        ...this.opts.annotations,
        [storage.NODE_POOLS]: JSON.stringify(this.opts.pools),
        [storage.NODE_CERT_SHA256]: this.opts.certFingerprint256,
        [storage.NODE_CERT]: this.opts.certPem,
      },
    };
    try {
      await this.client.get(refs.NODES, nodeName);
      await this.client.patch(refs.NODES, nodeName, { metadata });
    } catch (e) {
      if (!isNotFound(e)) throw e;
      await this.client.create(refs.NODES, { apiVersion: 'v1', kind: 'Node', metadata, spec: {} });
    }
    await this.heartbeat();
    this.timer = setInterval(() => {
      // A node cut off from the control plane does not post (in the dev cluster the agent's own
      // connection goes around the cut, see fencing.ts).
      if (this.opts.connected?.() === false) return;
      this.heartbeat().catch((e: Error) => this.opts.log?.(`node: heartbeat failed: ${e.message}`));
    }, this.opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** After a self-fence: the Node's SelfFenced condition (True, why and when) and a Warning event. */
  async recordFence(reason: string, at: Date): Promise<void> {
    const message = `the agent killed this node's VMs at ${at.toISOString()}: ${reason}`;
    const node = await updateStatus(this.client, refs.NODES, undefined, this.opts.nodeName, (s) => {
      setCondition(s, { type: SELF_FENCED, status: 'True', reason: 'ControlPlaneAndPeersUnreachable', message });
    });
    this.opts.log?.(`node: recorded the fence: ${message}`);
    if (node) await new EventRecorder(this.client, 'vessel-agent', this.opts.nodeName).record(node as KubeObject, 'Warning', SELF_FENCED, message);
  }

  private async heartbeat(): Promise<void> {
    const { capacity, allocatable } = nodeResources(cpus().length, totalmem(), this.opts.systemReserved ?? parseSystemReserved(DEFAULT_SYSTEM_RESERVED));
    const fs = await statfs(Object.values(this.opts.pools)[0]?.dir ?? '/').catch((e: Error) => {
      // The heartbeat matters more than the disk figure: report 0 and say why.
      this.opts.log?.(`node: cannot read the pool's disk size: ${e.message}`);
      return undefined;
    });
    const disk = fs ? `${Math.floor((fs.blocks * fs.bsize) / 1024)}Ki` : '0';
    const more = { 'ephemeral-storage': disk, pods: '110', ...(await this.opts.extendedResources?.()) };
    await updateStatus(this.client, refs.NODES, undefined, this.opts.nodeName, (s) => {
      s.capacity = { ...capacity, ...more };
      s.allocatable = { ...allocatable, ...more };
      s.addresses = [
        { type: 'InternalIP', address: this.opts.address },
        { type: 'Hostname', address: hostname() },
      ];
      s.daemonEndpoints = { kubeletEndpoint: { Port: this.opts.port } };
      s.nodeInfo = {
        architecture: 'amd64',
        operatingSystem: 'linux',
        kernelVersion: release(),
        osImage: 'Debian GNU/Linux',
        kubeletVersion: `vessel-agent/${this.opts.version}`,
        kubeProxyVersion: '',
        containerRuntimeVersion: 'qemu',
        machineID: '',
        systemUUID: '',
        bootID: '',
      };
      for (const type of ['MemoryPressure', 'DiskPressure', 'PIDPressure'])
        setCondition(s, { type, status: 'False', reason: `AgentHasNo${type}`, message: '' });
      setCondition(s, { type: 'Ready', status: 'True', reason: 'AgentReady', message: 'vessel agent is posting ready status' });
      // The heartbeat itself: always moves, so the write always happens.
      for (const c of s.conditions as Record<string, unknown>[]) c.lastHeartbeatTime = new Date().toISOString();
    });
  }
}
