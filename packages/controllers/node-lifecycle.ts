/**
 * Node lifecycle (Kubernetes' node lifecycle controller, as far as Vessel needs it): a node
 * whose agent has not posted its heartbeat for the grace period (40 s, as
 * node-monitor-grace-period) gets every condition set to Unknown, so the scheduler treats it as
 * unreachable and places nothing there; the VMIs it runs get Ready=False, reason
 * NodeUnresponsive. The heartbeat's age is measured on this process's clock, from when it saw
 * lastHeartbeatTime change (as Kubernetes does), so clock skew between hosts does not count.
 *
 * HA (docs/migration.md): an agent that reaches neither the API server nor a quorum of its peers
 * kills its QEMUs itself after its fencing timeout (agent/fencing.ts), which it publishes on its
 * Node. Once a node has been silent for grace + that timeout + a margin, it is confirmed dead:
 * its VMIs whose VM restarts them (runStrategy Always or RerunOnFailure) and whose disks are all
 * on the shared pool are failed (reason NodeFenced) and their agent's finalizer dropped, so the
 * VM controller starts them on another node; VMIs with node-local disks stay and say why (the
 * NodeFailover condition), and only while at least half the fencing nodes post. A node without a
 * published timeout, or without peers, is never failed over: its agent does not fence, and starting a VM a second time would corrupt its
 * disks. Silence that every node shares (the control plane itself was away) restarts the clocks.
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
import { refs, storage, NODE_UNRESPONSIVE } from '@vessel/api';

const { NODES, PVCS, VMIS, VMS } = refs;

/** Agent/fencing.ts's Node annotation (the agent's fencing timeout, s); the agent's VMI finalizer (vms/runtime.ts). */
const FENCING_TIMEOUT = 'vessel.io/fencing-timeout-seconds';
const AGENT_FINALIZER = 'vessel.io/qemu';
export const NODE_FENCED = 'NodeFenced';
/** The condition of a VMI left on a dead node, and why. */
export const NODE_FAILOVER = 'NodeFailover';

type Vmi = Typed<V1VirtualMachineInstance>;
type Condition = { type: string; status: string; reason?: string; message?: string; lastHeartbeatTime?: string; lastTransitionTime?: string };

export const NODE_STATUS_UNKNOWN = 'NodeStatusUnknown';

export interface NodeLifecycleOptions {
  /** How long a node may go without a heartbeat before it is Unknown (default 8 s; Kubernetes: 40 s). */
  gracePeriodMs?: number;
  /** Added to grace + the agent's fencing timeout before a silent node's VMs restart elsewhere (default 4 s). */
  fencingMarginMs?: number;
}

/** The default grace: 4 missed heartbeats of 2 s, so a dead node's VMs restart within 30 s. */
export const DEFAULT_NODE_GRACE_MS = 8000;

export class NodeLifecycleController extends Controller {
  private readonly nodes: Informer;
  private readonly vmis: Informer<Vmi>;
  private readonly events: EventRecorder;
  private readonly vms: Informer;
  private readonly claims: Informer;
  private readonly graceMs: number;
  private readonly marginMs: number;
  /** Per node: the last heartbeat seen, and when (this process's clock). */
  private readonly seen = new Map<string, { heartbeat: string; at: number }>();
  /** When any node's heartbeat was last seen (a longer silence of all of them is the control plane's). */
  private lastAny = 0;

  constructor(client: Client, log?: Log, opts: NodeLifecycleOptions = {}) {
    super('node-lifecycle', client, log);
    this.graceMs = opts.gracePeriodMs ?? DEFAULT_NODE_GRACE_MS;
    this.marginMs = opts.fencingMarginMs ?? 4000;
    this.events = new EventRecorder(client, 'node-controller');
    this.nodes = this.inform(NODES);
    // A VMI placed on a node already Unknown is marked too.
    this.vmis = this.inform<Vmi>(VMIS, byNode).addIndex(BY_NODE, byNode);
    this.vms = this.inform(VMS, () => []);
    this.claims = this.inform(PVCS, () => []);
  }

  protected async reconcile(name: string): Promise<void> {
    const node = this.nodes.get(name);
    if (!node) {
      this.seen.delete(name);
      return;
    }
    await this.publishFailoverAfter(node);
    const ready = conditionsOf(node).find((c) => c.type === 'Ready');
    const heartbeat = ready?.lastHeartbeatTime ?? '';
    const now = Date.now();
    const last = this.seen.get(name);
    if (!last || last.heartbeat !== heartbeat) {
      // Every node silent for longer than the grace: the control plane (or this controller) was
      // away, not the nodes; their silence counts from now.
      if (last && now - this.lastAny > this.graceMs) for (const v of this.seen.values()) v.at = Math.max(v.at, now);
      this.lastAny = now;
      this.seen.set(name, { heartbeat, at: now });
    }
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
    const deadline = this.fencingDeadlineMs(node);
    if (deadline !== undefined) {
      if (silentMs < deadline) this.queue.addAfter(name, deadline - silentMs + 100);
      else if (this.quorum(now)) await this.failOver(node, silentMs);
      else this.queue.addAfter(name, 1000); // fewer than half the nodes post: wait (fencing.ts)
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
  /**
   * At least half the fencing nodes post heartbeats: only then is a silent node's agent sure to
   * have fenced (an agent keeps its VMs only within a strict majority that does not reach the
   * API server, which such a half would meet). Less: a partition or a control-plane outage, and
   * nothing is restarted.
   */
  private quorum(now: number): boolean {
    const fencing = this.nodes.list().filter((n) => n.metadata.annotations?.[FENCING_TIMEOUT] !== undefined);
    const fresh = fencing.filter((n) => {
      const seen = this.seen.get(n.metadata.name);
      return seen !== undefined && now - seen.at < this.graceMs;
    });
    return fresh.length * 2 >= fencing.length;
  }

  /**
   * Tells a fencing node's agent after how much silence its VMs are restarted elsewhere, so its
   * watchdog (agent/watchdog.ts) kills them before when the agent itself is dead or hung.
   */
  private async publishFailoverAfter(node: KubeObject): Promise<void> {
    const fencing = Number(node.metadata.annotations?.[FENCING_TIMEOUT] ?? NaN);
    if (!(fencing > 0)) return;
    const seconds = String(this.failoverAfterMs(fencing) / 1000);
    if (node.metadata.annotations?.[storage.NODE_FAILOVER_AFTER] === seconds) return;
    await this.client.patch(NODES, node.metadata.name, { metadata: { annotations: { [storage.NODE_FAILOVER_AFTER]: seconds } } });
  }

  /** Silence after which the node's agent has surely fenced itself; undefined: it never does (or has no peers). */
  private fencingDeadlineMs(node: KubeObject): number | undefined {
    const fencing = Number(node.metadata.annotations?.[FENCING_TIMEOUT] ?? NaN);
    if (!(fencing > 0)) return undefined;
    const peers = this.nodes.list().filter((n) => n.metadata.name !== node.metadata.name && n.metadata.annotations?.[FENCING_TIMEOUT] !== undefined);
    if (peers.length === 0) return undefined;
    return this.failoverAfterMs(fencing);
  }

  private failoverAfterMs(fencingSeconds: number): number {
    return this.graceMs + fencingSeconds * 1000 + this.marginMs;
  }

  /** The node is dead and its agent fenced: restart what may run elsewhere, say why for the rest. */
  private async failOver(node: KubeObject, silentMs: number): Promise<void> {
    const name = node.metadata.name;
    const seconds = Math.round(silentMs / 1000);
    for (const vmi of this.vmis.byIndex(BY_NODE, name)) {
      const phase = vmi.status?.phase;
      if (phase === 'Succeeded' || phase === 'Failed' || vmi.metadata.deletionTimestamp) continue;
      const blocked = this.failoverBlocked(vmi, node);
      if (blocked) {
        if (getCondition(vmi, NODE_FAILOVER)?.reason === blocked.reason) continue;
        const message = `node ${name} is dead (silent ${seconds}s, past its fencing deadline): ${blocked.message}`;
        await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, current) => {
          if (current.metadata.uid !== vmi.metadata.uid || s.nodeName !== name) return false;
          setCondition(s, { type: NODE_FAILOVER, status: 'False', reason: blocked.reason, message }, false);
        });
        await this.events.record(vmi, 'Warning', 'FailoverBlocked', message);
        this.log(`node-lifecycle: ${vmi.metadata.namespace}/${vmi.metadata.name} stays on dead node ${name}: ${blocked.reason}`);
        continue;
      }
      const message = `node ${name} is dead (silent ${seconds}s, past its fencing deadline; its agent has stopped its VMs): restarting elsewhere`;
      const done = await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, current) => {
        if (current.metadata.uid !== vmi.metadata.uid || s.nodeName !== name || s.phase === 'Succeeded' || s.phase === 'Failed') return false;
        s.phase = 'Failed';
        s.reason = NODE_FENCED;
        const stamps = (s.phaseTransitionTimestamps as Record<string, unknown>[] | undefined) ?? [];
        s.phaseTransitionTimestamps = [...stamps, { phase: 'Failed', phaseTransitionTimestamp: new Date().toISOString() }];
        setCondition(s, { type: 'Ready', status: 'False', reason: NODE_FENCED, message }, false);
      });
      if (!done) continue;
      // The agent that would drop its finalizer is gone; its QEMU was killed by the fence.
      const finalizers = (vmi.metadata.finalizers as string[] | undefined) ?? [];
      if (finalizers.includes(AGENT_FINALIZER)) {
        const rest = finalizers.filter((f) => f !== AGENT_FINALIZER);
        await this.client.patch(VMIS, vmi.metadata.name, { metadata: { finalizers: rest.length ? rest : null } }, { namespace: vmi.metadata.namespace });
      }
      await this.events.record(vmi, 'Warning', NODE_FENCED, message);
      this.log(`node-lifecycle: ${vmi.metadata.namespace}/${vmi.metadata.name} on dead node ${name}: failed, to restart elsewhere`);
    }
  }

  /** Why a VMI on a dead node is not restarted elsewhere; undefined when it is. */
  private failoverBlocked(vmi: Vmi, node: KubeObject): { reason: string; message: string } | undefined {
    const owner = ((vmi.metadata.ownerReferences as { kind: string; name: string }[] | undefined) ?? []).find((o) => o.kind === 'VirtualMachine');
    const vm = owner && this.vms.get(`${vmi.metadata.namespace}/${owner.name}`);
    if (!vm) return { reason: 'NoVirtualMachine', message: 'no VirtualMachine restarts this VMI' };
    const spec = (vm.spec ?? {}) as { runStrategy?: string; running?: boolean };
    const strategy = spec.runStrategy ?? (spec.running ? 'Always' : 'Halted');
    if (strategy !== 'Always' && strategy !== 'RerunOnFailure')
      return { reason: 'RunStrategy', message: `runStrategy ${strategy} does not restart it (Always or RerunOnFailure do)` };
    const local = nodeLocalClaims(vmi, (claim) => this.claims.get(`${vmi.metadata.namespace}/${claim}`), storage.nodePools(node));
    if (local.length) return { reason: 'NodeLocalDisks', message: `its disks stay on that node: ${local.join('; ')}` };
    return undefined;
  }
}

/**
 * The claims of a VMI whose data lives on its node alone (a pool the node does not share, or a
 * claim whose pool is unknown): such a VMI restarted elsewhere would lose or fork its disk.
 * Volumes re-made at every start (containerDisk, emptyDisk, cloud-init, an ephemeral overlay's
 * writes) do not hold it back: a restart loses them anyway. Not the LiveMigratable rule: a
 * live migration copies local disks from the running source, which a dead node cannot give.
 */
export function nodeLocalClaims(vmi: Vmi, claimOf: (name: string) => KubeObject | undefined, pools: Record<string, storage.NodePool>): string[] {
  const out: string[] = [];
  for (const v of vmi.spec?.volumes ?? []) {
    const claim = v.persistentVolumeClaim?.claimName ?? v.dataVolume?.name ?? v.ephemeral?.persistentVolumeClaim?.claimName;
    if (!claim) continue;
    const pool = claimOf(claim)?.metadata.annotations?.[storage.VOLUME_POOL];
    if (!pool || !pools[pool]?.shared) out.push(`volume ${v.name}: claim ${claim} ${pool ? `on the node-local pool ${pool}` : 'on no known pool'}`);
  }
  return out;
}

function conditionsOf(node: KubeObject): Condition[] {
  return (node.status as { conditions?: Condition[] } | undefined)?.conditions ?? [];
}
