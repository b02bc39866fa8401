/**
 * applyDefaults: upstream-like defaulting, applied in place after validation on create and update.
 * Deliberately modest; each default says where upstream applies it:
 *  - VirtualMachine (virt-api's VM mutator + virt-controller's firmware controller): machine type
 *    "q35", and firmware.uuid derived from the VM name exactly like KubeVirt's CalculateLegacyUUID
 *    (UUIDv5 in namespace 6a1a24a1-...); nothing else, since the VM template is copied to VMIs,
 *    which get the rest. runStrategy is NOT defaulted: KubeVirt v1.x rejects a VM without running
 *    or runStrategy, and so does validateObject.
 *  - VirtualMachineInstance (VMI mutator): architecture, machine type, firmware.uuid (from the VMI
 *    name), a `disk: {}` target for disks with none, disk/cdrom/lun bus (sata on amd64 as upstream,
 *    virtio on arm64/s390x), cdrom readonly + tray, a disk for every volume without one, the pod
 *    network with a masquerade interface when no interfaces/networks are given (autoattachPodInterface;
 *    upstream's cluster default binding is configurable, Vessel uses masquerade), containerDisk
 *    imagePullPolicy, memory.guest from the memory request, input bus/type.
 *  - Service: type ClusterIP, sessionAffinity None, port protocol TCP, targetPort = port,
 *    internalTrafficPolicy Cluster. PVC: volumeMode Filesystem, status.phase Pending (as
 *    SetDefaults_PersistentVolumeClaim). Secret: type Opaque, and stringData merged into data
 *    (Kubernetes does that in its conversion; stringData is never stored).
 *    StorageClass: reclaimPolicy Delete, volumeBindingMode Immediate.
 *  - Namespace: status.phase Active and the kubernetes.io/metadata.name label.
 *  - NetworkPolicy (SetDefaults_NetworkPolicy): policyTypes [Ingress], plus Egress when there
 *    are egress rules; each port's protocol TCP.
 */
import { createHash } from 'node:crypto';
import { mergeStringData } from './kinds/core.ts';
import { arr, isObj, isSet, obj, str, type Obj } from './kinds/util.ts';
import type { KindInfo, KubeObject } from './types.ts';

export const DEFAULT_MACHINE_TYPE = 'q35';
export const DEFAULT_ARCHITECTURE = 'amd64';
/** KubeVirt's magicUUID, the namespace of its legacy firmware UUIDs. */
const FIRMWARE_UUID_NAMESPACE = '6a1a24a1-4061-4607-8bf4-a3963d0c5895';

/** UUIDv5 (SHA-1, RFC 4122) of `name` in `namespace`, as Go's uuid.NewSHA1. */
export function uuidV5(namespace: string, name: string): string {
  const ns = Buffer.from(namespace.replace(/-/g, ''), 'hex');
  const hash = createHash('sha1').update(ns).update(name, 'utf8').digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const h = hash.subarray(0, 16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The firmware UUID KubeVirt gives a VM (and its VMIs) that has none: derived from the VM name. */
export function firmwareUUID(vmName: string): string {
  return uuidV5(FIRMWARE_UUID_NAMESPACE, vmName);
}

/** The default disk bus for an architecture, as KubeVirt's per-arch defaulting. */
export function defaultDiskBus(architecture: string | undefined): string {
  return architecture === 'arm64' || architecture === 's390x' ? 'virtio' : 'sata';
}

function child(o: Obj, key: string): Obj {
  const v = o[key];
  if (isObj(v)) return v;
  const created: Obj = {};
  o[key] = created;
  return created;
}

function setMachineType(spec: Obj): void {
  const domain = obj(spec.domain);
  if (!domain) return;
  const machine = child(domain, 'machine');
  if (!str(machine.type)) machine.type = DEFAULT_MACHINE_TYPE;
}

function setFirmwareUUID(spec: Obj, name: string | undefined): void {
  const domain = obj(spec.domain);
  if (!domain || !name) return;
  const firmware = child(domain, 'firmware');
  if (!str(firmware.uuid)) firmware.uuid = firmwareUUID(name);
}

/** VMI spec defaults (what KubeVirt's VMI mutator does that Vessel relies on). */
export function applyVmiSpecDefaults(spec: Obj, name: string | undefined): void {
  const domain = obj(spec.domain);
  if (!domain) return;
  if (!str(spec.architecture)) spec.architecture = DEFAULT_ARCHITECTURE;
  setMachineType(spec);
  setFirmwareUUID(spec, name);
  const devices = child(domain, 'devices');

  // Every volume gets a disk (unless a disk or filesystem already carries its name).
  const volumes = arr(spec.volumes);
  if (volumes.length > 0) {
    const disks = Array.isArray(devices.disks) ? (devices.disks as unknown[]) : [];
    const used = new Set<string>();
    for (const d of [...disks, ...arr(devices.filesystems)]) {
      const n = isObj(d) ? str(d.name) : undefined;
      if (n) used.add(n);
    }
    for (const v of volumes) {
      const n = isObj(v) ? str(v.name) : undefined;
      if (n && !used.has(n)) {
        disks.push({ name: n });
        used.add(n);
      }
    }
    if (disks.length > 0) devices.disks = disks;
  }

  const bus = defaultDiskBus(str(spec.architecture));
  for (const d of arr(devices.disks)) {
    if (!isObj(d)) continue;
    if (!isSet(d.disk) && !isSet(d.cdrom) && !isSet(d.lun)) d.disk = {};
    for (const t of ['disk', 'cdrom', 'lun']) {
      const target = obj(d[t]);
      if (target && !str(target.bus)) target.bus = bus;
    }
    const cdrom = obj(d.cdrom);
    if (cdrom) {
      if (!isSet(cdrom.readonly)) cdrom.readonly = true;
      if (!str(cdrom.tray)) cdrom.tray = 'closed';
    }
  }

  // autoattachPodInterface: with no interfaces and no networks, attach the pod network.
  if (devices.autoattachPodInterface !== false && arr(devices.interfaces).length === 0 && arr(spec.networks).length === 0) {
    devices.interfaces = [{ name: 'default', masquerade: {} }];
    spec.networks = [{ name: 'default', pod: {} }];
  }

  for (const input of arr(devices.inputs)) {
    if (!isObj(input)) continue;
    if (!str(input.bus)) input.bus = 'usb';
    if (!str(input.type)) input.type = 'tablet';
  }

  for (const v of volumes) {
    const cd = isObj(v) ? obj(v.containerDisk) : undefined;
    const image = cd ? str(cd.image) : undefined;
    if (cd && image && !str(cd.imagePullPolicy)) {
      // Upstream's rule, quirks included (a registry port counts as a tag).
      cd.imagePullPolicy = image.endsWith(':latest') || !/[:@]/.test(image) ? 'Always' : 'IfNotPresent';
    }
  }

  const memory = obj(domain.memory);
  if (!memory || !isSet(memory.guest)) {
    const resources = obj(domain.resources);
    const req = obj(resources?.requests)?.memory;
    const lim = obj(resources?.limits)?.memory;
    const guest = isSet(req) ? req : lim;
    if (isSet(guest)) child(domain, 'memory').guest = guest;
  }
}

function defaultVirtualMachine(o: KubeObject): void {
  const spec = obj(obj(o.spec)?.template)?.spec;
  if (!isObj(spec)) return;
  // With a preference its preferredMachineType may apply at start (KubeVirt's VM mutator leaves it too); the VMI gets q35 otherwise.
  if (!isSet(obj(o.spec)?.preference)) setMachineType(spec);
  setFirmwareUUID(spec, o.metadata?.name);
}

function defaultVirtualMachineInstance(o: KubeObject): void {
  const spec = obj(o.spec);
  if (spec) applyVmiSpecDefaults(spec, o.metadata?.name);
}

function defaultService(o: KubeObject): void {
  const spec = obj(o.spec);
  if (!spec) return;
  if (!str(spec.type)) spec.type = 'ClusterIP';
  if (!str(spec.sessionAffinity)) spec.sessionAffinity = 'None';
  if (spec.type !== 'ExternalName' && !str(spec.internalTrafficPolicy)) spec.internalTrafficPolicy = 'Cluster';
  for (const p of arr(spec.ports)) {
    if (!isObj(p)) continue;
    if (!str(p.protocol)) p.protocol = 'TCP';
    if (!isSet(p.targetPort) && isSet(p.port)) p.targetPort = p.port;
  }
}

function defaultPVC(o: KubeObject): void {
  const spec = obj(o.spec);
  if (spec && !str(spec.volumeMode)) spec.volumeMode = 'Filesystem';
  // A claim is Pending from its creation until it is bound.
  const status = isObj(o.status) ? o.status : (o.status = {});
  if (!str(status.phase)) status.phase = 'Pending';
}

function defaultNamespace(o: KubeObject): void {
  const status = isObj(o.status) ? o.status : (o.status = {});
  if (!str(status.phase)) status.phase = 'Active';
  const name = o.metadata?.name;
  if (name && o.metadata) o.metadata.labels = { ...(o.metadata.labels ?? {}), 'kubernetes.io/metadata.name': name };
}

function defaultNetworkPolicy(o: KubeObject): void {
  const spec = obj(o.spec);
  if (!spec) return;
  for (const dir of ['ingress', 'egress']) {
    for (const r of arr(spec[dir])) {
      for (const p of isObj(r) ? arr(r.ports) : []) if (isObj(p) && !str(p.protocol)) p.protocol = 'TCP';
    }
  }
  if (arr(spec.policyTypes).length === 0) spec.policyTypes = arr(spec.egress).length ? ['Ingress', 'Egress'] : ['Ingress'];
}

const DEFAULTERS: Record<string, (o: KubeObject) => void> = {
  'networking.k8s.io/NetworkPolicy': defaultNetworkPolicy,
  'kubevirt.io/VirtualMachine': defaultVirtualMachine,
  'kubevirt.io/VirtualMachineInstance': defaultVirtualMachineInstance,
  '/Service': defaultService,
  '/PersistentVolumeClaim': defaultPVC,
  '/Namespace': defaultNamespace,
  '/Secret': (o) => {
    if (!str(o.type)) o.type = 'Opaque';
    mergeStringData(o);
  },
  'storage.k8s.io/StorageClass': (o) => {
    if (!str(o.reclaimPolicy)) o.reclaimPolicy = 'Delete';
    if (!str(o.volumeBindingMode)) o.volumeBindingMode = 'Immediate';
  },
};

/** Applies the kind's defaults to `obj` in place (idempotent: defaulted values are kept). */
export function applyDefaults(info: KindInfo, obj: KubeObject): void {
  DEFAULTERS[`${info.group}/${info.kind}`]?.(obj);
}
