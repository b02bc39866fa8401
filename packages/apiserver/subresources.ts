/**
 * KubeVirt's action subresources (`/apis/subresources.kubevirt.io/v1/...`), as virt-api
 * answers them: VM start, stop and restart change the run strategy or leave a state change
 * request for the VM controller; VMI pause, unpause, softreboot and reset go to the agent of
 * the VMI's node, which acts over QMP. 202 when accepted, 409 when the VM's state or run
 * strategy forbids the action, with a message that says which.
 *
 * addvolume / removevolume (PUT with AddVolumeOptions / RemoveVolumeOptions) edit the spec:
 * on a VMI its volumes and disks (the VMI must be running); on a VM its template's, and those
 * of its VMI while one is alive. The agent running the VMI then plugs or unplugs the disk
 * (agent/vms/hotplug.ts). Hotplugged volumes are marked `hotpluggable: true`, which keeps a
 * persisted one from making the VM RestartRequired. 400 for a request that cannot be carried
 * out (virt-api's messages), 409 when the VMI is not running.
 */
import { findByResource, isObject as isObj } from '@vessel/api';
import { authorize, type User } from './auth.ts';
import { agentRefusal, callAgent } from './agents.ts';
import { ApiError, badRequest, undefinedIfNotFound } from './errors.ts';
import type { StoredObject } from './objects.ts';
import type { Resources } from './resources.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const VMI = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
const PVC = findByResource('', 'v1', 'persistentvolumeclaims')!;
const DV = findByResource('cdi.kubevirt.io', 'v1beta1', 'datavolumes')!;
/** Actions whose PUT carries a JSON body (AddVolumeOptions, RemoveVolumeOptions). */
export const BODY_ACTIONS: ReadonlySet<string> = new Set(['addvolume', 'removevolume']);

type Obj = Record<string, unknown>;
const conflict = (message: string) => new ApiError(409, 'Conflict', message);
const FINAL = new Set(['Succeeded', 'Failed']);

/**
 * Carries out one action; resolves with the HTTP code to answer. `body` reads and parses the
 * request body (BODY_ACTIONS), once the user is known to be allowed.
 */
export async function runAction(
  resources: Resources,
  user: User,
  namespace: string,
  resource: string,
  name: string,
  action: string,
  body?: () => Promise<unknown>,
): Promise<number> {
  authorize(user, { verb: 'update', group: 'subresources.kubevirt.io', resource, subresource: action, namespace, name });
  if (action === 'addvolume' || action === 'removevolume') await volumeAction(resources, namespace, resource, name, parseVolumeRequest(action, await body?.()));
  else if (resource === 'virtualmachines') await vmAction(resources, namespace, name, action);
  else await vmiAction(resources, namespace, name, action);
  return 202;
}

async function vmAction(resources: Resources, ns: string, name: string, action: string): Promise<void> {
  const vm = await resources.get(VM, ns, name);
  const spec = (vm.spec ?? {}) as { runStrategy?: string; running?: boolean };
  const strategy = spec.runStrategy ?? (spec.running ? 'Always' : 'Halted');
  // No VMI means not running; failing to read it must not pass for that (the action would be wrong).
  const vmi = await resources.get(VMI, ns, name).catch(undefinedIfNotFound);
  const alive = !!vmi && !FINAL.has(String((vmi.status as Obj | undefined)?.phase ?? '')) && !vmi.metadata.deletionTimestamp;
  const setStrategy = (next: 'Always' | 'Halted') =>
    resources.patch(
      VM,
      ns,
      name,
      'merge',
      JSON.stringify(spec.runStrategy !== undefined ? { spec: { runStrategy: next } } : { spec: { running: next === 'Always' } }),
      undefined,
    );
  const request = (reqs: Obj[]) => resources.patch(VM, ns, name, 'merge', JSON.stringify({ status: { stateChangeRequests: reqs } }), 'status');
  switch (action) {
    case 'start':
      if (alive) throw conflict(`VM ${name} is already running`);
      if (strategy === 'Halted') {
        await setStrategy('Always');
        return;
      }
      if (strategy === 'Always' || strategy === 'Once') throw conflict(`runStrategy ${strategy} does not support manual start requests`);
      await request([{ action: 'Start' }]);
      return;
    case 'stop':
      if (strategy === 'Halted' && !alive) throw conflict(`VM ${name} is not running`);
      if (strategy === 'Always' || strategy === 'RerunOnFailure') {
        await setStrategy('Halted');
        return;
      }
      if (!alive) throw conflict(`VM ${name} is not running`);
      await request([{ action: 'Stop', uid: vmi!.metadata.uid }]);
      return;
    case 'restart':
      if (strategy === 'Halted') throw conflict(`runStrategy Halted does not support manual restart requests`);
      if (!alive) throw conflict(`VM ${name} is not running`);
      await request(
        strategy === 'Always' || strategy === 'RerunOnFailure'
          ? [{ action: 'Stop', uid: vmi!.metadata.uid }]
          : [{ action: 'Stop', uid: vmi!.metadata.uid }, { action: 'Start' }],
      );
      return;
    default:
      throw new ApiError(404, 'NotFound', `virtualmachines have no action ${action}`);
  }
}

async function vmiAction(resources: Resources, ns: string, name: string, action: string): Promise<void> {
  const vmi = await resources.get(VMI, ns, name);
  const status = (vmi.status ?? {}) as { phase?: string; nodeName?: string };
  if (status.phase !== 'Running' || !status.nodeName) throw conflict(`VMI ${name} is not running`);
  const r = await callAgent(resources, status.nodeName, 'PUT', `/v1/vmi/${encodeURIComponent(ns)}/${encodeURIComponent(name)}/${action}`);
  if (r.code >= 400) throw agentRefusal('action', r.code, r.body, status.nodeName);
}

// ---- addvolume / removevolume ----

/** One hotplug request, checked: a volume and its disk to add, or a volume name to remove. */
type VolumeRequest =
  | { kind: 'add'; name: string; volume: Obj; disk: Obj; claim: { name: string; dataVolume: boolean }; dryRun: boolean }
  | { kind: 'remove'; name: string; dryRun: boolean };

/** Volume (and disk) names, as KubeVirt's: a DNS-1123 label. */
const VOLUME_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** AddVolumeOptions / RemoveVolumeOptions → a request, or a 400 that says what is wrong. */
export function parseVolumeRequest(action: 'addvolume' | 'removevolume', body: unknown): VolumeRequest {
  const what = action === 'addvolume' ? 'AddVolumeOptions' : 'RemoveVolumeOptions';
  if (!isObj(body)) throw badRequest(`the request body must be a ${what} object`);
  const name = body.name;
  if (name === undefined || name === '') throw badRequest(`${what} requires name to be set`);
  if (typeof name !== 'string' || name.length > 63 || !VOLUME_NAME.test(name)) {
    throw badRequest(
      `${what}: invalid name ${JSON.stringify(name)}: a volume name must consist of lower case letters, digits and '-', start and end with a letter or digit, and be at most 63 characters`,
    );
  }
  const dryRunList = body.dryRun ?? [];
  if (!Array.isArray(dryRunList) || dryRunList.some((d) => d !== 'All'))
    throw badRequest(`${what}: invalid dryRun ${JSON.stringify(body.dryRun)}: the only accepted value is ["All"]`);
  const dryRun = dryRunList.length > 0;
  if (action === 'removevolume') return { kind: 'remove', name, dryRun };

  if (!isObj(body.disk)) throw badRequest('AddVolumeOptions requires disk to not be nil');
  if (!isObj(body.volumeSource)) throw badRequest('AddVolumeOptions requires volumeSource to not be nil');
  const src = body.volumeSource;
  const kinds = Object.keys(src).filter((k) => src[k] !== undefined && src[k] !== null);
  if (kinds.length !== 1 || !['dataVolume', 'persistentVolumeClaim'].includes(kinds[0])) {
    throw badRequest(
      `AddVolumeOptions: volumeSource must set exactly one of dataVolume or persistentVolumeClaim${kinds.length ? ` (found ${kinds.join(', ')})` : ''}`,
    );
  }
  const dataVolume = kinds[0] === 'dataVolume';
  const ref = src[kinds[0]];
  const claimName = isObj(ref) ? (dataVolume ? ref.name : ref.claimName) : undefined;
  if (typeof claimName !== 'string' || claimName === '') {
    throw badRequest(`AddVolumeOptions: volumeSource.${dataVolume ? 'dataVolume.name' : 'persistentVolumeClaim.claimName'} is required`);
  }
  // As virt-api: the volume is hotpluggable, and the disk takes the volume's name.
  const volume: Obj = { name, [kinds[0]]: { ...(ref as Obj), hotpluggable: true } };
  const disk: Obj = { ...body.disk, name };
  if (disk.cdrom !== undefined || disk.lun !== undefined)
    throw badRequest('AddVolumeOptions: only disk targets can be hotplugged on Vessel (not cdrom or lun)');
  const target = isObj(disk.disk) ? disk.disk : {};
  // virtctl's default bus for hotplugged disks; virtio would need a free PCIe port, sata cannot hotplug.
  const bus = target.bus ?? 'scsi';
  if (bus !== 'scsi') throw badRequest(`AddVolumeOptions: a hotplugged disk must use bus scsi, not ${JSON.stringify(bus)}`);
  disk.disk = { ...target, bus };
  if (disk.serial !== undefined && (typeof disk.serial !== 'string' || !/^[A-Za-z0-9_.+-]+$/.test(disk.serial))) {
    throw badRequest(`AddVolumeOptions: invalid disk serial ${JSON.stringify(disk.serial)}: use letters, digits and _.+-`);
  }
  if (disk.bootOrder !== undefined) throw badRequest('AddVolumeOptions: a hotplugged disk cannot have a bootOrder');
  return { kind: 'add', name, volume, disk, claim: { name: claimName, dataVolume }, dryRun };
}

type Spec = { volumes?: Obj[]; domain?: { devices?: { disks?: Obj[]; disableHotplug?: boolean } } };
const claimOf = (v: Obj): string | undefined =>
  ((v.dataVolume as Obj | undefined)?.name ?? (v.persistentVolumeClaim as Obj | undefined)?.claimName) as string | undefined;
const hotpluggable = (v: Obj): boolean =>
  (v.dataVolume as Obj | undefined)?.hotpluggable === true || (v.persistentVolumeClaim as Obj | undefined)?.hotpluggable === true;

/**
 * The spec's volumes and disks after the request, or undefined when there is nothing to do
 * (`tolerate`: the VMI of a VM already has the same volume, or no longer has it). Throws a
 * 400 with virt-api's message when the request does not fit the spec.
 */
function editSpec(spec: Spec, req: VolumeRequest, tolerate: boolean): { volumes: Obj[]; disks: Obj[] } | undefined {
  const volumes = spec.volumes ?? [];
  const disks = spec.domain?.devices?.disks ?? [];
  const existing = volumes.find((v) => v.name === req.name);
  if (req.kind === 'add') {
    if (existing) {
      if (tolerate && hotpluggable(existing) && claimOf(existing) === req.claim.name) return undefined;
      throw badRequest(`Unable to add volume [${req.name}] because volume with that name already exists`);
    }
    if (disks.some((d) => d.name === req.name)) throw badRequest(`Unable to add volume [${req.name}] because a disk with that name already exists`);
    if (volumes.some((v) => claimOf(v) === req.claim.name)) throw badRequest(`Unable to add volume source [${req.claim.name}] because it already exists`);
    if (spec.domain?.devices?.disableHotplug === true)
      throw badRequest(`Unable to add volume [${req.name}] because hotplug is disabled (spec.domain.devices.disableHotplug)`);
    return { volumes: [...volumes, req.volume], disks: [...disks, req.disk] };
  }
  if (!existing) {
    if (tolerate) return undefined;
    throw badRequest(`Unable to remove volume [${req.name}] because it does not exist`);
  }
  if (!hotpluggable(existing)) {
    if (tolerate) return undefined;
    throw badRequest(`Unable to remove volume [${req.name}] because it is not hotpluggable`);
  }
  return { volumes: volumes.filter((v) => v.name !== req.name), disks: disks.filter((d) => d.name !== req.name) };
}

/** The claim (or DataVolume, whose claim has its name) must exist in the namespace. */
async function requireClaim(resources: Resources, ns: string, req: VolumeRequest): Promise<void> {
  if (req.kind !== 'add') return;
  const found = async (info: typeof PVC) =>
    resources.get(info, ns, req.claim.name).then(
      () => true,
      (e: unknown) => {
        if (e instanceof ApiError && e.code === 404) return false;
        throw e;
      },
    );
  if (await found(PVC)) return;
  if (req.claim.dataVolume && (await found(DV))) return;
  throw badRequest(`Unable to add volume [${req.name}]: ${req.claim.dataVolume ? 'DataVolume' : 'PersistentVolumeClaim'} ${ns}/${req.claim.name} not found`);
}

async function volumeAction(resources: Resources, ns: string, resource: string, name: string, req: VolumeRequest): Promise<void> {
  await requireClaim(resources, ns, req);
  if (resource === 'virtualmachineinstances') {
    await editObject(resources, VMI, ns, name, req, (vmi) => {
      if ((vmi.status as Obj | undefined)?.phase !== 'Running' || vmi.metadata.deletionTimestamp)
        throw conflict(`Unable to ${req.kind} volume: VMI ${name} is not running`);
      return { spec: (vmi.spec ?? {}) as Spec, wrap: (s) => ({ spec: s }) };
    });
    return;
  }
  // The VM's template, then its VMI while one is alive; both are checked before either is written.
  const vmSpec = (vm: StoredObject) => (((vm.spec as Obj | undefined)?.template as Obj | undefined)?.spec ?? {}) as Spec;
  const vm = await resources.get(VM, ns, name);
  editSpec(vmSpec(vm), req, false);
  const vmi = await resources.get(VMI, ns, name).catch(undefinedIfNotFound);
  const owned = ((vmi?.metadata.ownerReferences as { kind: string; uid?: string }[] | undefined) ?? []).some(
    (r) => r.kind === 'VirtualMachine' && r.uid === vm.metadata.uid,
  );
  const alive = !!vmi && owned && !vmi.metadata.deletionTimestamp && !FINAL.has(String((vmi.status as Obj | undefined)?.phase ?? ''));
  if (alive) editSpec((vmi.spec ?? {}) as Spec, req, true);
  await editObject(resources, VM, ns, name, req, (o) => ({ spec: vmSpec(o), wrap: (s) => ({ spec: { template: { spec: s } } }) }));
  if (alive) await editObject(resources, VMI, ns, name, req, (o) => ({ spec: (o.spec ?? {}) as Spec, wrap: (s) => ({ spec: s }) }), true);
}

/**
 * Edits the volumes and disks of one object with a merge patch pinned to the resourceVersion
 * read (the lists are replaced whole), again from the start when someone wrote in between.
 */
async function editObject(
  resources: Resources,
  info: typeof VM,
  ns: string,
  name: string,
  req: VolumeRequest,
  locate: (o: StoredObject) => { spec: Spec; wrap: (s: Obj) => Obj },
  tolerate = false,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const obj = await resources.get(info, ns, name);
    const { spec, wrap } = locate(obj);
    const next = editSpec(spec, req, tolerate);
    if (!next) return;
    const patch = {
      metadata: { resourceVersion: obj.metadata.resourceVersion },
      ...wrap({ volumes: next.volumes, domain: { devices: { disks: next.disks } } }),
    };
    try {
      await resources.patch(info, ns, name, 'merge', JSON.stringify(patch), undefined, { dryRun: req.dryRun });
      return;
    } catch (e) {
      if (!(e instanceof ApiError && e.code === 409) || attempt >= 5) throw e;
    }
  }
}
