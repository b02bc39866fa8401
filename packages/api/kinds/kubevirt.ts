/**
 * KubeVirt semantics that matter now, following virt-api's validating webhooks (vms-admitter,
 * vmi-create-admitter, storage and network admitters): run strategy, disks/volumes/interfaces/
 * networks consistency, memory requests, cloud-init data, dataVolumeTemplates, migration spec.
 * Messages keep upstream's wording where it is clear, and say what to change.
 */
import { duplicate, forbidden, invalid, notSupported, required } from '../errors.ts';
import { validateAnnotations, validateLabels } from '../meta.ts';
import { dns1123Label, dns1123Subdomain } from '../names.ts';
import { tryParseQuantity } from '../quantity.ts';
import {
  MIN_GUEST_MEMORY,
  SUPPORTED_ARCHITECTURES,
  SUPPORTED_DISK_BUSES,
  SUPPORTED_MACHINE_TYPES,
  VM_NETWORK_CIDR_PROBLEM,
  blockSizeProblem,
  firmwareUuidProblem,
  macAddressProblem,
  parseVmNetworkCidr,
  qemuMachineType,
  unsupportedVmiSpecFields,
} from '../support.ts';
import type { KubeObject } from '../types.ts';
import { instancetypeConflicts, normalizeKind } from '../instancetype.ts';
import { validateDataVolumeSpec } from './cdi.ts';
import { arr, isObj, isSet, jsonEqual, obj, str, type Obj, type SemanticContext } from './util.ts';

export const RUN_STRATEGIES = ['Always', 'RerunOnFailure', 'Manual', 'Halted', 'Once', 'WaitAsReceiver'] as const;
const VOLUME_SOURCES = [
  'cloudInitConfigDrive',
  'cloudInitNoCloud',
  'configMap',
  'containerDisk',
  'containerPath',
  'dataVolume',
  'downwardAPI',
  'downwardMetrics',
  'emptyDisk',
  'ephemeral',
  'hostDisk',
  'memoryDump',
  'persistentVolumeClaim',
  'secret',
  'serviceAccount',
  'sysprep',
];
const INTERFACE_BINDINGS = ['bridge', 'masquerade', 'sriov', 'slirp', 'macvtap', 'passt', 'passtBinding', 'binding'];
const CLOUD_INIT_MAX = 2048; // bytes of inline userData/networkData (cloudInitUserMaxLen upstream)
const MIN_MEMORY = 1e6; // "must be greater than or equal to 1M"

export interface VmiSpecOptions {
  /** The VM refers to an instancetype/preference that may provide CPU and memory. */
  hasInstancetype: boolean;
  /** The stored spec, on updates: fields it already had unchanged are not refused again. */
  old?: unknown;
}

/**
 * Fields Vessel does not implement are refused here, by the same list the agent's argv builder
 * uses (VMI_SPEC_FIELDS), so nothing accepted now fails at start for it. Fields the structural
 * walk already reported (unknown to the schema, wrong type) are not reported twice.
 */
function checkSupported(spec: Obj, path: string, opts: VmiSpecOptions, ctx: SemanticContext): void {
  const reported = new Set(ctx.causes.map((c) => c.field));
  for (const c of unsupportedVmiSpecFields(spec, path, { old: opts.old, values: true })) {
    if (!reported.has(c.field) && !ctx.unknownFields?.has(c.field)) ctx.causes.push(c);
  }
}

function names(list: unknown[]): Map<string, number> {
  const m = new Map<string, number>();
  list.forEach((e, i) => {
    const n = isObj(e) ? str(e.name) : undefined;
    if (n !== undefined && !m.has(n)) m.set(n, i);
  });
  return m;
}

function uniqueNames(list: unknown[], field: string, what: string, ctx: SemanticContext): void {
  const seen = new Map<string, number>();
  list.forEach((e, i) => {
    const n = isObj(e) ? str(e.name) : undefined;
    if (n === undefined) return;
    const first = seen.get(n);
    if (first !== undefined) {
      ctx.causes.push(
        duplicate(`${field}[${i}].name`, n, `${field}[${i}] and ${field}[${first}] must not have the same name; every ${what} needs a unique name`),
      );
    } else seen.set(n, i);
  });
}

function checkMemory(spec: Obj, path: string, opts: VmiSpecOptions, ctx: SemanticContext): void {
  const domain = obj(spec.domain) ?? {};
  const resources = obj(domain.resources) ?? {};
  const reqField = `${path}.domain.resources.requests.memory`;
  const limField = `${path}.domain.resources.limits.memory`;
  const reqRaw = obj(resources.requests)?.memory;
  const limRaw = obj(resources.limits)?.memory;
  const req = tryParseQuantity(reqRaw);
  const lim = tryParseQuantity(limRaw);
  if (req !== undefined && req < 0) ctx.causes.push(invalid(reqField, reqRaw, 'must be greater than or equal to 0'));
  else if (req !== undefined && req > 0 && req < MIN_MEMORY) ctx.causes.push(invalid(reqField, reqRaw, 'must be greater than or equal to 1M'));
  if (lim !== undefined && lim < 0) ctx.causes.push(invalid(limField, limRaw, 'must be greater than or equal to 0'));
  if (req !== undefined && lim !== undefined && lim > 0 && req > lim) {
    ctx.causes.push(invalid(reqField, reqRaw, `must be less than or equal to the memory limit ${String(limRaw)} (${limField})`));
  }
  const memory = obj(domain.memory) ?? {};
  const guestRaw = memory.guest;
  const guest = tryParseQuantity(guestRaw);
  if (guest !== undefined && guest <= 0) ctx.causes.push(invalid(`${path}.domain.memory.guest`, guestRaw, 'must be greater than 0'));
  if (guest !== undefined && lim !== undefined && lim > 0 && guest > lim) {
    ctx.causes.push(invalid(`${path}.domain.memory.guest`, guestRaw, `must be less than or equal to the memory limit ${String(limRaw)} (${limField})`));
  }
  // The guest gets memory.guest, else the request, else the limit (the argv builder's order); QEMU
  // is never started with less than MIN_GUEST_MEMORY. A stored value left as it was passes.
  const [gField, gRaw, gPath] = isSet(guestRaw)
    ? [`${path}.domain.memory.guest`, guestRaw, ['memory', 'guest']]
    : isSet(reqRaw)
      ? [reqField, reqRaw, ['resources', 'requests', 'memory']]
      : [limField, limRaw, ['resources', 'limits', 'memory']];
  const gBytes = tryParseQuantity(gRaw);
  let oldG: unknown = obj(opts.old)?.domain;
  for (const k of gPath) oldG = obj(oldG)?.[k];
  if (gBytes !== undefined && gBytes < MIN_GUEST_MEMORY && oldG !== gRaw && !ctx.causes.some((c) => c.field === gField)) {
    ctx.causes.push(invalid(gField, gRaw, 'must be at least 16Mi: Vessel starts no smaller guest'));
  }
  const hugepages = obj(memory.hugepages);
  if (hugepages && !str(hugepages.pageSize) && !jsonEqual(hugepages, obj(obj(obj(opts.old)?.domain)?.memory)?.hugepages))
    ctx.causes.push(required(`${path}.domain.memory.hugepages.pageSize`, 'the hugepage size: 2Mi or 1Gi'));
  const hasMemory = (req ?? 0) > 0 || (lim ?? 0) > 0 || isSet(guestRaw) || isSet(memory.hugepages);
  if (!hasMemory && !opts.hasInstancetype) {
    ctx.causes.push(
      required(
        reqField,
        `no memory requested, at least one of '${path}.domain.memory.guest', '${path}.domain.memory.hugepages.pageSize' or '${reqField}' must be set`,
      ),
    );
  }
}

/** QEMU's (and Vessel's) vCPU ceiling: the argv builder cannot start more. */
export const MAX_VCPUS = 255;

/**
 * CPU: quantities must not be negative (Kubernetes' rule for every resource quantity; zero means
 * unset, as in KubeVirt), a request must not exceed its limit, and the topology counts (unsigned
 * in KubeVirt's API) must not be negative and must stay within MAX_VCPUS. (Without a topology the
 * argv builder caps the vCPUs a CPU quantity asks for at MAX_VCPUS.)
 */
function checkCpu(spec: Obj, path: string, opts: VmiSpecOptions, ctx: SemanticContext): void {
  const domain = obj(spec.domain) ?? {};
  // Ratchets like the rest: a VM stored with `cpu: "-1"` before this check can still be updated.
  const oldDomain = obj(obj(opts.old)?.domain);
  if (oldDomain && jsonEqual(oldDomain.cpu, domain.cpu) && jsonEqual(oldDomain.resources, domain.resources)) return;
  const resources = obj(domain.resources) ?? {};
  const reqField = `${path}.domain.resources.requests.cpu`;
  const limField = `${path}.domain.resources.limits.cpu`;
  const reqRaw = obj(resources.requests)?.cpu;
  const limRaw = obj(resources.limits)?.cpu;
  const req = tryParseQuantity(reqRaw);
  const lim = tryParseQuantity(limRaw);
  if (req !== undefined && req < 0) ctx.causes.push(invalid(reqField, reqRaw, 'must be greater than or equal to 0'));
  if (lim !== undefined && lim < 0) ctx.causes.push(invalid(limField, limRaw, 'must be greater than or equal to 0'));
  if (req !== undefined && lim !== undefined && lim > 0 && req > lim) {
    ctx.causes.push(invalid(reqField, reqRaw, `must be less than or equal to the CPU limit ${String(limRaw)} (${limField})`));
  }
  const cpu = obj(domain.cpu) ?? {};
  let topology = 1;
  let counted = false;
  for (const k of ['sockets', 'cores', 'threads']) {
    const n = cpu[k];
    if (typeof n !== 'number') continue; // the structural walk reports wrong types
    if (n < 0) ctx.causes.push(invalid(`${path}.domain.cpu.${k}`, n, 'must be greater than or equal to 0'));
    else if (n > 0) {
      topology *= n;
      counted = true;
    }
  }
  if (counted && topology > MAX_VCPUS) {
    ctx.causes.push(invalid(`${path}.domain.cpu`, topology, `sockets * cores * threads must be at most ${MAX_VCPUS} vCPUs`));
  }
  // KubeVirt's rules: the emulator thread is isolated only beside dedicated vCPUs, and guest NUMA
  // passthrough needs both dedicated CPUs and hugepages (it maps host nodes' CPUs and memory).
  const dedicated = cpu.dedicatedCpuPlacement === true;
  if (cpu.isolateEmulatorThread === true && !dedicated)
    ctx.causes.push(invalid(`${path}.domain.cpu.isolateEmulatorThread`, true, 'needs dedicatedCpuPlacement: true'));
  if (isSet(obj(cpu.numa)?.guestMappingPassthrough)) {
    const hugepages = isSet(obj(obj(domain.memory)?.hugepages));
    if (!dedicated || !hugepages)
      ctx.causes.push(
        invalid(
          `${path}.domain.cpu.numa.guestMappingPassthrough`,
          {},
          'needs dedicatedCpuPlacement: true and memory.hugepages (the guest gets the host NUMA nodes of its CPUs and memory)',
        ),
      );
  }
}

function checkCloudInit(vol: Obj, field: string, kind: 'cloudInitNoCloud' | 'cloudInitConfigDrive', ctx: SemanticContext): void {
  const ci = obj(vol[kind]);
  if (!ci) return;
  const base = `${field}.${kind}`;
  const userSources = ['userData', 'userDataBase64', 'secretRef'].filter((k) => isSet(ci[k]));
  const netSources = ['networkData', 'networkDataBase64', 'networkDataSecretRef'].filter((k) => isSet(ci[k]));
  if (userSources.length > 1)
    ctx.causes.push(invalid(base, userSources.join(', '), 'must have only one userdata source set: userData, userDataBase64 or secretRef'));
  if (netSources.length > 1)
    ctx.causes.push(invalid(base, netSources.join(', '), 'must have only one networkdata source set: networkData, networkDataBase64 or networkDataSecretRef'));
  if (userSources.length === 0 && netSources.length === 0) {
    ctx.causes.push(required(base, 'must have at least one userdata source or one networkdata source set'));
  }
  for (const [k, secretHint] of [
    ['userData', 'secretRef'],
    ['networkData', 'networkDataSecretRef'],
  ] as const) {
    const plain = str(ci[k]);
    if (plain !== undefined && Buffer.byteLength(plain) > CLOUD_INIT_MAX) {
      ctx.causes.push(
        invalid(`${base}.${k}`, `${plain.slice(0, 20)}...`, `exceeds the ${CLOUD_INIT_MAX} byte limit; put larger data in a Secret and use ${secretHint}`),
      );
    }
    const b64 = str(ci[`${k}Base64`]);
    if (b64 !== undefined) {
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64.replace(/\s/g, '')) || b64.replace(/\s/g, '').length % 4 !== 0) {
        ctx.causes.push(invalid(`${base}.${k}Base64`, `${b64.slice(0, 20)}...`, 'is not a valid base64 value'));
      } else if (Buffer.from(b64, 'base64').length > CLOUD_INIT_MAX) {
        ctx.causes.push(
          invalid(
            `${base}.${k}Base64`,
            `${b64.slice(0, 20)}...`,
            `exceeds the ${CLOUD_INIT_MAX} byte limit; put larger data in a Secret and use ${secretHint}`,
          ),
        );
      }
    }
  }
}

/** Validates a VirtualMachineInstanceSpec found at `path` ("spec" or "spec.template.spec"). */
export function validateVmiSpec(spec: Obj, path: string, opts: VmiSpecOptions, ctx: SemanticContext): void {
  const causes = ctx.causes;
  const domain = obj(spec.domain);
  const devices = obj(domain?.devices) ?? {};
  const disks = arr(devices.disks);
  const interfaces = arr(devices.interfaces);
  const volumes = arr(spec.volumes);
  const networks = arr(spec.networks);
  const disksField = `${path}.domain.devices.disks`;
  const ifField = `${path}.domain.devices.interfaces`;
  checkSupported(spec, path, opts, ctx);
  // Vessel's own limits ratchet like checkSupported: a stored value left as it was passes.
  const changed = (at: Array<string | number>, value: unknown): boolean => {
    let o: unknown = opts.old;
    for (const k of at) o = typeof k === 'number' ? (Array.isArray(o) ? o[k] : undefined) : obj(o)?.[k];
    return !jsonEqual(o, value);
  };

  // Volumes: unique names, exactly one source each.
  uniqueNames(volumes, `${path}.volumes`, 'volume', ctx);
  volumes.forEach((v, i) => {
    if (!isObj(v)) return;
    const sources = VOLUME_SOURCES.filter((s) => isSet(v[s]));
    if (sources.length !== 1) {
      causes.push(
        sources.length === 0
          ? required(`${path}.volumes[${i}]`, 'must have exactly one source type set (e.g. containerDisk, dataVolume, persistentVolumeClaim, cloudInitNoCloud)')
          : invalid(`${path}.volumes[${i}]`, sources.join(', '), 'must have exactly one source type set'),
      );
    }
    const dv = obj(v.dataVolume);
    if (dv && !str(dv.name)) causes.push(required(`${path}.volumes[${i}].dataVolume.name`, "DataVolume 'name' must be set"));
    const pvc = obj(v.persistentVolumeClaim);
    if (pvc && !str(pvc.claimName)) causes.push(required(`${path}.volumes[${i}].persistentVolumeClaim.claimName`));
    checkCloudInit(v, `${path}.volumes[${i}]`, 'cloudInitNoCloud', ctx);
    checkCloudInit(v, `${path}.volumes[${i}]`, 'cloudInitConfigDrive', ctx);
  });

  // Disks: unique names, each backed by a volume, one target type, a known bus.
  const volumeNames = names(volumes);
  uniqueNames(disks, disksField, 'disk', ctx);
  disks.forEach((d, i) => {
    if (!isObj(d)) return;
    const name = str(d.name);
    if (name !== undefined && !volumeNames.has(name)) {
      causes.push(invalid(`${disksField}[${i}].name`, name, `${disksField}[${i}].name '${name}' not found: add a volume named '${name}' to ${path}.volumes`));
    }
    const targets = ['disk', 'lun', 'cdrom'].filter((t) => isSet(d[t]));
    if (targets.length > 1) causes.push(invalid(`${disksField}[${i}]`, targets.join(', '), 'can only have a single target type defined: disk, cdrom or lun'));
    for (const t of targets) {
      const bus = str(obj(d[t])?.bus);
      if (bus === undefined || bus === '' || t === 'lun') continue; // lun: refused as a field
      const busField = `${disksField}[${i}].${t}.bus`;
      // Vessel's buses (SUPPORTED_DISK_BUSES), a subset of KubeVirt's (no usb).
      const buses = SUPPORTED_DISK_BUSES[t === 'cdrom' ? 'cdrom' : 'disk'];
      if (bus === 'ide') causes.push(invalid(busField, bus, 'IDE bus is not supported; use sata'));
      else if (t === 'cdrom' && bus === 'virtio') causes.push(invalid(busField, bus, 'Bus type virtio is invalid for CD-ROM device; use sata or scsi'));
      else if (!buses.includes(bus) && changed(['domain', 'devices', 'disks', i, t, 'bus'], bus)) causes.push(notSupported(busField, bus, buses));
      else if (t === 'disk' && bus === 'sata' && obj(d.disk)?.readonly === true)
        causes.push(invalid(busField, bus, 'sata hard-disks do not support read-only'));
    }
    const custom = obj(obj(d.blockSize)?.custom);
    for (const k of ['logical', 'physical']) {
      const n = custom?.[k];
      const problem = typeof n === 'number' ? blockSizeProblem(n) : undefined;
      if (problem && changed(['domain', 'devices', 'disks', i, 'blockSize', 'custom', k], n))
        causes.push(invalid(`${disksField}[${i}].blockSize.custom.${k}`, n, problem));
    }
    if (typeof d.bootOrder === 'number' && d.bootOrder < 1)
      causes.push(invalid(`${disksField}[${i}].bootOrder`, d.bootOrder, 'must have a boot order > 0, if supplied'));
  });

  // Networks and interfaces: unique names, each interface bound to a network, one binding each.
  const netField = `${path}.networks`;
  const seenNets = new Map<string, number>();
  let podNetworks = 0;
  networks.forEach((n, i) => {
    if (!isObj(n)) return;
    const name = str(n.name);
    if (name !== undefined) {
      if (seenNets.has(name))
        causes.push(duplicate(`${netField}[${i}].name`, name, `Network with name "${name}" already exists, every network must have a unique name`));
      else seenNets.set(name, i);
    }
    const types = ['pod', 'multus'].filter((t) => isSet(n[t]));
    if (types.length !== 1) causes.push(invalid(`${netField}[${i}]`, types.join(', ') || null, 'should have exactly one network type: pod or multus'));
    if (isSet(n.pod)) podNetworks++;
    const cidr = str(obj(n.pod)?.vmNetworkCIDR);
    if (cidr !== undefined && !parseVmNetworkCidr(cidr) && changed(['networks', i, 'pod', 'vmNetworkCIDR'], cidr))
      causes.push(invalid(`${netField}[${i}].pod.vmNetworkCIDR`, cidr, VM_NETWORK_CIDR_PROBLEM));
  });
  if (podNetworks > 1) causes.push(invalid(netField, podNetworks, 'more than one pod network is not allowed'));
  const seenIfs = new Set<string>();
  interfaces.forEach((f, i) => {
    if (!isObj(f)) return;
    const name = str(f.name);
    if (name !== undefined) {
      if (seenIfs.has(name)) causes.push(duplicate(`${ifField}[${i}].name`, name, 'Only one interface can be connected to one specific network'));
      seenIfs.add(name);
      if (!seenNets.has(name)) {
        causes.push(invalid(`${ifField}[${i}].name`, name, `${ifField}[${i}].name '${name}' not found: add a network named '${name}' to ${netField}`));
      }
    }
    const mac = str(f.macAddress);
    const macProblem = mac === undefined ? undefined : macAddressProblem(mac);
    if (macProblem && changed(['domain', 'devices', 'interfaces', i, 'macAddress'], mac)) causes.push(invalid(`${ifField}[${i}].macAddress`, mac, macProblem));
    const bindings = INTERFACE_BINDINGS.filter((b) => isSet(f[b]));
    if (bindings.length > 1)
      causes.push(invalid(`${ifField}[${i}]`, bindings.join(', '), 'an interface can have only one binding method (e.g. masquerade or bridge)'));
  });
  for (const [name, i] of seenNets) {
    if (!seenIfs.has(name)) {
      causes.push(invalid(`${netField}[${i}].name`, name, `network '${name}' has no interface: add an interface named '${name}' to ${ifField}`));
    }
  }

  if (domain) {
    checkMemory(spec, path, opts, ctx);
    checkCpu(spec, path, opts, ctx);
    const bootloader = obj(obj(domain.firmware)?.bootloader);
    if (bootloader && isSet(bootloader.bios) && isSet(bootloader.efi)) {
      causes.push(invalid(`${path}.domain.firmware.bootloader`, 'bios, efi', 'has both EFI and BIOS configured, but they are mutually exclusive'));
    }
  }
  // A watchdog needs its model; a kernel boot needs the kernel's path in its container, and
  // kernel arguments need a kernel (the argv builder's requirements).
  const watchdog = obj(devices.watchdog);
  if (watchdog && !isSet(watchdog.i6300esb) && !isSet(watchdog.diag288) && changed(['domain', 'devices', 'watchdog'], watchdog))
    causes.push(required(`${path}.domain.devices.watchdog.i6300esb`, 'a watchdog model (i6300esb)'));
  const kernelBoot = obj(obj(domain?.firmware)?.kernelBoot);
  if (kernelBoot && changed(['domain', 'firmware', 'kernelBoot'], kernelBoot)) {
    const container = obj(kernelBoot.container);
    if (!container && isSet(kernelBoot.kernelArgs)) causes.push(required(`${path}.domain.firmware.kernelBoot.container`, 'kernelArgs need a kernel container'));
    if (container && !str(container.kernelPath))
      causes.push(required(`${path}.domain.firmware.kernelBoot.container.kernelPath`, 'the kernel path in the container image'));
  }
  const uuid = str(obj(domain?.firmware)?.uuid);
  const uuidProblem = uuid === undefined ? undefined : firmwareUuidProblem(uuid);
  if (uuidProblem && changed(['domain', 'firmware', 'uuid'], uuid)) causes.push(invalid(`${path}.domain.firmware.uuid`, uuid, uuidProblem));
  const arch = str(spec.architecture);
  if (arch && !SUPPORTED_ARCHITECTURES.includes(arch) && changed(['architecture'], arch))
    causes.push(notSupported(`${path}.architecture`, arch, SUPPORTED_ARCHITECTURES));
  const machine = str(obj(domain?.machine)?.type);
  if (machine && !qemuMachineType(machine) && changed(['domain', 'machine', 'type'], machine))
    causes.push(notSupported(`${path}.domain.machine.type`, machine, SUPPORTED_MACHINE_TYPES));
  const hostname = str(spec.hostname);
  if (hostname) for (const e of dns1123Label(hostname)) causes.push(invalid(`${path}.hostname`, hostname, e));
  const subdomain = str(spec.subdomain);
  if (subdomain) for (const e of dns1123Subdomain(subdomain)) causes.push(invalid(`${path}.subdomain`, subdomain, e));
}

export function validateVirtualMachine(o: KubeObject, ctx: SemanticContext): void {
  const causes = ctx.causes;
  const spec = obj(o.spec);
  if (!spec) return;
  const running = spec.running;
  const runStrategy = spec.runStrategy;
  if (isSet(running) && isSet(runStrategy)) {
    causes.push(invalid('spec.running', running, 'Running and RunStrategy are mutually exclusive; remove spec.running (deprecated) and keep spec.runStrategy'));
  } else if (!isSet(running) && !isSet(runStrategy)) {
    // KubeVirt v1.x has no default here: its webhook rejects such VMs ("RunStrategy must be specified").
    causes.push(required('spec.runStrategy', 'RunStrategy must be specified: set spec.runStrategy to one of Always, RerunOnFailure, Manual, Halted, Once'));
  }
  if (typeof runStrategy === 'string') {
    if (!(RUN_STRATEGIES as readonly string[]).includes(runStrategy)) causes.push(notSupported('spec.runStrategy', runStrategy, RUN_STRATEGIES));
    else if (runStrategy === 'WaitAsReceiver')
      ctx.warnings.push('spec.runStrategy: WaitAsReceiver (decentralized live migration) is not implemented by Vessel yet; accepted and ignored');
  }
  if (isSet(running)) ctx.warnings.push('spec.running is deprecated, please use spec.runStrategy instead.');

  const template = obj(spec.template);
  const hasInstancetype = isSet(spec.instancetype) || isSet(spec.preference);
  if (template) {
    const tmeta = obj(template.metadata);
    if (tmeta) {
      validateLabels(tmeta.labels, 'spec.template.metadata.labels', causes);
      validateAnnotations(tmeta.annotations, 'spec.template.metadata.annotations', causes);
    }
    const tspec = obj(template.spec);
    if (!tspec) causes.push(required('spec.template.spec', 'the VirtualMachineInstance template needs a spec with at least spec.domain'));
    else validateVmiSpec(tspec, 'spec.template.spec', { hasInstancetype, old: obj(obj(ctx.old?.spec)?.template)?.spec }, ctx);
  }
  checkMatchers(spec, obj(template?.spec), ctx);

  const volumes = arr(obj(template?.spec)?.volumes);
  const dvts = arr(spec.dataVolumeTemplates);
  uniqueNames(
    dvts.map((t) => (isObj(t) ? { name: obj(t.metadata)?.name } : t)),
    'spec.dataVolumeTemplates',
    'dataVolumeTemplate',
    ctx,
  );
  dvts.forEach((t, i) => {
    if (!isObj(t)) return;
    const field = `spec.dataVolumeTemplates[${i}]`;
    const meta = obj(t.metadata);
    const name = str(meta?.name);
    if (!name) {
      causes.push(required(`${field}.metadata.name`, 'every dataVolumeTemplate needs a name; the DataVolume is created with it'));
    } else {
      for (const e of dns1123Subdomain(name)) causes.push(invalid(`${field}.metadata.name`, name, e));
      const referenced = volumes.some((v) => isObj(v) && (str(obj(v.dataVolume)?.name) === name || str(obj(v.persistentVolumeClaim)?.claimName) === name));
      if (!referenced) {
        causes.push(
          required(field, `DataVolumeTemplate '${name}' must be referenced in the VMI template's 'volumes' list (a dataVolume volume named '${name}')`),
        );
      }
    }
    const ns = str(meta?.namespace);
    if (ns && o.metadata?.namespace && ns !== o.metadata.namespace) {
      causes.push(invalid(`${field}.metadata.namespace`, ns, `Embedded DataVolume namespace ${ns} differs from VM namespace ${o.metadata.namespace}`));
    }
    if (meta) {
      validateLabels(meta.labels, `${field}.metadata.labels`, causes);
      validateAnnotations(meta.annotations, `${field}.metadata.annotations`, causes);
    }
    const dvSpec = obj(t.spec);
    if (dvSpec) validateDataVolumeSpec(dvSpec, `${field}.spec`, ctx);
  });
}

/**
 * spec.instancetype and spec.preference (virt-api's instancetype admission): a kind it knows, a
 * name or a volume to infer it from, and no template field the instancetype provides.
 */
function checkMatchers(spec: Obj, tspec: Obj | undefined, ctx: SemanticContext): void {
  const volumes = names(arr(tspec?.volumes));
  for (const which of ['instancetype', 'preference'] as const) {
    const m = obj(spec[which]);
    if (!m) continue;
    const kind = str(m.kind);
    if (kind !== undefined && kind !== '' && !normalizeKind(which, kind)) {
      const allowed =
        which === 'instancetype'
          ? 'VirtualMachineInstancetype, VirtualMachineClusterInstancetype'
          : 'VirtualMachinePreference, VirtualMachineClusterPreference';
      ctx.causes.push(invalid(`spec.${which}.kind`, kind, `must be one of ${allowed}`));
    }
    const infer = str(m.inferFromVolume);
    if (!str(m.name) && !infer) ctx.causes.push(required(`spec.${which}.name`, `name the ${which}, or set spec.${which}.inferFromVolume to a volume`));
    if (infer && !volumes.has(infer)) ctx.causes.push(invalid(`spec.${which}.inferFromVolume`, infer, `must name a volume of spec.template.spec.volumes`));
    const policy = str(m.inferFromVolumeFailurePolicy);
    if (policy && !['RejectInferFromVolumeFailure', 'IgnoreInferFromVolumeFailure'].includes(policy))
      ctx.causes.push(notSupported(`spec.${which}.inferFromVolumeFailurePolicy`, policy, ['RejectInferFromVolumeFailure', 'IgnoreInferFromVolumeFailure']));
  }
  if (isSet(spec.instancetype) && tspec) for (const c of instancetypeConflicts(tspec, 'spec.template.spec')) ctx.causes.push(c);
}

export function validateVirtualMachineInstance(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  validateVmiSpec(spec, 'spec', { hasInstancetype: false, old: ctx.old?.spec }, ctx);
}

export function validateMigration(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) {
    ctx.causes.push(required('spec', 'set spec.vmiName to the VirtualMachineInstance to migrate'));
    return;
  }
  const vmiName = str(spec.vmiName);
  if (!vmiName && !isSet(spec.receive)) ctx.causes.push(required('spec.vmiName', 'name the VirtualMachineInstance to migrate'));
  if (ctx.op === 'update' && ctx.old && !jsonEqual(spec, ctx.old.spec)) {
    ctx.causes.push(forbidden('spec', 'the spec of a migration is immutable; create a new VirtualMachineInstanceMigration instead'));
  }
}
