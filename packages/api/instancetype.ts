/**
 * Instancetypes and preferences (`instancetype.kubevirt.io/v1beta1`, docs/instancetypes.md): their
 * validation, the VM fields they conflict with, and how their specs are applied to a VM's
 * template to make the VMI spec, as KubeVirt's virt-controller applies them. Pure functions: the
 * VM controller finds the objects and keeps the copies it used in ControllerRevisions.
 */
import { invalid, required } from './errors.ts';
import { isSet, obj, str, type Obj, type SemanticContext } from './kinds/util.ts';
import { tryParseQuantity } from './quantity.ts';
import type { FieldCause, KubeObject } from './types.ts';

export const GROUP = 'instancetype.kubevirt.io';
export const API_VERSION = 'instancetype.kubevirt.io/v1beta1';
export const INSTANCETYPE = 'VirtualMachineInstancetype';
export const CLUSTER_INSTANCETYPE = 'VirtualMachineClusterInstancetype';
export const PREFERENCE = 'VirtualMachinePreference';
export const CLUSTER_PREFERENCE = 'VirtualMachineClusterPreference';

/** KubeVirt's labels on a volume's PVC, DataVolume or DataSource that inferFromVolume reads. */
export const DEFAULT_INSTANCETYPE_LABEL = 'instancetype.kubevirt.io/default-instancetype';
export const DEFAULT_INSTANCETYPE_KIND_LABEL = 'instancetype.kubevirt.io/default-instancetype-kind';
export const DEFAULT_PREFERENCE_LABEL = 'instancetype.kubevirt.io/default-preference';
export const DEFAULT_PREFERENCE_KIND_LABEL = 'instancetype.kubevirt.io/default-preference-kind';

/** A VM's reference to an instancetype or a preference, its kind defaulted as KubeVirt does (cluster-wide). */
export interface Matcher {
  kind: string;
  name: string;
}

/** spec.instancetype or spec.preference of a VM, or undefined when it names none (yet: inferFromVolume). */
export function matcherOf(vmSpec: unknown, which: 'instancetype' | 'preference'): Matcher | undefined {
  const m = obj(obj(vmSpec)?.[which]);
  const name = str(m?.name);
  if (!name) return undefined;
  const cluster = which === 'instancetype' ? CLUSTER_INSTANCETYPE : CLUSTER_PREFERENCE;
  return { kind: str(m?.kind) || cluster, name };
}

/** The kinds a matcher may name, in KubeVirt's spelling (matched case-insensitively, as virt-api does). */
export function normalizeKind(which: 'instancetype' | 'preference', kind: string | undefined): string | undefined {
  const allowed = which === 'instancetype' ? [INSTANCETYPE, CLUSTER_INSTANCETYPE] : [PREFERENCE, CLUSTER_PREFERENCE];
  if (!kind) return allowed[1];
  const k = kind.toLowerCase();
  const short: Record<string, string> = {
    virtualmachineinstancetype: INSTANCETYPE,
    virtualmachineinstancetypes: INSTANCETYPE,
    virtualmachineclusterinstancetype: CLUSTER_INSTANCETYPE,
    virtualmachineclusterinstancetypes: CLUSTER_INSTANCETYPE,
    virtualmachinepreference: PREFERENCE,
    virtualmachinepreferences: PREFERENCE,
    virtualmachineclusterpreference: CLUSTER_PREFERENCE,
    virtualmachineclusterpreferences: CLUSTER_PREFERENCE,
  };
  const hit = short[k];
  return hit && allowed.includes(hit) ? hit : undefined;
}

// ---------------------------------------------------------------------------------------------
// Validation of the kinds (virt-api's instancetype and preference admitters).

const TOPOLOGIES = ['preferSockets', 'preferCores', 'preferThreads', 'preferSpread', 'preferAny', 'sockets', 'cores', 'threads', 'spread', 'any'];

export function validateInstancetype(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) {
    ctx.causes.push(required('spec', 'an instancetype needs spec.cpu.guest and spec.memory.guest'));
    return;
  }
  // The structural walk reports a missing required field already; not twice.
  const reported = (f: string) => ctx.causes.some((c) => c.field === f);
  const cpu = obj(spec.cpu);
  const guest = cpu?.guest;
  if (!isSet(guest)) {
    if (!reported('spec.cpu.guest')) ctx.causes.push(required('spec.cpu.guest', 'the number of vCPUs the instancetype gives, e.g. 2'));
  } else if (typeof guest === 'number' && (!Number.isInteger(guest) || guest < 1))
    ctx.causes.push(invalid('spec.cpu.guest', guest, 'must be a positive number of vCPUs'));
  const mem = obj(spec.memory);
  const mg = mem?.guest;
  if (!isSet(mg)) {
    if (!reported('spec.memory.guest')) ctx.causes.push(required('spec.memory.guest', 'the guest memory the instancetype gives, e.g. 2Gi'));
  } else {
    const n = tryParseQuantity(mg);
    if (n !== undefined && n <= 0) ctx.causes.push(invalid('spec.memory.guest', mg, 'must be greater than 0'));
  }
  const pct = mem?.overcommitPercent;
  if (typeof pct === 'number' && (pct < 0 || pct > 100)) ctx.causes.push(invalid('spec.memory.overcommitPercent', pct, 'must be between 0 and 100'));
  if (isSet(mem?.overcommitPercent) && pct !== 0 && isSet(mem?.hugepages))
    ctx.causes.push(invalid('spec.memory.overcommitPercent', pct, 'overcommitPercent cannot be used with hugepages'));
}

export function validatePreference(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  const topo = obj(spec.cpu)?.preferredCPUTopology;
  if (typeof topo === 'string' && !TOPOLOGIES.includes(topo))
    ctx.causes.push(invalid('spec.cpu.preferredCPUTopology', topo, `one of ${TOPOLOGIES.join(', ')}`));
  const ratio = obj(obj(spec.cpu)?.spreadOptions)?.ratio;
  if (typeof ratio === 'number' && ratio < 1) ctx.causes.push(invalid('spec.cpu.spreadOptions.ratio', ratio, 'must be at least 1'));
}

// ---------------------------------------------------------------------------------------------
// Conflicts: what a VM with an instancetype may not set itself (virt-api refuses it).

/**
 * The template fields an instancetype provides and the VM sets too: KubeVirt refuses such a VM
 * ("VM field(s) ... conflicts with selected instance type"). Paths under `path` (the template spec).
 */
export function instancetypeConflicts(templateSpec: unknown, path: string): FieldCause[] {
  const domain = obj(obj(templateSpec)?.domain);
  const out: FieldCause[] = [];
  const conflict = (field: string, v: unknown) =>
    out.push(invalid(field, v, `${field} conflicts with the selected instancetype, which provides it: remove it from the VM or drop spec.instancetype`));
  const cpu = obj(domain?.cpu);
  // A cpu.model or features list is fine unless the instancetype sets a model (checked at start).
  for (const f of ['sockets', 'cores', 'threads', 'dedicatedCpuPlacement', 'isolateEmulatorThread', 'numa', 'realtime', 'maxSockets']) {
    if (isSet(cpu?.[f])) conflict(`${path}.domain.cpu.${f}`, cpu?.[f]);
  }
  const mem = obj(domain?.memory);
  for (const f of ['guest', 'hugepages', 'maxGuest']) if (isSet(mem?.[f])) conflict(`${path}.domain.memory.${f}`, mem?.[f]);
  const res = obj(domain?.resources);
  for (const side of ['requests', 'limits']) {
    for (const r of ['cpu', 'memory']) {
      const v = obj(res?.[side])?.[r];
      if (isSet(v)) conflict(`${path}.domain.resources.${side}.${r}`, v);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Applying them.

/** sockets × cores × threads for `guest` vCPUs by a preference's preferredCPUTopology (KubeVirt's default: sockets). */
export function cpuTopology(guest: number, preference?: unknown): { sockets: number; cores: number; threads: number } {
  const cpu = obj(obj(preference)?.cpu);
  const topo = str(cpu?.preferredCPUTopology) ?? 'preferSockets';
  switch (topo) {
    case 'preferCores':
    case 'cores':
      return { sockets: 1, cores: guest, threads: 1 };
    case 'preferThreads':
    case 'threads':
      return { sockets: 1, cores: 1, threads: guest };
    case 'preferSpread':
    case 'spread': {
      const spread = obj(cpu?.spreadOptions);
      const ratio = typeof spread?.ratio === 'number' && spread.ratio >= 1 ? spread.ratio : 2;
      const across = str(spread?.across) ?? 'SocketsCores';
      if (guest % ratio !== 0) return { sockets: guest, cores: 1, threads: 1 };
      if (across === 'CoresThreads') return { sockets: 1, cores: guest / ratio, threads: ratio };
      if (across === 'SocketsCoresThreads') {
        // KubeVirt: threads 2 per core, the cores per socket from the ratio.
        if (guest % (ratio * 2) === 0) return { sockets: guest / (ratio * 2), cores: ratio, threads: 2 };
        return { sockets: guest / ratio, cores: ratio, threads: 1 };
      }
      return { sockets: guest / ratio, cores: ratio, threads: 1 };
    }
    default:
      return { sockets: guest, cores: 1, threads: 1 };
  }
}

/** Sets `o[k]` to `v` unless the VM already has a value there. */
function fill(o: Obj, k: string, v: unknown): void {
  if (v !== undefined && v !== null && !isSet(o[k])) o[k] = structuredClone(v);
}

/** The objects of an array field (none when it is not an array). */
function list(v: unknown): Obj[] {
  return Array.isArray(v) ? v.map(obj).filter((x): x is Obj => x !== undefined) : [];
}

/** An interface's binding methods (KubeVirt's names). */
const BINDINGS = ['bridge', 'masquerade', 'slirp', 'sriov', 'passt', 'binding', 'macvtap'];

function child(o: Obj, k: string): Obj {
  const c = obj(o[k]);
  if (c) return c;
  const made: Obj = {};
  o[k] = made;
  return made;
}

/**
 * The VMI spec from a VM template's spec, an instancetype's spec and a preference's spec (either
 * may be absent). The instancetype's values are the VM's (conflicts were refused at admission);
 * the preference only fills what neither set. Returns a new object; the inputs are not changed.
 */
export function applyInstancetype(templateSpec: unknown, instancetype: unknown, preference: unknown): Obj {
  const spec = structuredClone(obj(templateSpec) ?? {});
  const it = obj(instancetype);
  const pref = obj(preference);
  const domain = child(spec, 'domain');
  if (it) {
    const cpu = obj(it.cpu);
    const guest = typeof cpu?.guest === 'number' ? cpu.guest : undefined;
    const dcpu = child(domain, 'cpu');
    if (guest !== undefined) Object.assign(dcpu, cpuTopology(guest, pref));
    fill(dcpu, 'model', cpu?.model);
    // The VMI's spelling differs from the instancetype's.
    fill(dcpu, 'dedicatedCpuPlacement', cpu?.dedicatedCPUPlacement);
    fill(dcpu, 'isolateEmulatorThread', cpu?.isolateEmulatorThread);
    fill(dcpu, 'numa', cpu?.numa);
    fill(dcpu, 'realtime', cpu?.realtime);
    const mem = obj(it.memory);
    const dmem = child(domain, 'memory');
    fill(dmem, 'guest', mem?.guest);
    fill(dmem, 'hugepages', mem?.hugepages);
    const pct = typeof mem?.overcommitPercent === 'number' ? mem.overcommitPercent : 0;
    const bytes = tryParseQuantity(mem?.guest);
    if (pct > 0 && bytes !== undefined) {
      // KubeVirt: the memory request is the guest memory less the overcommitted share.
      const requests = child(child(domain, 'resources'), 'requests');
      fill(requests, 'memory', String(Math.floor((bytes * (100 - pct)) / 100)));
    }
    fill(domain, 'ioThreadsPolicy', it.ioThreadsPolicy);
    if (it.nodeSelector) spec.nodeSelector = { ...(obj(it.nodeSelector) ?? {}), ...(obj(spec.nodeSelector) ?? {}) };
    if (Array.isArray(it.gpus) && it.gpus.length) child(domain, 'devices').gpus = structuredClone(it.gpus);
    if (Array.isArray(it.hostDevices) && it.hostDevices.length) child(domain, 'devices').hostDevices = structuredClone(it.hostDevices);
    // launchSecurity and schedulerName are ignored: Vessel has no SEV and one scheduler.
  }
  if (pref) applyPreference(spec, domain, pref);
  return spec;
}

function applyPreference(spec: Obj, domain: Obj, pref: Obj): void {
  const devices = child(domain, 'devices');
  const dev = obj(pref.devices) ?? {};
  const bus = str(dev.preferredDiskBus);
  const cdromBus = str(dev.preferredCdromBus);
  if (bus) {
    // API defaulting gives every volume without a disk one (KubeVirt's VMI mutator); add them here so they get the preferred bus too.
    const disks = Array.isArray(devices.disks) ? (devices.disks as unknown[]) : [];
    const named = new Set(disks.map((d) => str(obj(d)?.name)));
    for (const v of Array.isArray(spec.volumes) ? (spec.volumes as unknown[]) : []) {
      const name = str(obj(v)?.name);
      if (name && !named.has(name)) disks.push({ name, disk: { bus } });
    }
    if (disks.length) devices.disks = disks;
  }
  for (const d of Array.isArray(devices.disks) ? (devices.disks as unknown[]) : []) {
    const disk = obj(d);
    if (!disk) continue;
    if (isSet(disk.cdrom)) {
      if (cdromBus) fill(child(disk, 'cdrom'), 'bus', cdromBus);
    } else if (!isSet(disk.lun)) {
      // A disk with no target at all is a `disk` (API defaulting adds it later).
      if (bus) fill(child(disk, 'disk'), 'bus', bus);
    }
    fill(disk, 'cache', dev.preferredDiskCache);
    fill(disk, 'io', dev.preferredDiskIO);
    fill(disk, 'blockSize', obj(dev.preferredDiskBlockSize));
  }
  const model = str(dev.preferredInterfaceModel);
  const podNetworks = new Set(
    list(spec.networks)
      .filter((n) => isSet(n.pod))
      .map((n) => str(n.name)),
  );
  for (const i of list(devices.interfaces)) {
    fill(i, 'model', model);
    // preferredInterfaceMasquerade: a pod-network interface that names no binding gets masquerade.
    if (obj(dev.preferredInterfaceMasquerade) && podNetworks.has(str(i.name)) && !BINDINGS.some((b) => isSet(i[b]))) i.masquerade = {};
  }
  // Input devices get the preferred bus and type; with autoattach and none listed, the default tablet gets them too.
  const inputBus = str(dev.preferredInputBus);
  const inputType = str(dev.preferredInputType);
  if (inputBus || inputType) {
    const inputs = list(devices.inputs);
    if (inputs.length === 0 && (devices.autoattachInputDevice ?? dev.preferredAutoattachInputDevice) === true) inputs.push({ name: 'default-0' });
    for (const i of inputs) {
      fill(i, 'bus', inputBus ?? 'usb');
      fill(i, 'type', inputType ?? 'tablet');
    }
    if (inputs.length) devices.inputs = inputs;
  }
  const autoattach: Record<string, string> = {
    preferredAutoattachGraphicsDevice: 'autoattachGraphicsDevice',
    preferredAutoattachMemBalloon: 'autoattachMemBalloon',
    preferredAutoattachPodInterface: 'autoattachPodInterface',
    preferredAutoattachSerialConsole: 'autoattachSerialConsole',
    preferredAutoattachInputDevice: 'autoattachInputDevice',
    preferredDisableHotplug: 'disableHotplug',
    preferredUseVirtioTransitional: 'useVirtioTransitional',
    preferredBlockMultiQueue: 'blockMultiQueue',
    preferredNetworkInterfaceMultiQueue: 'networkInterfaceMultiqueue',
  };
  for (const [p, f] of Object.entries(autoattach)) fill(devices, f, dev[p]);
  if (isSet(dev.preferredRng)) fill(devices, 'rng', {});
  const machine = str(obj(pref.machine)?.preferredMachineType);
  if (machine) fill(child(domain, 'machine'), 'type', machine);
  const fw = obj(pref.firmware);
  if (fw && !isSet(obj(domain.firmware)?.bootloader)) {
    if (fw.preferredUseEfi === true || isSet(fw.preferredEfi)) {
      const efi: Obj = { ...(obj(fw.preferredEfi) ?? {}) };
      if (typeof fw.preferredUseSecureBoot === 'boolean') efi.secureBoot = fw.preferredUseSecureBoot;
      child(domain, 'firmware').bootloader = { efi };
    } else if (fw.preferredUseBios === true) {
      child(domain, 'firmware').bootloader = { bios: typeof fw.preferredUseBiosSerial === 'boolean' ? { useSerial: fw.preferredUseBiosSerial } : {} };
    }
  }
  // preferredCPUFeatures: added by name; a feature the VM sets itself keeps its policy.
  const cpuFeatures = list(obj(pref.cpu)?.preferredCPUFeatures);
  if (cpuFeatures.length) {
    const cpu = child(domain, 'cpu');
    const own = list(cpu.features);
    const named = new Set(own.map((f) => str(f.name)));
    cpu.features = [...own, ...cpuFeatures.filter((f) => !named.has(str(f.name))).map((f) => structuredClone(f))];
  }
  const feats = obj(pref.features);
  if (feats) {
    const df = child(domain, 'features');
    for (const [p, f] of [
      ['preferredAcpi', 'acpi'],
      ['preferredApic', 'apic'],
      ['preferredSmm', 'smm'],
      ['preferredHyperv', 'hyperv'],
      ['preferredKvm', 'kvm'],
      ['preferredPvspinlock', 'pvspinlock'],
    ] as const)
      fill(df, f, feats[p]);
    if (Object.keys(df).length === 0) delete domain.features;
  }
  const clock = obj(pref.clock);
  if (clock && isSet(clock.preferredClockOffset) && !isSet(domain.clock)) domain.clock = structuredClone(obj(clock.preferredClockOffset)!);
  fill(spec, 'terminationGracePeriodSeconds', pref.preferredTerminationGracePeriodSeconds);
  fill(spec, 'subdomain', pref.preferredSubdomain);
  fill(spec, 'architecture', pref.preferredArchitecture);
  if (Object.keys(devices).length === 0) delete domain.devices;
}

/**
 * Why an instancetype does not meet a preference's requirements (KubeVirt refuses the VM), or
 * undefined. `templateSpec`: without an instancetype the VM's own cpu and memory are checked.
 */
export function requirementsProblem(instancetype: unknown, preference: unknown, templateSpec: unknown): string | undefined {
  const req = obj(obj(preference)?.requirements);
  if (!req) return undefined;
  const it = obj(instancetype);
  const needCpu = obj(req.cpu)?.guest;
  const needMem = tryParseQuantity(obj(req.memory)?.guest);
  const domain = obj(obj(templateSpec)?.domain);
  const cpu = it ? Number(obj(it.cpu)?.guest ?? 0) : ['sockets', 'cores', 'threads'].reduce((n, k) => n * (Number(obj(domain?.cpu)?.[k]) || 1), 1);
  const mem = it ? tryParseQuantity(obj(it.memory)?.guest) : tryParseQuantity(obj(domain?.memory)?.guest);
  if (typeof needCpu === 'number' && cpu < needCpu) return `the preference requires ${needCpu} vCPUs, the ${it ? 'instancetype' : 'VM'} provides ${cpu}`;
  if (needMem !== undefined && mem !== undefined && mem < needMem)
    return `the preference requires ${String(obj(req.memory)?.guest)} of memory, the ${it ? 'instancetype' : 'VM'} provides less`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Revisions.

/**
 * The ControllerRevision name KubeVirt gives the copy of an instancetype or preference a VM uses:
 * `<vm>-<kind lower-cased>-<object name>-<object uid>-<object generation>`, cut to 253 characters.
 */
export function revisionName(vmName: string, source: KubeObject): string {
  const kind = (source.kind ?? '').toLowerCase();
  const name = `${vmName}-${kind}-${source.metadata?.name ?? ''}-${source.metadata?.uid ?? ''}-${source.metadata?.generation ?? 1}`;
  return name.slice(0, 253).replace(/[-.]+$/, '');
}

/** The ControllerRevision holding `source` (apiVersion, kind, metadata name and spec) for the VM. */
export function revisionFor(vm: KubeObject, source: KubeObject): KubeObject {
  return {
    apiVersion: 'apps/v1',
    kind: 'ControllerRevision',
    metadata: {
      name: revisionName(vm.metadata?.name ?? '', source),
      namespace: vm.metadata?.namespace,
      labels: { 'instancetype.kubevirt.io/object-kind': source.kind ?? '', 'instancetype.kubevirt.io/object-name': source.metadata?.name ?? '' },
      ownerReferences: [
        {
          apiVersion: 'kubevirt.io/v1',
          kind: 'VirtualMachine',
          name: vm.metadata?.name ?? '',
          uid: vm.metadata?.uid ?? '',
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    data: {
      apiVersion: API_VERSION,
      kind: source.kind,
      metadata: { name: source.metadata?.name, uid: source.metadata?.uid, generation: source.metadata?.generation },
      spec: structuredClone(source.spec ?? {}),
    },
    revision: 1,
  } as KubeObject;
}

/** The spec kept in a ControllerRevision made by revisionFor. */
export function specOfRevision(rev: KubeObject): Obj | undefined {
  return obj(obj((rev as Obj).data)?.spec);
}
