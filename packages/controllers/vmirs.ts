/**
 * VirtualMachineInstanceReplicaSets (kubevirt.io/v1), as KubeVirt's replica set controller keeps
 * them: `spec.replicas` (default 1) VMIs from `spec.template`, named by generateName `<rs>`
 * plus a random suffix and owned by the replica set. VMIs that finished (Succeeded, Failed) are
 * deleted and replaced. Scale-in deletes VMIs that are not Running first, then the newest.
 * `spec.paused` stops creating and deleting; status (replicas, readyReplicas, labelSelector)
 * is still kept. Names come from the server, so creations are remembered until the cache shows
 * them (KubeVirt's expectations): a reconcile from a stale cache does not create twice.
 * Not built: adopting matching orphan VMIs (docs/pools.md).
 */
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { BY_OWNER, byOwner, Controller, EventRecorder, type Informer, type KubeObject, type Log, updateStatus } from '@vessel/runtime';
import { netpol, phaseOf, refs } from '@vessel/api';
import { selectorString } from './vmpool.ts';

const { VMIRS, VMIS } = refs;

type Obj = Record<string, unknown>;
const FINAL = new Set(['Succeeded', 'Failed']);
/** How long a creation counts before the cache shows it (KubeVirt's expectations expire too). */
const EXPECTATION_TTL_MS = 60_000;

interface ReplicaSetSpec {
  replicas?: number;
  paused?: boolean;
  selector?: netpol.LabelSelector;
  template?: { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec?: Obj };
}

export function isVmiReady(vmi: KubeObject): boolean {
  return ((vmi.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? []).some(
    (c) => c.type === 'Ready' && c.status === 'True',
  );
}

/** Which of `vmis` a scale-in by `n` deletes: not Running first, then the newest. */
export function vmiScaleInOrder(vmis: readonly KubeObject[], n: number): KubeObject[] {
  const running = (v: KubeObject) => Number(phaseOf(v) === 'Running');
  const created = (v: KubeObject) => Date.parse(v.metadata.creationTimestamp ?? '') || 0;
  return [...vmis]
    .sort((a, b) => running(a) - running(b) || created(b) - created(a) || b.metadata.name.localeCompare(a.metadata.name))
    .slice(0, Math.max(0, n));
}

export class VirtualMachineInstanceReplicaSetController extends Controller {
  private readonly sets: Informer;
  private readonly vmis: Informer;
  private readonly events: EventRecorder;
  /** Per replica set uid: names created that the cache has not shown yet, with when. */
  private readonly created = new Map<string, Map<string, number>>();
  /** VMIs this controller deleted (uid → cache key), until the cache shows them deleting or gone. */
  private readonly deleted = new Map<string, string>();

  constructor(client: Client, log?: Log) {
    super('vmirs', client, log);
    this.events = new EventRecorder(client, 'virtualmachineinstancereplicaset-controller');
    this.sets = this.inform(VMIRS);
    this.vmis = this.inform(VMIS, (vmi) => {
      const owner = (vmi.metadata.ownerReferences ?? []).find((r) => r.kind === 'VirtualMachineInstanceReplicaSet' && r.controller);
      return owner ? [`${vmi.metadata.namespace}/${owner.name}`] : [];
    }).addIndex(BY_OWNER, byOwner);
  }

  /** The replica set's VMIs that count: not deleting, not finished (finished ones are returned apart). */
  private members(rs: KubeObject): { active: KubeObject[]; finished: KubeObject[]; pending: number } {
    const uid = rs.metadata.uid!;
    const owned = this.vmis.byIndex(BY_OWNER, uid);
    const pending = this.created.get(uid) ?? new Map<string, number>();
    for (const vmi of owned) pending.delete(vmi.metadata.name);
    // A creation the cache never shows (deleted at once by someone else) stops counting after a while.
    for (const [name, at] of pending) if (Date.now() - at > EXPECTATION_TTL_MS) pending.delete(name);
    for (const [vmiUid, key] of this.deleted) {
      const vmi = this.vmis.get(key);
      if (!vmi || vmi.metadata.uid !== vmiUid || vmi.metadata.deletionTimestamp) this.deleted.delete(vmiUid);
    }
    const active: KubeObject[] = [];
    const finished: KubeObject[] = [];
    for (const vmi of owned) {
      if (vmi.metadata.deletionTimestamp || this.deleted.has(vmi.metadata.uid!)) continue;
      else if (FINAL.has(phaseOf(vmi))) finished.push(vmi);
      else active.push(vmi);
    }
    return { active, finished, pending: pending.size };
  }

  protected async reconcile(key: string): Promise<void> {
    const rs = this.sets.get(key);
    if (!rs) return;
    if (rs.metadata.deletionTimestamp) {
      this.created.delete(rs.metadata.uid!);
      return;
    }
    const ns = rs.metadata.namespace!;
    const spec = (rs.spec ?? {}) as ReplicaSetSpec;
    const { active, finished, pending } = this.members(rs);
    const want = spec.replicas ?? 1;
    if (!spec.paused && spec.template?.spec) {
      for (const vmi of finished) await this.deleteVmi(rs, vmi);
      const have = active.length + pending;
      if (have < want) for (let i = have; i < want; i++) await this.createVmi(rs, spec);
      else if (active.length > want) for (const vmi of vmiScaleInOrder(active, active.length - want)) await this.deleteVmi(rs, vmi);
    }
    const now = this.members(rs).active;
    const next = { replicas: now.length, readyReplicas: now.filter(isVmiReady).length, labelSelector: selectorString(spec.selector) };
    const status = (rs.status ?? {}) as Obj;
    if (status.replicas === next.replicas && status.readyReplicas === next.readyReplicas && status.labelSelector === next.labelSelector) return;
    await updateStatus(this.client, VMIRS, ns, rs.metadata.name, (s) => {
      Object.assign(s, next);
    });
  }

  private async deleteVmi(rs: KubeObject, vmi: KubeObject): Promise<void> {
    this.deleted.set(vmi.metadata.uid!, `${rs.metadata.namespace}/${vmi.metadata.name}`);
    await this.client.delete(VMIS, vmi.metadata.name, { namespace: rs.metadata.namespace }).catch((e) => {
      if (!isStatusError(e, 'NotFound')) throw e;
    });
    await this.events.record(rs, 'Normal', 'SuccessfulDelete', `Deleted virtual machine instance: ${vmi.metadata.name}`);
  }

  private async createVmi(rs: KubeObject, spec: ReplicaSetSpec): Promise<void> {
    const tmeta = spec.template?.metadata ?? {};
    const vmi: KubeObject = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: {
        name: '',
        generateName: rs.metadata.name,
        namespace: rs.metadata.namespace,
        ...(tmeta.labels ? { labels: { ...tmeta.labels } } : {}),
        ...(tmeta.annotations ? { annotations: { ...tmeta.annotations } } : {}),
        ownerReferences: [
          {
            apiVersion: 'kubevirt.io/v1',
            kind: 'VirtualMachineInstanceReplicaSet',
            name: rs.metadata.name,
            uid: rs.metadata.uid!,
            controller: true,
            blockOwnerDeletion: true,
          },
        ],
      },
      spec: structuredClone(spec.template!.spec!),
    };
    let made: KubeObject;
    try {
      made = (await this.client.create(VMIS, vmi, { namespace: rs.metadata.namespace })) as KubeObject;
    } catch (e) {
      await this.events.record(rs, 'Warning', 'FailedCreate', `Error creating VMI: ${e instanceof Error ? e.message : String(e)}`);
      throw e;
    }
    const uid = rs.metadata.uid!;
    if (!this.created.has(uid)) this.created.set(uid, new Map());
    this.created.get(uid)!.set(made.metadata.name, Date.now());
    await this.events.record(rs, 'Normal', 'SuccessfulCreate', `Created virtual machine instance: ${made.metadata.name}`);
  }
}
