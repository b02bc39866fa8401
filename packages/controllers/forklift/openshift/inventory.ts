/**
 * The `openshift` provider's inventory (docs/forklift.md, "The openshift provider"), as pure
 * functions of a KubeVirt cluster's objects: VirtualMachines (id = uid, with their namespace,
 * CPUs, memory, firmware, disks by claim with size and StorageClass, NICs by network: `pod` or a
 * NetworkAttachmentDefinition `ns/name`, power state), NADs as networks and StorageClasses as
 * storage; the plan concerns peculiar to this source (a running VM is stopped by a cold
 * migration; volumes that are not claims are copied as they are, or refused); the Secret's keys.
 */
import { tryParseQuantity, type KubeObject } from '@vessel/api';
import type { Inventory, InventoryVm } from '../ova.ts';
import type { Concern } from '../validation.ts';

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const a = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const s = (v: unknown): string | undefined => (typeof v === 'string' && v ? v : undefined);

/** The network id of the cluster's pod network in an openshift inventory (a NetworkMap source `{type: pod}`). */
export const POD_NETWORK = 'pod';

/** Volume kinds copied into the target VM's spec as they are (they are not disks to transfer). */
const COPIED = ['containerDisk', 'cloudInitNoCloud', 'cloudInitConfigDrive', 'emptyDisk', 'ephemeral', 'sysprep'];
/** Copied as they are too, but they name an object the target namespace must hold. */
const NEEDS_OBJECT = ['configMap', 'secret', 'serviceAccount', 'downwardAPI', 'downwardMetrics'];

export interface OpenshiftDisk {
  /** The VM's volume name. */
  id: string;
  /** `<namespace>/<claim>`: the claim holding the disk (a DataVolume's claim has its name). */
  file: string;
  capacity: number;
  format: string;
  /** The claim's StorageClass (a StorageMap source `{name}`); '' when the claim names none. */
  datastore: string;
  /** The claim name, and whether the VM names it as a dataVolume. */
  claim: string;
  dataVolume: boolean;
}

export interface OpenshiftVm extends InventoryVm {
  provider: 'openshift';
  namespace: string;
  uid: string;
  /** `poweredOn` when a VMI runs or the VM is asked to run, else `poweredOff` (Forklift's vSphere words, so `targetPowerState: auto` reads one field). */
  powerState: 'poweredOn' | 'poweredOff';
  disks: OpenshiftDisk[];
  /** Volumes copied as they are (`<volume>:<kind>`), and those that cannot be migrated. */
  copied: string[];
  needsObject: string[];
  unsupportedVolumes: string[];
}

export interface ClusterObjects {
  vms: KubeObject[];
  vmis: KubeObject[];
  pvcs: KubeObject[];
  dataVolumes: KubeObject[];
  nads: KubeObject[];
  storageClasses: KubeObject[];
}

const bytes = (q: unknown): number => (typeof q === 'string' || typeof q === 'number' ? (tryParseQuantity(String(q)) ?? 0) : 0);

/** Mebibytes of a memory quantity (`64Mi`, `1Gi`, bytes). */
const mib = (q: unknown): number => Math.round(bytes(q) / (1024 * 1024));

/** Whether the VM is running or asked to run (runStrategy, the older `running`, or a live VMI). */
export function isRunning(vm: KubeObject, vmi: KubeObject | undefined): boolean {
  const spec = o(vm.spec);
  const phase = s(o(vmi?.status).phase);
  if (vmi && phase !== 'Succeeded' && phase !== 'Failed') return true;
  if (spec.running === true) return true;
  return spec.runStrategy === 'Always' || spec.runStrategy === 'RerunOnFailure';
}

/** A network of the VM's template: `pod`, or the NAD's `ns/name` (a bare name is in the VM's namespace). */
export function networkOf(net: Obj, vmNamespace: string): string | undefined {
  if (net.pod) return POD_NETWORK;
  const multus = s(o(net.multus).networkName);
  if (!multus) return undefined;
  return multus.includes('/') ? multus : `${vmNamespace}/${multus}`;
}

/** One VirtualMachine as the inventory lists it. */
export function inventoryVm(vm: KubeObject, objs: Pick<ClusterObjects, 'vmis' | 'pvcs' | 'dataVolumes'>, defaultClass = ''): OpenshiftVm {
  const ns = vm.metadata?.namespace ?? '';
  const name = vm.metadata?.name ?? '';
  const tpl = o(o(o(vm.spec).template).spec);
  const domain = o(tpl.domain);
  const cpu = o(domain.cpu);
  const cpus = Math.max(1, Number(cpu.cores ?? 1)) * Math.max(1, Number(cpu.sockets ?? 1)) * Math.max(1, Number(cpu.threads ?? 1));
  const memoryMB = mib(o(domain.memory).guest) || mib(o(o(domain.resources).requests).memory) || mib(o(o(domain.resources).limits).memory);
  const firmware = o(o(domain.firmware).bootloader).efi ? 'efi' : 'bios';
  const find = (list: KubeObject[], n: string) => list.find((x) => x.metadata?.namespace === ns && x.metadata?.name === n);
  const disks: OpenshiftDisk[] = [];
  const copied: string[] = [];
  const needsObject: string[] = [];
  const unsupportedVolumes: string[] = [];
  for (const vol of a(tpl.volumes).map(o)) {
    const vname = s(vol.name) ?? '';
    const claim = s(o(vol.dataVolume).name) ?? s(o(vol.persistentVolumeClaim).claimName);
    const kind = Object.keys(vol).find((k) => k !== 'name') ?? '';
    if (claim) {
      const pvc = find(objs.pvcs, claim);
      const dv = find(objs.dataVolumes, claim);
      const pspec = o(pvc?.spec);
      const dspec = o(o(dv?.spec).storage ?? o(dv?.spec).pvc);
      const capacity =
        bytes(o(o(pvc?.status).capacity).storage) || bytes(o(o(pspec.resources).requests).storage) || bytes(o(o(dspec.resources).requests).storage);
      disks.push({
        id: vname,
        file: `${ns}/${claim}`,
        claim,
        dataVolume: !!vol.dataVolume,
        capacity,
        format: 'raw',
        datastore: s(pspec.storageClassName) ?? s(dspec.storageClassName) ?? defaultClass,
      });
    } else if (COPIED.includes(kind)) copied.push(`${vname}:${kind}`);
    else if (NEEDS_OBJECT.includes(kind)) needsObject.push(`${vname}:${kind}`);
    else unsupportedVolumes.push(`${vname}:${kind || 'unknown'}`);
  }
  const nets = a(tpl.networks).map(o);
  const nics = a(domain.devices && o(domain.devices).interfaces)
    .map(o)
    .map((i) => {
      const net = nets.find((n) => n.name === i.name);
      const model = s(i.model);
      return {
        name: s(i.name) ?? '',
        network: net ? (networkOf(net, ns) ?? '') : '',
        ...(s(i.macAddress) ? { mac: s(i.macAddress) } : {}),
        ...(model ? { model } : {}),
      };
    });
  const vmi = find(objs.vmis, name);
  const ann = vm.metadata?.annotations ?? {};
  return {
    provider: 'openshift',
    id: vm.metadata?.uid ?? `${ns}/${name}`,
    uid: vm.metadata?.uid ?? '',
    ovfId: '',
    name,
    namespace: ns,
    source: ns,
    osType: ann['vm.kubevirt.io/os'] ?? vm.metadata?.labels?.['kubevirt.io/os'] ?? '',
    cpus,
    ...(cpu.cores !== undefined ? { coresPerSocket: Number(cpu.cores) } : {}),
    memoryMB,
    firmware,
    disks,
    nics,
    powerState: isRunning(vm, vmi) ? 'poweredOn' : 'poweredOff',
    copied,
    needsObject,
    unsupportedVolumes,
  };
}

/** The whole inventory: VMs, networks (`pod` first, then the NADs as `ns/name`), storage (StorageClasses by name). */
export function openshiftInventory(objs: ClusterObjects): Inventory {
  // A claim that names no class got the default one.
  const def = objs.storageClasses.find((c) => c.metadata?.annotations?.['storageclass.kubernetes.io/is-default-class'] === 'true')?.metadata?.name ?? '';
  return {
    vms: objs.vms.map((vm) => inventoryVm(vm, objs, def)),
    networks: [
      { id: POD_NETWORK, name: POD_NETWORK },
      ...objs.nads.map((n) => ({ id: `${n.metadata?.namespace}/${n.metadata?.name}`, name: `${n.metadata?.namespace}/${n.metadata?.name}` })),
    ],
    datastores: objs.storageClasses.map((c) => ({ id: c.metadata?.name ?? '', name: c.metadata?.name ?? '' })),
    hosts: [],
    errors: [],
  };
}

export const isOpenshiftVm = (vm: InventoryVm): vm is OpenshiftVm => (vm as Partial<OpenshiftVm>).provider === 'openshift';

/** Forklift's concerns for an openshift source VM: a running VM is stopped by a cold plan; volumes copied as-is or refused. */
export function openshiftVmConcerns(vm: OpenshiftVm, item: string, warm: boolean): Concern[] {
  const out: Concern[] = [];
  if (!warm && vm.powerState === 'poweredOn')
    out.push({
      type: 'VMPowerStateNotValid',
      status: 'True',
      category: 'Warn',
      reason: 'Running',
      message: 'The VM is running; a cold migration stops it, and Forklift leaves the source stopped.',
      items: [item],
    });
  if (vm.copied.length || vm.needsObject.length)
    out.push({
      type: 'VolumesCopiedAsIs',
      status: 'True',
      category: vm.needsObject.length ? 'Warn' : 'Advisory',
      reason: 'NotTransferred',
      message:
        'VM volumes that are not claims (containerDisk, cloud-init, …) are copied into the target spec as they are; configMap, secret and serviceAccount volumes need their object in the target namespace.',
      items: [...vm.copied, ...vm.needsObject].map((v) => `${item} volume:${v}`),
    });
  if (vm.unsupportedVolumes.length)
    out.push({
      type: 'UnsupportedVolumes',
      status: 'True',
      category: 'Critical',
      reason: 'NotSupported',
      message: 'VM has volumes that cannot be migrated (hostDisk or unknown kinds).',
      items: vm.unsupportedVolumes.map((v) => `${item} volume:${v}`),
    });
  if (vm.disks.some((d) => !d.capacity))
    out.push({
      type: 'InvalidDiskSizes',
      status: 'True',
      category: 'Critical',
      reason: 'NotFound',
      message: 'A claim of the VM is missing or has no size.',
      items: vm.disks.filter((d) => !d.capacity).map((d) => `${item} claim:${d.file}`),
    });
  return out;
}

/** The provider Secret's keys, as Forklift's: `token`, and `cacert` or `insecureSkipVerify: "true"` (base64 values, as stored). */
export interface OpenshiftSecret {
  token: string;
  cacert?: string;
  insecureSkipVerify: boolean;
}

export class OpenshiftError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function parseOpenshiftSecret(data: Record<string, string> | undefined): OpenshiftSecret {
  const dec = (k: string) => (data?.[k] ? Buffer.from(data[k], 'base64').toString('utf8').trim() : '');
  const token = dec('token');
  if (!token) throw new OpenshiftError('SecretNotValid', 'the secret has no `token`');
  const cacert = dec('cacert') || undefined;
  return { token, ...(cacert ? { cacert } : {}), insecureSkipVerify: dec('insecureSkipVerify') === 'true' };
}
