/**
 * The machine: name and UUID, machine type and its properties, accelerator, CPU model and
 * topology, memory (hugepages included), firmware (OVMF, secure boot, SMM, kernel boot, SMBIOS).
 * Everything here decides what the guest is before any device is attached, and most of it ends
 * up in -machine, which is written once all machine properties are known.
 */
import { MIN_GUEST_MEMORY, SUPPORTED_MACHINE_TYPES, firmwareUuidProblem, qemuMachineType, tryParseQuantity } from '@vessel/api';
import {
  checkHostString,
  opt,
  readBool,
  readInt,
  readList,
  readObj,
  readStr,
  isSet,
  type Causes,
  type Configurator,
  type Ctx,
  type Obj,
  type OptProps,
} from './context.ts';

export const isQ35 = (machine: string): boolean => machine === 'q35' || machine.startsWith('pc-q35-');

/** The QEMU machine type; read before the configurators run, as devices depend on it. */
export function machineType(dom: Obj, c: Causes, warnings: string[]): string {
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

/** The vCPU topology; read before the configurators run, as queue counts depend on it. */
export function cpuTopology(dom: Obj, c: Causes): { sockets: number; cores: number; threads: number } {
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

/** -name, -uuid and the options every VM has. */
export const globals: Configurator = (ctx) => {
  const { c, args } = ctx;
  const { name, namespace } = ctx.input.vmi.metadata;
  args.head.push('-name', opt(`guest=${namespace}_${name}`, [['debug-threads', true]]));
  const uuid = readStr(ctx.firmware.uuid, 'spec.domain.firmware.uuid', c);
  if (uuid !== undefined) {
    const problem = firmwareUuidProblem(uuid);
    if (problem) c.invalid('spec.domain.firmware.uuid', uuid, problem);
    else args.head.push('-uuid', uuid.toLowerCase());
  }
  args.head.push('-msg', 'timestamp=on', '-nodefaults', '-no-user-config');
  // Only devices with a bootindex boot; disks get one in list order when no boot order is given.
  args.boot.push('-boot', 'strict=on');
};

/** -machine properties from spec.domain.features; leaves whether SMM was asked on/off. */
export const features: Configurator = (ctx) => {
  const { c } = ctx;
  const f = readObj(ctx.dom.features, 'spec.domain.features', c) ?? {};
  const acpi = readObj(f.acpi, 'spec.domain.features.acpi', c);
  if (acpi && readBool(acpi.enabled, 'spec.domain.features.acpi.enabled', c) === false) ctx.machineProps.push(['acpi', false]);
  const apic = readObj(f.apic, 'spec.domain.features.apic', c);
  if (apic && readBool(apic.enabled, 'spec.domain.features.apic.enabled', c) === false) {
    c.value('spec.domain.features.apic.enabled', false, 'x86 guests always have an APIC in Vessel');
  }
  const smmObj = readObj(f.smm, 'spec.domain.features.smm', c);
  ctx.smm = smmObj ? readBool(smmObj.enabled, 'spec.domain.features.smm.enabled', c) !== false : undefined;
};

/** -m and, with hugepages, the memory backend; leaves whether memory is on hugepages. */
export const memory: Configurator = (ctx) => {
  const { c, dom } = ctx;
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
  if (!isSet(q)) return c.required('spec.domain.memory.guest', 'guest memory (memory.guest or resources.requests.memory)');
  const bytes = tryParseQuantity(q);
  if (bytes === undefined || bytes < MIN_GUEST_MEMORY) return c.invalid(field, q, 'must be a quantity of at least 16Mi');
  const mib = Math.ceil(bytes / 2 ** 20);
  if (mib * 2 ** 20 !== bytes) ctx.warnings.push(`${field}: ${String(q)} rounded up to ${mib}Mi`);
  ctx.args.memory.push('-m', `${mib}M`);

  const hp = readObj(mem.hugepages, 'spec.domain.memory.hugepages', c);
  const cpuSpec = readObj(dom.cpu, 'spec.domain.cpu', c) ?? {};
  const numaSpec = readObj(cpuSpec.numa, 'spec.domain.cpu.numa', c);
  const passthrough = isSet(readObj(numaSpec?.guestMappingPassthrough, 'spec.domain.cpu.numa.guestMappingPassthrough', c));
  if (passthrough && (!hp || readBool(cpuSpec.dedicatedCpuPlacement, 'spec.domain.cpu.dedicatedCpuPlacement', c) !== true))
    c.invalid('spec.domain.cpu.numa.guestMappingPassthrough', {}, 'needs dedicatedCpuPlacement: true and memory.hugepages');
  if (!hp) return;
  ctx.hugepages = true;
  const ps = readStr(hp.pageSize, 'spec.domain.memory.hugepages.pageSize', c);
  const size = ps === undefined ? undefined : tryParseQuantity(ps);
  if (size !== 2 * 2 ** 20 && size !== 2 ** 30) return c.value('spec.domain.memory.hugepages.pageSize', ps, ['2Mi', '1Gi']);
  if ((mib * 2 ** 20) % size !== 0) c.invalid(field, q, `must be a multiple of the hugepage size ${ps}`);
  // A hugetlbfs mount when the agent names one; else an anonymous memfd on the hugepage pool
  // (no mount needed). prealloc: fail at start, not with SIGBUS later, when the pool is short.
  const backend = (id: string, sizeMib: number, hostNode?: number): string =>
    ctx.input.hugepagesPath !== undefined
      ? opt('memory-backend-file', [
          ['id', id],
          ['size', `${sizeMib}M`],
          ['mem-path', checkHostString('hugepagesPath', ctx.input.hugepagesPath)],
          ['prealloc', true],
          ['host-nodes', hostNode],
          ['policy', hostNode === undefined ? undefined : 'bind'],
        ])
      : opt('memory-backend-memfd', [
          ['id', id],
          ['size', `${sizeMib}M`],
          ['hugetlb', true],
          ['hugetlbsize', size],
          ['prealloc', true],
          ['host-nodes', hostNode],
          ['policy', hostNode === undefined ? undefined : 'bind'],
        ]);
  if (!passthrough) {
    // pc.ram: the RAM block name QEMU uses without a backend, so the migration stream is the same.
    ctx.args.memory.push('-object', backend('pc.ram', mib));
    ctx.machineProps.push(['memory-backend', 'pc.ram']);
    return;
  }
  numaPassthrough(ctx, mib, size / 2 ** 20, backend);
};

/**
 * cpu.numa.guestMappingPassthrough: one guest NUMA node per host node the dedicated CPUs lie on
 * (in the order the vCPUs meet them), its vCPUs those pinned there and its memory bound there;
 * memory split by vCPU count in whole hugepages, the rest on the last node (as KubeVirt).
 */
function numaPassthrough(ctx: Ctx, mib: number, pageMib: number, backend: (id: string, sizeMib: number, hostNode?: number) => string): void {
  const hostNodes = ctx.input.hostNumaNodes;
  if (!hostNodes || hostNodes.length !== ctx.vcpus) {
    return ctx.c.required(
      'spec.domain.cpu.numa.guestMappingPassthrough',
      'the host NUMA nodes of the dedicated CPUs (the VM starts on a node with a CPU manager)',
    );
  }
  const groups = new Map<number, number[]>();
  hostNodes.forEach((h, vcpu) => {
    if (!Number.isInteger(h) || h < 0) throw new TypeError(`buildQemuArgv: bad host NUMA node ${JSON.stringify(h)}`);
    groups.set(h, [...(groups.get(h) ?? []), vcpu]);
  });
  const pages = Math.floor(mib / pageMib);
  let left = pages;
  [...groups].forEach(([host, vcpus], i) => {
    const last = i === groups.size - 1;
    const nodePages = last ? left : Math.floor((pages * vcpus.length) / ctx.vcpus);
    left -= nodePages;
    if (nodePages <= 0) ctx.c.invalid('spec.domain.memory.guest', `${mib}Mi`, `too small to give each of ${groups.size} guest NUMA nodes a hugepage`);
    ctx.args.memory.push('-object', backend(`ram-node${i}`, nodePages * pageMib, host));
    const cpus: OptProps = cpuRanges(vcpus).map((r) => ['cpus', r]);
    ctx.args.memory.push('-numa', opt('node', [['nodeid', i], ...cpus, ['memdev', `ram-node${i}`]]));
  });
}

/** Sorted CPU indexes as ranges ("0-3"), one per run of consecutive numbers: QEMU's -numa cpus=, Linux's CPU lists. */
export function cpuRanges(ns: number[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < ns.length;) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j] + 1) j++;
    out.push(i === j ? String(ns[i]) : `${ns[i]}-${ns[j]}`);
    i = j + 1;
  }
  return out;
}

/** UEFI (OVMF as pflash), secure boot and SMM. */
export const efi: Configurator = (ctx) => {
  const { c, input } = ctx;
  const bl = readObj(ctx.firmware.bootloader, 'spec.domain.firmware.bootloader', c) ?? {};
  const efiSpec = readObj(bl.efi, 'spec.domain.firmware.bootloader.efi', c);
  if (efiSpec && isSet(bl.bios)) c.invalid('spec.domain.firmware.bootloader', 'bios+efi', 'set either bios or efi, not both');
  let smmOn = ctx.smm;
  if (efiSpec) {
    const secure = readBool(efiSpec.secureBoot, 'spec.domain.firmware.bootloader.efi.secureBoot', c) !== false;
    if (secure) {
      if (ctx.smm === false) c.invalid('spec.domain.features.smm.enabled', false, 'secure boot (efi.secureBoot, default true) needs SMM');
      if (!ctx.q35) c.value('spec.domain.firmware.bootloader.efi.secureBoot', true, `secure boot needs the q35 machine type, not ${ctx.machine}`);
      smmOn = true;
    }
    const fwIn = input.firmware;
    if (!fwIn) {
      c.required('spec.domain.firmware.bootloader.efi', 'UEFI firmware (OVMF) is not available on this node');
    } else {
      // -blockdev pflash: code read-only, this VM's variable store writable.
      const pf = (n: 0 | 1, path: string, ro: boolean): void => {
        ctx.args.firmware.push(
          '-blockdev',
          opt('driver=file', [
            ['filename', checkHostString('firmware path', path)],
            ['node-name', `pflash${n}-file`],
            ['read-only', ro || undefined],
          ]),
        );
        ctx.args.firmware.push(
          '-blockdev',
          opt('driver=raw', [
            ['file', `pflash${n}-file`],
            ['node-name', `pflash${n}`],
            ['read-only', ro || undefined],
          ]),
        );
      };
      pf(0, fwIn.ovmfCode, true);
      pf(1, fwIn.ovmfVars, false);
      ctx.machineProps.push(['pflash0', 'pflash0'], ['pflash1', 'pflash1']);
      if (secure) ctx.args.firmware.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
    }
  }
  if (smmOn !== undefined) ctx.machineProps.push(['smm', smmOn]);
};

/** -kernel, -initrd, -append from firmware.kernelBoot (the files the agent extracted). */
export const kernelBoot: Configurator = (ctx) => {
  const { c, input } = ctx;
  const kb = readObj(ctx.firmware.kernelBoot, 'spec.domain.firmware.kernelBoot', c);
  if (!kb) {
    if (input.kernelBoot) ctx.warnings.push('a kernel was extracted but spec.domain.firmware.kernelBoot is not set; it is not used');
    return;
  }
  const container = readObj(kb.container, 'spec.domain.firmware.kernelBoot.container', c);
  const kernelArgs = readStr(kb.kernelArgs, 'spec.domain.firmware.kernelBoot.kernelArgs', c);
  if (kernelArgs !== undefined && /[\x00-\x1f\x7f]/.test(kernelArgs))
    c.invalid('spec.domain.firmware.kernelBoot.kernelArgs', kernelArgs, 'must not contain control characters');
  if (!container) {
    if (kernelArgs !== undefined) c.required('spec.domain.firmware.kernelBoot.container', 'kernelArgs need a kernel container');
    return;
  }
  const kernelPath = readStr(container.kernelPath, 'spec.domain.firmware.kernelBoot.container.kernelPath', c);
  const initrdPath = readStr(container.initrdPath, 'spec.domain.firmware.kernelBoot.container.initrdPath', c);
  if (kernelPath === undefined) c.required('spec.domain.firmware.kernelBoot.container.kernelPath', 'the kernel path in the container image');
  const ext = input.kernelBoot;
  if (!ext) return c.required('spec.domain.firmware.kernelBoot.container', 'the kernel has not been extracted from the container image on this node');
  const out = ctx.args.firmware;
  out.push('-kernel', checkHostString('kernel path', ext.kernel));
  if (initrdPath !== undefined) {
    if (ext.initrd === undefined) c.required('spec.domain.firmware.kernelBoot.container.initrdPath', 'the initrd has not been extracted on this node');
    else out.push('-initrd', checkHostString('initrd path', ext.initrd));
  }
  if (kernelArgs) out.push('-append', kernelArgs);
};

/** SMBIOS: type 1 (system) serial, type 3 (chassis). */
export const smbios: Configurator = (ctx) => {
  const { c } = ctx;
  const serial = readStr(ctx.firmware.serial, 'spec.domain.firmware.serial', c);
  if (serial !== undefined) {
    if (/^[A-Za-z0-9_.+ -]{1,64}$/.test(serial)) ctx.args.firmware.push('-smbios', opt('type=1', [['serial', serial]]));
    else c.invalid('spec.domain.firmware.serial', serial, 'must be 1-64 letters, digits, spaces or _.+-');
  }
  const chassis = readObj(ctx.dom.chassis, 'spec.domain.chassis', c);
  if (!chassis) return;
  const props: Array<[string, string | undefined]> = [];
  for (const k of ['manufacturer', 'version', 'serial', 'asset', 'sku']) {
    const v = readStr(chassis[k], `spec.domain.chassis.${k}`, c);
    if (v === undefined) continue;
    if (/[\x00-\x1f\x7f]/.test(v) || v.length > 64) c.invalid(`spec.domain.chassis.${k}`, v, 'must be at most 64 printable characters');
    else props.push([k, v]);
  }
  if (props.length > 0) ctx.args.firmware.push('-smbios', opt('type=3', props));
};

/** -machine and -accel; runs after every configurator that adds machine properties. */
export const machineLine: Configurator = (ctx) => {
  ctx.args.machine.push('-machine', opt(ctx.machine, ctx.machineProps), '-accel', ctx.input.accel);
};

/** -cpu (model and features) and -smp. */
export const cpu: Configurator = (ctx) => {
  const { c } = ctx;
  const spec = readObj(ctx.dom.cpu, 'spec.domain.cpu', c) ?? {};
  const model = readStr(spec.model, 'spec.domain.cpu.model', c) ?? 'host-model';
  let qemuModel: string;
  if (model === 'host-passthrough') {
    if (ctx.input.accel !== 'kvm')
      c.value('spec.domain.cpu.model', model, 'host-passthrough needs KVM and this node runs guests under TCG; use host-model or a named model');
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
  readList(spec.features, 'spec.domain.cpu.features', c).forEach((f, i) => {
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
  // Dedicated CPUs are the agent's pinning after start (vms/cpu-manager.ts), nothing in argv.
  const dedicated = readBool(spec.dedicatedCpuPlacement, 'spec.domain.cpu.dedicatedCpuPlacement', c) === true;
  if (readBool(spec.isolateEmulatorThread, 'spec.domain.cpu.isolateEmulatorThread', c) === true && !dedicated)
    c.invalid('spec.domain.cpu.isolateEmulatorThread', true, 'needs dedicatedCpuPlacement: true');
  const { sockets, cores, threads } = ctx.topology;
  ctx.args.cpu.push(
    '-cpu',
    opt(qemuModel, props),
    '-smp',
    opt(String(ctx.vcpus), [
      ['sockets', sockets],
      ['cores', cores],
      ['threads', threads],
    ]),
  );
};
