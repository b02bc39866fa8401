/**
 * The pure QEMU argv builder: a KubeVirt VirtualMachineInstance spec plus what the agent resolved
 * on the node (volume paths, OVMF files, network backends, extracted kernels) in, the
 * qemu-system-x86_64 arguments out. No file system, clock or randomness: the same input always
 * gives the same argv, and the golden files in testdata/ pin it down.
 *
 * Only fields on the allow list pass (VMI_SPEC_FIELDS in @vessel/api, which admission refuses every
 * other field by); every other field set in the spec, and every value the builder cannot honour,
 * becomes a cause with its field path in one VmSpecError, so a user sees all problems at once and
 * nothing is silently ignored.
 *
 * Left to the process layer (not emitted here): the binary itself, -qmp, -pidfile, -daemonize,
 * -vnc, the chardevs and -no-shutdown. The devices emitted here refer to chardevs by fixed ids,
 * listed in the result's `chardevs` (`serial0` for the serial console, `qga0` for the guest agent),
 * which the process layer must define (e.g. `-chardev socket,id=serial0,path=...`).
 */
import { createHash } from 'node:crypto';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import {
  Reason,
  SUPPORTED_ARCHITECTURES,
  SUPPORTED_DISK_BUSES,
  SUPPORTED_MACHINE_TYPES,
  defaultDiskBus,
  qemuMachineType,
  supportedValues,
  MIN_GUEST_MEMORY,
  firmwareUuidProblem,
  macAddressProblem,
  blockSizeProblem,
  parseVmNetworkCidr,
  VM_NETWORK_CIDR_PROBLEM,
  tryParseQuantity,
  unsupportedVmiSpecFields,
  vmiSpecFieldPatterns,
  type FieldCause,
} from '@vessel/api';

/** A volume the agent made available on this node (disk image, block device or seed ISO). */
export interface QemuVolume {
  path: string;
  format: 'qcow2' | 'raw';
  readOnly?: boolean;
  /** `path` is a block device (PVC with volumeMode Block): opened with QEMU's host_device driver. */
  block?: boolean;
  /**
   * Whether the file system under `path` supports O_DIRECT. KubeVirt's default cache mode is
   * `none` where it does and `writethrough` where it does not (tmpfs); unset means it does.
   */
  directIO?: boolean;
}

/** A port forwarded from the host into a guest on a user (slirp) network. */
export interface HostForward {
  proto: 'tcp' | 'udp';
  /** IPv4 address to listen on; '' for all. */
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

/** The backend the agent chose for one interface (by interface name). */
export type QemuNetwork =
  | { kind: 'user'; hostForwards?: HostForward[]; mac?: string }
  | { kind: 'tap'; ifname: string; vhost?: boolean; mac?: string };

export interface QemuInput {
  vmi: { metadata: { name: string; namespace: string; uid?: string }; spec: V1VirtualMachineInstanceSpec };
  accel: 'kvm' | 'tcg';
  /** Resolved host paths by volume name, for every volume a disk uses (cloud-init seed ISOs included). */
  volumes: Record<string, QemuVolume>;
  /**
   * OVMF for `bootloader.efi`: the code file (read-only) and this VM's own copy of the variable
   * store. With secure boot (efiRequirements(spec).secureBoot) pass the secure-boot build, e.g.
   * OVMF_CODE_4M.secboot.fd with a copy of OVMF_VARS_4M.ms.fd.
   */
  firmware?: { ovmfCode: string; ovmfVars: string };
  /** Network backends by interface name (spec.domain.devices.interfaces[].name). */
  networks?: Record<string, QemuNetwork>;
  /** The kernel (and initrd) extracted from `firmware.kernelBoot.container`. */
  kernelBoot?: { kernel: string; initrd?: string };
  /** hugetlbfs mount for `memory.hugepages`; default /dev/hugepages (2Mi) or /dev/hugepages1G (1Gi). */
  hugepagesPath?: string;
}

/** A chardev the emitted devices use; the process layer must define it with this id. */
export interface ChardevNeed {
  id: string;
  role: 'serial-console' | 'guest-agent';
}

export interface QemuArgv {
  /** The arguments after the binary name. */
  argv: string[];
  /** Things accepted with a caveat (surface them as Events). */
  warnings: string[];
  /** Environment QEMU needs (TZ for clock.timezone). */
  env: Record<string, string>;
  chardevs: ChardevNeed[];
}

export type VmSpecErrorCode = 'UnsupportedVmSpec' | 'InvalidVmSpec';

/** The spec cannot be run: every unsupported or invalid field, with its path (spec.domain...). */
export class VmSpecError extends Error {
  readonly code: VmSpecErrorCode;
  readonly causes: FieldCause[];
  constructor(vmi: string, causes: FieldCause[]) {
    const code: VmSpecErrorCode = causes.some((c) => c.reason === Reason.NotSupported) ? 'UnsupportedVmSpec' : 'InvalidVmSpec';
    super(`VirtualMachineInstance ${vmi} cannot be started: ${causes.map((c) => `${c.field}: ${c.message}`).join('; ')}`);
    this.name = 'VmSpecError';
    this.code = code;
    this.causes = causes;
  }
}

/** Chardev id of the serial console (ttyS0), defined by the process layer. */
export const SERIAL_CHARDEV_ID = 'serial0';
/** Chardev id of the guest agent channel (org.qemu.guest_agent.0), defined by the process layer. */
export const GUEST_AGENT_CHARDEV_ID = 'qga0';

/**
 * The spec fields the builder accepts, as patterns ("domain.devices.disks[].cache"): the allow list
 * is @vessel/api's VMI_SPEC_FIELDS, the one admission refuses everything else by.
 */
export function supportedSpecFields(): string[] {
  return vmiSpecFieldPatterns();
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const isSet = (v: unknown): boolean => v !== undefined && v !== null;

function fmt(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

class Causes {
  readonly list: FieldCause[] = [];
  private readonly seen = new Set<string>();
  add(reason: string, field: string, message: string): void {
    const key = `${field}\n${message}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.list.push({ reason, field, message });
  }
  /** A value outside what Vessel implements. */
  value(field: string, value: unknown, supported: readonly string[] | string): void {
    const tail = typeof supported === 'string' ? supported : `supported values: ${supported.map((s) => JSON.stringify(s)).join(', ')}`;
    this.add(Reason.NotSupported, field, `Unsupported value: ${fmt(value)}: ${tail}`);
  }
  invalid(field: string, value: unknown, detail: string): void {
    this.add(Reason.Invalid, field, `Invalid value: ${fmt(value)}: ${detail}`);
  }
  required(field: string, detail: string): void {
    this.add(Reason.Required, field, `Required value: ${detail}`);
  }
  duplicate(field: string, value: unknown, detail?: string): void {
    this.add(Reason.Duplicate, field, `Duplicate value: ${fmt(value)}${detail ? `: ${detail}` : ''}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Small readers: each returns undefined (and records a cause) when the value has the wrong type.

function readObj(v: unknown, field: string, c: Causes): Obj | undefined {
  if (!isSet(v)) return undefined;
  if (isObj(v)) return v;
  c.invalid(field, v, 'must be an object');
  return undefined;
}
function readList(v: unknown, field: string, c: Causes): unknown[] {
  if (!isSet(v)) return [];
  if (Array.isArray(v)) return v;
  c.invalid(field, v, 'must be a list');
  return [];
}
function readStr(v: unknown, field: string, c: Causes): string | undefined {
  if (!isSet(v)) return undefined;
  if (typeof v === 'string') return v;
  c.invalid(field, v, 'must be a string');
  return undefined;
}
function readBool(v: unknown, field: string, c: Causes): boolean | undefined {
  if (!isSet(v)) return undefined;
  if (typeof v === 'boolean') return v;
  c.invalid(field, v, 'must be a boolean');
  return undefined;
}
function readInt(v: unknown, field: string, c: Causes, min: number, max: number): number | undefined {
  if (!isSet(v)) return undefined;
  if (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max) return v;
  c.invalid(field, v, `must be an integer from ${min} to ${max}`);
  return undefined;
}

/** One QEMU option string: head,key=value,... with commas in values doubled (QEMU's escape). */
function opt(head: string, props: MachineProps): string {
  const parts = [head];
  for (const [k, v] of props) {
    if (v === undefined) continue;
    const s = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
    parts.push(`${k}=${s.replaceAll(',', ',,')}`);
  }
  return parts.join(',');
}

/** Host paths and names from the agent must not carry control characters (argv, golden files). */
function checkHostString(what: string, s: string): string {
  if (s.length === 0 || /[\x00-\x1f\x7f]/.test(s)) throw new TypeError(`buildQemuArgv: ${what} ${JSON.stringify(s)} is empty or has control characters`);
  return s;
}

const NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;
const shortHash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 8);

/** QEMU device id of a disk, interface, input or watchdog: KubeVirt's user alias. */
export const deviceId = (name: string): string => `ua-${name}`;

/**
 * Block node names of a disk: the protocol (file) node and the format node the device uses.
 * QEMU caps node names at 31 characters, so long disk names are cut and given a hash suffix.
 */
export function blockNodeNames(diskName: string): { file: string; format: string } {
  const base = diskName.length <= 26 ? diskName : `${diskName.slice(0, 17)}-${shortHash(diskName)}`;
  return { file: `file-${base}`, format: `disk-${base}` };
}

/** Device id of the virtio-scsi controller every VM has (unless disableHotplug); hotplugged disks go on its bus `scsi0.0`. */
export const SCSI_CONTROLLER_ID = 'scsi0';

/** Netdev id of an interface. */
export const netdevId = (ifaceName: string): string => `net-${ifaceName}`;

/** The MAC an interface gets without spec.macAddress: stable per namespace/VM/interface. */
export function derivedMac(namespace: string, vmName: string, ifaceName: string): string {
  const h = createHash('sha256').update(`${namespace}/${vmName}/${ifaceName}`).digest();
  return ['52', '54', '00', h[0], h[1], h[2]].map((b) => (typeof b === 'number' ? b.toString(16).padStart(2, '0') : b)).join(':');
}

// Value lists shared with admission (VMI_SPEC_FIELDS); the maps below for models, video types and
// error policies must cover theirs (support.test.ts builds every listed value).
const values = (pattern: string): readonly string[] => supportedValues(pattern).map(String);
const CACHE_MODES = values('domain.devices.disks[].cache');
const IO_MODES = values('domain.devices.disks[].io');
const PORT_PROTOCOLS = values('domain.devices.interfaces[].ports[].protocol');
const RTC_TICK_POLICIES = values('domain.clock.timer.rtc.tickPolicy');
const PIT_TICK_POLICIES = values('domain.clock.timer.pit.tickPolicy');

const isQ35 = (machine: string): boolean => machine === 'q35' || machine.startsWith('pc-q35-');

/**
 * What firmware a spec needs, so the agent can pick the OVMF files before building argv:
 * efi when bootloader.efi is set; secure boot unless efi.secureBoot is false (KubeVirt's default).
 */
export function efiRequirements(spec: V1VirtualMachineInstanceSpec): { efi: boolean; secureBoot: boolean } {
  const efi = spec.domain?.firmware?.bootloader?.efi;
  if (!isSet(efi)) return { efi: false, secureBoot: false };
  return { efi: true, secureBoot: efi?.secureBoot !== false };
}

// ---------------------------------------------------------------------------------------------

type MachineProps = Array<[string, string | number | boolean | undefined]>;

interface Ctx {
  input: QemuInput;
  c: Causes;
  warnings: string[];
  machine: string;
  q35: boolean;
  vcpus: number;
  transitional: boolean;
  /** ua-... device ids already used, with the field that took them. */
  ids: Map<string, string>;
  /** Boot order given anywhere (disks or interfaces): then only those devices boot. */
  explicitBoot: boolean;
  bootOrders: Map<number, string>;
}

function claimId(ctx: Ctx, id: string, field: string, name: string): void {
  const prev = ctx.ids.get(id);
  if (prev) ctx.c.duplicate(field, name, `the device id ${id} is already used by ${prev}`);
  else ctx.ids.set(id, field);
}

function readBootOrder(ctx: Ctx, v: unknown, field: string): number | undefined {
  const n = readInt(v, field, ctx.c, 1, 65535);
  if (n === undefined) return undefined;
  const prev = ctx.bootOrders.get(n);
  if (prev) ctx.c.duplicate(field, n, `boot order ${n} is already used by ${prev}`);
  else ctx.bootOrders.set(n, field.replace(/\.bootOrder$/, ''));
  return n;
}

/**
 * Builds the argv for a VMI. Throws VmSpecError listing every unsupported or invalid field;
 * throws TypeError when the agent's own input (paths, tap names, forwards) is malformed.
 */
export function buildQemuArgv(input: QemuInput): QemuArgv {
  const c = new Causes();
  const warnings: string[] = [];
  const { name, namespace } = input.vmi.metadata;
  if (!NAME_RE.test(name) || !NAME_RE.test(namespace)) throw new TypeError(`buildQemuArgv: bad VMI name ${JSON.stringify(`${namespace}/${name}`)}`);
  const spec: Obj = isObj(input.vmi.spec) ? (input.vmi.spec as unknown as Obj) : {};
  for (const u of unsupportedVmiSpecFields(spec, 'spec')) c.add(u.reason, u.field, u.message);

  const domain = readObj(spec.domain, 'spec.domain', c);
  if (!domain) c.required('spec.domain', 'the domain spec');
  const dom = domain ?? {};
  const devices = readObj(dom.devices, 'spec.domain.devices', c) ?? {};

  const arch = readStr(spec.architecture, 'spec.architecture', c);
  if (arch !== undefined && !SUPPORTED_ARCHITECTURES.includes(arch)) c.value('spec.architecture', arch, SUPPORTED_ARCHITECTURES);

  const machine = machineType(dom, c, warnings);
  const q35 = isQ35(machine);
  const vcpuTopo = cpuTopology(dom, c);
  const ctx: Ctx = {
    input,
    c,
    warnings,
    machine,
    q35,
    vcpus: vcpuTopo.sockets * vcpuTopo.cores * vcpuTopo.threads,
    transitional: readBool(devices.useVirtioTransitional, 'spec.domain.devices.useVirtioTransitional', c) === true,
    ids: new Map(),
    explicitBoot: hasExplicitBootOrder(devices),
    bootOrders: new Map(),
  };
  const env: Record<string, string> = {};
  const machineProps: MachineProps = [];

  const argv: string[] = ['-name', opt(`guest=${namespace}_${name}`, [['debug-threads', true]])];
  const firmware = readObj(dom.firmware, 'spec.domain.firmware', c) ?? {};
  const uuid = readStr(firmware.uuid, 'spec.domain.firmware.uuid', c);
  if (uuid !== undefined) {
    const problem = firmwareUuidProblem(uuid);
    if (problem) c.invalid('spec.domain.firmware.uuid', uuid, problem);
    else argv.push('-uuid', uuid.toLowerCase());
  }
  argv.push('-msg', 'timestamp=on', '-nodefaults', '-no-user-config');

  // Sections that add -machine properties run before -machine is written.
  const features = featureArgs(ctx, dom, machineProps);
  const memory = memoryArgs(ctx, dom, machineProps);
  const fw = firmwareArgs(ctx, dom, firmware, features.smm, machineProps);
  const clock = clockArgs(ctx, dom, machineProps, env);

  argv.push('-machine', opt(machine, machineProps));
  argv.push('-accel', input.accel);
  argv.push('-cpu', cpuModel(ctx, dom));
  argv.push('-smp', opt(String(ctx.vcpus), [['sockets', vcpuTopo.sockets], ['cores', vcpuTopo.cores], ['threads', vcpuTopo.threads]]));
  argv.push(...memory.argv, ...fw, ...clock, '-boot', 'strict=on', '-display', 'none');

  // Devices, in an order that keeps PCI slots stable when disks are added: video, NICs, storage,
  // then the fixed set of service devices.
  const dev: string[] = [];
  dev.push(...videoArgs(ctx, devices));
  dev.push(...networkArgs(ctx, spec, devices));
  dev.push(...diskArgs(ctx, spec, devices));
  const chardevs: ChardevNeed[] = [];
  const serialConsole = readBool(devices.autoattachSerialConsole, 'spec.domain.devices.autoattachSerialConsole', c) !== false;
  if (serialConsole) {
    dev.push('-device', opt('isa-serial', [['chardev', SERIAL_CHARDEV_ID], ['id', 'serial0']]));
    chardevs.push({ id: SERIAL_CHARDEV_ID, role: 'serial-console' });
  }
  if (readBool(devices.logSerialConsole, 'spec.domain.devices.logSerialConsole', c) === false) {
    warnings.push('spec.domain.devices.logSerialConsole: false has no effect: Vessel always keeps serial.log');
  }
  // The guest agent channel is always there, as in KubeVirt.
  dev.push('-device', opt(virtio(ctx, 'virtio-serial-pci'), [['id', 'virtio-serial0']]));
  dev.push('-device', opt('virtserialport', [['bus', 'virtio-serial0.0'], ['chardev', GUEST_AGENT_CHARDEV_ID], ['name', 'org.qemu.guest_agent.0']]));
  chardevs.push({ id: GUEST_AGENT_CHARDEV_ID, role: 'guest-agent' });
  if (readBool(devices.autoattachMemBalloon, 'spec.domain.devices.autoattachMemBalloon', c) !== false) {
    // Free page reporting returns freed guest memory to the host; not with hugepages (KubeVirt's rule).
    dev.push('-device', opt(virtio(ctx, 'virtio-balloon-pci'), [['id', 'balloon0'], ['free-page-reporting', memory.hugepages ? undefined : true]]));
  }
  if (isSet(devices.rng)) {
    dev.push('-object', opt('rng-random', [['id', 'objrng0'], ['filename', '/dev/urandom']]));
    dev.push('-device', opt(virtio(ctx, 'virtio-rng-pci'), [['rng', 'objrng0'], ['id', 'rng0']]));
  }
  const watchdog = watchdogArgs(ctx, devices);
  dev.push(...watchdog.device);
  dev.push(...inputArgs(ctx, devices));
  if (biosUseSerial(ctx, firmware)) {
    if (!serialConsole) c.invalid('spec.domain.firmware.bootloader.bios.useSerial', true, 'needs the serial console (autoattachSerialConsole must not be false)');
    dev.push('-device', 'sga');
  }
  argv.push(...watchdog.action, ...dev);

  if (c.list.length > 0) throw new VmSpecError(`${namespace}/${name}`, c.list);
  return { argv, warnings, env, chardevs };
}

function hasExplicitBootOrder(devices: Obj): boolean {
  const lists = [devices.disks, devices.interfaces];
  return lists.some((l) => Array.isArray(l) && l.some((d) => isObj(d) && isSet(d.bootOrder)));
}

const virtio = (ctx: Ctx, model: string): string => (ctx.transitional ? `${model}-transitional` : model);

function machineType(dom: Obj, c: Causes, warnings: string[]): string {
  const m = readObj(dom.machine, 'spec.domain.machine', c);
  const t = readStr(m?.type, 'spec.domain.machine.type', c) ?? 'q35';
  const qemu = qemuMachineType(t);
  if (!qemu) {
    c.value('spec.domain.machine.type', t, SUPPORTED_MACHINE_TYPES);
    return 'q35';
  }
  if (qemu.note) warnings.push(`spec.domain.machine.type: ${qemu.note}`);
  return qemu.machine;
}

function cpuTopology(dom: Obj, c: Causes): { sockets: number; cores: number; threads: number } {
  const cpu = readObj(dom.cpu, 'spec.domain.cpu', c) ?? {};
  // 0 means unset, as in KubeVirt.
  const sockets = readInt(cpu.sockets, 'spec.domain.cpu.sockets', c, 0, 255) ?? 0;
  const cores = readInt(cpu.cores, 'spec.domain.cpu.cores', c, 0, 255) ?? 0;
  const threads = readInt(cpu.threads, 'spec.domain.cpu.threads', c, 0, 255) ?? 0;
  if (sockets === 0 && cores === 0 && threads === 0) {
    // KubeVirt: with no topology, the vCPU count comes from the CPU limit, else the request
    // (rounded up), as sockets. A zero quantity counts as unset there, as it does here.
    const res = readObj(dom.resources, 'spec.domain.resources', c);
    for (const kind of ['limits', 'requests']) {
      const q = readObj(res?.[kind], `spec.domain.resources.${kind}`, c)?.cpu;
      if (!isSet(q)) continue;
      const v = tryParseQuantity(q);
      if (v === 0) continue;
      if (v === undefined || v < 0) {
        c.invalid(`spec.domain.resources.${kind}.cpu`, q, 'must be a positive quantity');
        break;
      }
      return { sockets: Math.min(255, Math.ceil(v)), cores: 1, threads: 1 };
    }
  }
  const topo = { sockets: sockets || 1, cores: cores || 1, threads: threads || 1 };
  if (topo.sockets * topo.cores * topo.threads > 255) {
    c.invalid('spec.domain.cpu', `${topo.sockets}x${topo.cores}x${topo.threads}`, 'at most 255 vCPUs (sockets * cores * threads)');
  }
  return topo;
}

function cpuModel(ctx: Ctx, dom: Obj): string {
  const { c } = ctx;
  const cpu = readObj(dom.cpu, 'spec.domain.cpu', c) ?? {};
  const model = readStr(cpu.model, 'spec.domain.cpu.model', c) ?? 'host-model';
  let qemuModel: string;
  if (model === 'host-passthrough') {
    if (ctx.input.accel !== 'kvm') c.value('spec.domain.cpu.model', model, 'host-passthrough needs KVM and this node runs guests under TCG; use host-model or a named model');
    qemuModel = 'host';
  } else if (model === 'host-model') {
    // Under TCG "max" is the richest CPU QEMU can emulate; under KVM the host's CPU.
    qemuModel = ctx.input.accel === 'kvm' ? 'host' : 'max';
  } else if (/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(model)) {
    qemuModel = model;
  } else {
    c.invalid('spec.domain.cpu.model', model, 'must be host-passthrough, host-model or a CPU model name');
    qemuModel = 'max';
  }
  const props: Array<[string, string | boolean | undefined]> = [];
  readList(cpu.features, 'spec.domain.cpu.features', c).forEach((f, i) => {
    const path = `spec.domain.cpu.features[${i}]`;
    const o = readObj(f, path, c);
    if (!o) return;
    const fname = readStr(o.name, `${path}.name`, c);
    const policy = readStr(o.policy, `${path}.policy`, c) ?? 'require';
    if (fname === undefined) return c.required(`${path}.name`, 'the CPU feature name');
    if (!/^[a-z0-9][a-z0-9_.-]*$/i.test(fname)) return c.invalid(`${path}.name`, fname, 'must be a CPU feature name');
    if (policy === 'require' || policy === 'force') props.push([fname, true]);
    else if (policy === 'disable') props.push([fname, false]);
    else c.value(`${path}.policy`, policy, ['require', 'force', 'disable']);
  });
  return opt(qemuModel, props);
}

/** -machine properties from spec.domain.features; returns whether SMM was asked on/off. */
function featureArgs(ctx: Ctx, dom: Obj, machineProps: MachineProps): { smm: boolean | undefined } {
  const { c } = ctx;
  const f = readObj(dom.features, 'spec.domain.features', c) ?? {};
  const acpi = readObj(f.acpi, 'spec.domain.features.acpi', c);
  if (acpi && readBool(acpi.enabled, 'spec.domain.features.acpi.enabled', c) === false) machineProps.push(['acpi', false]);
  const apic = readObj(f.apic, 'spec.domain.features.apic', c);
  if (apic && readBool(apic.enabled, 'spec.domain.features.apic.enabled', c) === false) {
    c.value('spec.domain.features.apic.enabled', false, 'x86 guests always have an APIC in Vessel');
  }
  const smmObj = readObj(f.smm, 'spec.domain.features.smm', c);
  const smm = smmObj ? readBool(smmObj.enabled, 'spec.domain.features.smm.enabled', c) !== false : undefined;
  return { smm };
}

function memoryArgs(ctx: Ctx, dom: Obj, machineProps: MachineProps): { argv: string[]; hugepages: boolean } {
  const { c } = ctx;
  const mem = readObj(dom.memory, 'spec.domain.memory', c) ?? {};
  const res = readObj(dom.resources, 'spec.domain.resources', c) ?? {};
  const req = readObj(res.requests, 'spec.domain.resources.requests', c) ?? {};
  const lim = readObj(res.limits, 'spec.domain.resources.limits', c) ?? {};
  // KubeVirt: memory.guest, else the memory request (API defaulting also falls back to the limit).
  const [field, q] = isSet(mem.guest)
    ? ['spec.domain.memory.guest', mem.guest]
    : isSet(req.memory)
      ? ['spec.domain.resources.requests.memory', req.memory]
      : ['spec.domain.resources.limits.memory', lim.memory];
  const argv: string[] = [];
  if (!isSet(q)) {
    c.required('spec.domain.memory.guest', 'guest memory (memory.guest or resources.requests.memory)');
    return { argv, hugepages: false };
  }
  const bytes = tryParseQuantity(q);
  if (bytes === undefined || bytes < MIN_GUEST_MEMORY) {
    c.invalid(field, q, 'must be a quantity of at least 16Mi');
    return { argv, hugepages: false };
  }
  const mib = Math.ceil(bytes / 2 ** 20);
  if (mib * 2 ** 20 !== bytes) ctx.warnings.push(`${field}: ${String(q)} rounded up to ${mib}Mi`);
  argv.push('-m', `${mib}M`);

  const hp = readObj(mem.hugepages, 'spec.domain.memory.hugepages', c);
  if (hp) {
    const ps = readStr(hp.pageSize, 'spec.domain.memory.hugepages.pageSize', c);
    const size = ps === undefined ? undefined : tryParseQuantity(ps);
    if (size !== 2 * 2 ** 20 && size !== 2 ** 30) {
      c.value('spec.domain.memory.hugepages.pageSize', ps, ['2Mi', '1Gi']);
      return { argv, hugepages: true };
    }
    if ((mib * 2 ** 20) % size !== 0) c.invalid(field, q, `must be a multiple of the hugepage size ${ps}`);
    const path = checkHostString('hugepagesPath', ctx.input.hugepagesPath ?? (size === 2 ** 30 ? '/dev/hugepages1G' : '/dev/hugepages'));
    // pc.ram: the RAM block name QEMU uses without a backend, so the migration stream is the same.
    // prealloc: fail at start, not with SIGBUS later, when the hugepage pool is short.
    argv.push('-object', opt('memory-backend-file', [['id', 'pc.ram'], ['size', `${mib}M`], ['mem-path', path], ['prealloc', true]]));
    machineProps.push(['memory-backend', 'pc.ram']);
  }
  return { argv, hugepages: hp !== undefined };
}

function biosUseSerial(ctx: Ctx, firmware: Obj): boolean {
  const bl = readObj(firmware.bootloader, 'spec.domain.firmware.bootloader', ctx.c);
  const bios = readObj(bl?.bios, 'spec.domain.firmware.bootloader.bios', ctx.c);
  return readBool(bios?.useSerial, 'spec.domain.firmware.bootloader.bios.useSerial', ctx.c) === true;
}

function firmwareArgs(
  ctx: Ctx,
  dom: Obj,
  firmware: Obj,
  smm: boolean | undefined,
  machineProps: MachineProps,
): string[] {
  const { c, input } = ctx;
  const argv: string[] = [];
  const bl = readObj(firmware.bootloader, 'spec.domain.firmware.bootloader', c) ?? {};
  const efi = readObj(bl.efi, 'spec.domain.firmware.bootloader.efi', c);
  if (efi && isSet(bl.bios)) c.invalid('spec.domain.firmware.bootloader', 'bios+efi', 'set either bios or efi, not both');
  let smmOn = smm;
  if (efi) {
    const secure = readBool(efi.secureBoot, 'spec.domain.firmware.bootloader.efi.secureBoot', c) !== false;
    if (secure) {
      if (smm === false) c.invalid('spec.domain.features.smm.enabled', false, 'secure boot (efi.secureBoot, default true) needs SMM');
      if (!ctx.q35) c.value('spec.domain.firmware.bootloader.efi.secureBoot', true, `secure boot needs the q35 machine type, not ${ctx.machine}`);
      smmOn = true;
    }
    const fwIn = input.firmware;
    if (!fwIn) {
      c.required('spec.domain.firmware.bootloader.efi', 'UEFI firmware (OVMF) is not available on this node');
    } else {
      // -blockdev pflash: code read-only, this VM's variable store writable.
      const pf = (n: 0 | 1, path: string, ro: boolean): void => {
        argv.push('-blockdev', opt('driver=file', [['filename', checkHostString('firmware path', path)], ['node-name', `pflash${n}-file`], ['read-only', ro || undefined]]));
        argv.push('-blockdev', opt('driver=raw', [['file', `pflash${n}-file`], ['node-name', `pflash${n}`], ['read-only', ro || undefined]]));
      };
      pf(0, fwIn.ovmfCode, true);
      pf(1, fwIn.ovmfVars, false);
      machineProps.push(['pflash0', 'pflash0'], ['pflash1', 'pflash1']);
      if (secure) argv.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
    }
  }
  if (smmOn !== undefined) machineProps.push(['smm', smmOn]);

  const kb = readObj(firmware.kernelBoot, 'spec.domain.firmware.kernelBoot', c);
  if (kb) {
    const container = readObj(kb.container, 'spec.domain.firmware.kernelBoot.container', c);
    const args = readStr(kb.kernelArgs, 'spec.domain.firmware.kernelBoot.kernelArgs', c);
    if (args !== undefined && /[\x00-\x1f\x7f]/.test(args)) c.invalid('spec.domain.firmware.kernelBoot.kernelArgs', args, 'must not contain control characters');
    if (!container) {
      if (args !== undefined) c.required('spec.domain.firmware.kernelBoot.container', 'kernelArgs need a kernel container');
    } else {
      const kernelPath = readStr(container.kernelPath, 'spec.domain.firmware.kernelBoot.container.kernelPath', c);
      const initrdPath = readStr(container.initrdPath, 'spec.domain.firmware.kernelBoot.container.initrdPath', c);
      if (kernelPath === undefined) c.required('spec.domain.firmware.kernelBoot.container.kernelPath', 'the kernel path in the container image');
      const ext = input.kernelBoot;
      if (!ext) {
        c.required('spec.domain.firmware.kernelBoot.container', 'the kernel has not been extracted from the container image on this node');
      } else {
        argv.push('-kernel', checkHostString('kernel path', ext.kernel));
        if (initrdPath !== undefined) {
          if (ext.initrd === undefined) c.required('spec.domain.firmware.kernelBoot.container.initrdPath', 'the initrd has not been extracted on this node');
          else argv.push('-initrd', checkHostString('initrd path', ext.initrd));
        }
        if (args) argv.push('-append', args);
      }
    }
  } else if (input.kernelBoot) {
    ctx.warnings.push('a kernel was extracted but spec.domain.firmware.kernelBoot is not set; it is not used');
  }

  // SMBIOS: type 1 (system) serial, type 3 (chassis).
  const serial = readStr(firmware.serial, 'spec.domain.firmware.serial', c);
  if (serial !== undefined) {
    if (/^[A-Za-z0-9_.+ -]{1,64}$/.test(serial)) argv.push('-smbios', opt('type=1', [['serial', serial]]));
    else c.invalid('spec.domain.firmware.serial', serial, 'must be 1-64 letters, digits, spaces or _.+-');
  }
  const chassis = readObj(dom.chassis, 'spec.domain.chassis', c);
  if (chassis) {
    const props: Array<[string, string | undefined]> = [];
    for (const k of ['manufacturer', 'version', 'serial', 'asset', 'sku']) {
      const v = readStr(chassis[k], `spec.domain.chassis.${k}`, c);
      if (v === undefined) continue;
      if (/[\x00-\x1f\x7f]/.test(v) || v.length > 64) c.invalid(`spec.domain.chassis.${k}`, v, 'must be at most 64 printable characters');
      else props.push([k, v]);
    }
    if (props.length > 0) argv.push('-smbios', opt('type=3', props));
  }
  return argv;
}

function clockArgs(ctx: Ctx, dom: Obj, machineProps: MachineProps, env: Record<string, string>): string[] {
  const { c } = ctx;
  const clock = readObj(dom.clock, 'spec.domain.clock', c) ?? {};
  const rtc: Array<[string, string | undefined]> = [['base', 'utc']];
  const utc = readObj(clock.utc, 'spec.domain.clock.utc', c);
  const tz = readStr(clock.timezone, 'spec.domain.clock.timezone', c);
  if (utc && tz !== undefined) c.invalid('spec.domain.clock', 'utc+timezone', 'set either utc or timezone, not both');
  if (utc) {
    const off = readInt(utc.offsetSeconds, 'spec.domain.clock.utc.offsetSeconds', c, -(2 ** 31), 2 ** 31 - 1);
    if (off !== undefined && off !== 0) c.value('spec.domain.clock.utc.offsetSeconds', off, 'only 0 is supported by Vessel yet');
  }
  if (tz !== undefined) {
    // QEMU's localtime follows TZ: the process layer must start QEMU with the returned env.
    if (/^[A-Za-z0-9_+-]+(\/[A-Za-z0-9_+-]+)*$/.test(tz)) {
      rtc[0] = ['base', 'localtime'];
      env.TZ = tz;
    } else {
      c.invalid('spec.domain.clock.timezone', tz, 'must be a time zone name such as Europe/Berlin');
    }
  }
  const argv: string[] = [];
  const timer = readObj(clock.timer, 'spec.domain.clock.timer', c) ?? {};
  const hpet = readObj(timer.hpet, 'spec.domain.clock.timer.hpet', c);
  if (hpet && readBool(hpet.present, 'spec.domain.clock.timer.hpet.present', c) === false) machineProps.push(['hpet', false]);
  const rtcT = readObj(timer.rtc, 'spec.domain.clock.timer.rtc', c);
  if (rtcT) {
    if (readBool(rtcT.present, 'spec.domain.clock.timer.rtc.present', c) === false) c.value('spec.domain.clock.timer.rtc.present', false, 'the RTC cannot be removed');
    const tp = readStr(rtcT.tickPolicy, 'spec.domain.clock.timer.rtc.tickPolicy', c);
    if (tp === 'catchup') rtc.push(['driftfix', 'slew']);
    else if (tp !== undefined && tp !== 'delay') c.value('spec.domain.clock.timer.rtc.tickPolicy', tp, RTC_TICK_POLICIES);
  }
  const pit = readObj(timer.pit, 'spec.domain.clock.timer.pit', c);
  if (pit) {
    if (readBool(pit.present, 'spec.domain.clock.timer.pit.present', c) === false) c.value('spec.domain.clock.timer.pit.present', false, 'the PIT cannot be removed');
    const tp = readStr(pit.tickPolicy, 'spec.domain.clock.timer.pit.tickPolicy', c);
    if (tp !== undefined) {
      if (!PIT_TICK_POLICIES.includes(tp)) c.value('spec.domain.clock.timer.pit.tickPolicy', tp, PIT_TICK_POLICIES);
      // Only KVM's in-kernel PIT has a lost-tick policy; TCG's PIT just delays.
      else if (ctx.input.accel === 'kvm') argv.push('-global', `kvm-pit.lost_tick_policy=${tp}`);
      else if (tp === 'discard') ctx.warnings.push('spec.domain.clock.timer.pit.tickPolicy: discard has no effect under TCG');
    }
  }
  return ['-rtc', opt(rtc[0].join('='), rtc.slice(1)), ...argv];
}

function videoArgs(ctx: Ctx, devices: Obj): string[] {
  const { c } = ctx;
  const auto = readBool(devices.autoattachGraphicsDevice, 'spec.domain.devices.autoattachGraphicsDevice', c) !== false;
  const video = readObj(devices.video, 'spec.domain.devices.video', c);
  const type = readStr(video?.type, 'spec.domain.devices.video.type', c);
  if (!auto) {
    if (video) c.invalid('spec.domain.devices.video', video, 'needs autoattachGraphicsDevice (it is false)');
    return [];
  }
  const models: Record<string, string> = { vga: 'VGA', virtio: 'virtio-vga', bochs: 'bochs-display', cirrus: 'cirrus-vga' };
  const model = models[type ?? 'vga'];
  if (!model) {
    c.value('spec.domain.devices.video.type', type, Object.keys(models));
    return [];
  }
  return ['-device', opt(model, [['id', 'video0']])];
}

interface HostPort {
  proto: string;
  port: number;
}

function networkArgs(ctx: Ctx, spec: Obj, devices: Obj): string[] {
  const { c, input } = ctx;
  const argv: string[] = [];
  const networks = new Map<string, { index: number; kind: 'pod' | 'multus'; cidr?: string }>();
  readList(spec.networks, 'spec.networks', c).forEach((n, j) => {
    const path = `spec.networks[${j}]`;
    const o = readObj(n, path, c);
    if (!o) return;
    const nname = readStr(o.name, `${path}.name`, c);
    if (nname === undefined) return c.required(`${path}.name`, 'the network name');
    if (networks.has(nname)) return c.duplicate(`${path}.name`, nname);
    const pod = readObj(o.pod, `${path}.pod`, c);
    const multus = readObj(o.multus, `${path}.multus`, c);
    if ((pod ? 1 : 0) + (multus ? 1 : 0) !== 1) return c.invalid(path, nname, 'exactly one of pod or multus must be set');
    if (multus) {
      const nad = readStr(multus.networkName, `${path}.multus.networkName`, c);
      if (!nad) c.required(`${path}.multus.networkName`, 'the NetworkAttachmentDefinition name');
      readBool(multus.default, `${path}.multus.default`, c);
    }
    const cidr = pod ? readStr(pod.vmNetworkCIDR, `${path}.pod.vmNetworkCIDR`, c) : undefined;
    networks.set(nname, { index: j, kind: pod ? 'pod' : 'multus', cidr });
  });

  const multiqueue = readBool(devices.networkInterfaceMultiqueue, 'spec.domain.devices.networkInterfaceMultiqueue', c) === true;
  const models: Record<string, string> = {
    virtio: virtio(ctx, 'virtio-net-pci'),
    e1000: 'e1000',
    e1000e: 'e1000e',
    igb: 'igb',
    ne2k_pci: 'ne2k_pci',
    pcnet: 'pcnet',
    rtl8139: 'rtl8139',
  };
  const hostname = guestHostname(ctx, spec);
  const ifaceNames = new Set(
    readList(devices.interfaces, 'spec.domain.devices.interfaces', c)
      .map((i) => (isObj(i) ? i.name : undefined))
      .filter((n): n is string => typeof n === 'string'),
  );
  for (const [nname, n] of networks) {
    if (!ifaceNames.has(nname)) c.invalid(`spec.networks[${n.index}].name`, nname, 'no interface of this name in spec.domain.devices.interfaces');
  }
  readList(devices.interfaces, 'spec.domain.devices.interfaces', c).forEach((itf, i) => {
    const path = `spec.domain.devices.interfaces[${i}]`;
    const o = readObj(itf, path, c);
    if (!o) return;
    const iname = readStr(o.name, `${path}.name`, c);
    if (iname === undefined) return c.required(`${path}.name`, 'the interface name');
    if (!NAME_RE.test(iname)) return c.invalid(`${path}.name`, iname, 'must consist of letters, digits, ".", "_" or "-" and start and end with a letter or digit');
    claimId(ctx, deviceId(iname), `${path}.name`, iname);
    const net = networks.get(iname);
    if (!net) c.invalid(`${path}.name`, iname, 'no network of this name in spec.networks');
    const masquerade = readObj(o.masquerade, `${path}.masquerade`, c);
    const bridge = readObj(o.bridge, `${path}.bridge`, c);
    if (!masquerade && !bridge && !unsupportedBinding(o)) c.required(path, 'a binding method: masquerade or bridge');
    if (masquerade && bridge) c.invalid(path, iname, 'set only one binding method');
    if (masquerade && net?.kind === 'multus') c.invalid(`${path}.masquerade`, {}, 'masquerade is only allowed on the pod network');
    const modelName = readStr(o.model, `${path}.model`, c) ?? 'virtio';
    const model = models[modelName];
    if (!model) c.value(`${path}.model`, modelName, Object.keys(models));
    const ports: HostPort[] = [];
    readList(o.ports, `${path}.ports`, c).forEach((p, k) => {
      const pp = readObj(p, `${path}.ports[${k}]`, c);
      if (!pp) return;
      const port = readInt(pp.port, `${path}.ports[${k}].port`, c, 1, 65535);
      const proto = readStr(pp.protocol, `${path}.ports[${k}].protocol`, c) ?? 'TCP';
      readStr(pp.name, `${path}.ports[${k}].name`, c);
      if (!PORT_PROTOCOLS.includes(proto)) c.value(`${path}.ports[${k}].protocol`, proto, PORT_PROTOCOLS);
      if (port !== undefined) ports.push({ proto, port });
    });
    const macSpec = readStr(o.macAddress, `${path}.macAddress`, c);
    let mac: string | undefined;
    if (macSpec !== undefined) {
      const problem = macAddressProblem(macSpec);
      if (problem) c.invalid(`${path}.macAddress`, macSpec, problem);
      else mac = macSpec.toLowerCase().replaceAll('-', ':');
    }
    const bootOrder = readBootOrder(ctx, o.bootOrder, `${path}.bootOrder`);

    const backend = input.networks?.[iname];
    if (!net || !model) return;
    if (!backend) return c.required(path, `the agent has no network backend for interface ${iname}`);
    const netdev = netdevId(iname);
    const queues = multiqueue && modelName === 'virtio' && backend.kind === 'tap' && ctx.vcpus > 1 ? ctx.vcpus : undefined;
    if (backend.kind === 'user') {
      // KubeVirt forwards only the listed ports when there are any; the agent derives the
      // forwards from them, so one outside the list is the agent's mistake, worth a warning.
      for (const f of backend.hostForwards ?? []) {
        if (ports.length > 0 && !ports.some((p) => p.port === f.guestPort && p.proto.toLowerCase() === f.proto)) {
          ctx.warnings.push(`${path}: host forward to guest port ${f.proto}/${f.guestPort} is not in ports`);
        }
      }
      if (multiqueue && ctx.vcpus > 1) ctx.warnings.push(`${path}: networkInterfaceMultiqueue has no effect on a user-mode (slirp) network`);
      argv.push('-netdev', userNetdev(ctx, netdev, net, backend.hostForwards ?? [], hostname, `spec.networks[${net.index}].pod.vmNetworkCIDR`));
    } else if (backend.kind === 'tap') {
      if (net.cidr !== undefined) c.value(`spec.networks[${net.index}].pod.vmNetworkCIDR`, net.cidr, 'only user-mode networks take vmNetworkCIDR; the cluster network assigns addresses by DHCP');
      if (!/^[A-Za-z0-9_.-]{1,15}$/.test(backend.ifname)) throw new TypeError(`buildQemuArgv: bad tap name ${JSON.stringify(backend.ifname)}`);
      argv.push('-netdev', opt('tap', [['id', netdev], ['ifname', backend.ifname], ['script', 'no'], ['downscript', 'no'], ['vhost', backend.vhost ? true : undefined], ['queues', queues]]));
    } else {
      throw new TypeError(`buildQemuArgv: unknown network backend for ${iname}`);
    }
    const finalMac = mac ?? backend.mac?.toLowerCase() ?? derivedMac(input.vmi.metadata.namespace, input.vmi.metadata.name, iname);
    argv.push(
      '-device',
      opt(model, [
        ['netdev', netdev],
        ['id', deviceId(iname)],
        ['mac', finalMac],
        ['mq', queues ? true : undefined],
        ['vectors', queues ? 2 * queues + 2 : undefined],
        ['bootindex', bootOrder],
        // Without a boot order the NIC never boots: skip loading its iPXE ROM.
        ['romfile', bootOrder === undefined ? '' : undefined],
      ]),
    );
  });
  return argv;
}

/** An interface with only bindings the walker already refused (no second cause for it). */
function unsupportedBinding(o: Obj): boolean {
  return ['sriov', 'slirp', 'macvtap', 'passt', 'passtBinding', 'binding'].some((k) => isSet(o[k]));
}

function guestHostname(ctx: Ctx, spec: Obj): string {
  const h = readStr(spec.hostname, 'spec.hostname', ctx.c);
  if (h !== undefined && !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(h)) {
    ctx.c.invalid('spec.hostname', h, 'must be a DNS label');
    return ctx.input.vmi.metadata.name;
  }
  return h ?? ctx.input.vmi.metadata.name;
}

/** slirp laid out like KubeVirt's masquerade: gateway .1, the guest .2 (by DHCP), DNS .3. */
function userNetdev(ctx: Ctx, id: string, net: { cidr?: string }, forwards: HostForward[], hostname: string, cidrField: string): string {
  let base = [10, 0, 2, 0];
  let prefix = 24;
  if (net.cidr !== undefined) {
    const parsed = parseVmNetworkCidr(net.cidr);
    if (!parsed) {
      ctx.c.invalid(cidrField, net.cidr, VM_NETWORK_CIDR_PROBLEM);
    } else {
      const { octets, prefix: len } = parsed;
      const ip = octets.reduce((a, o) => a * 256 + o, 0);
      const netIp = Math.floor(ip / 2 ** (32 - len)) * 2 ** (32 - len);
      base = [netIp >>> 24, (netIp >>> 16) & 255, (netIp >>> 8) & 255, netIp & 255];
      prefix = len;
    }
  }
  const addr = (add: number): string => {
    const v = base.reduce((a, o) => a * 256 + o, 0) + add;
    return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
  };
  const props: Array<[string, string | undefined]> = [
    ['id', id],
    ['net', `${base.join('.')}/${prefix}`],
    ['host', addr(1)],
    ['dhcpstart', addr(2)],
    ['dns', addr(3)],
    ['hostname', hostname],
  ];
  for (const f of forwards) {
    const okPort = (p: number): boolean => Number.isInteger(p) && p >= 1 && p <= 65535;
    if ((f.proto !== 'tcp' && f.proto !== 'udp') || !okPort(f.hostPort) || !okPort(f.guestPort) || !/^(\d{1,3}(\.\d{1,3}){3})?$/.test(f.hostAddr)) {
      throw new TypeError(`buildQemuArgv: bad host forward ${JSON.stringify(f)}`);
    }
    props.push(['hostfwd', `${f.proto}:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`]);
  }
  return opt('user', props);
}

const VOLUME_SOURCES = ['containerDisk', 'dataVolume', 'persistentVolumeClaim', 'ephemeral', 'emptyDisk', 'cloudInitNoCloud', 'cloudInitConfigDrive'];
const REFUSED_SOURCES = ['hostDisk', 'configMap', 'secret', 'serviceAccount', 'downwardAPI', 'downwardMetrics', 'sysprep', 'memoryDump', 'containerPath'];

interface VolumeInfo {
  index: number;
  source?: string;
  pvcReadOnly: boolean;
  used: boolean;
}

/** Storage controllers (created once, before the disks on them) and the disks. */
function diskArgs(ctx: Ctx, spec: Obj, devices: Obj): string[] {
  const { c, input } = ctx;
  const volumes = new Map<string, VolumeInfo>();
  readList(spec.volumes, 'spec.volumes', c).forEach((v, j) => {
    const path = `spec.volumes[${j}]`;
    const o = readObj(v, path, c);
    if (!o) return;
    const vname = readStr(o.name, `${path}.name`, c);
    if (vname === undefined) return c.required(`${path}.name`, 'the volume name');
    if (volumes.has(vname)) return c.duplicate(`${path}.name`, vname);
    const sources = VOLUME_SOURCES.filter((k) => isSet(o[k]));
    const refused = REFUSED_SOURCES.filter((k) => isSet(o[k]));
    if (sources.length + refused.length === 0) c.required(path, 'a volume source');
    else if (sources.length + refused.length > 1) c.invalid(path, vname, `exactly one volume source may be set, found ${[...sources, ...refused].join(', ')}`);
    const pvc = readObj(o.persistentVolumeClaim, `${path}.persistentVolumeClaim`, c);
    const ephPvc = readObj(readObj(o.ephemeral, `${path}.ephemeral`, c)?.persistentVolumeClaim, `${path}.ephemeral.persistentVolumeClaim`, c);
    const pvcReadOnly = readBool(pvc?.readOnly, `${path}.persistentVolumeClaim.readOnly`, c) === true;
    readBool(ephPvc?.readOnly, `${path}.ephemeral.persistentVolumeClaim.readOnly`, c);
    volumes.set(vname, { index: j, source: sources.length === 1 && refused.length === 0 ? sources[0] : undefined, pvcReadOnly, used: false });
  });

  const controllers: string[] = [];
  const disks: string[] = [];
  const blockMQ = readBool(devices.blockMultiQueue, 'spec.domain.devices.blockMultiQueue', c) === true;
  let sataCount = 0;
  let scsiCount = 0;
  let implicitBoot = 0;
  const names = new Set<string>();
  readList(devices.disks, 'spec.domain.devices.disks', c).forEach((d, i) => {
    const path = `spec.domain.devices.disks[${i}]`;
    const o = readObj(d, path, c);
    if (!o) return;
    const dname = readStr(o.name, `${path}.name`, c);
    if (dname === undefined) return c.required(`${path}.name`, 'the disk name');
    if (!NAME_RE.test(dname)) return c.invalid(`${path}.name`, dname, 'must consist of letters, digits, ".", "_" or "-" and start and end with a letter or digit');
    if (names.has(dname)) return c.duplicate(`${path}.name`, dname);
    names.add(dname);
    claimId(ctx, deviceId(dname), `${path}.name`, dname);
    const vol = volumes.get(dname);
    if (!vol) c.invalid(`${path}.name`, dname, 'no volume of this name in spec.volumes');
    else vol.used = true;

    const targets = ['disk', 'cdrom', 'lun'].filter((k) => isSet(o[k]));
    if (targets.length > 1) c.invalid(path, dname, `set only one of disk, cdrom or lun, found ${targets.join(', ')}`);
    if (targets.includes('lun')) return; // refused by the allow list
    const kind: 'disk' | 'cdrom' = targets[0] === 'cdrom' ? 'cdrom' : 'disk';
    const target = readObj(o[kind], `${path}.${kind}`, c) ?? {};
    const bus = readStr(target.bus, `${path}.${kind}.bus`, c) ?? defaultDiskBus('amd64');
    const buses = SUPPORTED_DISK_BUSES[kind];
    if (!buses.includes(bus)) {
      if (kind === 'cdrom' && bus === 'virtio') c.invalid(`${path}.cdrom.bus`, bus, 'a cdrom cannot use the virtio bus; use sata or scsi');
      else c.value(`${path}.${kind}.bus`, bus, buses);
    }
    let readOnly = readBool(target.readonly, `${path}.${kind}.readonly`, c);
    if (kind === 'cdrom') {
      if (readOnly === false) c.value(`${path}.cdrom.readonly`, false, 'cdroms are read-only in Vessel');
      readOnly = true;
      const tray = readStr(target.tray, `${path}.cdrom.tray`, c);
      if (tray !== undefined && tray !== 'closed') c.value(`${path}.cdrom.tray`, tray, ['closed']);
    }
    const hostVol = vol ? input.volumes[dname] : undefined;
    const ro = readOnly === true || vol?.pvcReadOnly === true || hostVol?.readOnly === true;
    if (kind === 'disk' && bus === 'sata' && ro) {
      c.invalid(readOnly ? `${path}.disk.readonly` : `${path}.disk.bus`, readOnly ? true : bus, 'a SATA disk cannot be read-only in QEMU; use bus virtio or scsi');
    }

    const cacheDefault = hostVol?.directIO === false ? 'writethrough' : 'none';
    const cache = readStr(o.cache, `${path}.cache`, c) ?? cacheDefault;
    if (!CACHE_MODES.includes(cache)) c.value(`${path}.cache`, cache, CACHE_MODES);
    if (cache === 'none' && hostVol?.directIO === false) c.invalid(`${path}.cache`, cache, 'the volume is on a file system without O_DIRECT support (such as tmpfs)');
    const io = readStr(o.io, `${path}.io`, c);
    if (io !== undefined && !IO_MODES.includes(io)) c.value(`${path}.io`, io, IO_MODES);
    if (io === 'native' && cache !== 'none') c.invalid(`${path}.io`, io, 'native I/O needs cache none');
    const serial = readStr(o.serial, `${path}.serial`, c);
    if (serial !== undefined && !/^[A-Za-z0-9_.+-]+$/.test(serial)) c.invalid(`${path}.serial`, serial, 'must consist of letters, digits or _.+-');
    const errorPolicy = readStr(o.errorPolicy, `${path}.errorPolicy`, c);
    const policies: Record<string, [string, string]> = { stop: ['stop', 'stop'], report: ['report', 'report'], ignore: ['ignore', 'ignore'], enospace: ['enospc', 'report'] };
    if (errorPolicy !== undefined && !policies[errorPolicy]) c.value(`${path}.errorPolicy`, errorPolicy, Object.keys(policies));
    const shareable = readBool(o.shareable, `${path}.shareable`, c) === true;
    if (shareable && hostVol?.format === 'qcow2') c.invalid(`${path}.shareable`, true, 'only raw volumes can be shared; this one is qcow2');
    const custom = readObj(readObj(o.blockSize, `${path}.blockSize`, c)?.custom, `${path}.blockSize.custom`, c);
    const blockSize = (k: string): number | undefined => {
      const n = readInt(custom?.[k], `${path}.blockSize.custom.${k}`, c, 0, 2 ** 31);
      const problem = n === undefined ? undefined : blockSizeProblem(n);
      if (problem) c.invalid(`${path}.blockSize.custom.${k}`, n, problem);
      return n;
    };
    const logical = blockSize('logical');
    const physical = blockSize('physical');
    const discardGranularity = readInt(custom?.discardGranularity, `${path}.blockSize.custom.discardGranularity`, c, 0, 2 ** 31);
    let bootindex = readBootOrder(ctx, o.bootOrder, `${path}.bootOrder`);
    // No boot order anywhere: disks boot in list order ("strict" would otherwise boot nothing).
    if (!ctx.explicitBoot) bootindex = ++implicitBoot;

    if (!vol) return;
    const vpath = `spec.volumes[${vol.index}]`;
    if (vol.source === undefined) return; // refused or invalid source, already reported
    if (!hostVol) return c.required(vpath, `volume ${dname} (${vol.source}) has not been made available on this node`);
    if (hostVol.format !== 'qcow2' && hostVol.format !== 'raw') throw new TypeError(`buildQemuArgv: bad format for volume ${dname}`);

    const nodes = blockNodeNames(dname);
    const direct = cache === 'none';
    disks.push(
      '-blockdev',
      opt(`driver=${hostVol.block ? 'host_device' : 'file'}`, [
        ['filename', checkHostString('volume path', hostVol.path)],
        ['node-name', nodes.file],
        ['cache.direct', direct],
        ['aio', io === 'native' || io === 'threads' ? io : undefined],
        ['discard', ro ? undefined : 'unmap'],
        ['read-only', ro || undefined],
      ]),
      '-blockdev',
      opt(`driver=${hostVol.format}`, [
        ['file', nodes.file],
        ['node-name', nodes.format],
        ['cache.direct', direct],
        ['discard', ro ? undefined : 'unmap'],
        ['read-only', ro || undefined],
      ]),
    );
    let head: string;
    const where: Array<[string, string | number | undefined]> = [];
    if (bus === 'virtio') {
      head = virtio(ctx, 'virtio-blk-pci');
      if (blockMQ && ctx.vcpus > 1) where.push(['num-queues', ctx.vcpus]);
    } else if (bus === 'scsi') {
      head = kind === 'cdrom' ? 'scsi-cd' : 'scsi-hd';
      where.push(['bus', `${SCSI_CONTROLLER_ID}.0`], ['channel', 0], ['scsi-id', scsiCount], ['lun', 0]);
      scsiCount++;
    } else {
      // Six ports per AHCI controller; q35 has one built in (bus "ide"), more are ich9-ahci.
      const ctl = Math.floor(sataCount / 6);
      const ctlId = ctx.q35 && ctl === 0 ? 'ide' : `sata${ctl}`;
      if (sataCount % 6 === 0 && ctlId !== 'ide') controllers.push('-device', opt('ich9-ahci', [['id', ctlId]]));
      head = kind === 'cdrom' ? 'ide-cd' : 'ide-hd';
      where.push(['bus', `${ctlId}.${sataCount % 6}`]);
      sataCount++;
    }
    const [werror, rerror] = errorPolicy && policies[errorPolicy] ? policies[errorPolicy] : [undefined, undefined];
    disks.push(
      '-device',
      opt(head, [
        ...where,
        ['drive', nodes.format],
        ['id', deviceId(dname)],
        ['write-cache', kind === 'cdrom' ? undefined : cache !== 'writethrough'],
        ['serial', serial],
        ['bootindex', bootindex],
        ['logical_block_size', logical],
        ['physical_block_size', physical],
        ['discard_granularity', discardGranularity],
        ['share-rw', shareable || undefined],
        ['werror', werror],
        ['rerror', rerror],
      ]),
    );
  });
  for (const [vname, v] of volumes) {
    if (!v.used) ctx.warnings.push(`spec.volumes[${v.index}]: volume ${vname} is not used by any disk`);
  }
  // Every VM gets the virtio-scsi controller, as in KubeVirt: hotplugged disks go on it. Only
  // disableHotplug without a scsi disk leaves it out. It comes first, so its PCI slot never moves.
  const disableHotplug = readBool(devices.disableHotplug, 'spec.domain.devices.disableHotplug', c) === true;
  if (scsiCount > 0 || !disableHotplug) controllers.unshift('-device', opt(virtio(ctx, 'virtio-scsi-pci'), [['id', SCSI_CONTROLLER_ID]]));
  return [...controllers, ...disks];
}

function watchdogArgs(ctx: Ctx, devices: Obj): { device: string[]; action: string[] } {
  const { c } = ctx;
  const w = readObj(devices.watchdog, 'spec.domain.devices.watchdog', c);
  if (!w) return { device: [], action: [] };
  const wname = readStr(w.name, 'spec.domain.devices.watchdog.name', c);
  if (wname === undefined || !NAME_RE.test(wname)) {
    if (wname === undefined) c.required('spec.domain.devices.watchdog.name', 'the watchdog name');
    else c.invalid('spec.domain.devices.watchdog.name', wname, 'must consist of letters, digits, ".", "_" or "-"');
    return { device: [], action: [] };
  }
  claimId(ctx, deviceId(wname), 'spec.domain.devices.watchdog.name', wname);
  const esb = readObj(w.i6300esb, 'spec.domain.devices.watchdog.i6300esb', c);
  if (!esb) {
    if (!isSet(w.diag288)) c.required('spec.domain.devices.watchdog.i6300esb', 'a watchdog model (i6300esb)');
    return { device: [], action: [] };
  }
  const action = readStr(esb.action, 'spec.domain.devices.watchdog.i6300esb.action', c) ?? 'reset';
  if (!['poweroff', 'reset', 'shutdown'].includes(action)) {
    c.value('spec.domain.devices.watchdog.i6300esb.action', action, ['poweroff', 'reset', 'shutdown']);
    return { device: [], action: [] };
  }
  // KubeVirt's actions are QEMU's: poweroff (hard), reset, shutdown (ACPI request).
  return { device: ['-device', opt('i6300esb', [['id', deviceId(wname)]])], action: ['-action', `watchdog=${action}`] };
}

function inputArgs(ctx: Ctx, devices: Obj): string[] {
  const { c } = ctx;
  let inputs = readList(devices.inputs, 'spec.domain.devices.inputs', c);
  if (inputs.length === 0 && readBool(devices.autoattachInputDevice, 'spec.domain.devices.autoattachInputDevice', c) === true) {
    inputs = [{ name: 'default-0', type: 'tablet', bus: 'usb' }];
  }
  const argv: string[] = [];
  let usb = false;
  inputs.forEach((inp, i) => {
    const path = `spec.domain.devices.inputs[${i}]`;
    const o = readObj(inp, path, c);
    if (!o) return;
    const iname = readStr(o.name, `${path}.name`, c);
    const type = readStr(o.type, `${path}.type`, c) ?? 'tablet';
    const bus = readStr(o.bus, `${path}.bus`, c) ?? 'usb';
    if (iname === undefined) return c.required(`${path}.name`, 'the input device name');
    if (!NAME_RE.test(iname)) return c.invalid(`${path}.name`, iname, 'must consist of letters, digits, ".", "_" or "-"');
    claimId(ctx, deviceId(iname), `${path}.name`, iname);
    if (type !== 'tablet' && type !== 'keyboard') return c.value(`${path}.type`, type, ['tablet', 'keyboard']);
    if (bus === 'usb') {
      if (!usb) argv.push('-device', opt('qemu-xhci', [['id', 'usb']]));
      usb = true;
      argv.push('-device', opt(type === 'tablet' ? 'usb-tablet' : 'usb-kbd', [['id', deviceId(iname)], ['bus', 'usb.0']]));
    } else if (bus === 'virtio') {
      argv.push('-device', opt(type === 'tablet' ? 'virtio-tablet-pci' : 'virtio-keyboard-pci', [['id', deviceId(iname)]]));
    } else {
      c.value(`${path}.bus`, bus, ['usb', 'virtio']);
    }
  });
  return argv;
}
