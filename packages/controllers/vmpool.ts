/**
 * VirtualMachinePools (pool.kubevirt.io/v1alpha1), as KubeVirt's pool controller keeps them:
 * `spec.replicas` (default 1) VirtualMachines named `<pool>-<index>`, each new one at the lowest
 * free index, made from `spec.virtualMachineTemplate` and owned by the pool (the garbage
 * collector deletes them, and their DataVolumes, with it). Every replica gets its own disks:
 * each dataVolumeTemplate is renamed `<name>-<index>` and the volumes that named it follow.
 * Scale-in deletes VMs that are not ready first, then the highest indices. `spec.paused` stops
 * creating and deleting; status (replicas, readyReplicas, labelSelector for the scale
 * subresource) is still kept. Not built: adopting matching orphan VMs, rolling template changes
 * out to existing VMs, maxUnavailable, nameGeneration, scaleInStrategy (docs/pools.md).
 */
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { BY_OWNER, byOwner, Controller, EventRecorder, type Informer, type KubeObject, type Log, updateStatus } from '@vessel/runtime';
import { netpol, refs } from '@vessel/api';

const { VMPOOLS, VMS } = refs;

type Obj = Record<string, unknown>;

interface PoolSpec {
  replicas?: number;
  paused?: boolean;
  selector?: netpol.LabelSelector;
  virtualMachineTemplate?: { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec?: Obj };
}

/** The index of a pool's VM named `<pool>-<n>`, else undefined. */
export function indexOf(pool: string, vmName: string): number | undefined {
  if (!vmName.startsWith(`${pool}-`)) return undefined;
  const rest = vmName.slice(pool.length + 1);
  return /^(0|[1-9]\d*)$/.test(rest) ? Number(rest) : undefined;
}

/** The lowest `n` indices not taken. */
export function freeIndices(taken: (i: number) => boolean, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; out.length < n; i++) if (!taken(i)) out.push(i);
  return out;
}

/**
 * The VM spec of replica `index`: every dataVolumeTemplate named `<name>-<index>`, and the
 * template's dataVolume and persistentVolumeClaim volumes that pointed at one renamed alike.
 */
export function replicaVmSpec(template: Obj, index: number): Obj {
  const spec = structuredClone(template);
  const renamed = new Map<string, string>();
  for (const dvt of (spec.dataVolumeTemplates as { metadata?: { name?: string } }[] | undefined) ?? []) {
    if (!dvt.metadata?.name) continue;
    const name = `${dvt.metadata.name}-${index}`;
    renamed.set(dvt.metadata.name, name);
    dvt.metadata.name = name;
  }
  const volumes = ((spec.template as { spec?: { volumes?: Obj[] } } | undefined)?.spec?.volumes ?? []) as {
    dataVolume?: { name?: string };
    persistentVolumeClaim?: { claimName?: string };
  }[];
  for (const v of volumes) {
    if (v.dataVolume?.name && renamed.has(v.dataVolume.name)) v.dataVolume.name = renamed.get(v.dataVolume.name);
    if (v.persistentVolumeClaim?.claimName && renamed.has(v.persistentVolumeClaim.claimName))
      v.persistentVolumeClaim.claimName = renamed.get(v.persistentVolumeClaim.claimName);
  }
  return spec;
}

export function isVmReady(vm: KubeObject): boolean {
  const status = (vm.status ?? {}) as { ready?: boolean; conditions?: { type: string; status: string }[] };
  return status.ready === true || (status.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

/** Which of `vms` a scale-in by `n` deletes: not-ready first, then the highest index. */
export function scaleInOrder(pool: string, vms: readonly KubeObject[], n: number): KubeObject[] {
  const idx = (vm: KubeObject) => indexOf(pool, vm.metadata.name) ?? Number.MAX_SAFE_INTEGER;
  return [...vms].sort((a, b) => Number(isVmReady(a)) - Number(isVmReady(b)) || idx(b) - idx(a)).slice(0, Math.max(0, n));
}

/** metav1.FormatLabelSelector's text, '' for none (the scale subresource's status.selector). */
export function selectorString(sel: netpol.LabelSelector | undefined): string {
  const s = netpol.formatSelector(sel);
  return s === '<none>' ? '' : s;
}

export class VirtualMachinePoolController extends Controller {
  private readonly pools: Informer;
  private readonly vms: Informer;
  private readonly events: EventRecorder;
  /** VMs this controller deleted (uid → cache key), until the cache shows them deleting or gone. */
  private readonly deleted = new Map<string, string>();

  constructor(client: Client, log?: Log) {
    super('vmpool', client, log);
    this.events = new EventRecorder(client, 'virtualmachinepool-controller');
    this.pools = this.inform(VMPOOLS);
    this.vms = this.inform(VMS, (vm) => {
      const owner = (vm.metadata.ownerReferences ?? []).find((r) => r.kind === 'VirtualMachinePool' && r.controller);
      return owner ? [`${vm.metadata.namespace}/${owner.name}`] : [];
    }).addIndex(BY_OWNER, byOwner);
  }

  protected async reconcile(key: string): Promise<void> {
    const pool = this.pools.get(key);
    if (!pool || pool.metadata.deletionTimestamp) return;
    const ns = pool.metadata.namespace!;
    const name = pool.metadata.name;
    const spec = (pool.spec ?? {}) as PoolSpec;
    for (const [uid, vmKey] of this.deleted) {
      const vm = this.vms.get(vmKey);
      if (!vm || vm.metadata.uid !== uid || vm.metadata.deletionTimestamp) this.deleted.delete(uid);
    }
    const owned = this.vms.byIndex(BY_OWNER, pool.metadata.uid!).filter((vm) => !vm.metadata.deletionTimestamp && !this.deleted.has(vm.metadata.uid!));
    const want = spec.replicas ?? 1;
    if (!spec.paused && spec.virtualMachineTemplate?.spec) {
      if (owned.length < want) {
        // An index is taken while any VM has its name (a deleting one, or one the pool does not own).
        const taken = (i: number) => !!this.vms.get(`${ns}/${name}-${i}`);
        for (const i of freeIndices(taken, want - owned.length)) await this.createVm(pool, spec, i);
      } else if (owned.length > want) {
        for (const vm of scaleInOrder(name, owned, owned.length - want)) {
          this.deleted.set(vm.metadata.uid!, `${ns}/${vm.metadata.name}`);
          await this.client.delete(VMS, vm.metadata.name, { namespace: ns }).catch((e) => {
            if (!isStatusError(e, 'NotFound')) throw e;
          });
          await this.events.record(pool, 'Normal', 'SuccessfulDelete', `Deleted virtual machine: ${vm.metadata.name}`);
        }
      }
    }
    const current = this.vms.byIndex(BY_OWNER, pool.metadata.uid!).filter((vm) => !vm.metadata.deletionTimestamp && !this.deleted.has(vm.metadata.uid!));
    const next = { replicas: current.length, readyReplicas: current.filter(isVmReady).length, labelSelector: selectorString(spec.selector) };
    const status = (pool.status ?? {}) as Obj;
    if (status.replicas === next.replicas && status.readyReplicas === next.readyReplicas && status.labelSelector === next.labelSelector) return;
    await updateStatus(this.client, VMPOOLS, ns, name, (s) => {
      Object.assign(s, next);
    });
  }

  private async createVm(pool: KubeObject, spec: PoolSpec, index: number): Promise<void> {
    const tmeta = spec.virtualMachineTemplate?.metadata ?? {};
    const name = `${pool.metadata.name}-${index}`;
    const vm: KubeObject = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      metadata: {
        name,
        namespace: pool.metadata.namespace,
        ...(tmeta.labels ? { labels: { ...tmeta.labels } } : {}),
        ...(tmeta.annotations ? { annotations: { ...tmeta.annotations } } : {}),
        ownerReferences: [
          {
            apiVersion: 'pool.kubevirt.io/v1alpha1',
            kind: 'VirtualMachinePool',
            name: pool.metadata.name,
            uid: pool.metadata.uid!,
            controller: true,
            blockOwnerDeletion: true,
          },
        ],
      },
      spec: replicaVmSpec(spec.virtualMachineTemplate!.spec!, index),
    };
    try {
      await this.client.create(VMS, vm, { namespace: pool.metadata.namespace });
    } catch (e) {
      if (isStatusError(e, 'AlreadyExists')) return;
      await this.events.record(pool, 'Warning', 'FailedCreate', `Error creating VM ${name}: ${e instanceof Error ? e.message : String(e)}`);
      throw e;
    }
    await this.events.record(pool, 'Normal', 'SuccessfulCreate', `Created virtual machine: ${name}`);
  }
}
