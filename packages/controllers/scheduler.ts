/**
 * The VM scheduler: binds each pending VMI to a node (status.nodeName, phase Scheduled), by
 * the rules in scheduling/fit.ts: readiness, taints, selectors and affinity, free CPU and
 * memory after overcommit, and the node a local volume lives on. A VMI that fits nowhere
 * stays Pending with condition PodScheduled=False, reason Unschedulable, and the
 * kube-scheduler-style message saying why; it is tried again whenever nodes or VMIs change.
 * Claims of WaitForFirstConsumer classes get the chosen node (their first consumer).
 *
 * Priority and preemption (docs/scheduling.md): a VMI that fits nowhere may evict VMIs of
 * lower priority (its vessel.io/priority annotation, admission's resolution of its
 * PriorityClass) as kube-scheduler's DefaultPreemption does (scheduling/preemption.ts): the
 * victims are live-migrated when their evictionStrategy asks for it and another node has room,
 * else stopped (deleted: a VM whose runStrategy wants it running makes a new VMI, which waits
 * for room), with a Preempted event on each and its VM; the preemptor is nominated to the node
 * (vessel.io/nominated-node, kube's status.nominatedNodeName) and waits there while the victims
 * leave, its requests counted on that node against VMIs of lower priority meanwhile. A bound
 * VMI carries the memory overhead the scheduler counted for it (vessel.io/memory-overhead).
 *
 * Queue order, as kube-scheduler's active queue: pending VMIs are tried by priority (higher
 * first), then creation time (older first). The work queue is FIFO, so the keys are queued in
 * that order, and a VMI placed out of turn (its key queued earlier) still sees the room the
 * pending VMIs ahead of it would take held for them.
 */
import type { V1VirtualMachineInstance } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import type { IoK8sApiCoreV1Node } from '@kubevirt-ui-ext/kubevirt-api/kubernetes';
import { storage, refs, phaseOf, annotationsOf, priority, migration } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { Controller, type Log, EventRecorder, cacheKey, type Informer, type KubeObject, setCondition, type Typed, updateStatus } from '@vessel/runtime';
import {
  BY_MIGRATION_TARGET,
  byMigrationTarget,
  scheduleVmi,
  vmiOverheadBytes,
  vmiRequests,
  type Requests,
  type SchedulingSettings,
} from './scheduling/fit.ts';
import { choosePreemption, type PlacedVmi, type Victim } from './scheduling/preemption.ts';
import { wantsLiveMigration } from './evacuation.ts';
import { tryParseQuantity, migrationConfig } from '@vessel/api';

const { NODES, PVCS, VMIS, VMS, VMIMS, KUBEVIRTS } = refs;

type Obj = Record<string, unknown>;
type Vmi = Typed<V1VirtualMachineInstance>;
type Node = Typed<IoK8sApiCoreV1Node>;
const nodeOf = (o: Vmi) => o.status?.nodeName;
const UNSCHEDULED = new Set(['', 'Pending', 'Scheduling']);
const NODE_LABEL = 'kubevirt.io/nodeName';
/** kube-scheduler's queue order: higher priority first, then the older, then by key. */
export function queueOrder(a: Vmi, b: Vmi): number {
  const pa = priority.priorityOf(a).priority;
  const pb = priority.priorityOf(b).priority;
  if (pa !== pb) return pb - pa;
  const ta = a.metadata.creationTimestamp ?? '';
  const tb = b.metadata.creationTimestamp ?? '';
  if (ta !== tb) return ta < tb ? -1 : 1;
  const ka = cacheKey(a);
  const kb = cacheKey(b);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}
/** How long an evicted VMI counts as leaving before the cache shows it (a migration may take this long to start). */
const EVICTED_MEMORY_MS = 60_000;

export class Scheduler extends Controller {
  private readonly vmis: Informer<Vmi>;
  private readonly nodes: Informer<Node>;
  private readonly pvcs: Informer;
  private readonly kubevirts: Informer;
  private readonly events: EventRecorder;
  private readonly reported = new Map<string, string>();
  /** Victims evicted lately (uid → when), leaving even while the cache does not show it yet: never evicted twice. */
  private readonly evicted = new Map<string, number>();

  constructor(
    client: Client,
    log?: Log,
    private readonly settings: SchedulingSettings = {},
  ) {
    super('scheduler', client, log, 1); // one worker: each decision sees the one before
    this.events = new EventRecorder(client, 'vessel-scheduler');
    this.vmis = this.inform<Vmi>(VMIS, () => this.pending());
    this.vmis.addIndex(BY_MIGRATION_TARGET, byMigrationTarget);
    this.nodes = this.inform<Node>(NODES, () => this.pending());
    this.pvcs = this.inform(PVCS, () => this.pending());
    this.kubevirts = this.inform(KUBEVIRTS);
  }

  /** The VMIs waiting for a node, in queue order (queueOrder). */
  private waiting(): Vmi[] {
    return this.vmis
      .list()
      .filter((v) => UNSCHEDULED.has(phaseOf(v)) && !nodeOf(v) && !v.metadata.deletionTimestamp)
      .sort(queueOrder);
  }

  private pending(): string[] {
    return this.waiting().map(cacheKey);
  }

  protected async reconcile(key: string): Promise<void> {
    const vmi = this.vmis.get(key);
    if (!vmi || vmi.metadata.deletionTimestamp || nodeOf(vmi) || !UNSCHEDULED.has(phaseOf(vmi))) return;
    const spec = vmi.spec;
    const mine = priority.priorityOf(vmi);
    const running = this.vmis.list().filter((v) => nodeOf(v) && !['Succeeded', 'Failed'].includes(phaseOf(v)) && v.metadata.uid !== vmi.metadata.uid);
    // Pending VMIs nominated to a node after preempting there hold their room against VMIs of lower priority.
    const nominated = this.vmis
      .list()
      .filter((v) => !nodeOf(v) && v.metadata.uid !== vmi.metadata.uid && !v.metadata.deletionTimestamp && annotationsOf(v)[priority.NOMINATED_NODE])
      .filter((v) => priority.priorityOf(v).priority >= mine.priority);
    const placed = [
      ...running.map((v) => ({ nodeName: nodeOf(v)!, requests: vmiRequests(v.spec, this.settings) })),
      ...nominated.map((v) => ({ nodeName: annotationsOf(v)[priority.NOMINATED_NODE], requests: vmiRequests(v.spec, this.settings) })),
      // VMIs migrating into a node hold their room there too, until the switch.
      ...this.migrationTargets(vmi),
    ];
    // The room pending VMIs ahead in the queue would take is theirs (their own reconcile binds them).
    for (const ahead of this.waiting()) {
      if (ahead.metadata.uid === vmi.metadata.uid || queueOrder(ahead, vmi) >= 0 || annotationsOf(ahead)[priority.NOMINATED_NODE]) continue;
      const fit = scheduleVmi({
        vmi: { metadata: { name: ahead.metadata.name, namespace: ahead.metadata.namespace! }, spec: ahead.spec },
        nodes: this.nodes.list(),
        placed,
        requiredNodes: this.volumeNodes(ahead.metadata.namespace!, ahead.spec.volumes ?? []).required,
        settings: this.settings,
      });
      if (fit.node !== undefined) {
        placed.push({ nodeName: fit.node, requests: vmiRequests(ahead.spec, this.settings) });
        this.queue.add(cacheKey(ahead));
      }
    }
    const { required, waitFor } = this.volumeNodes(vmi.metadata.namespace!, spec.volumes ?? []);
    const result = scheduleVmi({
      vmi: { metadata: { name: vmi.metadata.name, namespace: vmi.metadata.namespace! }, spec },
      nodes: this.nodes.list(),
      placed,
      requiredNodes: required,
      settings: this.settings,
    });
    if (result.node === undefined) {
      const preemption = await this.preempt(key, vmi, mine, running, required);
      const message = `${result.message} preemption: ${preemption}`;
      // Per uid: a VMI made again under the same name (a preempted VM's) is reported again.
      const mark = `${vmi.metadata.uid} ${message}`;
      if (this.reported.get(key) !== mark) {
        this.reported.set(key, mark);
        await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, fresh) => {
          // The cache may lag: a VMI placed (or started) meanwhile keeps the status it has.
          if (s.nodeName || !UNSCHEDULED.has(phaseOf(fresh))) return false;
          s.phase = 'Pending';
          setCondition(s, { type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message }, false);
          setCondition(s, { type: 'Ready', status: 'False', reason: 'Unschedulable', message }, false);
        });
        await this.events.record(vmi, 'Warning', 'FailedScheduling', message);
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
      // The overhead counted, for all to see; a nomination ends with the binding (as kube clears nominatedNodeName).
      const annotations: Record<string, string> = { ...fresh.metadata.annotations, [priority.MEMORY_OVERHEAD]: String(this.overheadOf(fresh as Vmi)) };
      delete annotations[priority.NOMINATED_NODE];
      const metadata = VMIS.statusSubresource
        ? { ...fresh.metadata, annotations }
        : { ...fresh.metadata, annotations, labels: { ...fresh.metadata.labels, [NODE_LABEL]: node } };
      try {
        await this.client.update(VMIS, { ...fresh, metadata, status: s }, { ...opts, subresource: VMIS.statusSubresource ? 'status' : undefined });
        return true;
      } catch (e) {
        if (isStatusError(e, 'NotFound')) return false;
        if (!isStatusError(e, 'Conflict') || attempt >= 20) throw e;
      }
    }
  }

  /**
   * The room other VMIs' migrations under way take on their target nodes (scheduling/fit.ts
   * migrationTargetPlacements' rule), looked up per node in the index: only nodes the cache
   * has count (a VMI is placed on no other).
   */
  private migrationTargets(vmi: Vmi): { nodeName: string; requests: Requests }[] {
    return this.nodes.list().flatMap((n) =>
      this.vmis
        .byIndex(BY_MIGRATION_TARGET, n.metadata.name)
        .filter((v) => v.metadata.uid !== vmi.metadata.uid)
        .map((v) => ({ nodeName: n.metadata.name, requests: vmiRequests(v.spec, this.settings) })),
    );
  }

  /** The memory overhead vmiRequests counts for this VMI (0 with overcommitGuestOverhead). */
  private overheadOf(vmi: Vmi): number {
    const d = vmi.spec?.domain;
    if (d?.resources?.overcommitGuestOverhead) return 0;
    const guest = tryParseQuantity(d?.memory?.guest) ?? tryParseQuantity(d?.resources?.limits?.memory) ?? tryParseQuantity(d?.resources?.requests?.memory) ?? 0;
    return vmiOverheadBytes(guest, vmi.spec);
  }

  /**
   * Preemption for a VMI that fits nowhere; returns what it did or why not, for the
   * FailedScheduling message (kube's "preemption: ..." suffix).
   */
  private async preempt(key: string, vmi: Vmi, mine: priority.ResolvedPriority, running: Vmi[], required?: string[]): Promise<string> {
    if (mine.preemptionPolicy === 'Never') return 'not eligible due to preemptionPolicy=Never.';
    for (const [uid, at] of this.evicted) if (Date.now() - at > EVICTED_MEMORY_MS) this.evicted.delete(uid);
    const isLeaving = (v: Vmi) => !!v.metadata.deletionTimestamp || migration.isActive(migration.stateOf(v)) || this.evicted.has(v.metadata.uid ?? '');
    // Victims already leaving the nominated node: wait for them rather than evict more (kube's PodEligibleToPreemptOthers).
    const nominatedTo = annotationsOf(vmi)[priority.NOMINATED_NODE];
    if (nominatedTo) {
      const leaving = running.filter((v) => nodeOf(v) === nominatedTo && priority.priorityOf(v).priority < mine.priority && isLeaving(v));
      if (leaving.length) return `waiting on node ${nominatedTo} for ${leaving.length} preempted VMI(s) to leave.`;
    }
    const kv = this.kubevirts.get(`${migrationConfig.KUBEVIRT_NAMESPACE}/${migrationConfig.KUBEVIRT_NAME}`);
    const placed: PlacedVmi[] = running
      // A VMI migrating is not evicted again: it is leaving already, or arriving.
      .filter((v) => !isLeaving(v))
      .map((v) => ({
        key: cacheKey(v),
        nodeName: nodeOf(v)!,
        requests: vmiRequests(v.spec, this.settings),
        priority: priority.priorityOf(v).priority,
        startedAt: Date.parse(String(v.metadata.creationTimestamp)) || undefined,
        liveMigrate: phaseOf(v) === 'Running' && wantsLiveMigration(v, kv),
        spec: v.spec,
      }));
    // The leaving ones still take their room until they are gone.
    const leavingRoom = running
      .filter(isLeaving)
      .map((v) => ({ key: cacheKey(v), nodeName: nodeOf(v)!, requests: vmiRequests(v.spec, this.settings), priority: Infinity, liveMigrate: false }));
    // So do VMIs arriving by migration (never victims: evicting them is the migration's abort, not preemption's).
    for (const t of this.migrationTargets(vmi)) leavingRoom.push({ key: `${t.nodeName}:incoming`, ...t, priority: Infinity, liveMigrate: false });
    const choice = choosePreemption({
      vmi: { spec: vmi.spec, requests: vmiRequests(vmi.spec, this.settings), priority: mine.priority, preemptionPolicy: mine.preemptionPolicy },
      nodes: this.nodes.list(),
      placed: [...placed, ...leavingRoom],
      requiredNodes: required,
      settings: this.settings,
    });
    if (choice.node === undefined) return choice.reason;
    await this.client.patch(
      VMIS,
      vmi.metadata.name,
      { metadata: { annotations: { [priority.NOMINATED_NODE]: choice.node } } },
      { namespace: vmi.metadata.namespace },
    );
    const list = choice.victims.map((v) => `${v.key} (${v.action === 'migrate' ? `live-migrated to ${v.to}` : 'stopped'})`).join(', ');
    this.log(`scheduler: ${key} (priority ${mine.priority}) preempts on ${choice.node}: ${list}`);
    await this.events.record(vmi, 'Normal', 'Preempting', `preempting ${choice.victims.length} VMI(s) of lower priority on node ${choice.node}: ${list}`);
    for (const victim of choice.victims) await this.evict(victim, key, mine.priority, choice.node);
    return `${choice.victims.length} VMI(s) of lower priority preempted on node ${choice.node}; nominated there.`;
  }

  /** One victim out: a live migration (the migration controller picks the target), or a stop (the VMI deleted). */
  private async evict(victim: Victim, by: string, prio: number, node: string): Promise<void> {
    const v = this.vmis.get(victim.key);
    if (!v) return;
    const ns = v.metadata.namespace!;
    this.evicted.set(v.metadata.uid ?? '', Date.now());
    const message = `Preempted by ${by} (priority ${prio}) on node ${node}: ${victim.action === 'migrate' ? 'live-migrating it away' : 'stopping it'}`;
    try {
      if (victim.action === 'migrate') {
        await this.client.create(
          VMIMS,
          {
            apiVersion: 'kubevirt.io/v1',
            kind: 'VirtualMachineInstanceMigration',
            metadata: {
              generateName: `${v.metadata.name.slice(0, 40)}-preemption-`,
              namespace: ns,
              labels: { 'vessel.io/preempted-by': by.replace('/', '.').slice(0, 63) },
            },
            spec: { vmiName: v.metadata.name },
          },
          { namespace: ns },
        );
      } else {
        await this.client.delete(VMIS, v.metadata.name, { namespace: ns, preconditions: { uid: v.metadata.uid } });
      }
    } catch (e) {
      if (isStatusError(e, 'NotFound') || isStatusError(e, 'Conflict')) return;
      throw e;
    }
    await this.events.record(v, 'Normal', 'Preempted', message);
    const owner = (v.metadata.ownerReferences ?? []).find((r) => r.kind === 'VirtualMachine' && r.controller);
    if (owner) {
      const vm = await this.client.get(VMS, owner.name, { namespace: ns }).catch(() => undefined);
      if (vm) await this.events.record(vm as KubeObject, 'Normal', 'Preempted', message);
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
