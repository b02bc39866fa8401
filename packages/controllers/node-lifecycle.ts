/**
 * Node lifecycle (Kubernetes' node lifecycle controller, as far as Vessel needs it): a node
 * whose agent has not posted its heartbeat for the grace period (40 s, as
 * node-monitor-grace-period) gets every condition set to Unknown, so the scheduler treats it as
 * unreachable and places nothing there; the VMIs it runs get Ready=False, reason
 * NodeUnresponsive. The heartbeat's age is measured on this process's clock, from when it saw
 * lastHeartbeatTime change (as Kubernetes does), so clock skew between hosts does not count.
 *
 * Nothing is stopped or restarted elsewhere: an agent that stopped posting may still run its
 * VMs (the design keeps VMs alive whatever happens to the control plane), and starting a VM a
 * second time on another node would corrupt its disks. The agent sets its node Ready again with
 * its next heartbeat, and its VMIs' Ready when it sees them (vms/runtime.ts).
 */
import type { V1VirtualMachineInstance } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import type { Client } from '@vessel/client';
import {
  BY_NODE,
  byNode,
  Controller,
  type Typed,
  type Log,
  EventRecorder,
  type Informer,
  type KubeObject,
  getCondition,
  setCondition,
  updateStatus,
} from '@vessel/runtime';
import { refs, NODE_UNRESPONSIVE } from '@vessel/api';

const { NODES, VMIS } = refs;

type Vmi = Typed<V1VirtualMachineInstance>;
type Condition = { type: string; status: string; reason?: string; message?: string; lastHeartbeatTime?: string; lastTransitionTime?: string };

export const NODE_STATUS_UNKNOWN = 'NodeStatusUnknown';

export interface NodeLifecycleOptions {
  /** How long a node may go without a heartbeat before it is Unknown (default 40 s). */
  gracePeriodMs?: number;
}

export class NodeLifecycleController extends Controller {
  private readonly nodes: Informer;
  private readonly vmis: Informer<Vmi>;
  private readonly events: EventRecorder;
  private readonly graceMs: number;
  /** Per node: the last heartbeat seen, and when (this process's clock). */
  private readonly seen = new Map<string, { heartbeat: string; at: number }>();

  constructor(client: Client, log?: Log, opts: NodeLifecycleOptions = {}) {
    super('node-lifecycle', client, log);
    this.graceMs = opts.gracePeriodMs ?? 40_000;
    this.events = new EventRecorder(client, 'node-controller');
    this.nodes = this.inform(NODES);
    // A VMI placed on a node already Unknown is marked too.
    this.vmis = this.inform<Vmi>(VMIS, byNode).addIndex(BY_NODE, byNode);
  }

  protected async reconcile(name: string): Promise<void> {
    const node = this.nodes.get(name);
    if (!node) {
      this.seen.delete(name);
      return;
    }
    const ready = conditionsOf(node).find((c) => c.type === 'Ready');
    const heartbeat = ready?.lastHeartbeatTime ?? '';
    const now = Date.now();
    const last = this.seen.get(name);
    if (!last || last.heartbeat !== heartbeat) this.seen.set(name, { heartbeat, at: now });
    const silentMs = now - this.seen.get(name)!.at;
    if (silentMs < this.graceMs) {
      this.queue.addAfter(name, this.graceMs - silentMs + 100);
      return;
    }
    const seconds = Math.round(silentMs / 1000);
    if (ready?.status !== 'Unknown') {
      const message = `Vessel's node agent stopped posting node status (last heartbeat ${seconds}s ago).`;
      await updateStatus(this.client, NODES, undefined, name, (s) => {
        const conds = (s.conditions as Condition[] | undefined) ?? [];
        if (!conds.some((c) => c.type === 'Ready')) conds.push({ type: 'Ready', status: 'Unknown' });
        // lastHeartbeatTime stays the agent's last one, as Kubernetes leaves it.
        const at = new Date().toISOString();
        s.conditions = conds.map((c) => ({
          ...c,
          status: 'Unknown',
          reason: NODE_STATUS_UNKNOWN,
          message,
          lastTransitionTime: c.status === 'Unknown' ? c.lastTransitionTime : at,
        }));
      });
      this.log(`node-lifecycle: node ${name}: no heartbeat for ${seconds}s: Ready Unknown`);
      await this.events.record(node, 'Normal', 'NodeNotReady', `Node ${name} status is now: NodeNotReady`);
    }
    for (const vmi of this.vmis.byIndex(BY_NODE, name)) {
      const phase = vmi.status?.phase;
      if (phase === 'Succeeded' || phase === 'Failed') continue;
      if (getCondition(vmi, 'Ready')?.reason === NODE_UNRESPONSIVE) continue;
      await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, current) => {
        if (current.metadata.uid !== vmi.metadata.uid || s.nodeName !== name) return false;
        setCondition(
          s,
          {
            type: 'Ready',
            status: 'False',
            reason: NODE_UNRESPONSIVE,
            message: `node ${name} has not reported for ${seconds}s: the VM may still run there, but nothing can be done to it until its agent is back`,
          },
          false,
        );
      });
    }
  }
}

function conditionsOf(node: KubeObject): Condition[] {
  return (node.status as { conditions?: Condition[] } | undefined)?.conditions ?? [];
}
