/**
 * The VM scheduler: binds each pending VMI to a node (status.nodeName, phase Scheduled), by
 * the rules in scheduling/fit.ts: readiness, taints, selectors and affinity, free CPU and
 * memory after overcommit, and the node a local volume lives on. A VMI that fits nowhere
 * stays Pending with condition PodScheduled=False, reason Unschedulable, and the
 * kube-scheduler-style message saying why; it is tried again whenever nodes or VMIs change.
 * Claims of WaitForFirstConsumer classes get the chosen node (their first consumer).
 */
import type { V1VirtualMachineInstance } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import type { IoK8sApiCoreV1Node } from '@kubevirt-ui-ext/kubevirt-api/kubernetes';
import { storage, refs, phaseOf, annotationsOf } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { Controller, type Log, EventRecorder, cacheKey, type Informer, type KubeObject, setCondition, type Typed, updateStatus } from '@vessel/runtime';
import { scheduleVmi, vmiRequests, type SchedulingSettings } from './scheduling/fit.ts';

const { NODES, PVCS, VMIS } = refs;

type Obj = Record<string, unknown>;
type Vmi = Typed<V1VirtualMachineInstance>;
type Node = Typed<IoK8sApiCoreV1Node>;
const nodeOf = (o: Vmi) => o.status?.nodeName;
const UNSCHEDULED = new Set(['', 'Pending', 'Scheduling']);
const NODE_LABEL = 'kubevirt.io/nodeName';

export class Scheduler extends Controller {
  private readonly vmis: Informer<Vmi>;
  private readonly nodes: Informer<Node>;
  private readonly pvcs: Informer;
  private readonly events: EventRecorder;
  private readonly reported = new Map<string, string>();

  constructor(
    client: Client,
    log?: Log,
    private readonly settings: SchedulingSettings = {},
  ) {
    super('scheduler', client, log, 1); // one worker: each decision sees the one before
    this.events = new EventRecorder(client, 'vessel-scheduler');
    this.vmis = this.inform<Vmi>(VMIS, () => this.pending());
    this.nodes = this.inform<Node>(NODES, () => this.pending());
    this.pvcs = this.inform(PVCS, () => this.pending());
  }

  private pending(): string[] {
    return this.vmis
      .list()
      .filter((v) => UNSCHEDULED.has(phaseOf(v)) && !nodeOf(v) && !v.metadata.deletionTimestamp)
      .map(cacheKey);
  }

  protected async reconcile(key: string): Promise<void> {
    const vmi = this.vmis.get(key);
    if (!vmi || vmi.metadata.deletionTimestamp || nodeOf(vmi) || !UNSCHEDULED.has(phaseOf(vmi))) return;
    const spec = vmi.spec;
    const placed = this.vmis
      .list()
      .filter((v) => nodeOf(v) && !['Succeeded', 'Failed'].includes(phaseOf(v)) && v.metadata.uid !== vmi.metadata.uid)
      .map((v) => ({ nodeName: nodeOf(v)!, requests: vmiRequests(v.spec, this.settings) }));
    const { required, waitFor } = this.volumeNodes(vmi.metadata.namespace!, spec.volumes ?? []);
    const result = scheduleVmi({
      vmi: { metadata: { name: vmi.metadata.name, namespace: vmi.metadata.namespace! }, spec },
      nodes: this.nodes.list(),
      placed,
      requiredNodes: required,
      settings: this.settings,
    });
    if (result.node === undefined) {
      if (this.reported.get(key) !== result.message) {
        this.reported.set(key, result.message);
        await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, fresh) => {
          // The cache may lag: a VMI placed (or started) meanwhile keeps the status it has.
          if (s.nodeName || !UNSCHEDULED.has(phaseOf(fresh))) return false;
          s.phase = 'Pending';
          setCondition(s, { type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: result.message }, false);
          setCondition(s, { type: 'Ready', status: 'False', reason: 'Unschedulable', message: result.message }, false);
        });
        await this.events.record(vmi, 'Warning', 'FailedScheduling', result.message);
      }
      return;
    }
    this.reported.delete(key);
    // First consumer of WaitForFirstConsumer claims: they follow the VM.
    for (const claim of waitFor) {
      await this.client.patch(PVCS, claim, { metadata: { annotations: { [storage.SELECTED_NODE]: result.node } } }, { namespace: vmi.metadata.namespace });
    }
    if (!(await this.bind(vmi, result.node))) return;
    await this.events.record(vmi, 'Normal', 'Scheduled', `Successfully assigned ${key} to ${result.node}`);
  }

  /**
   * Binds the VMI to `node` in one write: the node label and the status together (VMIs have
   * no status subresource; were there one, the label would be patched first). Retries on
   * conflicts; false when the VMI is gone or someone bound it meanwhile.
   */
  private async bind(vmi: KubeObject, node: string): Promise<boolean> {
    const opts = { namespace: vmi.metadata.namespace };
    if (VMIS.statusSubresource) await this.client.patch(VMIS, vmi.metadata.name, { metadata: { labels: { [NODE_LABEL]: node } } }, opts);
    for (let attempt = 0; ; attempt++) {
      // The cached VMI first (no read); after a conflict, the server's.
      const fresh =
        attempt === 0
          ? vmi
          : await this.client.get(VMIS, vmi.metadata.name, opts).catch((e: unknown) => {
              if (isStatusError(e, 'NotFound')) return undefined;
              throw e;
            });
      if (!fresh?.metadata || fresh.metadata.uid !== vmi.metadata.uid) return false;
      const s = structuredClone((fresh.status ?? {}) as Obj);
      if (s.nodeName) return false;
      s.phase = 'Scheduled';
      s.nodeName = node;
      s.phaseTransitionTimestamps = [
        ...((s.phaseTransitionTimestamps as Obj[] | undefined) ?? []),
        { phase: 'Scheduled', phaseTransitionTimestamp: new Date().toISOString() },
      ];
      setCondition(s, { type: 'PodScheduled', status: 'True', reason: '', message: '' }, false);
      const metadata = VMIS.statusSubresource ? fresh.metadata : { ...fresh.metadata, labels: { ...fresh.metadata.labels, [NODE_LABEL]: node } };
      try {
        await this.client.update(VMIS, { ...fresh, metadata, status: s }, { ...opts, subresource: VMIS.statusSubresource ? 'status' : undefined });
        return true;
      } catch (e) {
        if (isStatusError(e, 'NotFound')) return false;
        if (!isStatusError(e, 'Conflict') || attempt >= 20) throw e;
      }
    }
  }

  /** Nodes the VMI's claims pin it to (local pools), and claims still waiting for a first consumer. */
  private volumeNodes(
    ns: string,
    volumes: { dataVolume?: { name: string }; persistentVolumeClaim?: { claimName: string } }[],
  ): { required?: string[]; waitFor: string[] } {
    let required: string[] | undefined;
    const waitFor: string[] = [];
    for (const v of volumes) {
      const name = v.dataVolume?.name ?? v.persistentVolumeClaim?.claimName;
      const pvc = name ? this.pvcs.get(`${ns}/${name}`) : undefined;
      if (!pvc) continue;
      const node = annotationsOf(pvc)[storage.SELECTED_NODE];
      if (!node) {
        waitFor.push(pvc.metadata.name);
        continue;
      }
      const pool = annotationsOf(pvc)[storage.VOLUME_POOL];
      const nodeObj = this.nodes.get(node);
      const shared = !!(pool && nodeObj && storage.nodePools(nodeObj)[pool]?.shared);
      if (!shared) required = required ? required.filter((n) => n === node) : [node];
    }
    return { required, waitFor };
  }
}
