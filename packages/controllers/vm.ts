/**
 * The VirtualMachine controller, with KubeVirt's semantics:
 * - each spec.dataVolumeTemplates entry becomes a DataVolume owned by the VM (whether or not it
 *   runs, so disks are ready by the time it starts);
 * - the run strategy decides whether a VirtualMachineInstance should exist: Always (restart
 *   whenever it ends), RerunOnFailure (restart only after a failure), Once (run one time),
 *   Manual (only start/stop requests), Halted (never); the deprecated `running` maps to
 *   Always/Halted. start/stop/restart subresources leave status.stateChangeRequests here;
 * - restarts after failures back off (status.startFailure; printableStatus CrashLoopBackOff);
 * - status.printableStatus and conditions always say why a VM is not running.
 * Each reconcile computes the VM's whole status in memory and writes it at most once, only
 * when it differs from the informer's copy, with that copy's resourceVersion: a conflict means
 * a newer VM is on its way to the cache, and its event runs the reconcile again.
 */
import { createHash } from 'node:crypto';
import { appliedKey, appliedOf, INSTANCETYPE_APPLIED, preferredStorageClass, requestedKey, sizeVm, type Lookup } from './instancetype.ts';
import { exportBlocking } from './vmexport.ts';
import { withoutReserved, refs, claimVolumes, phaseOf, runStrategyOf, RESUME_MEMORY, type OwnerReference } from '@vessel/api';
import { isStatusError, type Client, type ResourceRef } from '@vessel/client';
import type { V1VirtualMachine, V1VirtualMachineInstance } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import {
  BY_CLAIM,
  byClaim,
  cacheKey,
  Controller,
  splitKey,
  type Log,
  EventRecorder,
  type Informer,
  type KubeObject,
  getCondition,
  setCondition,
  type Typed,
  updateStatus,
} from '@vessel/runtime';

const { DATAVOLUMES, PVCS, VMIS, VMS, INSTANCETYPES, CLUSTER_INSTANCETYPES, PREFERENCES, CLUSTER_PREFERENCES, CONTROLLER_REVISIONS, DATASOURCES } = refs;

type Obj = Record<string, unknown>;
type Vm = Typed<V1VirtualMachine>;
type Vmi = Typed<V1VirtualMachineInstance>;
interface ChangeRequest {
  action: 'Start' | 'Stop';
  uid?: string;
}

/** On a VMI: hash of the VM template it was made from (RestartRequired when the template moves on). */
export const TEMPLATE_HASH = 'vessel.io/template-hash';
/** On a VM with runStrategy Once: it has made its one VMI, so it never makes another by itself. */
export const ONCE_RAN = 'vessel.io/once-ran';
const FINAL = new Set(['Succeeded', 'Failed']);
/** A VMI that ran this long before failing resets the crash-loop count. */
const STABLE_RUN_MS = 60_000;

const hashOf = (v: unknown) =>
  createHash('sha256')
    .update(JSON.stringify(v ?? {}))
    .digest('hex')
    .slice(0, 16);

/**
 * Hash of a VM template's spec, for RestartRequired. Hotpluggable volumes (`hotpluggable: true`,
 * what `addvolume --persist` adds) and their disks do not count: they reach the running VMI by
 * hotplug, so adding or removing them needs no restart.
 */
export function templateSpecHash(spec: unknown): string {
  const s = spec as { volumes?: Obj[]; domain?: { devices?: { disks?: Obj[] } } } | undefined;
  const hot = new Set(
    (Array.isArray(s?.volumes) ? s.volumes : [])
      .filter((v) => (v.dataVolume as Obj | undefined)?.hotpluggable === true || (v.persistentVolumeClaim as Obj | undefined)?.hotpluggable === true)
      .map((v) => v.name),
  );
  if (hot.size === 0) return hashOf(spec);
  const cold = structuredClone(s!);
  cold.volumes = cold.volumes!.filter((v) => !hot.has(v.name));
  const devices = cold.domain?.devices;
  if (devices && Array.isArray(devices.disks)) devices.disks = devices.disks.filter((d) => !hot.has(d.name));
  return hashOf(cold);
}

export class VirtualMachineController extends Controller {
  private readonly vms: Informer<Vm>;
  private readonly vmis: Informer<Vmi>;
  private readonly dvs: Informer;
  private readonly pvcs: Informer;
  /** VirtualMachineExports: a Ready export of a VM keeps it from starting. */
  private readonly exports: Informer;
  /** Instancetypes, preferences, their revisions and DataSources (inferFromVolume), by resource plural. */
  private readonly sizing = new Map<string, Informer>();
  private readonly events: EventRecorder;
  /** VM key → resourceVersion of this reconcile's own metadata patch of the VM (its status write follows it). */
  private readonly patched = new Map<string, string>();

  constructor(client: Client, log?: Log) {
    super('vm', client, log);
    this.events = new EventRecorder(client, 'virtualmachine-controller');
    this.vms = this.inform<Vm>(VMS).addIndex(BY_CLAIM, byClaim);
    this.vmis = this.inform<Vmi>(VMIS, (vmi) => ownerVm(vmi));
    this.dvs = this.inform(DATAVOLUMES, (dv) => [...ownerVm(dv), ...this.usersOf(dv)]);
    this.pvcs = this.inform(PVCS, (pvc) => this.usersOf(pvc));
    this.exports = this.inform(refs.VMEXPORTS, (e) => {
      const source = (e.spec as { source?: { kind?: string; name?: string } } | undefined)?.source;
      return source?.kind === 'VirtualMachine' && source.name ? [`${e.metadata.namespace}/${source.name}`] : [];
    });
    // A VM whose VMI admission refused for an unknown PriorityClass starts once the class exists.
    this.inform(refs.PRIORITY_CLASSES, (pc) =>
      this.vms
        .list()
        .filter(
          (vm) => (vm.spec as { template?: { spec?: { priorityClassName?: string } } } | undefined)?.template?.spec?.priorityClassName === pc.metadata.name,
        )
        .map(cacheKey),
    );
    // A VM that could not start for want of its instancetype or preference tries again when one appears.
    const waiting = (o: KubeObject) =>
      this.vms
        .list()
        .filter((vm) => !vm.status?.created && JSON.stringify([vm.spec.instancetype, vm.spec.preference]).includes(JSON.stringify(o.metadata.name)))
        .map(cacheKey);
    for (const res of [INSTANCETYPES, CLUSTER_INSTANCETYPES, PREFERENCES, CLUSTER_PREFERENCES]) this.sizing.set(res.plural, this.inform(res, waiting));
    for (const res of [CONTROLLER_REVISIONS, DATASOURCES])
      this.sizing.set(
        res.plural,
        this.inform(res, () => []),
      );
  }

  /** Reads for sizeVm: the caches, then the API server (an object created just before the VM may not be cached yet). */
  private readonly lookup: Lookup = {
    get: async (res: ResourceRef, namespace: string | undefined, name: string) => {
      const inf = res === DATAVOLUMES ? this.dvs : res === PVCS ? this.pvcs : this.sizing.get(res.plural);
      const hit = inf?.get(namespace && res.namespaced ? `${namespace}/${name}` : name);
      if (hit) return hit;
      try {
        return (await this.client.get(res, name, res.namespaced ? { namespace } : {})) as KubeObject;
      } catch (e) {
        if (isStatusError(e, 'NotFound')) return undefined;
        throw e;
      }
    },
  };

  /** VMs whose template mounts this DataVolume / claim by name. */
  private usersOf(o: KubeObject): string[] {
    return this.vms.byIndex(BY_CLAIM, cacheKey(o)).map(cacheKey);
  }

  protected async reconcile(key: string): Promise<void> {
    const vm = this.vms.get(key);
    if (!vm) return;
    const status = structuredClone((vm.status ?? {}) as Obj);
    this.patched.delete(key);
    try {
      // 'stored': sync wrote the status itself and stopped; that write's event runs the reconcile again.
      if ((await this.sync(key, vm, status)) !== 'stored') await this.commit(key, vm, status);
    } finally {
      this.patched.delete(key);
    }
  }

  /**
   * Writes `s` as the VM's status if it differs from what the cache saw. False when the write
   * lost a conflict: a newer VM is on its way and runs the reconcile again, so nothing is lost
   * by stopping here (what could be, a failed VMI's count, storeStartFailure stores first).
   */
  private async commit(key: string, vm: KubeObject, s: Obj): Promise<boolean> {
    if (JSON.stringify(s) === JSON.stringify(vm.status ?? {})) return true;
    const resourceVersion = this.patched.get(key) ?? vm.metadata.resourceVersion;
    try {
      await this.client.update(
        VMS,
        { ...vm, metadata: { ...vm.metadata, resourceVersion }, status: s },
        { namespace: vm.metadata.namespace, subresource: 'status' },
      );
      this.patched.delete(key);
      return true;
    } catch (e) {
      if (!isStatusError(e, 'Conflict') && !isStatusError(e, 'NotFound')) throw e;
      return false;
    }
  }

  /**
   * Acts on the VM and sets `s` (its status, a copy) to what it should be now. 'stored': it
   * wrote the status itself and did nothing after (see storeStartFailure).
   */
  private async sync(key: string, vm: Vm, s: Obj): Promise<'stored' | void> {
    const { namespace } = splitKey(key);
    let vmi = this.vmis.get(key);
    if (vmi && !ownerVm(vmi).includes(key)) vmi = undefined; // someone else's VMI of the same name
    if (vm.metadata.deletionTimestamp) return describe(s, vm, vmi, 'Terminating');
    const createdDvs = await this.ensureDataVolumes(vm);

    const strategy = runStrategyOf(vm);
    let requests = ((s.stateChangeRequests as ChangeRequest[] | undefined) ?? []).slice();
    const alive = vmi && !FINAL.has(phaseOf(vmi)) && !vmi.metadata.deletionTimestamp;

    // A stop request (for this VMI, or any) ends it; it is done once the VMI is gone.
    if (requests[0]?.action === 'Stop') {
      if (vmi && (!requests[0].uid || requests[0].uid === vmi.metadata.uid)) {
        if (!vmi.metadata.deletionTimestamp) await this.deleteVmi(vm, vmi, 'stop requested');
        return describe(s, vm, vmi, 'Stopping');
      }
      requests = requests.slice(1);
      setRequests(s, requests);
    }

    // A Start request is done once its VMI runs: drop it here too, not only where the VMI is
    // made, since the status write that dropped it there may have lost a conflict (a Start
    // left behind would restart a Manual VM when its guest stops).
    if (requests[0]?.action === 'Start' && alive) {
      requests = requests.slice(1);
      setRequests(s, requests);
    }

    // Crash-loop bookkeeping for a VMI that failed.
    let backoffUntil = 0;
    if (vmi && phaseOf(vmi) === 'Failed') backoffUntil = recordFailure(s, vmi);
    else if (vmi && phaseOf(vmi) === 'Running' && runningFor(vmi) > STABLE_RUN_MS && s.startFailure) delete s.startFailure;

    // Should a VMI run?
    const wantStart = requests[0]?.action === 'Start';
    let want: boolean;
    switch (strategy) {
      case 'Always':
        want = true;
        break;
      case 'Halted':
        want = false;
        break;
      case 'RerunOnFailure':
        want = wantStart || !(vmi && phaseOf(vmi) === 'Succeeded');
        break;
      // Once: the VMI it made runs until it ends; none is made again (a restart's Start request aside).
      case 'Once':
        want = wantStart || (vmi ? !!alive : !vm.metadata.annotations?.[ONCE_RAN]);
        break;
      case 'Manual':
        want = wantStart || !!alive;
        break;
    }

    if (vmi && FINAL.has(phaseOf(vmi)) && !vmi.metadata.deletionTimestamp) {
      const restart = want && (strategy === 'Always' || wantStart || (strategy === 'RerunOnFailure' && phaseOf(vmi) === 'Failed'));
      if (!restart) {
        if (strategy === 'Halted') await this.deleteVmi(vm, vmi, 'the VM is halted');
        return describe(s, vm, vmi);
      }
      if (backoffUntil > Date.now()) {
        this.queue.addAfter(key, backoffUntil - Date.now() + 50);
        return describe(s, vm, vmi, 'CrashLoopBackOff');
      }
      if (phaseOf(vmi) === 'Failed' && JSON.stringify(s.startFailure) !== JSON.stringify((vm.status as Obj | undefined)?.startFailure)) {
        await this.storeStartFailure(vm, vmi);
        return 'stored';
      }
      await this.deleteVmi(vm, vmi, phaseOf(vmi) === 'Failed' ? 'restarting after a failure' : 'restarting: the guest stopped');
      return describe(s, vm, vmi, 'Starting');
    }
    if (!want) {
      if (alive) await this.deleteVmi(vm, vmi!, `runStrategy ${strategy}`);
      return describe(s, vm, vmi);
    }
    if (vmi && neverScheduled(vmi) && vmi.metadata.annotations?.[TEMPLATE_HASH] !== templateSpecHash(vm.spec.template?.spec)) {
      // A VMI that never reached a node has nothing to lose: the changed template (say, less
      // memory for an unschedulable VM) takes effect at once instead of waiting for a restart.
      if (!vmi.metadata.deletionTimestamp) await this.deleteVmi(vm, vmi, 'the template changed before it was scheduled');
      return describe(s, vm, vmi, 'Starting');
    }
    if (vmi) return describe(s, vm, vmi);

    // Start: not while a Ready export reads the disks (KubeVirt's export pod holds them), and only once every disk is ready.
    const exporting = exportBlocking(
      this.exports.list().filter((e) => e.metadata.namespace === namespace),
      vm.metadata.name,
    );
    if (exporting)
      return describe(s, vm, undefined, 'Stopped', {
        reason: 'VMExportInProgress',
        message: `VirtualMachineExport ${exporting.metadata.name} is exporting the disks: delete it to start the VM`,
      });
    const blocked = this.volumeProblem(vm, namespace!, createdDvs);
    if (blocked) return describe(s, vm, undefined, blocked.status, blocked);
    const sized = await sizeVm(this.client, this.lookup, vm, s);
    if ('problem' in sized) {
      if (getCondition(vm as KubeObject, 'Ready')?.message !== sized.problem.message)
        await this.events.record(vm, 'Warning', 'FailedCreate', sized.problem.message);
      return describe(s, vm, undefined, 'Stopped', sized.problem);
    }
    try {
      vmi = await this.createVmi(key, vm, sized.spec, sized.applied);
    } catch (e) {
      // A template admission refuses (a field refused since the VM was stored) cannot start
      // until it is edited, and the edit brings the VM back here: say why, without retrying.
      if (!isStatusError(e, 'Invalid')) throw e;
      return describe(s, vm, undefined, 'Stopped', { reason: 'FailedCreate', message: e.message });
    }
    if (wantStart) setRequests(s, requests.slice(1));
    if (vmi) describe(s, vm, vmi);
    if (strategy === 'Once')
      this.patchedTo(key, await this.client.patch(VMS, vm.metadata.name, { metadata: { annotations: { [ONCE_RAN]: 'true' } } }, { namespace }));
  }

  /**
   * Stores the count of a failed VMI in the VM's status before that VMI is deleted: once it is
   * gone nothing can count it again, so the commit at the end of the reconcile, which gives up
   * on a conflict, must not be its only record. Reads the VM again and reapplies the count on a
   * conflict (another writer: the start/stop subresources, a user's edit). The VMI is deleted
   * by the reconcile this write's event brings, which finds the count in the cache.
   */
  private async storeStartFailure(vm: KubeObject, vmi: KubeObject): Promise<void> {
    await updateStatus(this.client, VMS, vm.metadata.namespace, vm.metadata.name, (s, fresh) => {
      if (fresh.metadata.uid !== vm.metadata.uid) return false; // a new VM of the same name
      recordFailure(s, vmi);
    });
  }

  private patchedTo(key: string, vm: { metadata?: { resourceVersion?: string } }): void {
    if (vm.metadata?.resourceVersion) this.patched.set(key, vm.metadata.resourceVersion);
  }

  /** Creates the DataVolumes the VM's templates name that the cache lacks; returns those it created. */
  private async ensureDataVolumes(vm: Vm): Promise<Map<string, KubeObject>> {
    const created = new Map<string, KubeObject>();
    let storageClass: Promise<string | undefined> | undefined;
    for (const t of vm.spec.dataVolumeTemplates ?? []) {
      const name = t.metadata?.name ?? '';
      if (!name || this.dvs.get(`${vm.metadata.namespace}/${name}`)) continue;
      const meta = t.metadata ?? {};
      try {
        storageClass ??= preferredStorageClass(this.lookup, vm);
        const spec = withStorageClass(t.spec, await storageClass);
        const dv = await this.client.create(
          DATAVOLUMES,
          {
            apiVersion: 'cdi.kubevirt.io/v1beta1',
            kind: 'DataVolume',
            metadata: {
              name,
              namespace: vm.metadata.namespace,
              // Vessel's own keys are never copied from what a user wrote (see @vessel/api reserved.ts).
              labels: { ...withoutReserved(meta.labels), 'kubevirt.io/created-by': vm.metadata.uid ?? '' },
              annotations: withoutReserved(meta.annotations),
              ownerReferences: [ownerRef(vm)],
            },
            spec,
          },
          { namespace: vm.metadata.namespace },
        );
        created.set(name, dv as KubeObject);
        await this.events.record(vm, 'Normal', 'SuccessfulDataVolumeCreate', `Created DataVolume ${name}`);
      } catch (e) {
        if (isStatusError(e, 'AlreadyExists')) continue;
        await this.events.record(vm, 'Warning', 'FailedDataVolumeCreate', `Error creating DataVolume ${name}: ${e instanceof Error ? e.message : e}`);
        throw e;
      }
    }
    return created;
  }

  /**
   * Why the VM's disks keep it from starting, if they do. `created`: DataVolumes this reconcile
   * just made, which the cache may not have yet (they are Pending, not missing).
   */
  private volumeProblem(vm: Vm, ns: string, created: Map<string, KubeObject>): { status: string; reason: string; message: string } | undefined {
    for (const ref of claimVolumes(vm)) {
      if (ref.kind === 'dataVolume') {
        const dv = this.dvs.get(`${ns}/${ref.claim}`) ?? created.get(ref.claim);
        if (!dv) return { status: 'ErrorDataVolumeNotFound', reason: 'DataVolumeNotFound', message: `DataVolume ${ref.claim} does not exist` };
        const phase = phaseOf(dv);
        if (phase === 'Failed') {
          const why = getCondition(dv, 'Ready')?.message ?? '';
          return { status: 'DataVolumeError', reason: 'DataVolumeError', message: `DataVolume ${ref.claim} failed: ${why}` };
        }
        if (phase !== 'Succeeded')
          return {
            status: 'Provisioning',
            reason: 'DataVolumeNotReady',
            message: `DataVolume ${ref.claim} is ${phase || 'Pending'} (${String((dv.status as Obj | undefined)?.progress ?? 'N/A')})`,
          };
      } else {
        const pvc = this.pvcs.get(`${ns}/${ref.claim}`);
        if (!pvc) return { status: 'ErrorPvcNotFound', reason: 'PvcNotFound', message: `PersistentVolumeClaim ${ref.claim} does not exist` };
      }
    }
    return undefined;
  }

  /** Creates the VM's VMI; returns it (undefined when one of that name appeared meanwhile). */
  private async createVmi(key: string, vm: Vm, spec: Obj, applied: ReturnType<typeof appliedOf>): Promise<Vmi | undefined> {
    const template = vm.spec.template;
    const meta = template.metadata ?? {};
    const resume = vm.metadata.annotations?.[RESUME_MEMORY];
    try {
      const vmi = await this.client.create(
        VMIS,
        {
          apiVersion: 'kubevirt.io/v1',
          kind: 'VirtualMachineInstance',
          metadata: {
            name: vm.metadata.name,
            namespace: vm.metadata.namespace,
            labels: { ...withoutReserved(meta.labels), 'kubevirt.io/created-by': vm.metadata.uid ?? '' },
            annotations: {
              ...withoutReserved(meta.annotations),
              [TEMPLATE_HASH]: templateSpecHash(template.spec),
              ...(resume ? { [RESUME_MEMORY]: resume } : {}),
              ...(applied?.instancetype || applied?.preference ? { [INSTANCETYPE_APPLIED]: JSON.stringify(applied) } : {}),
            },
            ownerReferences: [ownerRef(vm)],
          },
          spec,
        },
        { namespace: vm.metadata.namespace },
      );
      await this.events.record(
        vm,
        'Normal',
        'SuccessfulCreate',
        `Started the virtual machine by creating the new virtual machine instance ${vm.metadata.name}`,
      );
      // The memory state is for this one start.
      if (resume)
        this.patchedTo(
          key,
          await this.client.patch(VMS, vm.metadata.name, { metadata: { annotations: { [RESUME_MEMORY]: null } } }, { namespace: vm.metadata.namespace }),
        );
      return vmi as Vmi;
    } catch (e) {
      if (isStatusError(e, 'AlreadyExists')) return undefined;
      await this.events.record(vm, 'Warning', 'FailedCreate', `Error creating VirtualMachineInstance: ${e instanceof Error ? e.message : e}`);
      throw e;
    }
  }

  private async deleteVmi(vm: KubeObject, vmi: KubeObject, why: string): Promise<void> {
    try {
      await this.client.delete(VMIS, vmi.metadata.name, { namespace: vmi.metadata.namespace, preconditions: { uid: vmi.metadata.uid } });
      await this.events.record(
        vm,
        'Normal',
        'SuccessfulDelete',
        `Stopped the virtual machine by deleting the virtual machine instance ${vmi.metadata.uid} (${why})`,
      );
    } catch (e) {
      if (!isStatusError(e, 'NotFound') && !isStatusError(e, 'Conflict')) throw e;
    }
  }
}

function setRequests(s: Obj, requests: ChangeRequest[]): void {
  if (requests.length) s.stateChangeRequests = requests;
  else delete s.stateChangeRequests;
}

/** Counts a failed VMI once (in `s.startFailure`); returns when the next start may happen. */
function recordFailure(s: Obj, vmi: KubeObject): number {
  const prior = (s.startFailure ?? {}) as { consecutiveFailCount?: number; lastFailedVMIUID?: string; retryAfterTimestamp?: string };
  if (prior.lastFailedVMIUID === vmi.metadata.uid) return Date.parse(prior.retryAfterTimestamp ?? '') || 0;
  // A VMI failed over from a dead node (node-lifecycle.ts) did not crash: it restarts at once.
  const fenced = (vmi.status as Obj | undefined)?.reason === 'NodeFenced';
  const count = fenced ? (prior.consecutiveFailCount ?? 0) : runningFor(vmi) > STABLE_RUN_MS ? 1 : (prior.consecutiveFailCount ?? 0) + 1;
  // KubeVirt's curve: 10 s doubling per consecutive failure, at most 5 minutes; the first retry is immediate.
  const delay = count <= 1 ? 0 : Math.min(300_000, 10_000 * 2 ** (count - 2));
  const retryAfter = new Date(Date.now() + delay);
  s.startFailure = { consecutiveFailCount: count, lastFailedVMIUID: vmi.metadata.uid, retryAfterTimestamp: retryAfter.toISOString() };
  return retryAfter.getTime();
}

/** Sets printableStatus, ready, created, conditions and generations in `s` from the VM and its VMI. */
function describe(s: Obj, vm: Vm, vmi: Vmi | undefined, forced?: string, problem?: { reason: string; message: string }): void {
  const paused = vmi ? getCondition(vmi, 'Paused')?.status === 'True' : false;
  const unschedulable = vmi ? getCondition(vmi, 'PodScheduled') : undefined;
  const printable =
    forced ??
    (!vmi
      ? 'Stopped'
      : vmi.metadata.deletionTimestamp
        ? 'Stopping'
        : FINAL.has(phaseOf(vmi))
          ? 'Stopped'
          : phaseOf(vmi) === 'Running'
            ? paused
              ? 'Paused'
              : 'Running'
            : unschedulable?.status === 'False' && unschedulable.reason === 'Unschedulable'
              ? 'ErrorUnschedulable'
              : 'Starting');
  const ready = !!vmi && phaseOf(vmi) === 'Running' && getCondition(vmi, 'Ready')?.status === 'True';
  const templateHash = templateSpecHash(vm.spec.template?.spec);
  const vmiHash = vmi?.metadata.annotations?.[TEMPLATE_HASH];
  const alive = !!vmi && !FINAL.has(phaseOf(vmi));
  const restartRequired = alive && vmiHash !== undefined && vmiHash !== templateHash;
  // The instancetype or preference the VM names now is not the one its VMI was made with.
  const sizingChanged = alive && requestedKey(vm.spec) !== appliedKey(vmi!);
  // The refs of the running VMI are the VM's (KubeVirt >= 1.4 keeps them in status); a stopped VM keeps its last ones for its next start.
  const applied = vmi && alive ? appliedOf(vmi) : undefined;
  if (applied) {
    for (const which of ['instancetype', 'preference'] as const) {
      if (applied[which]) s[`${which}Ref`] = applied[which];
      else delete s[`${which}Ref`];
    }
  }
  s.printableStatus = printable;
  s.ready = ready;
  s.created = !!vmi && !FINAL.has(phaseOf(vmi));
  s.runStrategy = runStrategyOf(vm);
  s.desiredGeneration = vm.metadata.generation;
  s.observedGeneration = vm.metadata.generation;
  const why =
    problem ??
    (vmi
      ? { reason: String(getCondition(vmi, 'Ready')?.reason || phaseOf(vmi) || 'Pending'), message: getCondition(vmi, 'Ready')?.message ?? '' }
      : { reason: 'VMINotExists', message: 'VMI does not exist' });
  setCondition(
    s,
    ready ? { type: 'Ready', status: 'True', reason: '', message: '' } : { type: 'Ready', status: 'False', reason: why.reason, message: why.message },
    false,
  );
  setCondition(
    s,
    paused
      ? { type: 'Paused', status: 'True', reason: 'PausedByUser', message: 'VMI was paused by user' }
      : { type: 'Paused', status: 'False', reason: '', message: '' },
    false,
  );
  if (restartRequired || sizingChanged)
    setCondition(
      s,
      {
        type: 'RestartRequired',
        status: 'True',
        reason: restartRequired ? 'TemplateChanged' : 'InstancetypeChanged',
        message: restartRequired
          ? 'a non-live-updatable field was changed in the template spec: it takes effect on the next start'
          : 'spec.instancetype or spec.preference was changed: it takes effect on the next start',
      },
      false,
    );
  else if (Array.isArray(s.conditions)) s.conditions = (s.conditions as Obj[]).filter((c) => c.type !== 'RestartRequired');
}

function ownerRef(vm: KubeObject): OwnerReference {
  return { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: vm.metadata.name, uid: vm.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

function ownerVm(o: KubeObject): string[] {
  const refs = (o.metadata.ownerReferences as { kind: string; name: string; controller?: boolean }[] | undefined) ?? [];
  return refs.filter((r) => r.kind === 'VirtualMachine' && r.controller).map((r) => `${o.metadata.namespace}/${r.name}`);
}

function neverScheduled(vmi: KubeObject): boolean {
  const s = (vmi.status ?? {}) as Obj;
  return !s.nodeName && ['', 'Pending', 'Scheduling'].includes(String(s.phase ?? ''));
}

/** How long a VMI has been (or was) Running, from its phase transition timestamps. */
function runningFor(vmi: KubeObject): number {
  const stamps = ((vmi.status as Obj | undefined)?.phaseTransitionTimestamps as { phase: string; phaseTransitionTimestamp: string }[] | undefined) ?? [];
  const start = stamps.find((t) => t.phase === 'Running');
  if (!start) return 0;
  const end = stamps.find((t) => FINAL.has(t.phase));
  return (end ? Date.parse(end.phaseTransitionTimestamp) : Date.now()) - Date.parse(start.phaseTransitionTimestamp);
}

/** A DataVolume spec with `storageClassName` filled in where its storage (or pvc) names none. */
function withStorageClass<T>(spec: T, storageClass: string | undefined): T {
  if (!storageClass || !spec) return spec;
  const copy = structuredClone(spec) as Obj;
  const target = (copy.storage ?? copy.pvc) as Obj | undefined;
  if (!target || target.storageClassName) return spec;
  target.storageClassName = storageClass;
  return copy as T;
}
