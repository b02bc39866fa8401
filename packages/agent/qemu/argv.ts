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
 *
 * This file is the entry: the spec-wide checks, the context, and the configurators of argv/ (one
 * module per device area, like Proxmox's qemu-server and KubeVirt's converter) run in a fixed order.
 */
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { Reason, SUPPORTED_ARCHITECTURES, unsupportedVmiSpecFields, vmiSpecFieldPatterns, type FieldCause } from '@vessel/api';
import { Causes, NAME_RE, SECTIONS, isObj, isSet, readBool, readObj, readStr, type Configurator, type Ctx, type Obj } from './argv/context.ts';
import { balloon, clock, guestAgent, inputs, rng, serialConsole, sgabios, video, watchdog } from './argv/devices.ts';
import { disks } from './argv/disks.ts';
import { cpu, cpuTopology, efi, features, globals, isQ35, kernelBoot, machineLine, machineType, memory, smbios } from './argv/machine.ts';
import { network } from './argv/network.ts';

export { GUEST_AGENT_CHARDEV_ID, SCSI_CONTROLLER_ID, SERIAL_CHARDEV_ID, blockNodeNames, derivedMac, deviceId, netdevId } from './argv/ids.ts';

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
export type QemuNetwork = { kind: 'user'; hostForwards?: HostForward[]; mac?: string } | { kind: 'tap'; ifname: string; vhost?: boolean; mac?: string };

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
  /** hugetlbfs mount for `memory.hugepages`; default: none, guest memory is a hugetlb memfd. */
  hugepagesPath?: string;
  /**
   * For `cpu.numa.guestMappingPassthrough`: the host NUMA node of each vCPU's dedicated host CPU
   * (index = vCPU), as the agent's CPU manager assigned them.
   */
  hostNumaNodes?: number[];
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

/**
 * The spec fields the builder accepts, as patterns ("domain.devices.disks[].cache"): the allow list
 * is @vessel/api's VMI_SPEC_FIELDS, the one admission refuses everything else by.
 */
export function supportedSpecFields(): string[] {
  return vmiSpecFieldPatterns();
}

/**
 * What firmware a spec needs, so the agent can pick the OVMF files before building argv:
 * efi when bootloader.efi is set; secure boot unless efi.secureBoot is false (KubeVirt's default).
 */
export function efiRequirements(spec: V1VirtualMachineInstanceSpec): { efi: boolean; secureBoot: boolean } {
  const efi = spec.domain?.firmware?.bootloader?.efi;
  if (!isSet(efi)) return { efi: false, secureBoot: false };
  return { efi: true, secureBoot: efi?.secureBoot !== false };
}

/**
 * The configurators in the order their causes and warnings appear (the error goldens pin it).
 * Where their arguments land is each one's section (SECTIONS), so this order need not be argv's.
 * Devices share one section: video, NICs, storage, then the fixed set of service devices, an
 * order that keeps PCI slots stable when disks are added.
 */
const CONFIGURATORS: readonly Configurator[] = [
  globals,
  // features to clock add -machine properties; machineLine writes -machine once all are known.
  features,
  memory,
  efi,
  kernelBoot,
  smbios,
  clock,
  machineLine,
  cpu,
  video,
  network,
  disks,
  serialConsole,
  guestAgent,
  balloon,
  rng,
  watchdog,
  inputs,
  sgabios,
];

/**
 * Builds the argv for a VMI. Throws VmSpecError listing every unsupported or invalid field;
 * throws TypeError when the agent's own input (paths, tap names, forwards) is malformed.
 */
export function buildQemuArgv(input: QemuInput): QemuArgv {
  const ctx = newContext(input);
  for (const configure of CONFIGURATORS) configure(ctx);
  const { name, namespace } = input.vmi.metadata;
  if (ctx.c.list.length > 0) throw new VmSpecError(`${namespace}/${name}`, ctx.c.list);
  return { argv: SECTIONS.flatMap((s) => ctx.args[s]), warnings: ctx.warnings, env: ctx.env, chardevs: ctx.chardevs };
}

/** The validation walk against the allow list, then the facts every configurator depends on. */
function newContext(input: QemuInput): Ctx {
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
  const topology = cpuTopology(dom, c);
  const transitional = readBool(devices.useVirtioTransitional, 'spec.domain.devices.useVirtioTransitional', c) === true;
  return {
    input,
    c,
    warnings,
    env: {},
    chardevs: [],
    spec,
    dom,
    devices,
    firmware: readObj(dom.firmware, 'spec.domain.firmware', c) ?? {},
    machine,
    q35: isQ35(machine),
    topology,
    vcpus: topology.sockets * topology.cores * topology.threads,
    transitional,
    ids: new Map(),
    explicitBoot: hasExplicitBootOrder(devices),
    bootOrders: new Map(),
    machineProps: [],
    hugepages: false,
    serialConsole: false,
    args: Object.fromEntries(SECTIONS.map((s) => [s, []])) as unknown as Ctx['args'],
  };
}

function hasExplicitBootOrder(devices: Obj): boolean {
  const lists = [devices.disks, devices.interfaces];
  return lists.some((l) => Array.isArray(l) && l.some((d) => isObj(d) && isSet(d.bootOrder)));
}
